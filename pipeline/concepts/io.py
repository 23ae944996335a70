"""Concept files: read the list a cache is built on, write what `clipcbm concepts` produces.

Formats (SPEC §4, issue 4):
- `<name>.csv`: header `concept,class,source`, one kept concept per row, in output order. A
  concept that came from several classes (or sources) lists all of them joined with "|"
  (e.g. `tail,cat|dog,conceptnet:HasA`); the class cell is empty when unknown.
- `<name>.txt`: the same concepts, one per line: the plain view CLIP embeds.
- `<name>.dropped.csv`: `concept,rule,value,detail,class,source`, one row per dropped candidate.

The concept list's identity is `sha256("\\n".join(concepts).encode("utf-8"))`, the same
fingerprint the embedding cache records (SPEC §4: a changed list is a different cache).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clipcbm.pipeline.errors import PipelineError

log = logging.getLogger(__name__)

MAX_CONCEPTS = 50_000  # more rows than any published concept set by 10x; beyond it, a mistake
SEP = "|"  # joins several classes / sources in one CSV cell
KEPT_COLUMNS = ("concept", "class", "source")
DROPPED_COLUMNS = ("concept", "rule", "value", "detail", "class", "source")


class ConceptFileError(PipelineError, ValueError):
    """A concept file that cannot be used as it is (the message names the line and the fix)."""


def sha256_concepts(concepts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(concepts).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ConceptSet:
    """An ordered concept list with, per concept, the classes it was generated for."""

    concepts: list[str]
    classes_of: list[list[str]]  # parallel to concepts; empty lists when unknown
    sources_of: list[list[str]] = field(default_factory=list)  # parallel; empty when unknown
    path: Path | None = None

    def __post_init__(self):
        if len(self.classes_of) != len(self.concepts):
            raise ValueError(
                f"classes_of has {len(self.classes_of)} entries for {len(self.concepts)} concepts"
            )
        if not self.sources_of:
            object.__setattr__(self, "sources_of", [[] for _ in self.concepts])
        elif len(self.sources_of) != len(self.concepts):
            raise ValueError(
                f"sources_of has {len(self.sources_of)} entries for {len(self.concepts)} concepts"
            )

    @property
    def sha256(self) -> str:
        return sha256_concepts(self.concepts)

    def __len__(self) -> int:
        return len(self.concepts)


# ----------------------------------------------------------------------------------- reading


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")  # a leading BOM is encoding, not content
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConceptFileError(
            f"{path}: line {line} is not valid UTF-8 (byte {data[e.start]:#04x} at offset "
            f"{e.start}); re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from e


def _split_lines(text: str, path: Path) -> list[str]:
    """'\\n' or '\\r\\n' lines; blank lines at the end are ignored with a warning, blank lines
    anywhere else are an error (an empty concept would silently become a cache row)."""
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    n_trailing = 0
    while lines and not lines[-1].strip():
        lines.pop()
        n_trailing += 1
    if n_trailing > 1:  # one is just the final newline
        log.warning("%s: ignored %d blank line(s) at the end of the file", path, n_trailing - 1)
    return lines


def _check_entries(concepts: list[str], line_numbers: list[int], path: Path) -> None:
    if not concepts:
        raise ConceptFileError(f"{path}: no concepts in the file; give at least one concept")
    if len(concepts) > MAX_CONCEPTS:
        raise ConceptFileError(
            f"{path}: {len(concepts):,} concepts, more than the {MAX_CONCEPTS:,} allowed; filter "
            "the list first (`clipcbm concepts --source file --input ...`)"
        )
    first_seen: dict[str, int] = {}
    for text, line in zip(concepts, line_numbers, strict=True):
        if not text.strip():
            raise ConceptFileError(
                f"{path}: line {line} is empty; remove empty lines (every line is one concept)"
            )
        if text != text.strip():
            raise ConceptFileError(
                f"{path}: line {line} ({text!r}) has leading or trailing whitespace; strip it "
                "(the concept text is embedded and fingerprinted exactly as written)"
            )
        if text in first_seen:
            raise ConceptFileError(
                f"{path}: line {line} repeats {text!r} from line {first_seen[text]}; remove the "
                "duplicate (each concept must appear once)"
            )
        first_seen[text] = line


def _read_txt(text: str, path: Path) -> ConceptSet:
    lines = _split_lines(text, path)
    _check_entries(lines, list(range(1, len(lines) + 1)), path)
    return ConceptSet(lines, [[] for _ in lines], path=path)


def _cell_list(cell: str | None) -> list[str]:
    return [p for p in (cell or "").split(SEP) if p]


def _read_csv(text: str, path: Path) -> ConceptSet:
    lines = _split_lines(text, path)
    rows = list(csv.reader(io.StringIO("\n".join(lines) + "\n")))
    if not rows or "concept" not in rows[0]:
        raise ConceptFileError(
            f"{path}: a concept CSV needs a header row with a 'concept' column (optionally "
            f"'class' and 'source'); got header {rows[0] if rows else []!r}"
        )
    header = rows[0]
    col = {name: header.index(name) for name in KEPT_COLUMNS if name in header}
    concepts, classes_of, sources_of, line_numbers = [], [], [], []
    # csv rows map 1:1 to lines unless a quoted cell spans lines; concept cells never do
    for i, row in enumerate(rows[1:], start=2):
        if not row:
            raise ConceptFileError(
                f"{path}: line {i} is empty; remove empty lines (every row is one concept)"
            )
        if len(row) != len(header):
            raise ConceptFileError(
                f"{path}: line {i} has {len(row)} cells but the header has {len(header)}; "
                "quote cells that contain commas"
            )
        cells = dict(zip(header, row, strict=True))
        concepts.append(cells["concept"])
        classes_of.append(_cell_list(cells.get("class")) if "class" in col else [])
        sources_of.append(_cell_list(cells.get("source")) if "source" in col else [])
        line_numbers.append(i)
    _check_entries(concepts, line_numbers, path)
    return ConceptSet(concepts, classes_of, sources_of, path=path)


_READERS = {".txt": _read_txt, ".csv": _read_csv}  # suffix -> parser of the decoded text


def read_concept_file(path: str | os.PathLike) -> ConceptSet:
    """Read a `.txt` (one concept per line) or the `.csv` written by `clipcbm concepts`.

    Nothing is changed silently: duplicates, empty lines, surrounding whitespace, non-UTF-8
    bytes and more than 50,000 entries raise ConceptFileError naming the line."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ConceptFileError(
            f"{path}: unknown concept file type {path.suffix!r}; allowed: .txt (one concept per "
            "line) or .csv (header with a 'concept' column)"
        )
    if not path.is_file():
        raise ConceptFileError(f"{path}: no such file")
    return reader(_decode(path.read_bytes(), path), path)


# ----------------------------------------------------------------------------------- writing


def _atomic_write(path: Path, text: str) -> None:
    """Write next to the target, then rename: a crash never leaves half a concept list."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def _csv_text(header: Sequence[str], rows: list[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def output_paths(out_csv: Path) -> dict[str, Path]:
    """The files one `concepts` run writes, keyed by role."""
    stem = out_csv.with_suffix("")
    return {
        "csv": out_csv,
        "txt": stem.with_suffix(".txt"),
        "dropped": stem.with_suffix(".dropped.csv"),
        "meta": stem.with_suffix(".meta.json"),
    }


def write_concept_set(out_csv: Path, kept: ConceptSet) -> dict[str, Path]:
    """Write the kept list as `<name>.csv` and `<name>.txt`; returns the two paths."""
    paths = output_paths(out_csv)
    rows = [
        (c, SEP.join(cls), SEP.join(src))
        for c, cls, src in zip(kept.concepts, kept.classes_of, kept.sources_of, strict=True)
    ]
    _atomic_write(paths["csv"], _csv_text(KEPT_COLUMNS, rows))
    _atomic_write(paths["txt"], "".join(f"{c}\n" for c in kept.concepts))
    return {"csv": paths["csv"], "txt": paths["txt"]}


def write_dropped(path: Path, rows: list[Sequence[object]]) -> Path:
    """rows: (concept, rule, value, detail, classes list, sources list) per dropped candidate."""
    out = [
        (c, rule, value, detail, SEP.join(cls), SEP.join(src))
        for c, rule, value, detail, cls, src in rows
    ]
    _atomic_write(path, _csv_text(DROPPED_COLUMNS, out))
    return path


def read_class_file(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (blank lines skipped); duplicates and '|' are errors."""
    path = Path(path)
    if not path.is_file():
        raise ConceptFileError(f"{path}: no such class file")
    names = [ln.strip() for ln in _decode(path.read_bytes(), path).splitlines()]
    seen: dict[str, int] = {}
    for line, name in enumerate(names, start=1):
        if not name:
            continue
        if SEP in name:
            raise ConceptFileError(
                f"{path}: line {line} ({name!r}) contains {SEP!r}, which "
                "separates classes in the concept CSV; rename the class"
            )
        if name in seen:
            raise ConceptFileError(
                f"{path}: line {line} repeats class {name!r} from line "
                f"{seen[name]}; class names must be unique"
            )
        seen[name] = line
    if not seen:
        raise ConceptFileError(f"{path}: no class names in the file")
    return list(seen)


def read_raw_concepts(path: str | os.PathLike) -> list[tuple[str, str]]:
    """A user's unfiltered list -> (concept, class) pairs ('' when unknown): a .txt with one
    concept per line, or a .csv with a 'concept' and an optional 'class' column ('|' joins
    several classes). Blank entries are kept: the filter records them as dropped."""
    path = Path(path)
    if not path.is_file():
        raise ConceptFileError(f"{path}: no such file")
    text = _decode(path.read_bytes(), path)
    if path.suffix.lower() != ".csv":
        return [(line, "") for line in _split_lines(text, path)]
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "concept" not in reader.fieldnames:
        raise ConceptFileError(
            f"{path}: the CSV needs a header with a 'concept' column (and "
            f"optionally 'class'); got {reader.fieldnames!r}"
        )
    pairs = []
    for row in reader:
        classes = _cell_list(row.get("class")) or [""]
        pairs += [(row["concept"] or "", cls) for cls in classes]
    return pairs
