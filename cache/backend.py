"""Uniform read access to the two storage formats (Zarr v3 directory, single HDF5 file).

HDF5 attributes cannot hold nested JSON, so in HDF5 every attribute value that is not a plain
string/number/bool is stored as a JSON string; `read_attrs` undoes that. Zarr keeps JSON natively.
A Zarr cache at a URL is read through its fsspec store (`cache.remote`), one shard per request
batch, with a progress bar per array; HDF5 is local only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from clipcbm.core.location import Location, as_location, is_remote, join, location_name, redact
from clipcbm.core.progress import bar, is_terminal

from .errors import CacheCorruptError, CacheError, RemoteCacheError

HDF5_SUFFIXES = (".h5", ".hdf5")


def format_of(path: Location) -> str:
    """'hdf5' for a .h5/.hdf5 path, else 'zarr' (a directory store)."""
    return (
        "hdf5" if Path(location_name(as_location(path))).suffix.lower() in HDF5_SUFFIXES else "zarr"
    )


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
    """Read-only view of a store: attributes of groups, whole arrays, shapes. `path` is what
    messages name (a redacted URL for a remote cache)."""

    def __init__(
        self, path: Location, storage_options: dict | None = None, progress: bool | None = None
    ):
        self.location = as_location(path)
        self.remote = is_remote(self.location)
        self.path = redact(self.location) if self.remote else self.location
        self.format = format_of(self.location)
        # a remote read shows a bar per array (one step per shard) on a terminal by default;
        # local reads are fast, and a log (stderr to a file) keeps only what was asked for
        self.progress = (self.remote and is_terminal()) if progress is None else progress
        if self.remote:
            self._root = self._open_remote(storage_options)
            return
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
                "Give the path that `clipcbm embed --out` wrote."
            ) from e
        except Exception as e:  # zarr raises its own types for "not a group"
            raise CacheError(f"cannot open {path} as a {self.format} cache: {e!r}") from e

    def _open_remote(self, storage_options: dict | None):
        import zarr

        from .remote import open_store, remote_errors

        if self.format == "hdf5":
            raise CacheError(
                f"{self.path} is an HDF5 cache at a URL; HDF5 caches are read from a local file "
                "only. Download it first, or write a zarr cache (`embed --out` without .h5)."
            )
        store = open_store(str(self.location), storage_options, read_only=True)
        try:
            with remote_errors(self.location):
                return zarr.open_group(store, mode="r", zarr_format=3)
        except RemoteCacheError as e:
            if isinstance(e.__context__, FileNotFoundError) or "does not exist" in str(e):
                raise RemoteCacheError(self._not_found(storage_options)) from None
            raise

    def _not_found(self, storage_options: dict | None) -> str:
        """Why there is no group: the bucket is missing, or the key holds no cache."""
        from .remote import filesystem

        bucket = str(self.location).split("://", 1)[1].split("/", 1)[0]
        try:
            fs, _ = filesystem(self.location, storage_options)
            has_bucket = fs.exists(bucket) if self.location.startswith(("s3", "gs")) else True
        except Exception:  # the reason is reported below either way
            has_bucket = True
        if not has_bucket:
            return f"no bucket {bucket!r}: cannot open {self.path} (check the URL and region)"
        return (
            f"no cache at {self.path} (no zarr.json there): give the URL `cache push` or "
            "`embed --out` wrote"
        )

    def _node(self, name: str):
        """`self._root[name]`; at a URL a network error is one line naming the object (a
        KeyError — no such node — passes through)."""
        if not self.remote:
            return self._root[name]
        from .remote import remote_errors

        try:
            with remote_errors(self.location, name):
                return self._root[name]
        except RemoteCacheError as e:
            if isinstance(e.__context__, KeyError):
                raise e.__context__ from None
            raise

    def attrs(self, group: str = "") -> dict:
        node = self._node(group) if group else self._root
        if self.format == "hdf5":
            return {k: decode_h5_attr(v) for k, v in node.attrs.items()}
        return dict(node.attrs)

    def array_names(self, group: str) -> list[str]:
        """The arrays of a (zarr) group, in store order."""
        return list(self._node(group).array_keys())

    def has(self, name: str) -> bool:
        try:
            self._node(name)
        except KeyError:
            return False
        return True

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._node(name).shape)

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Whole array (or a row range) in one call: single-row reads cost milliseconds."""
        try:
            node = self._node(name)
        except KeyError as e:
            raise CacheError(f"{self.path} has no array '{name}': not a complete cache") from e
        if self.remote:
            data = self._read_shards(name, node, start, stop)
        else:
            try:
                data = node[slice(start, stop)]
            except Exception as e:  # a codec/checksum/IO error of the storage library
                raise CacheCorruptError(self._damage(name, node, start, stop, e)) from e
        if self.format == "hdf5" and data.dtype.kind in "OS":
            data = np.array([x.decode("utf-8") if isinstance(x, bytes) else x for x in data])
        if data.dtype.kind == "T":  # numpy StringDType from zarr v3 variable-length strings
            data = data.astype(object).astype(str) if data.size else np.zeros(data.shape, str)
        return np.asarray(data)

    def _read_shards(self, name: str, node, start, stop) -> np.ndarray:
        """A remote array read one shard at a time (a bar step each): a network error names
        the shard; anything else is damage, as for a local read."""
        lo, hi = start or 0, stop if stop is not None else (node.shape[0] if node.shape else 0)
        step = max(_shard_rows(node), 1)
        parts = []
        shards = range(lo, hi, step)  # a bar only where there is progress to show
        for a in bar(shards, enabled=self.progress and len(shards) > 1, desc=f"read {name}",
                     unit="shard", leave=False):  # fmt: skip
            b = min(a + step, hi)
            try:
                parts.append(node[a:b])
            except Exception as e:
                from .remote import _describe, is_network_error

                if not is_network_error(e):  # a codec error: the object is damaged
                    raise CacheCorruptError(self._damage(name, node, a, b, e)) from e
                raise RemoteCacheError(
                    f"cannot read {self.file_of(name, a)} (array '{name}', shard {a // step}, "
                    f"rows {a}..{b - 1}): {_describe(e)}. Re-run when the network is back."
                ) from None
        if not parts:
            return node[lo:hi]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def file_of(self, name: str, row: int | None = None) -> str:
        """The file holding array `name` (its shard containing `row`, for Zarr)."""
        if self.format == "hdf5":
            return f"{self.path} (dataset /{name})"
        if row is None:
            return str(join(self.path, name))
        node = self._root[name]
        rest = "/0" * (len(node.shape) - 1)
        return str(join(self.path, name, "c", f"{row // _shard_rows(node)}{rest}"))

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
            f"`clipcbm cache verify {self.path}` and re-create it with "
            "`clipcbm embed ... --overwrite`."
        )

    def close(self) -> None:
        if self.format == "hdf5":
            self._root.close()


def _shard_rows(node) -> int:
    """Rows per stored object of a zarr array (its shard, else its chunk)."""
    return (getattr(node, "shards", None) or node.chunks)[0]
