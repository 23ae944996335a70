"""The one reader API every stage-two command uses: `open_cache(path)` (SPEC §5).

Whole arrays are loaded in one call per split (single-row reads from Zarr cost milliseconds).
An incomplete cache is refused unless `allow_incomplete=True`. Every array read is checked
against the checksum recorded per shard when it was written (`verify=False` skips it, for users
who ran `cache verify` once): a damaged cache is an error naming the array and the shard, never
silently used. Hashing is not free: on the shared 2-core CPU a checked read of a
200,000 x 768 fp16 split took 2-3x the unchecked read, about as long as the zero-shot matmul
that follows (`benchmarks/reliability.py`, README "Nothing wrong is used silently").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from clipcbm.core.location import Location, as_location, is_remote, redact

from .backend import Backend
from .errors import CacheCorruptError, CacheError, IncompleteCacheError
from .layout import (
    CLASS_SEP,
    FORMAT_NAME,
    TEXT_GROUP,
    VIEW_ARRAY,
    ShardPlan,
    checksum_matches,
    first_bad_shard,
    recorded_array_sums,
    recorded_text_sums,
    shard_checksum,
)


@dataclass(frozen=True)
class SplitData:
    """One split, whole arrays in memory. image_emb: (N, E) float32 unit rows (0 where not ok)."""

    name: str
    image_emb: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    ok: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def valid(self) -> SplitData:
        """The rows whose image was readable (ok == True)."""
        m = self.ok
        return SplitData(self.name, self.image_emb[m], self.labels[m], self.ids[m], self.ok[m])


class Cache:
    """Read-only handle on an embedding cache (Zarr directory or HDF5 file)."""

    def __init__(
        self,
        path: Location,
        allow_incomplete: bool = False,
        verify: bool = True,
        storage_options: dict | None = None,
        progress: bool | None = None,
    ):
        self.location = as_location(path)
        # what messages and artifacts name: the path, or the URL without credentials
        self.path = redact(self.location) if is_remote(self.location) else self.location
        self.verify = verify
        self.storage_options = storage_options
        if not is_remote(self.location) and not self.location.exists():
            raise _missing(self.location)
        self._b = Backend(self.location, storage_options, progress)
        self.format = self._b.format
        self.metadata = self._b.attrs()
        if self.metadata.get("format") != FORMAT_NAME:
            raise CacheError(
                f"{self.path} is not an embedding cache (no '{FORMAT_NAME}' format tag)"
            )
        if not self.metadata.get("complete") and not allow_incomplete:
            from .verify import progress_note

            note = progress_note(self.location, storage_options)
            raise IncompleteCacheError(
                f"{self.path} is incomplete ({note}; a run was interrupted or is still writing)."
                " Re-run the same `clipcbm embed` command to finish it "
                f"(`clipcbm cache info {self.path}` shows its progress)."
            )

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._b.close()

    @property
    def fingerprint(self) -> str:
        return self.metadata["fingerprint"]

    @property
    def splits(self) -> list[str]:
        return list(self.metadata["splits"])

    @property
    def embed_dim(self) -> int:
        return int(self.metadata["embed_dim"])

    @property
    def logit_scale(self) -> float:
        return float(self.metadata["logit_scale"])

    @property
    def views(self) -> int:
        """Augmented views per image in /{split}/view_emb (0: the cache has none)."""
        return int(self.metadata.get("views", 0) or 0)

    # -- checked reads ------------------------------------------------------------------------
    def _damaged(self, name: str, what: str, row: int | None = None) -> CacheCorruptError:
        return CacheCorruptError(
            f"cache {self.path} is damaged: {name}{what} does not match the checksum recorded "
            f"when it was written ({self._b.file_of(name, row)}). Re-create it with `clipcbm "
            "embed ... --overwrite` (or pass --no-verify to use it anyway)."
        )

    def read(self, group: str, name: str) -> np.ndarray:
        """Array `group/name` whole, checked against its recorded checksum (per shard)."""
        data = self._b.read(f"{group}/{name}")
        if self.verify:
            self.check(group, name, data)
        return data

    def read_unchecked(self, group: str, name: str) -> np.ndarray:
        """Array `group/name` whole, as stored, without the checksum check: for `cache verify`,
        which checks it itself (`check`) and goes on to report more. Damage a decoder sees (a
        codec failure, a shard index) is still a CacheError."""
        return self._b.read(f"{group}/{name}")

    def has(self, group: str, name: str) -> bool:
        """Whether the store has array `group/name`."""
        return self._b.has(f"{group}/{name}")

    def check(self, group: str, name: str, data: np.ndarray) -> None:
        """Raise CacheCorruptError if `data` (array group/name as read) differs from the
        checksum recorded per shard when it was written (xxh3-128; sha256 in format 1)."""
        if group == TEXT_GROUP:
            want = recorded_text_sums(self._b.attrs(TEXT_GROUP)).get(name)
            if want is not None and not checksum_matches(name, data, want):
                raise self._damaged(f"{group}/{name}", "")
            return
        self._check_shards(group, name, data, 0)

    def _check_shards(self, group: str, name: str, data: np.ndarray, first_row: int) -> None:
        """Check `data` = rows [first_row, first_row + len(data)) of group/name, which must start
        and end on shard boundaries, against each shard's recorded checksum."""
        attrs = self.split_attrs(group)
        sums = recorded_array_sums(attrs).get(name)
        if sums is None:
            return  # an incomplete cache, or one from before per-array checksums
        plan = ShardPlan(int(attrs["n"]), int(attrs["shard_rows"]))
        if len(sums) != plan.num_shards:
            raise self._damaged(f"{group}/{name}", f" ({len(sums)} checksums for "
                                f"{plan.num_shards} shards)")  # fmt: skip
        k = first_bad_shard(name, data, sums, plan.shard_rows, first_row,
                            workers=os.cpu_count() or 1)  # fmt: skip
        if k is not None:
            r = plan.rows(k)
            raise self._damaged(
                f"{group}/{name}", f", shard {k} (rows {r.start}..{r.stop - 1}),", r.start
            )

    def n_rows(self, split: str) -> int:
        """Rows of `split` (read from the array's shape: nothing is decoded)."""
        self._check_split(split)
        return int(self._b.shape(f"{split}/labels")[0])

    def read_rows(self, split: str, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of array `split/name`, checked like a whole read: every shard the
        range touches is decoded whole and checked against its recorded checksum (read in
        shard-aligned blocks, e.g. by `iter_blocks`, nothing is decoded twice)."""
        self._check_split(split)
        n = self.n_rows(split)
        if not 0 <= start <= stop <= n:
            raise ValueError(f"rows [{start}, {stop}) are outside split {split!r} of {n} rows")
        attrs = self.split_attrs(split)
        if not self.verify or name not in recorded_array_sums(attrs) or start == stop:
            return self._b.read(f"{split}/{name}", start, stop)
        shard_rows = int(attrs["shard_rows"])
        lo, hi = start - start % shard_rows, min(n, -(-stop // shard_rows) * shard_rows)
        data = self._b.read(f"{split}/{name}", lo, hi)
        self._check_shards(split, name, data, lo)
        return data[start - lo : stop - lo]

    def iter_blocks(self, split: str, name: str, block_rows: int | None = None):
        """(start, rows) of array `split/name`, `block_rows` at a time (default: one shard),
        each block checked as it streams: the way to read a split that need not be whole."""
        n = self.n_rows(split)
        block = int(block_rows or self.split_attrs(split)["shard_rows"])
        for start in range(0, n, block):
            yield start, self.read_rows(split, name, start, min(n, start + block))

    def _legacy_check(self, name: str, arrays: dict) -> None:
        """Caches written before per-array checksums: the whole-shard sha256 of format 1."""
        attrs = self.split_attrs(name)
        sums = attrs.get("shard_sha256")
        if not self.verify or recorded_array_sums(attrs) or not sums:
            return
        norms = self._b.read(f"{name}/norms")
        plan = ShardPlan(int(attrs["n"]), int(attrs["shard_rows"]))
        for s, want in enumerate(sums):
            r = slice(plan.rows(s).start, plan.rows(s).stop)
            got = shard_checksum(
                arrays["image_emb"][r], norms[r], arrays["labels"][r], arrays["ids"][r],
                arrays["ok"][r],
            )  # fmt: skip
            if got != want:
                raise self._damaged(
                    f"{name}", f" shard {s} (rows {r.start}..{r.stop - 1})", r.start
                )

    def _text(self, name: str) -> list[str]:
        return [str(s) for s in self.read(TEXT_GROUP, name)]

    @cached_property
    def concepts(self) -> list[str]:
        return self._text("concepts")

    @cached_property
    def classes(self) -> list[str]:
        return self._text("classes")

    @cached_property
    def templates(self) -> list[str]:
        return self._text("templates")

    @cached_property
    def concept_classes(self) -> list[list[str]]:
        return [s.split(CLASS_SEP) if s else [] for s in self._text("concept_classes")]

    def concept_emb(self) -> np.ndarray:
        return self._text_emb("concept_emb", lambda: self.concepts)

    def class_emb(self) -> np.ndarray:
        return self._text_emb("class_emb", lambda: self.classes)

    def _text_emb(self, name: str, names) -> np.ndarray:
        """text/`name` as float32, refused when a row holds NaN/inf, with or without `verify`:
        a head fitted on it has NaN weights and every score is empty. The one check of every
        stage-two read of text embeddings; cheap (|D| x E)."""
        emb = self.read(TEXT_GROUP, name).astype(np.float32)
        finite = np.isfinite(emb.reshape(len(emb), -1))
        bad = np.flatnonzero(~finite.all(axis=1))
        if bad.size:
            i, row = int(bad[0]), emb[int(bad[0])]
            kinds = " and ".join(k for k, m in (("NaN", np.isnan(row)), ("inf", np.isinf(row)))
                                 if m.any())  # fmt: skip
            labels = names()
            label = f" ({labels[i]!r})" if len(labels) == len(emb) else ""
            more = f", {bad.size} of {len(emb)} rows in all" if bad.size > 1 else ""
            raise CacheCorruptError(
                f"{TEXT_GROUP}/{name} row {i}{label} holds non-finite values ({kinds}{more}); the "
                f"cache {self.path} is damaged (--no-verify does not skip this check) — re-run "
                f"`clipcbm embed ... --out {self.path} --overwrite`"
            )
        return emb

    def split_attrs(self, name: str) -> dict:
        self._check_split(name)
        if name not in self._attrs:
            self._attrs[name] = self._b.attrs(name)
        return self._attrs[name]

    @cached_property
    def _attrs(self) -> dict:
        return {}

    def _check_split(self, name: str) -> None:
        if name not in self.splits:
            raise CacheError(f"split '{name}' is not in {self.path}; it has {self.splits}")

    def split(self, name: str) -> SplitData:
        self._check_split(name)
        raw = {k: self.read(name, k) for k in ("image_emb", "labels", "ids", "ok")}
        self._legacy_check(name, raw)
        return SplitData(
            name=name,
            image_emb=raw["image_emb"].astype(np.float32),
            labels=raw["labels"].astype(np.int64),
            ids=raw["ids"].astype(str),
            ok=raw["ok"].astype(bool),
        )

    def view_emb(self, name: str) -> np.ndarray:
        """(N, V, E) float32 unit rows: the V augmented views of each image of split `name`."""
        self._check_split(name)
        if not self.views:
            raise CacheError(
                f"cache {self.path} has no augmented views; write one with `clipcbm embed ... "
                "--views V --augment simclr`"
            )
        return self.read(name, VIEW_ARRAY).astype(np.float32)


def _missing(path: Path) -> CacheError:
    """No cache at `path`: an HDF5 run still in progress (its staging store exists) or none."""
    from .verify import _staging, progress_note

    staged = _staging(path)
    if staged is None:
        return CacheError(f"no cache at {path}: run `clipcbm embed --out {path}` first")
    return IncompleteCacheError(
        f"{path} is an HDF5 cache still in progress ({progress_note(staged)}, staged in "
        f"{staged}; a run was interrupted or is still writing). Re-run the same `clipcbm embed "
        f"... --out {path}` command to finish it (`clipcbm cache info {path}` shows its progress)."
    )


def remote_bars(progress: bool) -> bool | None:
    """open_cache's `progress` for a command's --progress/--no-progress: off stays off; on
    lets the reader decide (remote shard bars on a terminal, none in a log)."""
    return None if progress else False


def open_cache(
    location: str | Path,
    allow_incomplete: bool = False,
    verify: bool = True,
    storage_options: dict | None = None,
    progress: bool | None = None,
) -> Cache:
    """Open a cache written by `clipcbm embed` (or `write_cache`, `cache push`): a local path or
    a URL (s3://, gs://, http(s)://, hf://; `cache.remote`). `verify=False` skips the per-shard
    checksum check of every read. `storage_options` go to the fsspec backend (credentials are
    best left to its environment/config); `progress` shows a bar per array (default: for a
    URL, when stderr is a terminal)."""
    return Cache(
        location, allow_incomplete=allow_incomplete, verify=verify,
        storage_options=storage_options, progress=progress,
    )  # fmt: skip
