"""The on-disk contract of an embedding cache (SPEC §5): names, sizes and shard ownership.

Tree (identical in Zarr v3 and HDF5)::

    /                         attrs: metadata (see README "Cache format")
    /{split}/image_emb        (N, E) float16, L2-normalised rows (zeros where ok is false)
    /{split}/norms            (N,)   float32, norm of the projected embedding before normalising
    /{split}/labels           (N,)   int64
    /{split}/ids              (N,)   str, original index or path relative to the dataset root
    /{split}/ok               (N,)   bool, false for unreadable images
    /{split}/view_emb         (N, V, E) float16, unit rows: V augmented views of each image
                              (only in caches written with `embed --views V`)
    /text/concept_emb         (|D|, E) float32, unit rows
    /text/class_emb           (|C|, E) float32, unit rows
    /text/concepts            (|D|,) str
    /text/concept_classes     (|D|,) str, "|"-joined classes a concept came from ("" if unknown)
    /text/classes             (|C|,) str
    /text/templates           (T,)   str
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

FORMAT_NAME = "clipcbm-cache"
FORMAT_VERSION = 2  # 2: per-array checksums are xxh3-128 ("xxh3_128:<hex>", key array_checksums)
# The checksum new caches record per array and shard: made for storage (damage, not attack),
# ~20x faster than sha256 here, so a checked read costs little more than the read. Caches of
# format 1 recorded bare sha256 hex (keys array_sha256 / sha256); they still read and are
# checked with it (`algo_of` tells a value's algorithm).
CHECKSUM_ALGO = "xxh3_128"
CHECKSUM_ALGOS = ("xxh3_128", "sha256")
DEFAULT_CHUNK_ROWS = 4096  # rows per chunk: the unit a reader decodes
DEFAULT_SHARD_ROWS = 65536  # rows per shard: the unit of work, resume and ownership
SPLIT_ARRAYS = ("image_emb", "norms", "labels", "ids", "ok")
VIEW_ARRAY = "view_emb"
# the bytes a checksum is taken over: a fixed dtype and byte order per array
CHECKSUM_DTYPES = {
    "image_emb": "<f2",
    "view_emb": "<f2",
    "norms": "<f4",
    "labels": "<i8",
    "ok": "u1",
    "concept_emb": "<f4",
    "class_emb": "<f4",
}
TEXT_GROUP = "text"
CLASS_SEP = "|"


@dataclass(frozen=True)
class ShardPlan:
    """How the N rows of one split are cut into shards of `shard_rows` (the last may be short)."""

    n_rows: int
    shard_rows: int

    def __post_init__(self) -> None:
        if self.n_rows < 0 or self.shard_rows <= 0:
            raise ValueError(f"bad shard plan: n_rows={self.n_rows}, shard_rows={self.shard_rows}")

    @property
    def num_shards(self) -> int:
        return -(-self.n_rows // self.shard_rows)

    def rows(self, shard: int) -> range:
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"shard {shard} out of range 0..{self.num_shards - 1}")
        start = shard * self.shard_rows
        return range(start, min(start + self.shard_rows, self.n_rows))

    def owned_by(self, rank: int, world: int) -> list[int]:
        """Shard s belongs to rank s mod world (SPEC §5): no two writers ever touch one shard."""
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"bad rank/world: rank={rank}, world={world}")
        return [s for s in range(self.num_shards) if s % world == rank]


def sha256_json(obj: object) -> str:
    """sha256 of a canonical JSON encoding: the identity of configs and lists."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def sha256_lines(items: list[str]) -> str:
    """sha256 of '\\n'-joined strings: how concept and class lists are fingerprinted."""
    return hashlib.sha256("\n".join(items).encode("utf-8")).hexdigest()


def array_checksum(name: str, values: np.ndarray, algo: str | None = None) -> str:
    """Checksum of one array's rows as stored: numbers in CHECKSUM_DTYPES[name], strings (ids,
    text lists) '\\n'-joined UTF-8. Recorded per shard at write time, checked on every read.
    algo "xxh3_128" (new caches, the default: CHECKSUM_ALGO) gives "xxh3_128:<hex>"; "sha256"
    gives bare hex (format 1)."""
    algo = algo or CHECKSUM_ALGO
    if name in CHECKSUM_DTYPES:
        blob = np.ascontiguousarray(values, dtype=CHECKSUM_DTYPES[name])
        blob = blob.reshape(-1).view(np.uint8) if blob.size else b""
    else:  # tolist() first: one C loop instead of a numpy scalar per item (same bytes)
        items = values.tolist() if isinstance(values, np.ndarray) else values
        blob = "\n".join(map(str, items)).encode("utf-8")
    if algo == "xxh3_128":
        import xxhash

        return "xxh3_128:" + xxhash.xxh3_128_hexdigest(blob)
    if algo == "sha256":
        return hashlib.sha256(blob).hexdigest()
    raise ValueError(f"unknown checksum algorithm {algo!r}; known: {CHECKSUM_ALGOS}")


def algo_of(recorded: str) -> str:
    """The algorithm of a recorded checksum: "<algo>:<hex>", or bare hex = sha256 (format 1)."""
    return recorded.split(":", 1)[0] if ":" in recorded else "sha256"


def checksum_matches(name: str, values: np.ndarray, recorded: str) -> bool:
    """`values` hash to `recorded` in the algorithm that recorded it."""
    return array_checksum(name, values, algo_of(recorded)) == recorded


def first_bad_shard(name: str, data: np.ndarray, sums: list[str], shard_rows: int,
                    first_row: int = 0, workers: int = 1) -> int | None:  # fmt: skip
    """The first shard of `data` -- rows [first_row, first_row + len(data)) of array `name`,
    starting and ending on shard boundaries -- whose checksum differs from its recorded one in
    `sums` (one per shard of the split), or None. Each shard is hashed in the algorithm that
    recorded it; `workers` threads hash shards at once (xxhash and hashlib release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    first = first_row // shard_rows
    shards = range(first, -(-(first_row + len(data)) // shard_rows) if len(data) else first)

    def matches(k: int) -> bool:
        lo = k * shard_rows - first_row
        return checksum_matches(name, data[lo : lo + shard_rows], sums[k])

    with ThreadPoolExecutor(max_workers=max(1, min(len(shards), workers))) as pool:
        ok = list(pool.map(matches, shards))
    return next((k for k, good in zip(shards, ok, strict=True) if not good), None)


def recorded_array_sums(attrs) -> dict:
    """A split's per-array, per-shard checksums: {name: [one per shard]} ({} if none)."""
    return dict(attrs.get("array_checksums") or attrs.get("array_sha256") or {})


def recorded_text_sums(attrs) -> dict:
    """The text group's per-array checksums ({} if none)."""
    return dict(attrs.get("checksums") or attrs.get("sha256") or {})


def shard_checksum(
    image_emb: np.ndarray, norms: np.ndarray, labels: np.ndarray, ids: np.ndarray, ok: np.ndarray
) -> str:
    """sha256 over one shard's five arrays together (format 1; kept for `cache verify` of caches
    written before per-array checksums)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(image_emb, dtype="<f2").tobytes())
    h.update(np.ascontiguousarray(norms, dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(ok, dtype=np.uint8).tobytes())
    h.update("\n".join(str(i) for i in ids).encode("utf-8"))
    return h.hexdigest()


def model_fingerprint(metadata: dict) -> str:
    """Identity of the embedding space a cache lives in: the CLIP model (id, revision, commit,
    embedding width) that `embed` recorded. Artifacts fitted on one cache (heads, SAEs,
    adapters, vocabularies) record it, and refuse a cache whose fingerprint differs.
    Caches from `write_cache` (no model) are identified by their width and `metadata["model"]`
    if the caller gave one."""
    model = metadata.get("model")
    key = {
        "model": model if isinstance(model, dict) else {"id": model},
        "embed_dim": int(metadata.get("embed_dim", 0)),
    }
    if isinstance(model, dict):
        key["model"] = {k: model.get(k) for k in ("id", "revision", "commit", "embed_dim")}
    return sha256_json(key)


_KEY_COEF = np.random.default_rng(20261202).integers(1, 2**62, size=4096, dtype=np.int64)


KEY_BLOCK_ROWS = 65536


def row_keys(emb16: np.ndarray) -> np.ndarray:
    """(N,) int64 key per fp16 row: an exact integer hash of its bits (equal rows, equal keys;
    wrap-around integer arithmetic, so no rounding can make two equal rows differ)."""
    emb16 = np.asarray(emb16)
    coef = np.resize(_KEY_COEF, emb16.shape[1])
    out = np.empty(len(emb16), dtype=np.int64)
    for s in range(0, len(emb16), KEY_BLOCK_ROWS):  # an (rows, E) int64 copy per block only
        bits = np.ascontiguousarray(emb16[s : s + KEY_BLOCK_ROWS], dtype="<f2").view("<u2")
        with np.errstate(over="ignore"):
            out[s : s + KEY_BLOCK_ROWS] = bits.astype(np.int64) @ coef
    return out


def count_overlap(a: dict, b: dict) -> dict:
    """Rows shared by two splits: {"embeddings": rows of `b` whose fp16 embedding equals a row
    of `a` exactly, "ids": ids present in both}. Each of a, b: image_emb (fp16), ids, ok;
    unreadable rows (zeros) never count."""

    def reader(split):
        return lambda name, start, stop: np.asarray(split[name][start:stop])

    return count_overlap_streamed(reader(a), len(a["ok"]), reader(b), len(b["ok"]),
                                  a["ids"], b["ids"])  # fmt: skip


def _keys(read, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(row_keys, ok) of a split read block by block: read(name, start, stop) -> rows."""
    keys, ok = np.empty(n, dtype=np.int64), np.empty(n, dtype=bool)
    for s in range(0, n, KEY_BLOCK_ROWS):
        e = min(n, s + KEY_BLOCK_ROWS)
        keys[s:e] = row_keys(read("image_emb", s, e))
        ok[s:e] = np.asarray(read("ok", s, e), bool)
    return keys, ok


def _gather(read, rows: np.ndarray) -> np.ndarray:
    """image_emb at sorted unique `rows`, reading only the blocks that hold one."""
    parts = []
    for blk in np.unique(rows // KEY_BLOCK_ROWS):
        s = int(blk) * KEY_BLOCK_ROWS
        inside = rows[(rows >= s) & (rows < s + KEY_BLOCK_ROWS)]
        parts.append(np.asarray(read("image_emb", s, int(inside[-1]) + 1))[inside - s])
    return np.concatenate(parts) if parts else np.empty((0, 0), np.float16)


def count_overlap_streamed(read_a, n_a: int, read_b, n_b: int, ids_a, ids_b) -> dict:
    """`count_overlap` of two splits read block by block (read(name, start, stop) -> rows of
    image_emb / ok), so finalising a cache never holds a whole split: the keys (8 bytes a row)
    find the candidates, and only the candidate rows are read again to confirm exact equality
    (a key collision is not an overlap)."""
    ka, ok_a = _keys(read_a, n_a)
    kb, ok_b = _keys(read_b, n_b)
    valid = np.flatnonzero(ok_a)
    order = np.argsort(ka[valid], kind="stable")
    ka_sorted = ka[valid][order]
    cand = np.flatnonzero(ok_b & np.isin(kb, ka_sorted))
    lo = np.searchsorted(ka_sorted, kb[cand], "left")
    hi = np.searchsorted(ka_sorted, kb[cand], "right")
    same = 0
    if len(cand):
        # every (row of a, row of b) pair with equal keys, compared at once
        counts = hi - lo
        pair_b = np.repeat(cand, counts)
        starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
        pair_a = valid[order[starts + np.arange(counts.sum())]]
        rows_a, inv_a = np.unique(pair_a, return_inverse=True)
        rows_b, inv_b = np.unique(pair_b, return_inverse=True)
        equal = np.all(_gather(read_a, rows_a)[inv_a] == _gather(read_b, rows_b)[inv_b], axis=1)
        same = len(np.unique(pair_b[equal]))
    ids = len(set(map(str, ids_a)) & set(map(str, ids_b)))
    return {"embeddings": int(same), "ids": int(ids)}
