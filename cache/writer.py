"""Resumable, shard-at-a-time cache writer (SPEC §5).

Every format is first written as a Zarr v3 directory store: the final path for `zarr`, a staging
directory `<out>.partial.zarr` for `hdf5`. Whole shards are the unit of work; after a shard's
arrays are written a marker `.progress/<split>/<shard>.json` (with its checksum) is renamed into
place, so a killed run re-run with the same command redoes only unmarked shards. `finalize` checks
every marker, moves checksums and failures into attributes, flips `complete`, removes the markers
and, for HDF5, exports to `<out>.tmp` and renames it over `<out>` — a reader never sees a
half-written file as complete.

A zarr `--out` may be a URL (s3://, gs://, hf://; `cache.remote`): the same store, written shard
by shard through zarr's FsspecStore, with the same markers (objects under `.progress/`) and the
same `complete` flag flipped last. An object store has no rename, so the store is created in
place and `.progress/created.json` marks its creation finished; a creation killed before it is
removed and redone by the next run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from clipcbm.core.location import Location, as_location, is_remote, location_str

from .backend import Backend, encode_h5_attr, format_of
from .errors import CacheConfigError, CacheError, CacheExistsError, CacheWriteError
from .layout import (
    CLASS_SEP,
    DEFAULT_CHUNK_ROWS,
    DEFAULT_SHARD_ROWS,
    FORMAT_NAME,
    FORMAT_VERSION,
    TEXT_GROUP,
    VIEW_ARRAY,
    ShardPlan,
    array_checksum,
    count_overlap_streamed,
    sha256_json,
    shard_checksum,
)

PROGRESS_DIR = ".progress"
CREATED = f"{PROGRESS_DIR}/created.json"  # a remote store whose creation finished


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            return shutil.disk_usage(p).free
    return None


@contextlib.contextmanager
def disk_errors(path: Path, what: str, need_bytes: int | None = None):
    """An OSError while writing becomes one CacheWriteError naming the path (and, for a full
    disk, the space needed and free); work already marked done is untouched, so re-running the
    same command resumes."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            free = _free_bytes(Path(path))
            need = f"; about {need_bytes / 2**20:.1f} MiB needed" if need_bytes else ""
            have = f", {free / 2**20:.1f} MiB free" if free is not None else ""
            raise CacheWriteError(
                f"no space left on the device while writing {what} to {path}{need}{have}. Free "
                "some space (or pick another --out) and re-run the same command: finished "
                "shards are kept and the run resumes."
            ) from e
        raise CacheWriteError(
            f"cannot write {what} to {path}: {e.strerror or e} (errno {e.errno}). Fix it and "
            "re-run the same command: finished shards are kept and the run resumes."
        ) from e


def _atomic_write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, sort_keys=True))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _existing_identity(path: Location, storage_options: dict | None = None) -> dict | None:
    """Root attributes of a cache (or staging store) at `path`; None if it is not one of ours."""
    try:
        attrs = Backend(path, storage_options, progress=False).attrs()
    except CacheError:
        return None
    return attrs if attrs.get("format") == FORMAT_NAME else None


def remove_cache(path: Path) -> None:
    """Delete a cache, but only something recognisably ours (or an empty directory)."""
    if not path.exists():
        return
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        return
    if _existing_identity(path) is None:
        raise CacheExistsError(
            f"{path} exists and is not an embedding cache; refusing to delete it even with "
            "--overwrite. Choose another --out."
        )
    shutil.rmtree(path) if path.is_dir() else path.unlink()


class CacheWriter:
    """Create-or-resume writer for one cache. Rank 0 calls `prepare`, other ranks `attach`."""

    def __init__(
        self,
        path: Location,
        *,
        identity: dict,
        metadata: dict,
        split_sizes: dict[str, int],
        embed_dim: int,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        shard_rows: int = DEFAULT_SHARD_ROWS,
        views: int = 0,
        storage_options: dict | None = None,
    ):
        if views < 0:
            raise ValueError(f"views must be >= 0, got {views}")
        if shard_rows % min(chunk_rows, shard_rows):
            raise ValueError(
                f"shard_rows={shard_rows} must be a multiple of chunk_rows={chunk_rows}"
            )
        self.path = as_location(path)
        self.format = format_of(self.path)
        self.remote = is_remote(self.path)
        self.storage_options = storage_options
        if self.remote and self.format == "hdf5":
            raise CacheConfigError(
                f"--out {location_str(self.path)}: an HDF5 cache is one local file; write a zarr "
                "cache to a URL (no .h5 suffix), or an .h5 to a local path"
            )
        self.store_path = (
            self.path
            if self.format == "zarr"
            else self.path.with_name(self.path.name + ".partial.zarr")
        )
        self.identity = identity
        self.fingerprint = sha256_json(identity)
        self.metadata = metadata
        self.plans = {s: ShardPlan(n, shard_rows) for s, n in split_sizes.items()}
        self.embed_dim = embed_dim
        self.chunk_rows = min(chunk_rows, shard_rows)
        self.shard_rows = shard_rows
        self.views = views  # augmented views per image stored in /{split}/view_emb (0: none)
        self._group = None
        self._tree = None
        if self.remote:
            from .remote import Tree

            self._tree = Tree(self.path, storage_options)

    # -- lifecycle ---------------------------------------------------------------------------
    def prepare(self, overwrite: bool = False) -> str:
        """Returns 'complete' (nothing to do), 'resume' or 'new'. Run on one process only."""
        if self.remote:
            return self._prepare_remote(overwrite)
        self._check_out_path()
        stale = self.path.with_name(self.path.name + ".tmp")
        if self.format == "hdf5" and stale.is_file():
            stale.unlink()  # an HDF5 export killed half-way: ours by name, holds only space
        final = _existing_identity(self.path) if self.path.exists() else None
        if self._same(final) and final.get("complete") and not overwrite:
            return "complete"
        if self.path.exists() and not (self.format == "zarr" and self._same(final)):
            self._refuse_or_remove(self.path, final, overwrite)
        if self.format == "hdf5" and self.store_path.exists():
            staged = _existing_identity(self.store_path)
            if not self._same(staged):
                self._refuse_or_remove(self.store_path, staged, overwrite, staging=True)
        if overwrite and self.store_path.exists():
            remove_cache(self.store_path)
        if self.store_path.exists():
            self.attach()
            return "resume"
        with disk_errors(self.store_path, "a new cache"):
            self._create()
        return "new"

    def _check_out_path(self) -> None:
        """Refuse an --out that can never be written (its folder is a file; a directory where
        the HDF5 file goes); an empty directory is a fresh zarr output (removed, then created)."""
        parent = next((p for p in self.path.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            which = "the parent" if parent == self.path.parent else "a parent folder"
            raise CacheConfigError(
                f"{which} of --out, {parent}, is a file, not a directory; choose an --out "
                "inside a directory (or move that file away)"
            )
        empty_dir = self.path.is_dir() and not any(self.path.iterdir())
        if self.format == "hdf5" and self.path.is_dir():
            raise CacheConfigError(
                f"--out {self.path} is {'an empty' if empty_dir else 'a'} directory, but an "
                f"HDF5 cache is one file: give a file path such as {self.path / 'cache.h5'}, "
                "or a directory --out without .h5 for a zarr cache"
            )
        if self.format == "zarr" and empty_dir:
            self.path.rmdir()  # an empty directory is a fresh output: _create renames into it

    def _prepare_remote(self, overwrite: bool) -> str:
        """prepare() for a URL: the same decisions, read from the objects under it."""
        tree, where = self._tree, location_str(self.path)
        final = _existing_identity(self.path, self.storage_options) if tree.exists(
            "zarr.json") else None  # fmt: skip
        if self._same(final) and final.get("complete") and not overwrite:
            return "complete"
        if self._same(final) and not overwrite and tree.exists(CREATED):
            self.attach()
            return "resume"
        if final is None and tree.files():
            raise CacheExistsError(
                f"{where} holds objects that are not an embedding cache; refusing to write there "
                "(even with --overwrite). Choose another --out."
            )
        if final is not None and not self._same(final) and not overwrite:
            self._refuse_or_remove(self.path, final, overwrite)
        tree.remove("")  # ours: a different cache under --overwrite, or a creation killed early
        with self._io("a new cache"):
            self._create_remote()
        return "new"

    def _create_remote(self) -> None:
        import zarr

        from .remote import open_store

        store = open_store(str(self.path), self.storage_options, read_only=False)
        group = zarr.open_group(store, mode="w-", zarr_format=3)
        group.attrs.update(self._root_attrs())
        for split, plan in self.plans.items():
            self._create_split(group, split, plan)
        self._put_mark(CREATED, {"done": True})
        self._group = group

    def _io(self, what: str, need_bytes: int | None = None):
        """The error mapping of a write: the disk's for a path, the backend's for a URL."""
        if self.remote:
            from .remote import remote_errors

            return remote_errors(self.path, what)
        return disk_errors(self.store_path, what, need_bytes)

    # markers: files under .progress/ for a path, objects under it for a URL
    def _has_mark(self, rel: str) -> bool:
        return self._tree.exists(rel) if self.remote else (self.store_path / rel).exists()

    def _put_mark(self, rel: str, obj: object) -> None:
        if self.remote:  # one PUT: an object appears whole or not at all
            self._tree.write(rel, json.dumps(obj, sort_keys=True).encode("utf-8"))
        else:
            _atomic_write_json(self.store_path / rel, obj)

    def _get_mark(self, rel: str) -> dict:
        raw = self._tree.read(rel) if self.remote else (self.store_path / rel).read_bytes()
        return json.loads(raw)

    def _drop_marks(self) -> None:
        if self.remote:
            self._tree.remove(PROGRESS_DIR)
        else:
            shutil.rmtree(self.store_path / PROGRESS_DIR)

    def attach(self) -> None:
        import zarr

        if self.remote:
            from .remote import open_store

            store = open_store(str(self.path), self.storage_options, read_only=False)
            group = zarr.open_group(store, mode="r+", zarr_format=3)
        else:
            group = zarr.open_group(str(self.store_path), mode="r+")
        if group.attrs.get("fingerprint") != self.fingerprint:
            raise CacheExistsError(
                f"{self.store_path} belongs to a different run (fingerprint differs)"
            )
        self._group = group

    def _same(self, attrs: dict | None) -> bool:
        return attrs is not None and attrs.get("fingerprint") == self.fingerprint

    def _refuse_or_remove(self, path: Path, attrs: dict | None, overwrite: bool, staging=False):
        if overwrite:
            remove_cache(path)
            return
        what = "an unfinished run's staging store" if staging else "a different cache"
        diff = ""
        if attrs is not None:
            old = attrs.get("identity", {})
            new = json.loads(json.dumps(self.identity))  # as stored: tuples are lists in JSON
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            diff = f" (differs in: {', '.join(keys)})" if keys else ""
        elif path.exists():
            what = "something that is not an embedding cache"
        raise CacheExistsError(
            f"{location_str(path)} already holds {what}{diff}. Pass --overwrite to replace it, or "
            "choose another --out."
        )

    def _creating(self) -> Path:
        return self.store_path.with_name(f".{self.store_path.name}.creating")

    def _create(self) -> None:
        """Create the empty store in a hidden sibling and rename it into place when every
        array exists: a run killed while creating leaves nothing that blocks the retry."""
        import zarr

        self.store_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._creating()
        if tmp.exists():
            shutil.rmtree(tmp)  # a creation killed half-way: ours by name, nothing finished
        group = zarr.open_group(str(tmp), mode="w-")
        group.attrs.update(self._root_attrs())
        for split, plan in self.plans.items():
            self._create_split(group, split, plan)
        os.replace(tmp, self.store_path)
        self._group = zarr.open_group(str(self.store_path), mode="r+")

    def _root_attrs(self) -> dict:
        return {
            **self.metadata,
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "identity": self.identity,
            "created": self.metadata.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "splits": sorted(self.plans),
            "views": self.views,
            "complete": False,
        }

    def _create_split(self, group, split: str, plan: ShardPlan) -> None:
        g = group.create_group(split)
        n, e = plan.n_rows, self.embed_dim
        rows = max(1, min(self.chunk_rows, n)) if n else self.chunk_rows
        shard = self.shard_rows if n > rows else rows
        # fp16 embeddings stored uncompressed (SPEC §5): they do not compress and decode fastest.
        g.create_array(
            "image_emb",
            shape=(n, e),
            chunks=(rows, e),
            shards=(shard, e),
            dtype="float16",
            compressors=None,
            fill_value=0,
        )
        if self.views:
            g.create_array(
                VIEW_ARRAY,
                shape=(n, self.views, e),
                chunks=(rows, self.views, e),
                shards=(shard, self.views, e),
                dtype="float16",
                compressors=None,
                fill_value=0,
            )
        # 1-D arrays get one chunk per shard so a shard write touches exactly one file.
        for name, dtype, fill in (
            ("norms", "float32", 0.0),
            ("labels", "int64", -1),
            ("ok", "bool", False),
            ("ids", str, ""),
        ):
            g.create_array(
                name,
                shape=(n,),
                chunks=(max(1, min(self.shard_rows, n)),),
                dtype=dtype,
                fill_value=fill,
            )
        g.attrs.update(
            {
                "n": n,
                "chunk_rows": rows,
                "shard_rows": self.shard_rows,
                "num_shards": plan.num_shards,
                "complete": False,
            }
        )

    # -- work --------------------------------------------------------------------------------
    def _marker(self, split: str, shard: int) -> str:
        return f"{PROGRESS_DIR}/{split}/{shard:06d}.json"

    def pending_shards(self, split: str, rank: int = 0, world: int = 1) -> list[int]:
        plan = self.plans[split]
        if self.remote:  # one listing, not a request per shard
            done = set(self._tree.files(f"{PROGRESS_DIR}/{split}"))
            return [s for s in plan.owned_by(rank, world) if self._marker(split, s) not in done]
        return [s for s in plan.owned_by(rank, world) if not self._has_mark(self._marker(split, s))]

    def write_shard(
        self,
        split: str,
        shard: int,
        *,
        image_emb,
        norms,
        labels,
        ids,
        ok,
        failures: list[dict] | None = None,
        view_emb=None,
    ) -> None:
        """Write one whole shard (all rows it spans), then its completion marker, which records
        a checksum per array (xxh3-128, checked by every reader) and the shard's unreadable
        images."""
        rows = self.plans[split].rows(shard)
        sl = slice(rows.start, rows.stop)
        arrays = {
            "image_emb": np.asarray(image_emb, dtype=np.float16),
            "norms": np.asarray(norms, dtype=np.float32),
            "labels": np.asarray(labels, dtype=np.int64),
            "ok": np.asarray(ok, dtype=bool),
            "ids": np.asarray([str(i) for i in ids], dtype=str),
        }
        if (view_emb is None) != (self.views == 0):
            raise ValueError(
                f"{split}: this cache stores {self.views} views per image; "
                + ("view_emb is missing" if view_emb is None else "got view_emb")
            )
        if view_emb is not None:
            arrays[VIEW_ARRAY] = np.asarray(view_emb, dtype=np.float16)
            if arrays[VIEW_ARRAY].shape[1:] != (self.views, self.embed_dim):
                raise ValueError(
                    f"{split}/{VIEW_ARRAY}: shard {shard} needs shape (rows, {self.views}, "
                    f"{self.embed_dim}), got {arrays[VIEW_ARRAY].shape}"
                )
        for name, arr in arrays.items():
            if arr.shape[0] != len(rows):
                raise ValueError(
                    f"{split}/{name}: shard {shard} needs {len(rows)} rows, got {arr.shape[0]}"
                )
        need = sum(a.nbytes for a in arrays.values())
        with self._io(f"{split} shard {shard}", need):
            for name, arr in arrays.items():
                self._group[f"{split}/{name}"][sl] = arr
        checksum = shard_checksum(
            arrays["image_emb"], arrays["norms"], arrays["labels"], arrays["ids"], arrays["ok"]
        )
        sums = {name: array_checksum(name, arr) for name, arr in arrays.items()}
        with self._io(f"the marker of {split} shard {shard}"):
            self._put_mark(
                self._marker(split, shard),
                {"checksum": checksum, "arrays": sums, "failures": failures or []},
            )

    def write_text(
        self, *, concept_emb, class_emb, concepts, classes, templates, concept_classes=None
    ) -> None:
        with self._io("the text embeddings"):
            self._write_text(concept_emb, class_emb, concepts, classes, templates, concept_classes)

    def _write_text(self, concept_emb, class_emb, concepts, classes, templates, concept_classes):
        g = self._group.require_group(TEXT_GROUP)
        cc = concept_classes or [[] for _ in concepts]
        for name, value in (
            ("concept_emb", np.asarray(concept_emb, np.float32)),
            ("class_emb", np.asarray(class_emb, np.float32)),
        ):
            if name in g:
                del g[name]
            g.create_array(name, data=value, chunks=value.shape or (1,))
        for name, items in (
            ("concepts", list(concepts)),
            ("classes", list(classes)),
            ("templates", list(templates)),
            ("concept_classes", [CLASS_SEP.join(c) for c in cc]),
        ):
            if name in g:
                del g[name]
            arr = g.create_array(
                name, shape=(len(items),), chunks=(max(1, len(items)),), dtype=str, fill_value=""
            )
            if items:
                arr[:] = np.asarray(items, dtype=str)
        g.attrs["checksums"] = {
            name: array_checksum(name, np.asarray(g[name][:]))
            for name in ("concept_emb", "class_emb", "concepts", "classes", "templates",
                         "concept_classes")
        }  # fmt: skip
        self._put_mark(f"{PROGRESS_DIR}/text.json", {"done": True})

    def text_done(self) -> bool:
        return self._has_mark(f"{PROGRESS_DIR}/text.json")

    # -- finish ------------------------------------------------------------------------------
    def finalize(self, extra_metadata: dict | None = None) -> Path:
        """Check every marker, record checksums/failures, flip `complete`; export HDF5."""
        missing = [f"{s}/{k}" for s in self.plans for k in self.pending_shards(s)]
        if missing or not self.text_done():
            raise CacheError(
                f"cannot finalize {location_str(self.path)}: unfinished shards {missing[:10]}"
                + ("" if self.text_done() else " and text embeddings")
            )
        for split, plan in self.plans.items():
            marks = [self._get_mark(self._marker(split, s)) for s in range(plan.num_shards)]
            names = sorted(marks[0]["arrays"]) if marks else []
            self._group[split].attrs.update(
                {
                    "shard_sha256": [m["checksum"] for m in marks],
                    "array_checksums": {k: [m["arrays"][k] for m in marks] for k in names},
                    "failures": [f for m in marks for f in m["failures"]],
                    "complete": True,
                }
            )
        self._group.attrs.update(
            {**(extra_metadata or {}), "overlap": self._overlaps(), "complete": True}
        )
        self._drop_marks()
        if self.format == "hdf5":
            need = _tree_bytes(self.store_path)
            with disk_errors(self.path, "the HDF5 export", need):
                export_hdf5(self.store_path, self.path)
            shutil.rmtree(self.store_path)
        return self.path

    def _overlaps(self) -> dict:
        """{"a|b": {"embeddings": n, "ids": m}} for every pair of splits: recorded once here so
        that stage two can refuse a train/test pair that shares rows without re-reading both."""
        splits = sorted(self.plans)
        if len(splits) < 2:
            return {}

        def reader(split):  # blocks of a split: finalising never holds a whole split
            return lambda name, start, stop: self._group[f"{split}/{name}"][start:stop]

        ids = {s: np.asarray(self._group[f"{s}/ids"][:]) for s in splits}
        return {
            f"{a}|{b}": count_overlap_streamed(reader(a), self.plans[a].n_rows, reader(b),
                                               self.plans[b].n_rows, ids[a], ids[b])
            for i, a in enumerate(splits)
            for b in splits[i + 1 :]
        }  # fmt: skip


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export_hdf5(store: Path, out: Path) -> None:
    """Copy a finished Zarr store into one HDF5 file with the same tree, atomically: written to
    `<out>.tmp`, renamed over `<out>`; on any failure the temporary file is removed (it would
    hold the space a retry needs)."""
    tmp = out.with_name(out.name + ".tmp")
    try:
        _export(store, tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _export(store: Path, tmp: Path) -> None:
    import h5py

    src = Backend(store)
    with h5py.File(tmp, "w") as f:
        for k, v in src.attrs().items():
            f.attrs[k] = encode_h5_attr(v)
        for group in [*src.attrs()["splits"], TEXT_GROUP]:
            g = f.create_group(group)
            for k, v in src.attrs(group).items():
                g.attrs[k] = encode_h5_attr(v)
            for name in src.array_names(group):
                data = src.read(f"{group}/{name}")
                if data.dtype.kind == "U":
                    g.create_dataset(name, data=data.astype(object), dtype=h5py.string_dtype())
                else:
                    chunks = (
                        (min(DEFAULT_CHUNK_ROWS, len(data)), *data.shape[1:]) if len(data) else None
                    )
                    g.create_dataset(name, data=data, chunks=chunks)
    src.close()
