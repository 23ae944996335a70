"""Fixture helpers for the evaluation tests: hand-built heads on planted caches (no training).

An "oracle" concept bottleneck reads the planted concepts directly: W_CBL = I (a = ψ) and
W_F[m, j] = 1/α for the planted concepts j of class m, plus a small dense weight on every
other concept, so NEC truncation has something to cut and the planted concepts must top
every explanation of a correct prediction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from clipcbm.heads.cbm.model import ConceptBottleneck
from clipcbm.heads.io.artifact import Head, save_head

DENSE = 0.002  # weight on non-planted concepts (relative to 1 on a planted one)


def oracle_head(cache, out_dir: Path, planted: dict[int, list[int]], seed: int = 0) -> Path:
    n_d, n_c = len(cache.concepts), len(cache.classes)
    model = ConceptBottleneck(n_d, n_c)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.cbl.weight.copy_(torch.eye(n_d))
        w = DENSE * torch.randn(n_c, n_d, generator=g)
        for m, idx in planted.items():
            w[m, idx] = 1.0
        model.fc.weight.copy_(w / cache.logit_scale)
        model.fc.bias.zero_()
    return _save(cache, out_dir, "cbm", model)


def probe_head(cache, out_dir: Path) -> Path:
    """A (random) linear probe on image embeddings: kind 'probe', no concepts."""
    torch.manual_seed(0)
    return _save(cache, out_dir, "probe", nn.Linear(cache.embed_dim, len(cache.classes)))


def _save(cache, out_dir, kind, module) -> Path:
    config = {
        "kind": kind,
        "n_concepts": len(cache.concepts),
        "n_classes": len(cache.classes),
        "embed_dim": cache.embed_dim,
        "cache_fingerprint": cache.fingerprint,
        "seed": 0,
        "note": "hand-built for tests",
    }
    return save_head(out_dir, Head(kind=kind, config=config, module=module), config)


def cache_arrays_with(arrays: dict, split: str, **fields) -> dict:
    """Copy of planted_arrays() output with some fields of one split replaced."""
    splits = {k: dict(v) for k, v in arrays["splits"].items()}
    splits[split].update(fields)
    return {**arrays, "splits": splits}


def write_arrays(path: Path, arrays: dict) -> Path:
    from clipcbm.cache import write_cache

    keys = ("concepts", "classes", "concept_emb", "class_emb")
    write_cache(path, splits=arrays["splits"], **{k: arrays[k] for k in keys})
    return path


def nan_rows(emb: np.ndarray, rows) -> np.ndarray:
    out = emb.copy()
    out[list(rows)] = np.nan
    return out
