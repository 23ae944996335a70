"""A dataset given as a CSV manifest: columns `path,label` (and optionally `split`), one row per
image. With a `split` column, `--split NAME` keeps the rows of that split, so one manifest can
hold train and test; without one, the manifest is one split (embed needs `--split`).

Relative paths resolve against the CSV's folder. A label is a class name or an integer class
index: with a classes file (one name per line, in label order) a label equal to a class name
is that class and any other integer is an index; without one, integer labels are indices
(class names "0".."K-1") unless some label is not an integer, then all labels are names and
the classes are their sorted unique values.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from .base import DatasetError, FileImageDataset, found, read_lines

log = logging.getLogger(__name__)


def _is_int(s: str) -> bool:
    return s.isdigit() or (s.startswith("-") and s[1:].isdigit())


def _read_rows(path: Path, split: str) -> tuple[list[tuple[int, str, str]], list[str]]:
    """(line number, path, label) of every row (of `split`, when the manifest has a split
    column), and the labels of all rows (the class list is the same for every split)."""
    rows, all_labels = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            if "path" not in header or "label" not in header:
                raise DatasetError(
                    f"{path}: expected a header with columns path,label, found {header}"
                )
            reader.fieldnames = header
            has_split, splits_seen = "split" in header, set()
            for row in reader:
                p, label = (row["path"] or "").strip(), (row["label"] or "").strip()
                all_labels.append(label)
                if has_split:
                    splits_seen.add((row["split"] or "").strip())
                    if (row["split"] or "").strip() != split:
                        continue
                if not p or not label:
                    raise DatasetError(f"{path} line {reader.line_num}: empty path or label")
                rows.append((reader.line_num, p, label))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read {path} as a UTF-8 CSV manifest: {e}") from e
    if not rows and has_split:
        raise DatasetError(
            f"{path}: no rows of split {split!r}; its split column has {sorted(splits_seen)}"
        )
    if not rows:
        raise DatasetError(f"{path}: the manifest has a header but no rows")
    return rows, all_labels


def _resolve(
    rows, classes: list[str] | None, path: Path, labels: list[str]
) -> tuple[list[str], list[int]]:
    """(classes, label index per row); without a classes file the classes come from `labels`
    (every row of the manifest, whatever its split)."""
    if classes is None:
        if all(_is_int(s) for s in labels):
            classes = [str(k) for k in range(max(int(s) for s in labels) + 1)]
            log.warning(
                "%s: integer labels and no classes file; class names are 0..%d",
                path,
                len(classes) - 1,
            )
        else:
            classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    ys = []
    for line, _, s in rows:
        if s in index:
            ys.append(index[s])
        elif _is_int(s) and 0 <= int(s) < len(classes):
            ys.append(int(s))
        else:
            raise DatasetError(
                f"{path} line {line}: label {s!r} is neither a class name nor an index in "
                f"0..{len(classes) - 1} ({len(classes)} classes)"
            )
    return classes, ys


def read_csv_manifest(path: Path, split: str, classes_file: Path | None) -> FileImageDataset:
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else f"does not exist; {found(path.parent)}"
        raise DatasetError(
            f"csv: expected a manifest CSV file with columns path,label; {path} {what}"
        )
    rows, all_labels = _read_rows(path, split)
    classes = read_lines(classes_file, "classes file") if classes_file is not None else None
    classes, labels = _resolve(rows, classes, path, all_labels)
    return FileImageDataset(
        name="csv",
        split=split,
        source_split=split,
        root=path,
        classes=classes,
        ids=[p for _, p, _ in rows],
        labels=labels,
        image_root=path.parent,
    )
