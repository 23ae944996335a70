"""CUB-200-2011 and Places365-Standard, read through their official file lists.

CUB (Wah et al., 2011): `images.txt`, `image_class_labels.txt`, `train_test_split.txt`
(1 = train), `classes.txt`, `images/`. Labels in the files are 1-based; ours are 0-based.
Places365 (Zhou et al., 2017): `places365_train_standard.txt` ("/a/airfield/00000001.jpg 0")
and `places365_val.txt` ("Places365_val_00000001.jpg 165") with the images of the small
(256 px: `data_256/`, `val_256/`) or large (`data_large/`, `val_large/`) download.
"""

from __future__ import annotations

from pathlib import Path

from ..classnames import builtin_classes, official_labels
from .base import (
    DatasetError,
    FileImageDataset,
    check_against_builtin,
    found,
    read_lines,
    require_official_split,
)

_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def _split_pairs(path: Path, what: str) -> list[tuple[str, str]]:
    """Lines "<key> <value>" (value may hold spaces for CUB, the key for Places365)."""
    pairs = []
    for n, line in enumerate(read_lines(path, what), 1):
        key, sep, value = line.partition(" ")
        if not sep or not value:
            raise DatasetError(f"{path} line {n}: expected '<id> <value>', found {line!r}")
        pairs.append((key, value))
    return pairs


def _locate_cub(root: Path) -> Path:
    for folder in (root, root / "CUB_200_2011"):
        if (folder / "images.txt").is_file():
            return folder
    raise DatasetError(
        f"cub200: expected {root}/{{{','.join(_CUB_FILES)}}} and {root}/images/ (the official "
        f"CUB_200_2011 folder, or its parent); {found(root)}"
    )


def read_cub(root: Path, split: str) -> FileImageDataset:
    source_split = require_official_split("cub200", split, {"train": "train", "test": "test"})
    folder = _locate_cub(Path(root))
    if not (folder / "images").is_dir():
        raise DatasetError(
            f"cub200: expected the image folder {folder / 'images'}; {found(folder)}"
        )
    if (folder / "classes.txt").is_file():
        given = [v for _, v in _split_pairs(folder / "classes.txt", "CUB class list")]
        check_against_builtin("cub200", given, official_labels("cub200"), folder / "classes.txt")
    paths = _split_pairs(folder / "images.txt", "CUB image list")
    labels = dict(_split_pairs(folder / "image_class_labels.txt", "CUB image labels"))
    is_train = dict(_split_pairs(folder / "train_test_split.txt", "CUB train/test split"))
    want = "1" if split == "train" else "0"
    ids, ys = [], []
    for image_id, rel in paths:  # images.txt order is the official order
        if image_id not in labels or is_train.get(image_id) not in ("0", "1"):
            raise DatasetError(
                f"cub200: image id {image_id} ({rel}) needs a label in image_class_labels.txt and "
                f"0/1 in train_test_split.txt (found {labels.get(image_id)!r}, "
                f"{is_train.get(image_id)!r})"
            )
        if is_train[image_id] == want:
            ids.append(rel)
            ys.append(_int(labels[image_id], folder / "image_class_labels.txt") - 1)
    return FileImageDataset(
        name="cub200",
        split=split,
        source_split=source_split,
        root=Path(root),
        classes=builtin_classes("cub200"),
        ids=ids,
        labels=ys,
        image_root=folder / "images",
    )


def _int(value: str, path: Path) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{path}: expected an integer label, found {value!r}") from None


# our split -> (official split, file list, image folders of the small / large download)
_PLACES = {
    "train": ("train", "places365_train_standard.txt", ("data_256", "data_large")),
    "test": ("val", "places365_val.txt", ("val_256", "val_large")),
}


def read_places365(root: Path, split: str) -> FileImageDataset:
    source = {k: v[0] for k, v in _PLACES.items()}
    source_split = require_official_split("places365", split, source)
    root = Path(root)
    _, list_name, image_dirs = _PLACES[split]
    layout = (
        f"{root / list_name} (official Places365-Standard file list) and its images in "
        f"{root}/{image_dirs[0]}/ or {root}/{image_dirs[1]}/"
    )
    if not (root / list_name).is_file():
        raise DatasetError(f"places365: expected {layout}; {found(root)}")
    image_dir = next((d for d in image_dirs if (root / d).is_dir()), None)
    if image_dir is None:
        raise DatasetError(f"places365: expected {layout}; {found(root)}")
    categories = root / "categories_places365.txt"
    if categories.is_file():
        given = [k for k, _ in _split_pairs(categories, "Places365 category list")]
        check_against_builtin("places365", given, official_labels("places365"), categories)
    ids, labels = [], []
    for n, line in enumerate((root / list_name).read_text(encoding="utf-8").splitlines(), 1):
        rel, _, label = line.strip().rpartition(" ")
        if not line.strip():
            continue
        if not rel or not label.isdigit():
            raise DatasetError(
                f"{root / list_name} line {n}: expected '<path> <label>', found {line!r}"
            )
        ids.append(f"{image_dir}/{rel.lstrip('/')}")
        labels.append(int(label))
    return FileImageDataset(
        name="places365",
        split=split,
        source_split=source_split,
        root=root,
        classes=builtin_classes("places365"),
        ids=ids,
        labels=labels,
        image_root=root,
    )
