"""`cache verify` and `cache info`: integrity checks and a human summary of a cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipcbm.core.location import Location, as_location, is_remote, scheme_of

from .errors import CacheCorruptError, CacheError
from .layout import TEXT_GROUP, VIEW_ARRAY, ShardPlan, recorded_array_sums, shard_checksum
from .reader import Cache, open_cache
from .remote import READ_ONLY_SCHEMES, Tree
from .writer import PROGRESS_DIR

NORM_TOL = 5e-3  # fp16 storage keeps unit norms to about 1e-3


def _disk_bytes(location: Location, storage_options: dict | None = None) -> int | None:
    """Bytes stored (None where the backend cannot list, e.g. a plain http server)."""
    if isinstance(location, Path) and location.is_file():
        return location.stat().st_size
    if scheme_of(location) in READ_ONLY_SCHEMES:
        return None  # a web server lists no sizes
    try:
        return sum(Tree(location, storage_options).files().values())
    except CacheError:
        return None


def _check_rows(name: str, emb: np.ndarray, ok: np.ndarray) -> list[str]:
    problems = []
    if not np.isfinite(emb).all():
        problems.append(f"{name}/image_emb has {int((~np.isfinite(emb)).sum())} non-finite values")
    norms = np.linalg.norm(emb, axis=1)
    bad = np.flatnonzero(ok & (np.abs(norms - 1) > NORM_TOL))
    if bad.size:
        problems.append(
            f"{name}/image_emb: {bad.size} ok rows are not unit norm (first row {bad[0]})"
        )
    if np.any(norms[~ok] != 0):
        problems.append(f"{name}/image_emb: rows of unreadable images are not zero")
    return problems


def _read_all(cache: Cache, group: str, names) -> tuple[dict, list[str]]:
    """Read each array and check its recorded checksum; an array that cannot be decoded or does
    not match becomes a problem line (a mismatching one is still returned, so the content
    checks can say more)."""
    arrays, problems = {}, []
    for k in names:
        try:
            arrays[k] = cache.read_unchecked(group, k)
        except CacheError as e:  # storage level: codec, shard index, truncated file
            problems.append(str(e))
            continue
        try:
            cache.check(group, k, arrays[k])
        except CacheCorruptError as e:
            problems.append(str(e))
    return arrays, problems


def _n_classes(cache: Cache) -> int:
    """How many classes, even when text/classes is damaged (that is reported by _check_text)."""
    try:
        return len(cache.classes)
    except CacheCorruptError:
        return len(cache.read_unchecked(TEXT_GROUP, "classes"))


def _check_split(cache: Cache, name: str) -> list[str]:
    attrs = cache.split_attrs(name)
    names = ["image_emb", "norms", "labels", "ids", "ok"] + ([VIEW_ARRAY] if cache.views else [])
    arrays, problems = _read_all(cache, name, names)
    if len(arrays) < len(names):
        return problems
    n = attrs["n"]
    problems += [
        f"{name}/{k} has {len(v)} rows, expected {n}" for k, v in arrays.items() if len(v) != n
    ]
    if any(len(v) != n for v in arrays.values()):
        return problems
    if arrays["image_emb"].shape[1:] != (cache.embed_dim,):
        problems.append(
            f"{name}/image_emb shape {arrays['image_emb'].shape}, expected E={cache.embed_dim}"
        )
    ok = arrays["ok"].astype(bool)
    problems += _check_rows(name, arrays["image_emb"].astype(np.float32), ok)
    if VIEW_ARRAY in arrays:
        v = arrays[VIEW_ARRAY].astype(np.float32)
        for j in range(v.shape[1]):
            problems += _check_rows(f"{name}/{VIEW_ARRAY}[:, {j}]", v[:, j], ok)
    lab, n_classes = arrays["labels"][ok], _n_classes(cache)
    if lab.size and (lab.min() < 0 or lab.max() >= n_classes):
        problems.append(f"{name}/labels outside 0..{n_classes - 1}")
    plan = ShardPlan(n, attrs["shard_rows"])
    if recorded_array_sums(attrs):  # checked per array above
        return problems
    sums = attrs.get("shard_sha256", [])  # caches from before per-array checksums
    if len(sums) != plan.num_shards:
        problems.append(f"{name}: {len(sums)} shard checksums recorded, expected {plan.num_shards}")
    for s in range(min(len(sums), plan.num_shards)):
        r = plan.rows(s)
        got = shard_checksum(
            *(arrays[k][r.start : r.stop] for k in ("image_emb", "norms", "labels", "ids", "ok"))
        )
        if got != sums[s]:
            problems.append(f"{name}: shard {s} (rows {r.start}..{r.stop - 1}) checksum mismatch")
    return problems


def _check_text(cache: Cache) -> list[str]:
    names = ("concept_emb", "class_emb", "concepts", "classes", "templates", "concept_classes")
    arrays, problems = _read_all(cache, TEXT_GROUP, names)
    if len(arrays) < len(names):
        return problems
    for kind in ("concept", "class"):
        emb, items = arrays[f"{kind}_emb"], arrays[f"{kind}s" if kind == "concept" else "classes"]
        if emb.shape != (len(items), cache.embed_dim):
            problems.append(
                f"text/{kind}_emb shape {emb.shape} != ({len(items)}, {cache.embed_dim})"
            )
        elif not np.isfinite(emb).all() or np.any(np.abs(np.linalg.norm(emb, axis=1) - 1) > 1e-4):
            problems.append(f"text/{kind}_emb has non-finite or non-unit rows")
    return problems


def verify_cache(path: str | Path, storage_options: dict | None = None) -> list[str]:
    """All problems found (empty list = healthy). Checks completeness, shapes, finiteness, unit
    norms, label range and the checksum of every array per shard; storage errors (a damaged shard
    index, a codec failure, a truncated file) are problems too, never a crash."""
    try:
        cache = open_cache(path, allow_incomplete=True, storage_options=storage_options)
    except CacheError as e:
        return [str(e)]
    with cache:
        problems = [] if cache.metadata.get("complete") else ["cache is incomplete (re-run embed)"]
        for name in cache.splits:
            try:
                complete = cache.split_attrs(name).get("complete")
            except (CacheError, KeyError) as e:
                problems.append(f"split '{name}' cannot be read: {e}")
                continue
            if not complete:
                problems.append(f"split '{name}' is incomplete")
                continue
            problems += _check_split(cache, name)
        problems += _check_text(cache)
    return problems


def _staging(path: Location) -> Path | None:
    """The resumable staging store of an unfinished HDF5 run, if `path` has one."""
    if is_remote(path):
        return None
    staged = path.with_name(path.name + ".partial.zarr")
    return staged if staged.is_dir() else None


def _shards_done(tree: Tree, split: str, attrs: dict) -> int:
    """Shards of `split` finished: all of a complete split, else its progress markers."""
    if attrs.get("complete"):
        return int(attrs["num_shards"])
    try:
        marks = tree.files(f"{PROGRESS_DIR}/{split}")
    except CacheError:
        return 0
    return sum(1 for k in marks if k.endswith(".json"))


def progress_note(store: Location, storage_options: dict | None = None) -> str:
    """'3 / 5 shards done' over every split of an unfinished store, as `cache info` counts
    them ('' when the store cannot be read)."""
    try:
        cache = open_cache(store, allow_incomplete=True, verify=False,
                           storage_options=storage_options, progress=False)  # fmt: skip
        tree = Tree(as_location(store), storage_options)
    except CacheError:
        return "shards done: unknown"
    with cache:
        attrs = {name: cache.split_attrs(name) for name in cache.splits}
    done = sum(_shards_done(tree, name, a) for name, a in attrs.items())
    total = sum(int(a["num_shards"]) for a in attrs.values())
    return f"{done} / {total} shards done"


def cache_info(path: str | Path, storage_options: dict | None = None) -> dict:
    """Metadata plus sizes: rows per split, shards done / total, failures, bytes on disk. An
    HDF5 run still in progress is described from its staging store."""
    path = as_location(path)
    store = path
    if not is_remote(path) and not path.exists() and _staging(path) is not None:
        store = _staging(path)
    cache = open_cache(store, allow_incomplete=True, storage_options=storage_options)
    tree = None if cache.format == "hdf5" else Tree(store, storage_options)
    with cache:
        splits = {}
        for name in cache.splits:
            a = cache.split_attrs(name)
            splits[name] = {
                "rows": a["n"],
                "shards": a["num_shards"],
                "shards_done": _shards_done(tree, name, a) if tree else a["num_shards"],
                "complete": a["complete"],
                "unreadable": len(a.get("failures", [])),
            }
        has_text = cache.has(TEXT_GROUP, "concepts")
        info = {k: v for k, v in cache.metadata.items() if k not in ("identity",)}
        info.update(
            {
                "path": str(cache.path) if store == path else str(path),
                "staging": str(store) if store != path else None,
                "storage": "hdf5" if store != path else cache.format,
                "n_concepts": len(cache.concepts) if has_text else None,
                "n_classes": len(cache.classes) if has_text else None,
                "split_rows": splits,
                "bytes_on_disk": _disk_bytes(store, storage_options),
            }
        )
    return info
