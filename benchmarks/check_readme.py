"""Check that the result tables in README.md and docs/ show the JSON values they were made from.

Convention
----------
A markdown table is checked when a *numbers marker* ends within the 3 lines above the table's
first line (blank lines count). The marker is an HTML comment that names the JSON file and maps
every cell of the table's body (the header row is not checked) to `-` or to ONE JSON value:

    <!-- numbers: benchmarks/results/fit_head_speed.json
    rows: l1 sparse imagenet
    cols: - | results[size=cifar10, loss={row}].test_top1 *100
      | results[size=cifar10, loss={row}].seconds
    row imagenet: - | - | results[size=imagenet, loss=sparse].seconds_per_epoch
    -->
    | head | test top-1 % | full run |
    |---|---|---|
    | l1 | 85.0 | 4.0 s |
    | sparse | 82.3 | 7.6 s |
    | sparse, ImageNet-like | – | 1,416 s/epoch |

The file is named on the `<!-- numbers:` line, relative to the markdown file's folder (for
README.md and docs/*.md as run by `main` and the tests: the repository root). The following
lines, up to the one holding `-->`, are mapping lines (leading blanks are ignored, so a marker
may be indented inside a list item):

- `rows: KEY KEY ...`: one key per body row, in the order of the rows; several `rows:` lines
  concatenate. A key is any text without blanks; blanks inside backquotes or `[...]` do not
  end it (`` `sparse --topk 2 (5%)` ``, `real.runs[k=16, auxk=true]`).
- `cols: CELL | CELL | ...`: the mapping of every row, one CELL per table column, in which
  `{row}` stands for the row's key, substituted as written (backquotes included): with the
  key `` `a b` ``, `heads.{row}.x` reads ``heads.`a b`.x``; with the key `real.defaults`,
  `{row}.fvu` reads `real.defaults.fvu`.
- `row KEY: CELL | CELL | ...`: the mapping of the row whose key is KEY, in place of `cols:`
  (`{row}` is KEY). With no `rows:` line, the `row` lines map the body rows one by one, in
  order, and KEY is only a label (`{row}` still works).
- a line starting with `|` continues the `cols:` or `row` line above (for long mappings).

There must be exactly one key (or `row` line) per body row, and each row's mapping must have
exactly one CELL per cell of that table row. A CELL is

- `-`: not checked. The cell must not be numeric (see below): a numeric cell mapped to `-`
  is an error, so no number of a marked table goes unchecked;
- `PATH` or `PATH *FACTOR`: the cell shows the JSON number at PATH, times FACTOR (`*100` for
  a fraction shown as a percentage; any number: `*1e-3`, `*60`);
- `?PATH` (with or without `*FACTOR`): the same where the JSON has that value; where PATH stops
  at a key the JSON does not have, or the value is null, the cell must not be numeric (`–`);
- `SPEC & SPEC`: a cell showing two numbers (`0.9–1.45`, `35.9 (4.9)`, `20 of 20`), first
  number first.

A PATH is a dotted path from the top of the JSON document; its steps are

- a bare key: any run of characters but blanks and `` . ` [ ] | & * , = : { } ``, e.g.
  `results.1000/l1.default_gap_points`, `methods.zs-probe.top1`;
- a quoted key for any other key (dots, blanks, ...), used verbatim:
  ``heads.`sparse --topk 2 (5%)`.seconds``, ``configs.`lr x0.1`.val_top1``, `` per_l2.`0.01` ``;
- a list index: a bare all-digits key applied to a list, `results.0.seconds`, or `results[0]`;
- a selector `[FIELD=VALUE, ...]` applied to a list (or to an object, over its values): the
  ONE element whose FIELDs (dotted sub-paths, quoted as above) equal the VALUEs, e.g.
  `results[size=cifar10, loss=l1].seconds`, ``rows[solver=`ours path -> NEC<=5`].nec``. A
  bare VALUE `true`, `false` or `null` matches that JSON value (`null` also a missing FIELD);
  a bare number matches an equal number or the same string; any other bare VALUE, and a
  quoted one, matches that string only. No match, or more than one, is an error.

With several files on the `numbers:` line, every PATH starts with `NAME:`, NAME being one of
them as written or its file name: `fit_head_speed.json:results[loss=l1, size=cifar10].seconds`.

The check: each number v a numeric cell shows must equal x * FACTOR after rounding to the
decimals the cell shows, |x * FACTOR - v| <= 0.5 * 10**-decimals (so round-half-up and
round-half-even both count), where x is the value its PATH names (an int or float, not a
boolean). Errors, never skips: a PATH that does not resolve (missing key, index out of range,
no or several elements matching a selector), a value that is not a number (null, a string, a
boolean, an object), a numeric cell mapped to `-`, a mapped cell that is not numeric (unless
`?PATH` and absent), a count of rows, cells or numbers that differs from the mapping's, an
unparsable mapping line or path, a marker with no mapping or no table below it, and a missing
or invalid JSON file. So a JSON regenerated with the same structure needs no marker change,
and one whose structure changed fails, naming the path and where it stopped resolving.

A numeric cell is, after stripping markdown emphasis and code marks (`**`, `*`, `` ` ``):
- a number: `5`, `-0.5`, `0.826`, `1,416` (thousands separators), `82.5%`;
- a number with one unit word: `4.0 s`, `1.45 GiB`, `2950 img/s`, `8.1 s/epoch`, `10 classes`
  (the unit is not checked, except `k`, `K` and `M`, which scale: `50k` is 50,000 ± 500);
- two numbers: a range `0.9–1.45`, `0.9-1.45 GiB`, `0.9 – 1.45`; a number followed by one in
  parentheses, `35.9 (4.9)`; a count, `20 of 20`.
Anything else is not a number: words, `–`, `5/40`, `ViT-L/14`, `39.92 (mean)`, and values with
a comparison or approximation sign (`< 60 s`, `≥ 2,500`, `~0.84`: targets, not results).
Tables inside fenced code blocks and tables without a marker are not checked.

    python benchmarks/check_readme.py                     # README.md and docs/*.md
    python benchmarks/check_readme.py path/README.md --root path

Prints OK per file (with the count of tables and cells checked) or every problem with its file
and line, and exits 1 on any problem. `tests/test_readme_numbers.py` runs it on the real files.
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
DOCS = ("README.md", "docs/*.md")  # what `main` checks by default
MARKER_OPEN_RE = re.compile(r"<!--\s*numbers:(?P<rest>.*)$")
MARKER_REACH = 3  # lines between a marker's `-->` and its table's first line, at most
_NUM = r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_UNIT = r"%|[A-Za-zµ°×][A-Za-z0-9µ°]*(?:/[A-Za-z]+)?"
CELL_RE = re.compile(
    rf"^(?P<a>{_NUM})(?:\s*(?:–|—|-)\s*(?P<b>{_NUM}))?\s*(?P<unit>{_UNIT})?$"
)  # fmt: skip
PAREN_RE = re.compile(
    rf"^(?P<a>{_NUM})\s*(?P<ua>{_UNIT})?\s*\(\s*(?P<b>{_NUM})\s*(?P<ub>{_UNIT})?\s*\)$"
)  # fmt: skip
OF_RE = re.compile(rf"^(?P<a>{_NUM})\s+of\s+(?P<b>{_NUM})\s*(?P<unit>{_UNIT})?$")
FENCE_RE = re.compile(r"^\s*(```|~~~)")
SEPARATOR_RE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
BARE_KEY_RE = re.compile(r"[^\s.`\[\]|&*,=:{}]+")
BARE_VALUE_RE = re.compile(r"[^\s`\[\],]+")
FACTOR_RE = re.compile(r"\*\s*(?P<f>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")

MULTIPLIERS = {"k": 1e3, "K": 1e3, "M": 1e6}  # a unit that scales: `50k`, `1.28M`


@dataclass(frozen=True)
class Number:
    """One number as shown: its value, half a unit of its last shown decimal
    (`4.0` -> 4.0 ± 0.05; `1.28M` -> 1,280,000 ± 5,000) and its decimals."""

    value: float
    tol: float
    decimals: int = 0
    mult: float = 1.0  # the unit's scale (`k`: 1,000)


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based line of the markdown file
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class Report:
    tables: int = 0  # tables with a marker (checked)
    cells: int = 0  # numeric cells compared with their JSON value(s)
    values: int = 0  # JSON values compared (a range cell has two)
    problems: list[Problem] = field(default_factory=list)
    # (0-based line, cell index, number index within the cell, the JSON value as shown): what
    # `--fix` writes where a cell's number differs from its JSON value
    fixes: list[tuple[int, int, int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- cells -------------------------------------------------------------------------------


def _number(text: str, unit: str | None) -> Number:
    text = text.replace("−", "-").replace(",", "")
    frac = text.split(".", 1)[1] if "." in text else ""
    mult = MULTIPLIERS.get(unit or "", 1.0)
    return Number(float(text) * mult, 0.5 * 10.0 ** -len(frac) * mult, len(frac), mult)


def _strip_marks(cell: str) -> str:
    text = cell.strip()
    while True:  # strip matching emphasis / code marks around the whole cell
        for mark in ("**", "__", "`", "*", "_"):
            if len(text) > 2 * len(mark) and text.startswith(mark) and text.endswith(mark):
                text = text[len(mark) : -len(mark)].strip()
                break
        else:
            return text


def parse_cell(cell: str) -> tuple[Number, ...] | None:
    """The number(s) a table cell shows (two for a range, `a (b)` or `a of b`), or None when
    it is not numeric."""
    text = _strip_marks(cell)
    if m := CELL_RE.match(text):
        nums = [_number(m["a"], m["unit"])]
        if m["b"] is not None:
            nums.append(_number(m["b"], m["unit"]))
        return tuple(nums)
    if m := PAREN_RE.match(text):
        return _number(m["a"], m["ua"]), _number(m["b"], m["ub"])
    if m := OF_RE.match(text):
        return _number(m["a"], m["unit"]), _number(m["b"], m["unit"])
    return None


def matches(num: Number, x: float, scale: float = 1.0) -> bool:
    """Does `x * scale` equal `num` at the decimals it shows?"""
    tol = num.tol * (1 + 1e-9) + 1e-12  # a value exactly on the rounding boundary counts
    return abs(x * scale - num.value) <= tol


# --- JSON paths --------------------------------------------------------------------------


class PathError(ValueError):
    """A path that cannot be parsed, or does not resolve in its JSON."""


class MissingKey(PathError):
    """A path that stops at a key (or list index) its JSON does not have."""


@dataclass(frozen=True)
class Key:
    name: str
    bare: bool  # a bare all-digits key indexes a list


@dataclass(frozen=True)
class Select:
    conds: tuple[tuple[tuple[Key, ...], str, bool], ...]  # (sub-path, value, value quoted)

    def __str__(self) -> str:
        def v(value: str, quoted: bool) -> str:
            return f"`{value}`" if quoted else value

        return "[" + ", ".join(f"{_fmt(p)}={v(x, q)}" for p, x, q in self.conds) + "]"


Step = Key | Select


def _fmt(steps) -> str:
    out = ""
    for s in steps:
        if isinstance(s, Select):
            out += str(s)
        else:
            name = s.name if s.bare else f"`{s.name}`"
            out += f".{name}" if out else name
    return out


class _Reader:
    def __init__(self, text: str):
        self.text, self.i = text, 0

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def skip_ws(self) -> None:
        while self.peek().isspace():
            self.i += 1

    def fail(self, what: str) -> PathError:
        return PathError(f"{what} at column {self.i + 1} of {self.text!r}")

    def quoted(self) -> str:
        end = self.text.find("`", self.i + 1)
        if end < 0:
            raise self.fail("unclosed backquote")
        s, self.i = self.text[self.i + 1 : end], end + 1
        return s

    def key(self) -> Key:
        if self.peek() == "`":
            return Key(self.quoted(), bare=False)
        m = BARE_KEY_RE.match(self.text, self.i)
        if not m:
            raise self.fail("expected a key")
        self.i = m.end()
        return Key(m.group(), bare=True)

    def subpath(self) -> tuple[Key, ...]:
        keys = [self.key()]
        while self.peek() == ".":
            self.i += 1
            keys.append(self.key())
        return tuple(keys)

    def select(self) -> Step:
        self.i += 1  # [
        self.skip_ws()
        m = re.compile(r"\d+\s*\]").match(self.text, self.i)
        if m:  # [3]
            self.i = m.end()
            return Key(m.group().rstrip("] \t"), bare=True)
        conds = []
        while True:
            self.skip_ws()
            sub = self.subpath()
            self.skip_ws()
            if self.peek() != "=":
                raise self.fail("expected `=` in a selector")
            self.i += 1
            self.skip_ws()
            if self.peek() == "`":
                conds.append((sub, self.quoted(), True))
            else:
                m = BARE_VALUE_RE.match(self.text, self.i)
                if not m:
                    raise self.fail("expected a value in a selector")
                self.i = m.end()
                conds.append((sub, m.group(), False))
            self.skip_ws()
            if self.peek() == ",":
                self.i += 1
                continue
            if self.peek() == "]":
                self.i += 1
                return Select(tuple(conds))
            raise self.fail("expected `,` or `]` in a selector")

    def path(self) -> tuple[Step, ...]:
        steps: list[Step] = [self.key()]
        while self.peek() in (".", "["):
            if self.peek() == ".":
                self.i += 1
                steps.append(self.key())
            else:
                steps.append(self.select())
        return tuple(steps)


@dataclass(frozen=True)
class Spec:
    """One JSON value a number of a cell is compared with."""

    text: str  # as written (after `{row}` substitution)
    file: str | None  # the `NAME:` prefix, if any
    steps: tuple[Step, ...]
    scale: float = 1.0
    optional: bool = False  # `?PATH`: a cell that is not numeric where the JSON has no value


def parse_spec(text: str) -> Spec:
    """`[?][NAME:]PATH [*FACTOR]` -> Spec (PathError when it does not parse)."""
    text = text.strip()
    r = _Reader(text)
    optional = text.startswith("?")
    r.i = int(optional)
    file = None
    m = re.compile(r"(?P<name>[^\s`\[\]:?]+):(?!\s)").match(text, r.i)
    if m:
        file, r.i = m["name"], m.end()
    if not r.peek():
        raise r.fail("empty path")
    steps = r.path()
    r.skip_ws()
    scale = 1.0
    if r.peek() == "*":
        f = FACTOR_RE.match(text, r.i)
        if not f:
            raise r.fail("expected a number after `*`")
        scale, r.i = float(f["f"]), f.end()
        r.skip_ws()
    if r.peek():
        raise r.fail("unexpected text")
    return Spec(text, file, steps, scale, optional)


def _scalar_eq(x, value: str, quoted: bool) -> bool:
    if quoted:
        return isinstance(x, str) and x == value
    if value in ("true", "false"):
        return x is (value == "true")
    if value == "null":
        return x is None
    if isinstance(x, str):
        return x == value
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        try:
            return float(value) == x
        except ValueError:
            return False
    return False


_MISSING = object()


def _get(obj, key: Key):
    if isinstance(obj, dict):
        return obj.get(key.name, _MISSING)
    if isinstance(obj, list) and key.bare and key.name.isdigit():
        i = int(key.name)
        return obj[i] if i < len(obj) else _MISSING
    return _MISSING


def _describe(obj) -> str:
    if isinstance(obj, dict):
        keys = list(obj)
        more = f", … ({len(keys)} keys)" if len(keys) > 12 else ""
        return "an object with keys " + ", ".join(repr(k) for k in keys[:12]) + more
    if isinstance(obj, list):
        return f"a list of {len(obj)}"
    return f"the value {obj!r}"


def resolve(doc, steps: tuple[Step, ...]):
    """The JSON value at `steps` (PathError saying where it stopped)."""
    obj = doc
    for n, step in enumerate(steps):
        here = _fmt(steps[:n]) or "the top"
        if isinstance(step, Key):
            if not isinstance(obj, (dict, list)) or (isinstance(obj, list) and not step.bare):
                raise PathError(f"key {_fmt([step])!r} applied to {here}, {_describe(obj)}")
            got = _get(obj, step)
            if got is _MISSING:
                raise MissingKey(f"no {_fmt([step])!r} in {here} ({_describe(obj)})")
            obj = got
            continue
        if isinstance(obj, list):
            items = list(enumerate(obj))
        elif isinstance(obj, dict):
            items = list(obj.items())
        else:
            raise PathError(f"selector {step} applied to {here}, {_describe(obj)}")
        hits = []
        for label, item in items:
            ok = True
            for sub, value, quoted in step.conds:
                x = item
                for k in sub:
                    x = _get(x, k)
                    if x is _MISSING:
                        break
                x = None if x is _MISSING else x
                if not _scalar_eq(x, value, quoted):
                    ok = False
                    break
            if ok:
                hits.append(label)
        if len(hits) != 1:
            which = "no element" if not hits else f"{len(hits)} elements ({hits[:6]})"
            raise PathError(f"{which} of {here} ({_describe(obj)}) match {step}")
        obj = obj[hits[0]]
    return obj


# --- markdown ----------------------------------------------------------------------------


def split_row(line: str) -> list[str]:
    """Cells of a markdown table row (escaped pipes `\\|` stay inside a cell)."""
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return [c.replace("\\|", "|").strip() for c in re.split(r"(?<!\\)\|", body)]


def _scan(text: str):
    """(index, char, free) for each char of `text`; `free` is false inside backquotes or
    brackets (the state after the char itself)."""
    quote, depth = False, 0
    for n, ch in enumerate(text):
        if ch == "`":
            quote = not quote
        elif not quote and ch == "[":
            depth += 1
        elif not quote and ch == "]":
            depth = max(0, depth - 1)
        yield n, ch, not quote and depth == 0


def _split(text: str, sep: str | None) -> list[str]:
    """Split at `sep` (None: at blanks) outside backquotes and brackets."""
    out, cur = [], ""
    for _, ch, free in _scan(text):
        if free and (ch.isspace() if sep is None else ch == sep):
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [s.strip() for s in out if s.strip()] if sep is None else [s.strip() for s in out]


def _unbalanced(text: str) -> str | None:
    """Why `text` has an unclosed backquote or bracket (None when it has none)."""
    quote, depth = False, 0
    for ch in text:
        if ch == "`":
            quote = not quote
        elif not quote and ch in "[]":
            depth += 1 if ch == "[" else -1
            if depth < 0:
                return "a `]` without its `[`"
    if quote:
        return "an unclosed backquote"
    return "an unclosed `[`" if depth else None


def _first_token(text: str) -> tuple[str, str]:
    """The first blank-delimited token of `text` (blanks inside backquotes or brackets do not
    end it) and the rest."""
    for n, ch, free in _scan(text):
        if free and ch.isspace():
            return text[:n], text[n:]
    return text, ""


@dataclass
class Marker:
    first: int  # 0-based line of `<!-- numbers:`
    last: int  # 0-based line holding `-->`
    files: list[str]
    rows: list[str] = field(default_factory=list)
    rows_line: int | None = None
    cols: tuple[str, int] | None = None  # (entries, 0-based line)
    row_lines: list[tuple[str, str, int]] = field(default_factory=list)  # key, entries, line
    errors: list[Problem] = field(default_factory=list)
    cont: str | None = None  # what a `|` continuation line extends: "cols", "row" or None

    @property
    def keyed(self) -> bool:
        return bool(self.rows or self.cols or self.row_lines)


def _parse_mapping(marker: Marker, text: str, i: int) -> None:
    line = text.strip()
    if not line:
        return
    if line.startswith("|"):  # continues the entries of the `cols:` or `row` line above
        if marker.cont == "cols":
            marker.cols = (f"{marker.cols[0]} {line}", marker.cols[1])
        elif marker.cont == "row":
            key, entries, j = marker.row_lines[-1]
            marker.row_lines[-1] = (key, f"{entries} {line}", j)
        else:
            marker.errors.append(Problem(i + 1, "a `|` line continues only `cols:` or `row`"))
        return
    marker.cont = None
    if line.startswith("rows:"):
        marker.rows += _split(line[len("rows:") :], None)
        marker.rows_line = i if marker.rows_line is None else marker.rows_line
    elif line.startswith("cols:"):
        if marker.cols is not None:
            marker.errors.append(Problem(i + 1, "numbers marker has two `cols:` lines"))
        marker.cols = (line[len("cols:") :].strip(), i)
        marker.cont = "cols"
    elif line.startswith("row "):
        key, entries = _first_token(line[len("row ") :].strip())
        if not key.endswith(":") or len(key) < 2:
            marker.errors.append(Problem(i + 1, f"`row` line without `KEY:`: {line!r}"))
            return
        marker.row_lines.append((key[:-1], entries.strip(), i))
        marker.cont = "row"
    else:
        marker.errors.append(Problem(
            i + 1, f"numbers marker: not a `rows:`, `cols:` or `row KEY:` line: {line!r}",
        ))  # fmt: skip


def _markers(lines: list[str]) -> tuple[list[Marker], list[Problem]]:
    """The numbers markers outside code fences, with their mapping lines."""
    out, problems, fenced, i = [], [], False, 0
    while i < len(lines):
        line = lines[i]
        if FENCE_RE.match(line):
            fenced = not fenced
            i += 1
            continue
        m = None if fenced else MARKER_OPEN_RE.search(line)
        if not m:
            i += 1
            continue
        rest = m["rest"]
        if "-->" in rest:
            files_text, tail, last = rest.split("-->", 1)[0], [], i
        else:
            files_text, tail, last = rest, [], None
            for j in range(i + 1, len(lines)):
                if "-->" in lines[j]:
                    tail.append((lines[j].split("-->", 1)[0], j))
                    last = j
                    break
                tail.append((lines[j], j))
            if last is None:
                problems.append(Problem(i + 1, "numbers marker is never closed (`-->`)"))
                break
        mk = Marker(i, last, [p for p in re.split(r"[\s,]+", files_text) if p])
        for text, j in tail:
            _parse_mapping(mk, text, j)
        out.append(mk)
        i = last + 1
    return out, problems


def _tables(lines: list[str], skip: set[int]) -> list[tuple[int, int]]:
    """(first, end) 0-based line ranges of the markdown tables outside code fences and
    outside numbers markers (`skip`)."""
    out, i, fenced = [], 0, False
    while i < len(lines):
        if i in skip:
            i += 1
            continue
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
            while j < len(lines) and "|" in lines[j] and lines[j].strip() and j not in skip:
                j += 1
            out.append((i, j))
            i = j
            continue
        i += 1
    return out


def _load(marker: Marker, root: Path, report: Report) -> dict[str, object] | None:
    """name -> parsed JSON for the marker's files (None after reporting a problem)."""
    line = marker.first + 1
    if not marker.files:
        report.problems.append(Problem(line, "numbers marker names no JSON file"))
        return None
    docs: dict[str, object] = {}
    ok = True
    for p in marker.files:
        f = (root / p) if not Path(p).is_absolute() else Path(p)
        if not f.is_file():
            report.problems.append(
                Problem(line, f"numbers marker names {p}, which does not exist ({f})")
            )
            ok = False
            continue
        try:
            docs[p] = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            report.problems.append(Problem(line, f"{p} is not valid JSON: {e}"))
            ok = False
    return docs if ok else None


def _row_entries(marker: Marker, n_rows: int) -> tuple[list[tuple[str, str, int]], list[Problem]]:
    """(key, entries with `{row}` substituted, 0-based mapping line) per body row, and the
    problems of the mapping (the table is not compared when there is one)."""
    errs: list[Problem] = []
    if not marker.keyed:
        errs.append(Problem(
            marker.first + 1, "numbers marker has no mapping: add `rows:` + `cols:` or one "
            "`row KEY:` line per table row (see benchmarks/check_readme.py)",
        ))  # fmt: skip
        return [], errs
    out: list[tuple[str, str, int]] = []
    if marker.rows:
        rows_line = marker.rows_line + 1
        by_key: dict[str, tuple[str, int]] = {}
        for key, entries, i in marker.row_lines:
            if key not in marker.rows:
                errs.append(Problem(i + 1, f"`row {key}:` names a key that is not in `rows:`"))
            elif key in by_key:
                errs.append(Problem(i + 1, f"two `row {key}:` lines"))
            by_key[key] = (entries, i)
        dup = sorted({k for k in marker.rows if marker.rows.count(k) > 1})
        if dup:
            errs.append(Problem(rows_line, f"`rows:` repeats {', '.join(dup)}"))
        if len(marker.rows) != n_rows:
            errs.append(Problem(
                rows_line, f"`rows:` lists {len(marker.rows)} keys but the table below has "
                f"{n_rows} body rows",
            ))  # fmt: skip
        for key in marker.rows:
            if key in by_key:
                entries, i = by_key[key]
            elif marker.cols is not None:
                entries, i = marker.cols
            else:
                errs.append(Problem(
                    rows_line, f"row key {key} has no `row {key}:` line and there is no `cols:`"
                ))  # fmt: skip
                continue
            out.append((key, entries.replace("{row}", key), i))
    else:
        if marker.cols is not None:
            errs.append(Problem(marker.cols[1] + 1, "`cols:` needs a `rows:` line"))
        if len(marker.row_lines) != n_rows:
            errs.append(Problem(
                marker.first + 1, f"numbers marker has {len(marker.row_lines)} `row` lines but "
                f"the table below has {n_rows} body rows",
            ))  # fmt: skip
        out = [(k, e.replace("{row}", k), i) for k, e, i in marker.row_lines]
    return out, errs


def _check_table(marker, docs, lines, first, end, report, names) -> None:
    header = split_row(lines[first])
    body = list(range(first + 2, end))
    rows, errs = _row_entries(marker, len(body))
    if errs:
        report.problems.extend(errs)
        return
    single = next(iter(docs)) if len(docs) == 1 else None
    for k, (key, entries, mline) in zip(body, rows, strict=True):
        cells = split_row(lines[k])
        where = f"mapping line {mline + 1}"
        if why := _unbalanced(entries):
            report.problems.append(Problem(mline + 1, f"mapping of row key {key}: {why}"))
            continue
        maps = _split(entries, "|")
        if len(maps) != len(cells):
            report.problems.append(Problem(
                k + 1, f"table row has {len(cells)} cells but its mapping (row key {key}, "
                f"{where}) has {len(maps)} entries",
            ))  # fmt: skip
            continue
        label = cells[0] if cells else ""
        for c, (cell, spec_text) in enumerate(zip(cells, maps, strict=True)):
            col = header[c] if c < len(header) else f"column {c + 1}"
            at = f"cell {cell!r} (row {label!r}, column {col!r})"
            nums = parse_cell(cell)
            if spec_text == "-":
                if nums is not None:
                    report.problems.append(Problem(
                        k + 1, f"{at} is numeric but not mapped to a JSON path ('-' in {where})"
                    ))  # fmt: skip
                continue
            try:
                specs = [parse_spec(s) for s in _split(spec_text, "&")]
            except PathError as e:
                report.problems.append(Problem(mline + 1, f"{at}: bad path: {e}"))
                continue
            if nums is None:
                if all(s.optional for s in specs):  # `?PATH`: fine where the JSON has no value
                    for spec in specs:
                        msg = _absent(spec, docs, single, names)
                        if msg:
                            report.problems.append(Problem(k + 1, f"{at}: {msg}"))
                    continue
                report.problems.append(Problem(
                    k + 1, f"{at} is mapped to {spec_text} ({where}) but is not a number"
                ))  # fmt: skip
                continue
            if len(nums) != len(specs):
                report.problems.append(Problem(
                    k + 1, f"{at} shows {len(nums)} number(s) but is mapped to {len(specs)} "
                    f"path(s) ({where})",
                ))  # fmt: skip
                continue
            report.cells += 1
            for i, (num, spec) in enumerate(zip(nums, specs, strict=True)):
                report.values += 1
                msg, shown = _compare(num, spec, docs, single, names)
                if msg:
                    report.problems.append(Problem(k + 1, f"{at}: {msg}"))
                if shown is not None:
                    report.fixes.append((k, c, i, shown))


def _doc_name(spec: Spec, single, names) -> tuple[str | None, str | None]:
    """(the marker file the spec reads, or None and why not)."""
    if spec.file is not None:
        name = names.get(spec.file)
        return (name, None) if name else (None, f"{spec.file!r} is not a file of the marker")
    if single is None:
        return None, "the marker names several files, so the path needs `NAME:`"
    return single, None


def _absent(spec: Spec, docs, single, names) -> str | None:
    """None when an optional spec's JSON has no value (a missing key or null), else why not."""
    name, why = _doc_name(spec, single, names)
    if name is None:
        return f"{spec.text}: {why}"
    try:
        x = resolve(docs[name], spec.steps)
    except MissingKey:
        return None
    except PathError as e:
        return f"{spec.text} does not resolve in {name}: {e}"
    if x is None:
        return None
    return f"not a number, but {spec.text} in {name} holds {_describe(x)}"


def _compare(num: Number, spec: Spec, docs, single, names) -> tuple[str | None, str | None]:
    """(the problem or None, the JSON value as the cell would show it when only the number
    differs, else None)."""
    name, why = _doc_name(spec, single, names)
    if name is None:
        return f"{spec.text}: {why}", None
    try:
        x = resolve(docs[name], spec.steps)
    except PathError as e:
        return f"{spec.text} does not resolve in {name}: {e}", None
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return f"{spec.text} in {name} is {_describe(x)}, not a number", None
    if matches(num, x, spec.scale):
        return None, None
    times = f" × {spec.scale:g}" if spec.scale != 1 else ""
    shown = f"{x * spec.scale / num.mult:,.{num.decimals}f}"
    return f"{spec.text} in {name} is {x!r}{times}, which shows as {shown}", shown


def check_text(text: str, root: Path) -> Report:
    """Check every marked table of the markdown `text` against JSON files under `root`."""
    lines = text.splitlines()
    report = Report()
    markers, problems = _markers(lines)
    report.problems += problems
    skip = {i for m in markers for i in range(m.first, m.last + 1)}
    tables = _tables(lines, skip)
    for mk in markers:
        report.problems += mk.errors
        table = next((t for t in tables if 0 < t[0] - mk.last <= MARKER_REACH), None)
        if table is None:
            report.problems.append(Problem(
                mk.first + 1, f"numbers marker ({' '.join(mk.files)}) has no table within the "
                f"{MARKER_REACH} lines below it",
            ))  # fmt: skip
            continue
        report.tables += 1
        docs = _load(mk, root, report)
        if docs is None:
            continue
        names = {}
        for p in mk.files:
            names.setdefault(Path(p).name, p)
            names[p] = p
        _check_table(mk, docs, lines, table[0], table[1], report, names)
    report.problems.sort(key=lambda p: p.line)
    return report


_CELL_NUM_RE = re.compile(_NUM)


def _cell_spans(line: str) -> list[tuple[int, int]]:
    """(start, end) of each cell's text in a table row, as split_row splits it."""
    bars = [m.start() for m in re.finditer(r"(?<!\\)\|", line)]
    lead = line.lstrip()
    if not lead.startswith("|"):
        bars = [-1, *bars]
    if not line.rstrip().endswith("|") or line.rstrip().endswith("\\|"):
        bars = [*bars, len(line)]
    return [(a + 1, b) for a, b in zip(bars, bars[1:], strict=False)]


def _restyle(old: str, shown: str) -> str:
    """`shown` in the style of the number it replaces (thousands commas only where the old
    one had them or the new one needs them to stay readable, the same minus sign)."""
    new = shown if "," in old else shown.replace(",", "")
    if old.startswith("−"):
        new = new.replace("-", "−", 1)
    return new


def apply_fixes(text: str, fixes) -> str:
    """`text` with each cell number of `fixes` (Report.fixes) replaced by its JSON value."""
    lines = text.splitlines(keepends=True)
    by_cell: dict[tuple[int, int], dict[int, str]] = {}
    for line, cell, index, shown in fixes:
        by_cell.setdefault((line, cell), {})[index] = shown
    for (line, cell), new in sorted(by_cell.items(), reverse=True):
        raw = lines[line]
        start, end = _cell_spans(raw)[cell]
        body = raw[start:end]
        found = list(_CELL_NUM_RE.finditer(body))
        if len(found) < max(new) + 1:
            continue  # the cell's numbers are not where parse_cell found them; leave it
        for i in sorted(new, reverse=True):
            m = found[i]
            body = body[: m.start()] + _restyle(m.group(), new[i]) + body[m.end() :]
        lines[line] = raw[:start] + body + raw[end:]
    return "".join(lines)


def check_readme(readme: Path = ROOT / "README.md", root: Path | None = None) -> Report:
    readme = Path(readme)
    return check_text(readme.read_text(encoding="utf-8"), Path(root) if root else readme.parent)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, help="markdown files (default: README.md "
                    "and docs/*.md of this repository)")  # fmt: skip
    ap.add_argument("--root", type=Path, default=None, help="JSON paths are relative to this")
    ap.add_argument("--fix", action="store_true",
                    help="rewrite each table number that differs from its JSON value, then "
                         "re-check (prose around the tables is not touched: read it)")  # fmt: skip
    args = ap.parse_args(argv)
    files = args.files or [p for pat in DOCS for p in sorted(ROOT.glob(pat))]
    root = args.root or (None if args.files else ROOT)  # default: a file's own folder
    status = 0
    for f in files:
        report = check_readme(f, root)
        if args.fix and report.fixes:
            f.write_text(apply_fixes(f.read_text(encoding="utf-8"), report.fixes), "utf-8")
            print(f"fixed {len(report.fixes)} number(s) in {f}")
            report = check_readme(f, root)
        if report.ok:
            print(f"OK {f}: {report.tables} marked table(s), {report.cells} numeric cell(s) "
                  f"({report.values} value(s)) equal to their JSON values")  # fmt: skip
            continue
        status = 1
        print(f"{f}: {len(report.problems)} problem(s) in {report.tables} marked table(s):")
        for p in report.problems:
            print(f"  {f.name}:{p.line}: {p.message}")
    return status


if __name__ == "__main__":
    sys.exit(main())
