"""Dataset readers for stage one: official formats, official splits, no torchvision.

`build_dataset(name, root, split)` returns an `ImageDataset` (ids, labels, class names,
`load(i)` -> RGB PIL image). Every named dataset has splits "train" and "test"; `source_split`
records the official split behind "test" (ImageNet and Places365: "val"). See each reader's
module for its layout; a wrong root raises `DatasetError` naming the expected layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .base import (
    ArrayImageDataset,
    DatasetError,
    FileImageDataset,
    ImageDataset,
    UnreadableImageError,
    read_lines,
)
from .cifar import UnsafePickleError, read_cifar
from .folders import read_imagefolder, read_imagenet
from .manifest import read_csv_manifest
from .official import read_cub, read_places365

__all__ = [
    "DATASETS",
    "ArrayImageDataset",
    "DatasetError",
    "FileImageDataset",
    "ImageDataset",
    "UnreadableImageError",
    "UnsafePickleError",
    "build_dataset",
]


@dataclass(frozen=True)
class Reader:
    # (root, split, download, classes_file) -> dataset
    read: Callable[[Path, str, bool, Path | None], ImageDataset]
    downloadable: bool = False  # can fetch the official archive itself
    builtin_classes: bool = True  # classes come from pipeline/classnames (classes_file renames)


DATASETS: dict[str, Reader] = {
    "cifar10": Reader(lambda r, s, d, c: read_cifar("cifar10", r, s, d), downloadable=True),
    "cifar100": Reader(lambda r, s, d, c: read_cifar("cifar100", r, s, d), downloadable=True),
    "cub200": Reader(lambda r, s, d, c: read_cub(r, s)),
    "places365": Reader(lambda r, s, d, c: read_places365(r, s)),
    "imagenet": Reader(lambda r, s, d, c: read_imagenet(r, s)),
    "imagefolder": Reader(lambda r, s, d, c: read_imagefolder(r, s, c), builtin_classes=False),
    "csv": Reader(lambda r, s, d, c: read_csv_manifest(r, s, c), builtin_classes=False),
}


def build_dataset(
    name: str,
    root: Path,
    split: str,
    *,
    download: bool = False,
    classes_file: Path | None = None,
) -> ImageDataset:
    """Read split `split` of dataset `name` at `root` (for "csv": the manifest file).

    classes_file: one class name per line in label order. For the named datasets it replaces
    the built-in display names (same count); for imagefolder it lists the class folders; for
    csv it names the classes the labels refer to.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    reader = DATASETS[name]
    if download and not reader.downloadable:
        can = ", ".join(k for k, r in DATASETS.items() if r.downloadable)
        raise DatasetError(
            f"--download is available for {can} only; get {name} from its official source "
            "and pass its folder as root"
        )
    if not split or "/" in split or "\\" in split or split in (".", ".."):
        raise DatasetError(f"split must be a plain name such as 'train' or 'test', got {split!r}")
    ds = reader.read(Path(root), split, download, classes_file)
    if classes_file is not None and reader.builtin_classes:
        _rename_classes(ds, Path(classes_file))
    return ds


def _rename_classes(ds: ImageDataset, classes_file: Path) -> None:
    names = read_lines(classes_file, "classes file")
    if len(names) != len(ds.classes):
        raise DatasetError(
            f"{classes_file} has {len(names)} class names, {ds.name} has {len(ds.classes)}; "
            "give one name per class, in label order"
        )
    ds.classes = names
    ds._check()  # names must still be unique
