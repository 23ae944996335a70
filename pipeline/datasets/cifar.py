"""CIFAR-10 / CIFAR-100 from the official python-pickle archives (Krizhevsky, 2009).

The archives are Python pickles. They are read with a restricted unpickler that can build
numpy arrays and plain containers and nothing else, so a tampered file cannot run code.
All pixels of a split are kept in memory as one uint8 array (N, 32, 32, 3): 150 MB for train.
"""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..classnames import builtin_classes, official_labels
from . import download as dl
from .base import (
    ArrayImageDataset,
    DatasetError,
    check_against_builtin,
    found,
    require_official_split,
)

_URL = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class CifarSpec:
    name: str
    folder: str  # folder inside the archive
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str  # per-image labels in a batch dict
    names_key: str  # class names in the meta dict
    archive: str
    md5: str  # published md5 of the archive


CIFAR10 = CifarSpec(
    "cifar10",
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    "batches.meta",
    "labels",
    "label_names",
    "cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
)
CIFAR100 = CifarSpec(
    "cifar100",
    "cifar-100-python",
    ("train",),
    ("test",),
    "meta",
    "fine_labels",
    "fine_label_names",
    "cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85",
)
SPECS: dict[str, CifarSpec] = {s.name: s for s in (CIFAR10, CIFAR100)}


class UnsafePickleError(DatasetError):
    """A pickle that asks for something other than numpy arrays and plain containers."""


def _safe_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object for everything the CIFAR pickles may reference."""
    try:
        core = importlib.import_module("numpy._core")  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        core = importlib.import_module("numpy.core")
    safe: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): importlib.import_module("_codecs").encode,  # bytes, protocol 2
        ("builtins", "bytearray"): bytearray,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
    }
    # numpy 1.x pickles name numpy.core, numpy 2 pickles numpy._core: same functions
    for package in ("numpy.core", "numpy._core"):
        safe[(f"{package}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        safe[(f"{package}.multiarray", "scalar")] = core.multiarray.scalar
        safe[(f"{package}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return safe


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array/dtype reconstruction and plain builtins."""

    _SAFE = _safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._SAFE[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name}: CIFAR files may only contain numpy "
                "arrays, lists, dicts, numbers and strings; the file is not an official "
                "CIFAR archive (or was tampered with)"
            ) from None


def load_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR pickle as a dict with str keys (latin1 reads the Python 2 strings)."""
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DatasetError(f"cannot read {path} as a CIFAR pickle: {e}") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {_text(k): v for k, v in obj.items()}


def _text(s: str | bytes) -> str:
    return s.decode("latin1") if isinstance(s, bytes) else s


def _locate(spec: CifarSpec, root: Path, download: bool) -> Path:
    """The folder holding the batch files (`root/<folder>` or `root` itself)."""
    first = spec.train_files[0]
    for folder in (root / spec.folder, root):
        if (folder / first).is_file():
            return folder
    if download:
        archive = dl.download_verified(_URL + spec.archive, root, spec.md5)
        dl.extract_tar(archive, root)
        return root / spec.folder
    raise DatasetError(
        f"{spec.name}: expected {root / spec.folder / first} ... (the official python version, "
        f"{_URL}{spec.archive}); pass --download to fetch it; {found(root)}"
    )


def _read_batch(spec: CifarSpec, path: Path) -> tuple[np.ndarray, list[int]]:
    batch = load_pickle(path)
    missing = [k for k in ("data", spec.label_key) if k not in batch]
    if missing:
        raise DatasetError(f"{path}: missing key(s) {missing}; found {sorted(batch)}")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"{path}: expected uint8 data (N, 3072), found {data.dtype} {data.shape}"
        )
    labels = [int(v) for v in batch[spec.label_key]]
    if len(labels) != len(data):
        raise DatasetError(f"{path}: {len(data)} images but {len(labels)} labels")
    # rows are channel-planar (R plane, G plane, B plane) of 32x32: -> (N, 32, 32, 3)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar(name: str, root: Path, split: str, download: bool) -> ArrayImageDataset:
    spec = SPECS[name]
    source_split = require_official_split(spec.name, split, {"train": "train", "test": "test"})
    folder = _locate(spec, Path(root), download)
    files = spec.train_files if split == "train" else spec.test_files
    missing = [f for f in (*files, spec.meta_file) if not (folder / f).is_file()]
    if missing:
        raise DatasetError(
            f"{spec.name}: {folder} lacks {', '.join(missing)} (the official python version has "
            f"{', '.join((*spec.train_files, *spec.test_files, spec.meta_file))}); {found(folder)}"
        )
    meta = load_pickle(folder / spec.meta_file)
    if spec.names_key not in meta:
        raise DatasetError(
            f"{folder / spec.meta_file}: no {spec.names_key!r}; found {sorted(meta)}"
        )
    names = [_text(n) for n in meta[spec.names_key]]
    check_against_builtin(spec.name, names, official_labels(spec.name), folder / spec.meta_file)
    parts = [_read_batch(spec, folder / f) for f in files]
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    labels = [label for p in parts for label in p[1]]
    return ArrayImageDataset(
        name=spec.name,
        split=split,
        source_split=source_split,
        root=Path(root),
        classes=builtin_classes(spec.name),
        ids=[f"{i:05d}" for i in range(len(images))],
        labels=labels,
        images=images,
    )
