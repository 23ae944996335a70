"""Minimal scoring used while fitting: chunked prediction and per-sample top-k accuracy.

The full metrics (per-class accuracy, confusion matrix, NEC, sparsity) live in heads/metrics.py.
"""

from __future__ import annotations

import torch

from heads.metrics import ranked

EVAL_CHUNK = 16384  # rows per evaluation forward pass (bounds memory: chunk x features fp32)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict:
    """Per-sample top-k accuracy as a fraction in [0, 1] (k capped at |C|), plus n = rows.

    Ranks with `heads.metrics.ranked` (ties -> lowest class index) so `fit-head` and
    `evaluate` agree exactly; the mean is taken in fp64.
    """
    out = {"n": int(labels.shape[0])}
    top = ranked(logits, max(ks))
    for k in ks:
        out[f"top{k}"] = (top[:, :k] == labels[:, None]).any(dim=1).double().mean().item()
    return out


def predict(module, feats_fn, x: torch.Tensor) -> torch.Tensor:
    """module(feats_fn(x)) over rows x (N, E) in chunks, without grad; (N, |C|) fp32."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = [module(feats_fn(x[s : s + EVAL_CHUNK])) for s in range(0, len(x), EVAL_CHUNK)]
    module.train(was_training)
    return torch.cat(out)
