"""Uniform read access to the two storage formats (Zarr v3 directory, single HDF5 file).

HDF5 attributes cannot hold nested JSON, so in HDF5 every attribute value that is not a plain
string/number/bool is stored as a JSON string; `read_attrs` undoes that. Zarr keeps JSON natively.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CacheCorruptError, CacheError

HDF5_SUFFIXES = (".h5", ".hdf5")


def format_of(path: Path) -> str:
    """'hdf5' for a .h5/.hdf5 path, else 'zarr' (a directory store)."""
    return "hdf5" if path.suffix.lower() in HDF5_SUFFIXES else "zarr"


def encode_h5_attr(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) and not isinstance(value, np.generic):
        return value
    return json.dumps(value)


def decode_h5_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


class Backend:
    """Read-only view of a store: attributes of groups, whole arrays, shapes."""

    def __init__(self, path: Path):
        self.path = path
        self.format = format_of(path)
        try:
            if self.format == "hdf5":
                import h5py

                self._root = h5py.File(path, "r")
            else:
                import zarr

                self._root = zarr.open_group(str(path), mode="r")
        except (OSError, FileNotFoundError, ValueError, KeyError) as e:
            raise CacheError(
                f"cannot open {path} as a {self.format} cache: {e}. "
                "Give the path that `cli.py embed --out` wrote."
            ) from e
        except Exception as e:  # zarr raises its own types for "not a group"
            raise CacheError(f"cannot open {path} as a {self.format} cache: {e!r}") from e

    def attrs(self, group: str = "") -> dict:
        node = self._root[group] if group else self._root
        if self.format == "hdf5":
            return {k: decode_h5_attr(v) for k, v in node.attrs.items()}
        return dict(node.attrs)

    def has(self, name: str) -> bool:
        try:
            self._root[name]
        except KeyError:
            return False
        return True

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._root[name].shape)

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Whole array (or a row range) in one call: single-row reads cost milliseconds."""
        try:
            node = self._root[name]
        except KeyError as e:
            raise CacheError(f"{self.path} has no array '{name}': not a complete cache") from e
        try:
            data = node[slice(start, stop)]
        except Exception as e:  # a codec/checksum/IO error of the storage library
            raise CacheCorruptError(self._damage(name, node, start, stop, e)) from e
        if self.format == "hdf5" and data.dtype.kind in "OS":
            data = np.array([x.decode("utf-8") if isinstance(x, bytes) else x for x in data])
        if data.dtype.kind == "T":  # numpy StringDType from zarr v3 variable-length strings
            data = data.astype(object).astype(str) if data.size else np.zeros(data.shape, str)
        return np.asarray(data)

    def file_of(self, name: str, row: int | None = None) -> str:
        """The file holding array `name` (its shard containing `row`, for Zarr)."""
        if self.format == "hdf5":
            return f"{self.path} (dataset /{name})"
        if row is None:
            return str(self.path / name)
        node = self._root[name]
        shard_rows = (getattr(node, "shards", None) or node.chunks)[0]
        rest = "/0" * (len(node.shape) - 1)
        return str(self.path / name / "c" / f"{row // shard_rows}{rest}")

    def _damage(self, name: str, node, start, stop, error: Exception) -> str:
        """One line naming the file, array and shard that cannot be decoded."""
        lo = start or 0
        hi = stop if stop is not None else (node.shape[0] if node.shape else 0)
        step = max((getattr(node, "shards", None) or getattr(node, "chunks", None) or (1,))[0], 1)
        bad = None
        for a in range(lo, hi, step):  # the first shard that fails on its own
            try:
                node[a : min(a + step, hi)]
            except Exception:
                bad = a
                break
        where = (
            f", shard {bad // step} (rows {bad}..{min(bad + step, hi) - 1})"
            if bad is not None
            else ""
        )
        msg = " ".join(str(error).split())[:120]
        return (
            f"cache {self.path} is damaged: array '{name}'{where} cannot be read from "
            f"{self.file_of(name, bad)} ({type(error).__name__}: {msg}). Check it with "
            f"`python cli.py cache verify {self.path}` and re-create it with "
            "`cli.py embed ... --overwrite`."
        )

    def close(self) -> None:
        if self.format == "hdf5":
            self._root.close()
