"""Classification metrics for heads and CMS, computed per sample in fp32 (SPEC §2 "Metrics").

Flat dicts in the style of CLIP_benchmark's `metrics/*.py`, so a run's results are one JSON
object and many runs are one table. Everything works on chunks of rows and on ranked class
lists (N, k) rather than full (N, |C|) score matrices, so callers can stream large splits.

- top-1 / top-5: top-5 is clipped to top-|C| when |C| < 5; ties rank the lower class first.
- per-class accuracy (NaN for a class without samples) and its mean over present classes;
  confusion matrix, rows = true class, columns = prediction.
- NEC (number of effective concepts, VLG-CBM) = non-zero final-layer weights per class.
  Truncation protocol: keep the NEC largest |W_F| per class row (ties -> lower concept
  index; the bias is kept), zero the rest, re-evaluate. A row with >= NEC non-zeros keeps
  exactly NEC; a sparser row is unchanged. Reported at NEC=5 and averaged over 5..30.
- Activation sparsity of the CBL output a (per image): fraction of |a_j| <= 1e-3 * max|a|,
  the exact L0 (#a_j != 0) and the effective L0 (#|a_j| > 1e-3 * max|a|).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

NEC_GRID: tuple[int, ...] = (5, 10, 15, 20, 25, 30)
SPARSITY_REL_TOL = 1e-3  # |a_j| <= tol * max_j |a_j| counts as inactive


def order_keys(scores: torch.Tensor) -> torch.Tensor:
    """(B, M) float scores -> (B, M) int64 keys: larger key = higher score, then lower index.

    The fp32 bit pattern, with the low 31 bits of negatives flipped, is an integer with the
    same order as the float; shifted up 32 bits and completed with (2^32 - 1 - index), every
    key in a row is unique, so `topk` on keys is exactly a stable descending sort. -0.0 is
    mapped to +0.0 first (they compare equal as floats).
    """
    s = scores.to(torch.float32).contiguous() + 0.0  # -0.0 + 0.0 == +0.0 in IEEE arithmetic
    bits = s.view(torch.int32)
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    index = torch.arange(s.shape[1], device=s.device, dtype=torch.int64)
    return (ordered << 32) + (0xFFFFFFFF - index)


def ranked(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, M) scores -> (B, min(k, M)) column indices by decreasing score.

    Deterministic: tied scores come out in index order (as a stable sort would give), so
    the top-1 is the lowest tied index, the same as `torch.argmax`. Uses `topk` on unique
    integer keys, ~15x cheaper than a stable sort of (B, M).
    """
    k = min(k, scores.shape[1])
    if k == 1:
        return scores.argmax(1, keepdim=True)
    return order_keys(scores).topk(k, dim=1).indices


def _labels(labels) -> torch.Tensor:
    return torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)


def topk_hits(topk, labels) -> dict[str, torch.Tensor]:
    """Per-sample booleans `top1` and `top5` (top-min(5, k)) from ranked classes (N, k)."""
    top = torch.as_tensor(topk)
    y = _labels(labels)
    if top.ndim != 2 or top.shape[0] != y.shape[0]:
        raise ValueError(
            f"topk must be (N, k) with N = len(labels) = {len(y)}, got {tuple(top.shape)}"
        )
    hit = top[:, :5] == y[:, None]
    return {"top1": hit[:, 0], "top5": hit.any(1)}


def per_class_accuracy(pred, labels, n_classes: int) -> np.ndarray:
    """(|C|,) float64 accuracy per true class; NaN where the class has no samples."""
    cm = confusion_matrix(pred, labels, n_classes)
    total = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.diag(cm) / np.maximum(total, 1), np.nan)


def confusion_matrix(pred, labels, n_classes: int) -> np.ndarray:
    """(|C|, |C|) int64 counts, rows = true class, columns = predicted class."""
    p, y = _labels(pred), _labels(labels)
    if p.shape != y.shape:
        raise ValueError(f"pred has {len(p)} entries but labels has {len(y)}")
    for name, v in (("labels", y), ("pred", p)):
        if len(v) and (int(v.min()) < 0 or int(v.max()) >= n_classes):
            raise ValueError(
                f"{name} must lie in 0..{n_classes - 1} (|C| = {n_classes}), "
                f"got range {int(v.min())}..{int(v.max())}"
            )
    flat = torch.bincount(y * n_classes + p, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).numpy().astype(np.int64)


def classification_metrics(topk, labels, n_classes: int) -> dict[str, float]:
    """Flat dict: n, top1, top5 (clipped to |C|), mean_per_class_acc, from ranked classes."""
    hits = topk_hits(topk, labels)
    n = int(hits["top1"].numel())
    if n == 0:
        raise ValueError("no samples to evaluate (N = 0)")
    pc = per_class_accuracy(torch.as_tensor(topk)[:, 0], labels, n_classes)
    return {
        "n": n,
        "top1": float(hits["top1"].double().mean()),
        "top5": float(hits["top5"].double().mean()),
        "mean_per_class_acc": float(np.nanmean(pc)),
    }


# ------------------------------------------------------------------ final layer (W_F) / NEC


def nec_per_class(weight: torch.Tensor) -> torch.Tensor:
    """(|C|, |D|) final-layer weight -> (|C|,) int64 count of non-zero weights per class."""
    return (weight != 0).sum(1)


def concepts_used(weight: torch.Tensor) -> int:
    """Number of concepts (columns of W_F) with at least one non-zero outgoing weight."""
    return int((weight != 0).any(0).sum())


def truncate_rows(weight: torch.Tensor, nec: int) -> torch.Tensor:
    """Copy of W_F (|C|, |D|) keeping the `nec` largest |w| of each row, zeros elsewhere."""
    if nec < 1:
        raise ValueError(f"nec must be >= 1, got {nec}")
    keep = min(nec, weight.shape[1])
    order = torch.sort(weight.abs(), dim=1, descending=True, stable=True).indices[:, :keep]
    mask = torch.zeros_like(weight, dtype=torch.bool).scatter_(1, order, True)
    return torch.where(mask, weight, torch.zeros_like(weight))


def weight_metrics(weight: torch.Tensor) -> dict[str, float]:
    """NEC statistics of a final layer: mean/min/max non-zeros per class and concepts used."""
    nec = nec_per_class(weight).double()
    return {
        "nec_mean": float(nec.mean()),
        "nec_min": int(nec.min()),
        "nec_max": int(nec.max()),
        "concepts_used": concepts_used(weight),
        "n_concepts": int(weight.shape[1]),
    }


class NecEvaluator:
    """Accuracy of W_F truncated to each NEC in `necs`, accumulated over activation chunks."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, necs: Sequence[int] = NEC_GRID
    ):
        w = weight.detach().float()
        self.bias = None if bias is None else bias.detach().float()
        self.weights = {int(k): truncate_rows(w, int(k)) for k in necs}  # NEC -> (|C|, |D|)
        self.correct = dict.fromkeys(self.weights, 0)
        self.n = 0

    def update(self, activations: torch.Tensor, labels) -> None:
        """activations (B, |D|) CBL output, labels (B,)."""
        y = _labels(labels).to(activations.device)
        a = activations.float()
        for k, w in self.weights.items():
            bias = None if self.bias is None else self.bias.to(a.device)
            pred = F.linear(a, w.to(a.device), bias).argmax(1)
            self.correct[k] += int((pred == y).sum())
        self.n += int(y.numel())

    def result(self) -> dict[str, float]:
        """{"acc_nec5": ..., ..., "acc_nec_avg": mean over the grid}."""
        if self.n == 0:
            raise ValueError("NecEvaluator.update was never called with samples")
        acc = {f"acc_nec{k}": c / self.n for k, c in self.correct.items()}
        return {**acc, "acc_nec_avg": float(np.mean(list(acc.values())))}


# ------------------------------------------------------------------ activation sparsity


def activation_sparsity(activations: torch.Tensor, rel_tol: float = SPARSITY_REL_TOL) -> dict:
    """Per-image sparsity of CBL outputs (B, |D|) -> dict of (B,) float32 tensors.

    `sparsity`: fraction of |a_j| <= rel_tol * max|a| (an all-zero row is fully sparse);
    `l0`: exact number of non-zeros; `l0_eff`: number of |a_j| above the threshold.
    """
    mag = activations.detach().float().abs()
    thr = rel_tol * mag.amax(1, keepdim=True)
    inactive = mag <= thr
    return {
        "sparsity": inactive.float().mean(1),
        "l0": (mag != 0).sum(1).float(),
        "l0_eff": (~inactive).sum(1).float(),
    }


def mean_of(rows: Iterable[torch.Tensor]) -> float:
    """Mean over all samples of per-sample values given in chunks."""
    rows = list(rows)
    total = sum(float(r.double().sum()) for r in rows)
    n = sum(int(r.numel()) for r in rows)
    return total / n if n else float("nan")


FAITHFULNESS_ROWS = 5_000  # rows (the first of the split) the faithfulness score reads


def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Column-wise ranks (0-based, ties get their mean rank) of v (N, D), float64."""
    s = v.T.contiguous().sort(dim=1).values  # (D, N)
    q = v.T.contiguous()
    lo = torch.searchsorted(s, q, side="left")
    hi = torch.searchsorted(s, q, side="right")
    return ((lo + hi - 1).double() / 2).T


def concept_faithfulness(a: torch.Tensor, cos: torch.Tensor) -> dict:
    """Mean over concepts j of the Spearman rank correlation, over rows, between activation
    a[:, j] and the raw image-concept cosine cos[:, j] (both (N, |D|)): 1.0 when activation j
    orders images exactly as CLIP's score for concept j does (an identity CBL, CMS-like
    scores). Concepts whose activation or cosine is constant over the rows (e.g. never kept by
    a TopK bottleneck) have no correlation: they are counted in `faithfulness_undefined` and
    left out of the mean (None when every concept is)."""
    ra, rc = _average_ranks(a.float()), _average_ranks(cos.float())
    ra, rc = ra - ra.mean(0), rc - rc.mean(0)
    den = ra.norm(dim=0) * rc.norm(dim=0)
    ok = den > 0
    rho = (ra * rc).sum(0)[ok] / den[ok]
    return {"faithfulness": float(rho.mean()) if bool(ok.any()) else None,
            "faithfulness_undefined": int((~ok).sum())}  # fmt: skip
