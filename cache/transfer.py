"""`cache push` / `cache pull`: copy a finished Zarr cache between two locations, resumably.

The copy goes object by object (every zarr.json, every shard). Each object is hashed as read
from the source and hashed again as read back from the destination; only a match writes its
marker `.transfer/<key>.json` at the destination, so a re-run after a kill skips the objects
already present and verified and copies the rest. Before the end every array is decoded at the
destination and checked against the per-shard checksums the writer recorded (the same check as
a checked read), then the root `zarr.json` — which holds `complete: true` — is written last: until
then the destination has no root group and no reader can take a partial copy for a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np

from clipcbm.core.location import Location, as_location, is_remote, location_str
from clipcbm.core.progress import bar

from .backend import format_of
from .errors import CacheCorruptError, CacheError, CacheExistsError, RemoteCacheError
from .layout import (
    TEXT_GROUP,
    ShardPlan,
    checksum_matches,
    first_bad_shard,
    recorded_array_sums,
    recorded_text_sums,
)
from .reader import open_cache
from .remote import Tree, open_store
from .writer import PROGRESS_DIR

log = logging.getLogger(__name__)

MARKS = ".transfer"  # at the destination while a copy is unfinished
ROOT = "zarr.json"  # the root group's metadata: the cache's completion marker, copied last


@dataclass(frozen=True)
class TransferReport:
    """What one `cache push`/`pull` did: objects copied now, skipped (already verified), bytes."""

    source: str
    dest: str
    copied: int
    skipped: int
    bytes_copied: int
    status: str  # "copied" | "resumed" | "complete" (the destination already held it)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mark(rel: str) -> str:
    return f"{MARKS}/{hashlib.sha1(rel.encode()).hexdigest()}.json"


def _refuse_hdf5(*locations: Location) -> None:
    for loc in locations:
        if format_of(loc) == "hdf5":
            raise CacheError(
                f"{location_str(loc)} is an HDF5 file: push/pull copy zarr caches (write one "
                "with `embed --out DIR` without .h5)"
            )


def copy_cache(
    source: str | Location,
    dest: str | Location,
    *,
    source_options: dict | None = None,
    dest_options: dict | None = None,
    progress: bool = True,
    verify: bool = True,
) -> TransferReport:
    """Copy the complete cache at `source` to `dest` (any two locations), resuming a copy
    that was interrupted. `verify=False` skips the decoded per-shard check at the end (each
    object is still hashed on arrival)."""
    src, dst = as_location(source), as_location(dest)
    _refuse_hdf5(src, dst)
    with open_cache(src, verify=False, storage_options=source_options, progress=False) as c:
        fingerprint, splits = c.fingerprint, c.splits  # refuses an incomplete source
    s_tree, d_tree = Tree(src, source_options), Tree(dst, dest_options)
    if d_tree.read_only:
        raise RemoteCacheError(
            f"cannot copy to {location_str(dst)}: http(s):// locations are read-only; push to "
            "s3://, gs://, hf:// or a local path and serve that"
        )
    objects = {k: n for k, n in s_tree.files().items() if not k.startswith((PROGRESS_DIR, MARKS))}
    there = d_tree.files()
    if ROOT in there:
        return _already_there(src, dst, dest_options, fingerprint, d_tree, len(objects))
    job = _claim(d_tree, there, dst, fingerprint, objects)
    order = sorted(k for k in objects if k != ROOT)  # the root last: it marks completion
    copied = skipped = nbytes = 0
    for rel in bar(order, enabled=progress, desc=f"copy to {location_str(dst)}", unit="object"):
        if _verified(d_tree, there, rel):
            skipped += 1
            continue
        nbytes += _copy_one(s_tree, d_tree, rel, objects[rel])
        copied += 1
    if verify:
        _check_arrays(dst, dest_options, splits)
    _copy_one(s_tree, d_tree, ROOT, objects[ROOT])
    d_tree.remove(MARKS)
    status = "resumed" if job == "resume" else "copied"
    log.info("%s: %d objects copied (%.1f MiB), %d already there", location_str(dst),
             copied + 1, nbytes / 2**20, skipped)  # fmt: skip
    return TransferReport(location_str(src), location_str(dst), copied + 1, skipped, nbytes,
                          status)  # fmt: skip


def _already_there(src, dst, options, fingerprint, d_tree, n_objects) -> TransferReport:
    """The destination has a root group: the same finished cache (done), or another one."""
    with open_cache(dst, allow_incomplete=True, verify=False, storage_options=options,
                    progress=False) as there:  # fmt: skip
        same = there.fingerprint == fingerprint and there.metadata.get("complete")
    if not same:
        raise CacheExistsError(
            f"{location_str(dst)} already holds a different cache; choose another destination "
            "(or delete it with the backend's own tools)"
        )
    d_tree.remove(MARKS)  # a copy killed after its root was written: only the markers left
    return TransferReport(location_str(src), location_str(dst), 0, n_objects, 0, "complete")


def _claim(d_tree: Tree, there: dict, dst, fingerprint: str, objects: dict) -> str:
    """'new' (an empty destination, now ours) or 'resume' (our unfinished copy of this cache);
    anything else at the destination is refused."""
    job_key = f"{MARKS}/source.json"
    if job_key in there:
        job = json.loads(d_tree.read(job_key))
        if job.get("fingerprint") != fingerprint:
            raise CacheExistsError(
                f"{location_str(dst)} holds an unfinished copy of another cache (fingerprint "
                f"{str(job.get('fingerprint'))[:12]}...); choose another destination"
            )
        return "resume"
    if there:
        raise CacheExistsError(
            f"{location_str(dst)} is not empty ({len(there)} objects) and holds no cache; "
            "choose an empty destination"
        )
    d_tree.write(job_key, json.dumps({"fingerprint": fingerprint, "objects": objects}).encode())
    return "new"


def _verified(d_tree: Tree, there: dict, rel: str) -> bool:
    """Already copied and checked by an earlier run: its marker exists and the object has the
    size the marker recorded."""
    mark = _mark(rel)
    if mark not in there or rel not in there:
        return False
    return json.loads(d_tree.read(mark)).get("size") == there[rel]


def _copy_one(s_tree: Tree, d_tree: Tree, rel: str, size: int) -> int:
    data = s_tree.read(rel)
    if len(data) != size:
        raise CacheError(f"{location_str(s_tree.location)}/{rel} changed during the copy")
    want = _sha(data)
    d_tree.write(rel, data)
    if _sha(d_tree.read(rel)) != want:
        raise RemoteCacheError(
            f"{location_str(d_tree.location)}/{rel} arrived damaged (sha256 differs from the "
            "source); re-run the same command to copy it again"
        )
    d_tree.write(_mark(rel), json.dumps({"rel": rel, "sha256": want, "size": size}).encode())
    return len(data)


def _groups(dst: Location, options: dict | None, splits: list[str]):
    """(name, zarr group) of every split and the text group at the destination, opened
    without the root group (which is not there yet)."""
    import zarr

    store = (
        open_store(str(dst), options, read_only=True)
        if is_remote(dst)
        else zarr.storage.LocalStore(str(dst), read_only=True)
    )
    for name in [*splits, TEXT_GROUP]:
        yield name, zarr.open_group(store, path=name, mode="r", zarr_format=3)


def _check_arrays(dst: Location, options: dict | None, splits: list[str]) -> None:
    """Decode every array at the destination and compare it, shard by shard, with the checksum
    the writer recorded; a mismatch means the source itself is damaged."""
    for name, group in _groups(dst, options, splits):
        attrs = dict(group.attrs)
        if name == TEXT_GROUP:
            for k, want in recorded_text_sums(attrs).items():
                _expect(dst, f"{name}/{k}", checksum_matches(k, np.asarray(group[k][:]), want))
            continue
        plan = ShardPlan(int(attrs["n"]), int(attrs["shard_rows"]))
        for k, sums in recorded_array_sums(attrs).items():
            for s in range(plan.num_shards):  # one shard in memory at a time
                r = plan.rows(s)
                data = np.asarray(group[k][r.start : r.stop])
                bad = first_bad_shard(k, data, sums, plan.shard_rows, r.start)
                _expect(dst, f"{name}/{k} shard {s}", bad is None)


def _expect(dst: Location, what: str, ok: bool) -> None:
    if not ok:
        raise CacheCorruptError(
            f"{what} copied to {location_str(dst)} does not match the checksum recorded when the "
            "cache was written: the source is damaged (check it with `cache verify`); the copy "
            "is left unfinished"
        )
