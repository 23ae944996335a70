"""The one evaluation path of stage two: every head kind, every command, the same numbers.

`fit-head` (validation and test), `evaluate`, `explain`, `cms-eval`'s zero-shot row and the
comparison table all score through `Scorer` and `evaluate`: one chunk rule
(`heads.chunks.CHUNK_ROWS`), one ranking with ties to the lowest class index
(`heads.eval.metrics.ranked`), one zero-shot (`zero_shot_scorer`). For a concept bottleneck
(kind "cbm") each chunk's activations a = W_CBL ψ are computed once and reused for the
logits (W_F a + b), the NEC-truncated logits and the activation sparsity (SPEC §2 "Metrics").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from clipcbm.core.progress import bar as progress_bar
from clipcbm.heads.chunks import CHUNK_ROWS, iter_chunks
from clipcbm.heads.eval.metrics import (
    FAITHFULNESS_ROWS,
    NEC_GRID,
    NecEvaluator,
    activation_sparsity,
    classification_metrics,
    concept_faithfulness,
    confusion_matrix,
    mean_of,
    per_class_accuracy,
    ranked,
    weight_metrics,
)
from clipcbm.heads.features import FEATURES, TextTensors
from clipcbm.heads.psi import as_float_tensor


@dataclass
class Scorer:
    """A head ready to score image rows: its kind (a FEATURES key), module and text tensors."""

    kind: str  # cbm | probe | zs-probe | zero-shot
    module: nn.Module
    text: TextTensors

    @property
    def device(self) -> torch.device:
        return self.text.class_emb.device

    @property
    def fc(self) -> nn.Linear | None:
        """The final layer W_F (+ b) of a concept bottleneck, else None."""
        return self.module.fc if self.kind == "cbm" else None

    def _features(self, x) -> torch.Tensor:
        return FEATURES[self.kind](as_float_tensor(x, self.device), self.text)

    def logits(self, x) -> torch.Tensor:
        """One chunk of image rows (B, E) -> class logits (B, |C|) fp32, no grad."""
        with torch.no_grad():
            return self.module(self._features(x)).float()

    def activations(self, x) -> torch.Tensor | None:
        """One chunk (B, E) -> CBL activations a (B, |D|) for a cbm head, else None."""
        if self.kind != "cbm":
            return None
        with torch.no_grad():
            return self.module.activations(self._features(x)).float()


def zero_shot_scorer(text: TextTensors) -> Scorer:
    """Zero-shot CLIP, argmax_m α<i, c_m>, as a head with no parameters."""
    return Scorer("zero-shot", nn.Identity(), text)


def predict(scorer: Scorer, x, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Logits (N, |C|) of all rows of x (N, E), chunk by chunk, module in eval mode."""
    was = scorer.module.training
    scorer.module.eval()
    try:
        parts = [scorer.logits(x[sl]) for sl in iter_chunks(len(x), chunk_rows)]
    finally:
        scorer.module.train(was)
    return torch.cat(parts) if parts else torch.empty(0, len(scorer.text.class_emb))


def top1(scorer: Scorer, x, y, chunk_rows: int = CHUNK_ROWS) -> float:
    """Top-1 accuracy (fraction) of rows x against labels y, ranked as `evaluate` ranks."""
    hits = 0
    was = scorer.module.training
    scorer.module.eval()
    try:
        for sl in iter_chunks(len(x), chunk_rows):
            pred = ranked(scorer.logits(x[sl]), 1)[:, 0].cpu()
            hits += int((pred == torch.as_tensor(y[sl]).cpu()).sum())
    finally:
        scorer.module.train(was)
    return hits / len(x)


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
    metrics: dict  # flat: n, top1, top5, mean_per_class_acc (+ NEC / sparsity for cbm heads)
    top: torch.Tensor  # (N, min(5, |C|)) ranked classes per row
    confusion: np.ndarray  # (|C|, |C|) int64, rows = true class
    sparsity: dict  # cbm: per-row "sparsity", "l0", "l0_eff" (N,) tensors; else empty

    @property
    def pred(self) -> np.ndarray:
        return self.top[:, 0].numpy()

    def predictions(self, ids, labels) -> pd.DataFrame:
        """id, label, pred, correct, top5 (+ act_sparsity, act_l0, act_l0_eff for cbm)."""
        labels = np.asarray(labels)
        df = pd.DataFrame(
            {
                "id": ids,
                "label": labels,
                "pred": self.pred,
                "correct": self.pred == labels,
                "top5": (self.top.numpy() == labels[:, None]).any(1),
            }
        )
        for k, v in self.sparsity.items():
            df[f"act_{k}"] = v.numpy()
        return df

    def per_class(self, classes, labels) -> pd.DataFrame:
        return per_class_frame(classes, labels, {"accuracy": self.pred})


def evaluate(
    scorer: Scorer,
    x,
    labels,
    *,
    necs=NEC_GRID,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = False,
    desc: str = "evaluate",
) -> HeadEvaluation:
    """Every SPEC §2 metric of `scorer` on rows x (N, E) with labels (N,), per sample, chunked.

    metrics: n, top1, top5, mean_per_class_acc; for a cbm head also nec (mean non-zero W_F
    weights per class), nec_min/max, concepts_used, acc_nec{5..30}, acc_nec_avg (W_F truncated
    to the NEC largest |weights| per class), act_sparsity (fraction of |a_j| <= 1e-3 max|a|),
    act_l0 (exact non-zeros), active_concepts (activations above that threshold) and
    faithfulness (mean per-concept Spearman correlation of activation j with the raw cosine of
    image and concept j, over the first FAITHFULNESS_ROWS rows: `concept_faithfulness`).
    """
    labels = np.asarray(labels)
    n_classes = len(scorer.text.class_emb)
    fc = scorer.fc
    nec = NecEvaluator(fc.weight, fc.bias, necs) if fc is not None else None
    tops, sparsity, faith_a, faith_cos = [], {}, [], []
    was = scorer.module.training
    scorer.module.eval()
    try:
        for sl in progress_bar(list(iter_chunks(len(x), chunk_rows)), desc=desc, enabled=progress):
            if fc is None:
                logits = scorer.logits(x[sl])
            else:
                a = scorer.activations(x[sl])  # (B, |D|), reused below
                nec.update(a, labels[sl])
                if sum(len(f) for f in faith_a) < FAITHFULNESS_ROWS:
                    faith_a.append(a.cpu())
                    xs = as_float_tensor(x[sl], scorer.device)
                    faith_cos.append((xs @ scorer.text.concept_emb.T).cpu())
                for k, v in activation_sparsity(a).items():
                    sparsity.setdefault(k, []).append(v.cpu())
                logits = F.linear(a, fc.weight.detach().float(), fc.bias.detach().float())
            tops.append(ranked(logits, 5).cpu())
    finally:
        scorer.module.train(was)
    top = torch.cat(tops)
    metrics = classification_metrics(top, labels, n_classes)
    rows = {k: torch.cat(v) for k, v in sparsity.items()}
    if fc is not None:
        w = weight_metrics(fc.weight.detach().cpu())
        metrics.update(w, nec=w["nec_mean"], **nec.result())
        metrics["act_sparsity"] = mean_of([rows["sparsity"]])
        metrics["act_l0"] = mean_of([rows["l0"]])
        metrics["active_concepts"] = mean_of([rows["l0_eff"]])
        if len(x) > 1:
            fa, fc_ = (torch.cat(v)[:FAITHFULNESS_ROWS] for v in (faith_a, faith_cos))
            metrics.update(concept_faithfulness(fa, fc_))
    pred = top[:, 0].numpy()
    return HeadEvaluation(metrics, top, confusion_matrix(pred, labels, n_classes), rows)
