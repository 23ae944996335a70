"""The on-disk contract of an embedding cache (SPEC §5): names, sizes and shard ownership.

Tree (identical in Zarr v3 and HDF5)::

    /                         attrs: metadata (see README "Cache format")
    /{split}/image_emb        (N, E) float16, L2-normalised rows (zeros where ok is false)
    /{split}/norms            (N,)   float32, norm of the projected embedding before normalising
    /{split}/labels           (N,)   int64
    /{split}/ids              (N,)   str, original index or path relative to the dataset root
    /{split}/ok               (N,)   bool, false for unreadable images
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
FORMAT_VERSION = 1
DEFAULT_CHUNK_ROWS = 4096  # rows per chunk: the unit a reader decodes
DEFAULT_SHARD_ROWS = 65536  # rows per shard: the unit of work, resume and ownership
SPLIT_ARRAYS = ("image_emb", "norms", "labels", "ids", "ok")
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


def shard_checksum(
    image_emb: np.ndarray, norms: np.ndarray, labels: np.ndarray, ids: np.ndarray, ok: np.ndarray
) -> str:
    """sha256 over one shard's stored bytes, in a fixed dtype and byte order."""
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
