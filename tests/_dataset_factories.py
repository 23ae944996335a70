"""Tiny synthetic datasets in each official on-disk format (for tests; offline, deterministic).

Every `make_*` returns the path to pass to `build_dataset` as root. Images are small solid
colours (colour k for the k-th image written), so a test can check that `load` returned the
right file.
"""

from __future__ import annotations

import csv
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from clipcbm.pipeline.classnames import imagenet_wnids, official_labels


def color(k: int) -> tuple[int, int, int]:
    """A distinct RGB colour per integer k (exact in PNG; near-exact in JPEG)."""
    return (37 * k) % 256, (91 * k + 50) % 256, (53 * k + 100) % 256


def write_image(path: Path, k: int = 0, size: tuple[int, int] = (16, 12)) -> Path:
    """Solid-colour image; format from the extension (JPEG quality 95)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color(k))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=95)
    else:
        image.save(path)
    return path


# --- CIFAR (python-pickle batches) ---------------------------------------------------------


def _cifar_batch(rng: np.random.Generator, n: int, n_classes: int, label_key: str, start: int):
    labels = [(start + i) % n_classes for i in range(n)]
    batch = {
        b"batch_label": b"synthetic batch",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key.encode(): labels,
        b"filenames": [f"img_{start + i}.png".encode() for i in range(n)],
    }
    if label_key == "fine_labels":
        batch[b"coarse_labels"] = [(label // 5) for label in labels]
    return batch


def _dump(obj: dict, path: Path, python2: bool = False) -> None:
    """Protocol-2 pickle, as the official files; `python2` writes the exact opcodes Python 2
    with numpy 1.x produced (byte strings as Python 2 str, `numpy.core` module path)."""
    with open(path, "wb") as f:
        if python2:
            f.write(py2_pickle(obj))
        else:
            pickle.dump(obj, f, protocol=2)


def _py2_str(x: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING
    return b"U" + bytes([len(x)]) + x if len(x) < 256 else b"T" + struct.pack("<i", len(x)) + x


def _py2_int(n: int) -> bytes:  # BININT1 / BININT
    return b"K" + bytes([n]) if 0 <= n < 256 else b"J" + struct.pack("<i", n)


def _py2_array(v: np.ndarray) -> bytes:
    """numpy.core.multiarray._reconstruct(ndarray, (0,), 'b') + __setstate__, uint8 2-D only."""
    dtype = b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
    dtype += b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1)
    dtype += _py2_int(0) + b"tb"
    out = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    out += _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R"
    shape = _py2_int(v.shape[0]) + _py2_int(v.shape[1]) + b"\x86"
    return out + b"(" + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(v.tobytes()) + b"tb"


def _py2_value(v) -> bytes:
    if isinstance(v, np.ndarray):
        assert v.dtype == np.uint8 and v.ndim == 2, "only uint8 (N, D) arrays"
        return _py2_array(v)
    if isinstance(v, list):
        return b"](" + b"".join(_py2_value(x) for x in v) + b"e"
    if isinstance(v, int):
        return _py2_int(v)
    return _py2_str(v if isinstance(v, bytes) else v.encode("latin1"))


def py2_pickle(d: dict) -> bytes:
    """A dict pickled as Python 2 did for the official CIFAR files (keys become Python 2 str)."""
    items = b"".join(_py2_str(bytes(k)) + _py2_value(v) for k, v in d.items())
    return b"\x80\x02}(" + items + b"u."


def make_cifar10(
    root: Path, n_train: int = 10, n_test: int = 5, seed: int = 0, python2: bool = False
) -> Path:
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}; label = index % 10."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    start = 0
    for b, n in enumerate(np.array_split(np.arange(n_train), 5), 1):
        batch = _cifar_batch(rng, len(n), 10, "labels", start)
        _dump(batch, folder / f"data_batch_{b}", python2)
        start += len(n)
    _dump(_cifar_batch(rng, n_test, 10, "labels", 0), folder / "test_batch", python2)
    names = [s.encode() for s in official_labels("cifar10")]
    meta = {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072}
    _dump(meta, folder / "batches.meta", python2)
    return Path(root)


def make_cifar100(root: Path, n_train: int = 10, n_test: int = 5, seed: int = 0) -> Path:
    """root/cifar-100-python/{train, test, meta}; fine label = index % 100."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _dump(_cifar_batch(rng, n_train, 100, "fine_labels", 0), folder / "train")
    _dump(_cifar_batch(rng, n_test, 100, "fine_labels", 0), folder / "test")
    fine = [s.encode() for s in official_labels("cifar100")]
    coarse = [f"superclass_{k}".encode() for k in range(20)]
    _dump({b"fine_label_names": fine, b"coarse_label_names": coarse}, folder / "meta")
    return Path(root)


def make_cifar_archive(root: Path, archive: Path, name: str = "cifar10") -> Path:
    """A .tar.gz like the official download (the batch folder at the top level)."""
    maker, folder = {
        "cifar10": (make_cifar10, "cifar-10-batches-py"),
        "cifar100": (make_cifar100, "cifar-100-python"),
    }[name]
    maker(root)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(Path(root) / folder, arcname=folder)
    return archive


# --- CUB-200-2011 ----------------------------------------------------------------------------


def make_cub(root: Path, classes: tuple[int, ...] = (0, 1, 199), per_class: int = 3) -> Path:
    """root/CUB_200_2011 with the full official classes.txt and `per_class` images of each
    0-based class in `classes`; image ids alternate train (odd ids) / test (even ids)."""
    folder = Path(root) / "CUB_200_2011"
    folders = official_labels("cub200")
    images, labels, split = [], [], []
    image_id = 0
    for c in classes:
        for j in range(per_class):
            image_id += 1
            rel = f"{folders[c]}/{folders[c].split('.', 1)[1]}_{j:04d}_{image_id}.jpg"
            write_image(folder / "images" / rel, image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {image_id % 2}")
    _write_lines(folder / "images.txt", images)
    _write_lines(folder / "image_class_labels.txt", labels)
    _write_lines(folder / "train_test_split.txt", split)
    _write_lines(folder / "classes.txt", [f"{i + 1} {n}" for i, n in enumerate(folders)])
    return Path(root)


# --- Places365-Standard -------------------------------------------------------------------


def make_places365(
    root: Path, n_train: int = 4, n_test: int = 3, large: bool = False, categories: bool = True
) -> Path:
    """File lists, category list and images in data_256/ + val_256/ (or *_large/).
    Train image i has label 3 * i, val image i has label 364 - i."""
    root = Path(root)
    cats = official_labels("places365")
    train_dir, val_dir = ("data_large", "val_large") if large else ("data_256", "val_256")
    train = []
    for i in range(n_train):
        rel = f"{cats[3 * i]}/{i + 1:08d}.jpg"  # "/a/airfield/00000001.jpg"
        write_image(root / train_dir / rel.lstrip("/"), i)
        train.append(f"{rel} {3 * i}")
    val = []
    for i in range(n_test):
        name = f"Places365_val_{i + 1:08d}.jpg"
        write_image(root / val_dir / name, 100 + i)
        val.append(f"{name} {364 - i}")
    _write_lines(root / "places365_train_standard.txt", train)
    _write_lines(root / "places365_val.txt", val)
    if categories:
        _write_lines(root / "categories_places365.txt", [f"{c} {i}" for i, c in enumerate(cats)])
    return root


# --- ImageNet (ILSVRC-2012, one folder per wnid) ------------------------------------------


def make_imagenet(
    root: Path, class_indices: tuple[int, ...] = (1, 500, 999), per_class: int = 2
) -> Path:
    """root/{train,val}/<wnid>/*.JPEG for the standard class indices given."""
    root = Path(root)
    wnids = imagenet_wnids()
    k = 0
    for split in ("train", "val"):
        for c in class_indices:
            for _ in range(per_class):
                k += 1
                name = (
                    f"{wnids[c]}_{k}.JPEG" if split == "train" else f"ILSVRC2012_val_{k:08d}.JPEG"
                )
                write_image(root / split / wnids[c] / name, k)
    return root


# --- generic folders and CSV manifests ----------------------------------------------------


def make_imagefolder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog"),
    splits: tuple[str, ...] = ("train", "test"),
    per_class: int = 2,
    ext: str = ".png",
) -> Path:
    """root/<split>/<class>/<j>.<ext>."""
    root = Path(root)
    k = 0
    for split in splits:
        for c in classes:
            for j in range(per_class):
                write_image(root / split / c / f"{j:03d}{ext}", k)
                k += 1
    return root


def make_csv(
    path: Path,
    labels: tuple[str, ...] = ("cat", "dog", "cat", "bird"),
    image_dir: str = "images",
) -> Path:
    """A manifest at `path` (columns path,label) with image i at `<image_dir>/<i>.png`
    (relative to the CSV's folder) labelled labels[i]."""
    path = Path(path)
    rows = []
    for i, label in enumerate(labels):
        rel = f"{image_dir}/{i:03d}.png"
        write_image(path.parent / rel, i)
        rows.append((rel, label))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
