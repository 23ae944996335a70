"""Datasets laid out as one folder per class: ImageNet (ILSVRC-2012) and generic image folders.

ImageNet labels are the position of the wnid in the sorted list of the 1000 ILSVRC-2012 wnids
(the standard order), so a subset of class folders keeps the standard indices.
"""

from __future__ import annotations

from pathlib import Path

from ..classnames import builtin_classes, imagenet_wnids
from .base import (
    IMAGE_EXTENSIONS,
    DatasetError,
    FileImageDataset,
    found,
    list_images,
    list_subdirs,
    read_lines,
    require_official_split,
)


def _scan(root: Path, split_dir: str, folders: list[str], labels: list[int]):
    """ids (relative to root) and labels of the images in `root/split_dir/<folder>/`."""
    ids, ys = [], []
    for folder, label in zip(folders, labels, strict=True):
        names = list_images(root / split_dir / folder)
        ids.extend(f"{split_dir}/{folder}/{name}" for name in names)
        ys.extend([label] * len(names))
    if not ids:
        raise DatasetError(
            f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the class folders of "
            f"{root / split_dir}"
        )
    return ids, ys


def _no_class_folders(split_dir: Path, layout: str) -> DatasetError:
    flat = list_images(split_dir)
    hint = (
        f" it holds {len(flat)} images directly: sort them into one folder per class first"
        if flat
        else ""
    )
    return DatasetError(
        f"expected {layout}; {split_dir} has no class folders;{hint} {found(split_dir)}"
    )


def read_imagenet(root: Path, split: str) -> FileImageDataset:
    source_split = require_official_split("imagenet", split, {"train": "train", "test": "val"})
    root = Path(root)
    layout = (
        f"{root}/{source_split}/<wnid>/*.JPEG (ILSVRC-2012 {source_split} images, one folder "
        "per WordNet id)"
    )
    if not (root / source_split).is_dir():
        raise DatasetError(f"imagenet: expected {layout}; {found(root)}")
    folders = list_subdirs(root / source_split)
    if not folders:
        raise _no_class_folders(root / source_split, layout)
    index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise DatasetError(
            f"imagenet: {root / source_split / unknown[0]} is not one of the 1000 ILSVRC-2012 "
            f"wnids ({len(unknown)} unknown folder(s): {', '.join(unknown[:5])}); expected {layout}"
        )
    ids, labels = _scan(root, source_split, folders, [index[f] for f in folders])
    return FileImageDataset(
        name="imagenet",
        split=split,
        source_split=source_split,
        root=root,
        classes=builtin_classes("imagenet"),
        ids=ids,
        labels=labels,
        image_root=root,
    )


def read_imagefolder(root: Path, split: str, classes_file: Path | None) -> FileImageDataset:
    """`root/<split>/<class>/<image>`; classes are the folder names.

    Without `classes_file` the classes are the sorted union of the class folders of every
    split under root, so train and test agree on label indices even when a class is missing
    from one of them. With it, its lines are the folder names in label order.
    """
    root = Path(root)
    layout = f"{root}/{split}/<class>/<image files>"
    if not (root / split).is_dir():
        raise DatasetError(f"imagefolder: expected {layout}; {found(root)}")
    folders = list_subdirs(root / split)
    if not folders:
        raise _no_class_folders(root / split, layout)
    if classes_file is not None:
        classes = read_lines(classes_file, "classes file")
        unknown = sorted(set(folders) - set(classes))
        if unknown:
            raise DatasetError(
                f"imagefolder: class folder(s) {', '.join(unknown[:5])} of {root / split} are not "
                f"in {classes_file}; add them or remove the folders"
            )
    else:
        classes = sorted({c for s in list_subdirs(root) for c in list_subdirs(root / s)})
    index = {c: i for i, c in enumerate(classes)}
    ids, labels = _scan(root, split, folders, [index[f] for f in folders])
    return FileImageDataset(
        name="imagefolder",
        split=split,
        source_split=split,
        root=root,
        classes=classes,
        ids=ids,
        labels=labels,
        image_root=root,
    )
