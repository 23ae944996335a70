"""Check that the result tables in README.md match the JSON files they come from.

Convention
----------
A markdown table in README.md is checked when an HTML comment naming its JSON file(s) stands
within the 3 lines above the table's first line (blank lines count):

    <!-- numbers: benchmarks/results/fit_head_speed.json -->
    | head | test top-1 | full run |
    |---|---|---|
    | l1 | 0.839 | 4.0 s |

Several files may be named, separated by spaces or commas; paths are relative to the
README's folder (the repository root). Then every *numeric cell* of the table's body (the
header row is not checked) must be findable in those files: some numeric leaf x of the JSON
(any depth, ints and floats, not booleans) must equal the cell's number v after rounding to
the decimals the cell shows, i.e. |x - v| <= 0.5 * 10**-decimals (so both round-half-up and
round-half-even count), or x * 100 must (a fraction shown as a percentage).

A numeric cell is, after stripping markdown emphasis and code marks (`**`, `*`, `` ` ``):
- a number: `5`, `-0.5`, `0.826`, `1,416` (thousands separators), `82.5%`;
- a number with one unit word: `4.0 s`, `1.45 GiB`, `2950 img/s`, `8.1 s/epoch` (the unit is
  not checked, except `k`, `K` and `M`, which scale: `50k` is 50,000 ± 500);
- a range: `0.9–1.45`, `0.9-1.45 GiB`, `0.9 – 1.45` (each end must be found).
Anything else is not a number and is ignored: words, `–`, `5/40`, `ViT-L/14`, `39.92 (mean)`,
and values with a comparison or approximation sign (`< 60 s`, `≥ 2,500`, `~0.84`: targets,
not results). Tables inside fenced code blocks and tables without a marker are not checked.
A marker that names a missing or invalid JSON file, or that has no table below it, is an
error.

    python benchmarks/check_readme.py                # README.md of this repository
    python benchmarks/check_readme.py path/README.md --root path

Prints OK (with the count of tables and cells checked) or every mismatch with its line number,
and exits 1 on any problem. `tests/test_readme_numbers.py` runs it on the real README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER_RE = re.compile(r"<!--\s*numbers:\s*(?P<paths>.*?)\s*-->")
MARKER_REACH = 3  # lines above a table's first line where its marker may stand
_NUM = r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_UNIT = r"%|[A-Za-zµ°×][A-Za-z0-9µ°]*(?:/[A-Za-z]+)?"
CELL_RE = re.compile(
    rf"^(?P<a>{_NUM})(?:\s*(?:–|—|-)\s*(?P<b>{_NUM}))?\s*(?P<unit>{_UNIT})?$"
)  # fmt: skip
FENCE_RE = re.compile(r"^\s*(```|~~~)")
SEPARATOR_RE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")


MULTIPLIERS = {"k": 1e3, "K": 1e3, "M": 1e6}  # a unit that scales: `50k`, `1.28M`


@dataclass(frozen=True)
class Number:
    """One number as shown: its value and half a unit of its last shown decimal
    (`4.0` -> 4.0 ± 0.05; `1.28M` -> 1,280,000 ± 5,000)."""

    value: float
    tol: float


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based line of the README
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class Report:
    tables: int = 0  # tables with a marker (checked)
    cells: int = 0  # numeric cells checked
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _number(text: str, unit: str | None) -> Number:
    text = text.replace("−", "-").replace(",", "")
    frac = text.split(".", 1)[1] if "." in text else ""
    mult = MULTIPLIERS.get(unit or "", 1.0)
    return Number(float(text) * mult, 0.5 * 10.0 ** -len(frac) * mult)


def parse_cell(cell: str) -> tuple[Number, ...] | None:
    """The number(s) a table cell shows (two for a range), or None when it is not numeric."""
    text = cell.strip()
    while True:  # strip matching emphasis / code marks around the whole cell
        for mark in ("**", "__", "`", "*", "_"):
            if len(text) > 2 * len(mark) and text.startswith(mark) and text.endswith(mark):
                text = text[len(mark) : -len(mark)].strip()
                break
        else:
            break
    m = CELL_RE.match(text)
    if not m:
        return None
    nums = [_number(m["a"], m["unit"])]
    if m["b"] is not None:
        nums.append(_number(m["b"], m["unit"]))
    return tuple(nums)


def numeric_leaves(obj) -> list[float]:
    """Every int/float (not bool, finite) anywhere in a parsed JSON value."""
    out: list[float] = []
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
            out.append(float(x))
    return out


def found(num: Number, leaves: list[float]) -> bool:
    """Is some leaf (or 100 x a leaf) equal to `num` at the decimals it shows?"""
    tol = num.tol * (1 + 1e-9) + 1e-12  # a leaf exactly on the rounding boundary counts
    return any(abs(x * s - num.value) <= tol for x in leaves for s in (1.0, 100.0))


def split_row(line: str) -> list[str]:
    """Cells of a markdown table row (escaped pipes `\\|` stay inside a cell)."""
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return [c.replace("\\|", "|").strip() for c in re.split(r"(?<!\\)\|", body)]


def _tables(lines: list[str]) -> list[tuple[int, int]]:
    """(first, end) 0-based line ranges of the markdown tables outside code fences."""
    out, i, fenced = [], 0, False
    while i < len(lines):
        if FENCE_RE.match(lines[i]):
            fenced = not fenced
            i += 1
            continue
        if (
            not fenced
            and "|" in lines[i]
            and i + 1 < len(lines)
            and SEPARATOR_RE.match(lines[i + 1])
        ):
            j = i + 2
            while j < len(lines) and "|" in lines[j] and lines[j].strip():
                j += 1
            out.append((i, j))
            i = j
            continue
        i += 1
    return out


def _markers(lines: list[str]) -> dict[int, list[str]]:
    """0-based line -> paths named by a numbers marker on that line (outside code fences)."""
    out, fenced = {}, False
    for i, line in enumerate(lines):
        if FENCE_RE.match(line):
            fenced = not fenced
        elif not fenced and (m := MARKER_RE.search(line)):
            out[i] = [p for p in re.split(r"[\s,]+", m["paths"]) if p]
    return out


def _load(paths: list[str], root: Path, line: int, report: Report) -> list[float] | None:
    leaves: list[float] = []
    ok = True
    if not paths:
        report.problems.append(Problem(line, "numbers marker names no JSON file"))
        return None
    for p in paths:
        f = (root / p) if not Path(p).is_absolute() else Path(p)
        if not f.is_file():
            report.problems.append(
                Problem(line, f"numbers marker names {p}, which does not exist ({f})")
            )
            ok = False
            continue
        try:
            leaves += numeric_leaves(json.loads(f.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            report.problems.append(Problem(line, f"{p} is not valid JSON: {e}"))
            ok = False
    return leaves if ok else None


def check_text(text: str, root: Path) -> Report:
    """Check every marked table of the markdown `text` against JSON files under `root`."""
    lines = text.splitlines()
    report = Report()
    markers = _markers(lines)
    used: set[int] = set()
    for first, end in _tables(lines):
        near = [k for k in range(max(0, first - MARKER_REACH), first) if k in markers]
        if not near:
            continue
        mline = near[-1]
        used.add(mline)
        report.tables += 1
        paths = markers[mline]
        leaves = _load(paths, root, mline + 1, report)
        if leaves is None:
            continue
        header = split_row(lines[first])
        for k in range(first + 2, end):
            cells = split_row(lines[k])
            for c, cell in enumerate(cells):
                nums = parse_cell(cell)
                if nums is None:
                    continue
                report.cells += 1
                missing = [n for n in nums if not found(n, leaves)]
                if missing:
                    col = header[c] if c < len(header) else f"column {c + 1}"
                    row = cells[0] if cells else ""
                    what = " and ".join(f"{n.value:g} (±{n.tol:g})" for n in missing)
                    report.problems.append(Problem(
                        k + 1,
                        f"cell {cell!r} (row {row!r}, column {col!r}): {what} not found in "
                        f"{', '.join(paths)}",
                    ))  # fmt: skip
    for mline in sorted(set(markers) - used):
        report.problems.append(Problem(
            mline + 1, f"numbers marker ({' '.join(markers[mline])}) has no table within the "
            f"{MARKER_REACH} lines below it",
        ))  # fmt: skip
    report.problems.sort(key=lambda p: p.line)
    return report


def check_readme(readme: Path = ROOT / "README.md", root: Path | None = None) -> Report:
    readme = Path(readme)
    return check_text(readme.read_text(encoding="utf-8"), Path(root) if root else readme.parent)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("readme", nargs="?", type=Path, default=ROOT / "README.md")
    ap.add_argument("--root", type=Path, default=None, help="JSON paths are relative to this")
    args = ap.parse_args(argv)
    report = check_readme(args.readme, args.root)
    if report.ok:
        print(f"OK {args.readme}: {report.tables} marked table(s), {report.cells} numeric "
              "cell(s) found in their JSON")  # fmt: skip
        return 0
    print(f"{args.readme}: {len(report.problems)} problem(s) in {report.tables} marked table(s):")
    for p in report.problems:
        print(f"  {args.readme.name}:{p.line}: {p.message}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
