"""One pass of a trained head over a split: every metric of SPEC §2, per sample, chunked.

For a concept bottleneck (kind "cbm") the chunk's activations a = W_CBL ψ are computed
once and reused for the logits (W_F a + b), the NEC-truncated logits and the sparsity, so
the |D| x |D| layer runs once per image. Other kinds only give logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from heads.cms import iter_chunks
from heads.metrics import (
    NEC_GRID,
    NecEvaluator,
    activation_sparsity,
    classification_metrics,
    confusion_matrix,
    mean_of,
    per_class_accuracy,
    ranked,
    weight_metrics,
)


def per_class_frame(classes, labels, preds: dict[str, object]) -> pd.DataFrame:
    """class_index, class, n, and one accuracy column per named prediction vector."""
    n_classes = len(classes)
    df = pd.DataFrame(
        {
            "class_index": np.arange(n_classes),
            "class": list(classes),
            "n": np.bincount(np.asarray(labels), minlength=n_classes),
        }
    )
    for name, pred in preds.items():
        df[name] = per_class_accuracy(pred, labels, n_classes)
    return df


@dataclass(frozen=True)
class HeadEvaluation:
    metrics: dict  # flat: top1, top5, mean_per_class_acc, and NEC / sparsity for cbm heads
    per_class: pd.DataFrame  # class_index, class, n, accuracy
    confusion: np.ndarray  # (|C|, |C|) int64, rows = true class
    predictions: pd.DataFrame  # id, label, pred, correct, top5 (+ sparsity, l0 for cbm)


def _chunk_logits(head, cache, x, fc, nec, labels, sparsity):
    """Logits of one chunk; for cbm also feeds the NEC evaluator and the sparsity lists."""
    if fc is None:
        return head.logits(x, cache)
    a = head.activations(x, cache)  # (B, |D|)
    nec.update(a, labels)
    for k, v in activation_sparsity(a).items():
        sparsity.setdefault(k, []).append(v.cpu())
    return F.linear(a, fc.weight, fc.bias)  # (B, |C|) = W_F a + b


def evaluate_head(
    head, cache, data, *, chunk_size: int = 8192, necs=NEC_GRID, progress: bool = False
) -> HeadEvaluation:
    """Evaluate `head` (heads.artifact.Head) on an EvalSplit of `cache`."""
    n_classes = len(cache.classes)
    fc = head.module.fc if head.kind == "cbm" else None
    nec = NecEvaluator(fc.weight, fc.bias, necs) if fc is not None else None
    tops, sparsity = [], {}
    with torch.no_grad():
        for sl in tqdm(
            list(iter_chunks(len(data), chunk_size)), desc="evaluate", disable=not progress
        ):
            x = torch.from_numpy(data.image_emb[sl])
            logits = _chunk_logits(head, cache, x, fc, nec, data.labels[sl], sparsity)
            tops.append(ranked(logits.float(), 5).cpu())
    top = torch.cat(tops)
    metrics = classification_metrics(top, data.labels, n_classes)
    pred = top[:, 0].numpy()
    preds = pd.DataFrame(
        {
            "id": data.ids,
            "label": data.labels,
            "pred": pred,
            "correct": pred == data.labels,
            "top5": (top.numpy() == data.labels[:, None]).any(1),
        }
    )
    if fc is not None:
        metrics.update(weight_metrics(fc.weight.detach().cpu()))
        metrics.update(nec.result())
        for k, rows in sparsity.items():
            metrics[f"act_{k}"] = mean_of(rows)
            preds[f"act_{k}"] = torch.cat(rows).numpy()
    per_class = per_class_frame(cache.classes, data.labels, {"accuracy": pred})
    return HeadEvaluation(metrics, per_class, confusion_matrix(pred, data.labels, n_classes), preds)
