"""`write_cache`: write a complete cache in one call, from arrays already in memory.

Used for synthetic caches (tests, benchmarks) and anything that has embeddings without running
stage one. It goes through the same `CacheWriter` as `embed`, so the result is byte-compatible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipcbm.core.location import as_location

from .layout import DEFAULT_CHUNK_ROWS, DEFAULT_SHARD_ROWS, sha256_lines
from .writer import CacheWriter


def _unit_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1)
    return x / np.maximum(norms, 1e-12)[:, None], norms


def write_cache(
    path: str | Path,
    *,
    splits: dict[str, dict],
    concepts: list[str],
    classes: list[str],
    concept_emb: np.ndarray,
    class_emb: np.ndarray,
    templates: tuple[str, ...] | list[str] = ("a photo of a {}.",),
    logit_scale: float = 100.0,
    concept_classes: list[list[str]] | None = None,
    metadata: dict | None = None,
    format: str | None = None,  # noqa: A002 - mirrors the CLI option name
    overwrite: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    shard_rows: int = DEFAULT_SHARD_ROWS,
) -> Path:
    """Write a complete cache. Each split: image_emb (N,E), labels (N,), optional ids, ok and
    view_emb (N, V, E) (augmented views; every split must then have them)."""
    path = as_location(path)  # a URL: a zarr cache written there (cache.remote)
    if format is not None and format not in ("zarr", "hdf5"):
        raise ValueError(f"format must be 'zarr' or 'hdf5', got {format!r}")
    if format == "hdf5" and isinstance(path, Path) and path.suffix.lower() not in (".h5", ".hdf5"):
        path = path.with_suffix(".h5")
    concept_emb, _ = _unit_rows(concept_emb)
    class_emb, _ = _unit_rows(class_emb)
    e = concept_emb.shape[1]
    identity = {
        "source": "write_cache",
        "concepts_sha256": sha256_lines(list(concepts)),
        "classes_sha256": sha256_lines(list(classes)),
        "metadata": metadata or {},
        "splits": {s: int(len(d["labels"])) for s, d in splits.items()},
    }
    meta = {
        **(metadata or {}),
        "embed_dim": e,
        "logit_scale": float(logit_scale),
        "concepts_sha256": identity["concepts_sha256"],
        "classes_sha256": identity["classes_sha256"],
    }
    views = {int(np.shape(d["view_emb"])[1]) if "view_emb" in d else 0 for d in splits.values()}
    if len(views) > 1:
        raise ValueError(f"every split must have the same number of views, got {sorted(views)}")
    writer = CacheWriter(
        path,
        identity=identity,
        metadata=meta,
        embed_dim=e,
        split_sizes=identity["splits"],
        chunk_rows=chunk_rows,
        shard_rows=shard_rows,
        views=views.pop() if views else 0,
    )
    if writer.prepare(overwrite=overwrite) == "complete":
        return writer.path  # the same arrays are already there, complete: nothing to write
    for name, d in splits.items():
        n = len(d["labels"])
        ok = np.asarray(d.get("ok", np.ones(n, bool)), dtype=bool)
        emb, norms = _unit_rows(d["image_emb"])
        emb[~ok] = 0.0
        ids = d.get("ids", [str(i) for i in range(n)])
        views_emb = None
        if "view_emb" in d:
            v = np.asarray(d["view_emb"], dtype=np.float32)
            views_emb = v / np.maximum(np.linalg.norm(v, axis=2, keepdims=True), 1e-12)
            views_emb[~ok] = 0.0
        for shard in writer.pending_shards(name):
            r = writer.plans[name].rows(shard)
            sl = slice(r.start, r.stop)
            writer.write_shard(
                name,
                shard,
                image_emb=emb[sl],
                norms=norms[sl],
                labels=np.asarray(d["labels"])[sl],
                ids=list(ids)[sl],
                ok=ok[sl],
                view_emb=None if views_emb is None else views_emb[sl],
            )
    writer.write_text(
        concept_emb=concept_emb,
        class_emb=class_emb,
        concepts=concepts,
        classes=classes,
        templates=list(templates),
        concept_classes=concept_classes,
    )
    return writer.finalize()
