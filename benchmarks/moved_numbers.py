"""List the README and docs numbers that moved when benchmark JSONs were regenerated.

    python benchmarks/moved_numbers.py --since REV        # JSONs as they were at REV
    python benchmarks/moved_numbers.py --since REV --json moved.json

After `benchmarks/run_all.sh` rewrites `benchmarks/results/*.json`, two kinds of numbers in
README.md and docs/*.md may be stale:

- **table cells** under a `<!-- numbers: -->` marker: `check_readme.py` checks them and
  `check_readme.py --fix` rewrites them; this lists each one that differs, old -> new;
- **prose** (a sentence quoting a result): not checked by any marker. This lists every prose
  number of a section that equals, at the decimals it shows (as a fraction or a percentage),
  a value that changed in a JSON the section or a heading above it names, and what that value
  is now. It is a reading list, not a proof: a number derived from several values (a
  difference, a ratio) is not found; an integer or a one-digit number (`0.1`) is not looked
  at (counts, seeds, sizes and grid points match too much by chance); and a decimal may match
  by chance. Read each section whose JSON changed.

Only numbers that changed between the two JSONs' leaves are looked at (provenance, machine and load
average are left out). A JSON that did not exist at REV has no old values, so none of its
numbers is listed as prose; its cells are still checked.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_readme import (  # noqa: E402
    _NUM,
    DOCS,
    FENCE_RE,
    ROOT,
    _cell_spans,
    _number,
    check_readme,
    matches,
)

JSON_RE = re.compile(r"(?:benchmarks/results/)?\b([A-Za-z0-9_]+(?:\.[a-z0-9_]+)*)\.json\b")
HEADING_RE = re.compile(r"^(#{1,6})\s")
PROSE_NUM_RE = re.compile(rf"(?<![\w.]){_NUM}(?![\w])")
SKIP_KEYS = {"provenance", "environment", "machine", "load_average", "versions", "platform"}
SCALES = (1.0, 100.0)
# leaves a prose sentence rarely quotes: listed after the others when both match
LESS_LIKELY = re.compile(r"seconds|hyperparameters|per_seed|grid|seed|kill_at|epoch_curve")


def leaves(obj, path: str = "") -> dict[str, float]:
    """Every number of a JSON document by its dotted path (booleans are not numbers)."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in SKIP_KEYS:
                out.update(leaves(v, f"{path}.{k}" if path else str(k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(leaves(v, f"{path}.{i}" if path else str(i)))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[path] = float(obj)
    return out


def old_json(rev: str, rel: str):
    try:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{rel}"], check=True,
                              capture_output=True, text=True).stdout  # fmt: skip
    except subprocess.CalledProcessError:
        return None
    return json.loads(text)


def changed_values(rev: str, name: str) -> dict[str, tuple[float | None, float | None]] | None:
    """{path: (old, new)} of the leaves of benchmarks/results/<name>.json that differ between
    REV and the working tree; None when the file is absent now."""
    rel = f"benchmarks/results/{name}.json"
    if not (ROOT / rel).exists():
        return None
    new = leaves(json.loads((ROOT / rel).read_text()))
    old_doc = old_json(rev, rel)
    old = leaves(old_doc) if old_doc is not None else {}
    return {p: (old.get(p), new.get(p)) for p in old.keys() | new.keys()
            if old.get(p) != new.get(p)}  # fmt: skip


def _shown(x: float, decimals: int, scale: float) -> str:
    return f"{x * scale:,.{decimals}f}"


def prose_hits(text: str, rev: str, cache: dict) -> list[dict]:
    """Prose numbers equal to a changed JSON value the enclosing sections name."""
    hits: list[dict] = []
    stack: list[tuple[int, set[str]]] = []  # (heading level, JSON names in that section)
    sections: list[tuple[int, int, set[str]]] = []  # (first line, heading level, names)
    lines = text.splitlines()
    level = 0
    for i, line in enumerate(lines):
        if m := HEADING_RE.match(line):
            level = len(m.group(1))
            sections.append((i, level, set()))
        if not sections:
            sections.append((0, 0, set()))
        sections[-1][2].update(JSON_RE.findall(line))
    bounds = [s[0] for s in sections] + [len(lines)]
    fenced = False
    seen: set[tuple[int, str]] = set()
    for (first, level, names), end in zip(sections, bounds[1:], strict=True):
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, names))
        named = set().union(*(n for _, n in stack))
        moved = {}
        for name in sorted(named):
            if name not in cache:
                cache[name] = changed_values(rev, name)
            if cache[name]:
                moved[name] = cache[name]
        for i in range(first, end):
            line = lines[i]
            if FENCE_RE.match(line):
                fenced = not fenced
                continue
            if fenced or line.lstrip().startswith(("|", "<!--")) or not moved:
                continue
            for m in PROSE_NUM_RE.finditer(line):
                num = _number(m.group(), None)
                digits = re.sub(r"[^0-9]", "", m.group()).lstrip("0")
                if num.decimals == 0 or len(digits) < 2 or (i + 1, m.group()) in seen:
                    continue  # an integer or one digit (0.1) matches too much by chance
                seen.add((i + 1, m.group()))
                found = [(name, path, old, new, scale)
                         for name, values in moved.items()
                         for path, (old, new) in values.items()
                         for scale in SCALES
                         if old is not None and matches(num, old, scale)
                         and (new is None or not matches(num, new, scale))]  # fmt: skip
                if found:
                    found.sort(key=lambda f: LESS_LIKELY.search(f[1]) is not None)
                    name, path, old, new, scale = found[0]
                    hits.append({"line": i + 1, "shown": m.group(), "json": name,
                                 "path": path, "scale": scale, "old": old, "new": new,
                                 "new_shown": None if new is None else
                                 _shown(new, num.decimals, scale),
                                 "candidates": len(found), "text": line.strip()})  # fmt: skip
    return hits


def table_moves(path: Path) -> list[dict]:
    """Each marked table cell whose number differs from its JSON value now."""
    report = check_readme(path, ROOT)
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for line, cell, _index, shown in report.fixes:
        start, end = _cell_spans(lines[line])[cell]
        out.append({"line": line + 1, "cell": cell, "old_cell": lines[line][start:end].strip(),
                    "new_shown": shown})  # fmt: skip
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--since", required=True, help="git revision the JSONs are compared with")
    ap.add_argument("files", nargs="*", type=Path, help="markdown files (default: README.md "
                    "and docs/*.md)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None, help="also write the lists here")
    args = ap.parse_args(argv)
    files = args.files or [p for pat in DOCS for p in sorted(ROOT.glob(pat))]
    cache: dict = {}
    result = {}
    for f in files:
        tables = table_moves(f)
        prose = prose_hits(f.read_text(encoding="utf-8"), args.since, cache)
        result[str(f.relative_to(ROOT) if f.is_absolute() else f)] = {
            "tables": tables,
            "prose": prose,
        }
        for t in tables:
            print(f"{f.name}:{t['line']}: table cell {t['old_cell']!r} -> {t['new_shown']}")
        for h in prose:
            new = h["new_shown"] if h["new_shown"] is not None else "(gone)"
            more = f" (+{h['candidates'] - 1} other match)" if h["candidates"] > 1 else ""
            print(
                f"{f.name}:{h['line']}: prose {h['shown']} -> {new}  "
                f"[{h['json']}.json {h['path']}{' *100' if h['scale'] != 1 else ''}]{more}"
            )
    changed = {k: len(v) for k, v in cache.items() if v}
    print(f"JSONs named in the docs whose values changed since {args.since}: {changed or 'none'}")
    if args.json:
        args.json.write_text(
            json.dumps({"since": args.since, "files": result, "changed_values": changed}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
