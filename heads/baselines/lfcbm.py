"""Label-free CBM (Oikarinen et al., ICLR 2023) on the cache: cos³ projection + sparse final layer.

1. Targets P = I Dᵀ (N, |D|), CLIP's image-concept cosines.
2. A projection W_c (|D|, E) from image embeddings to concept activations Q = I W_cᵀ, trained
   with Adam to maximise the mean over concepts of the cos³ similarity between each concept's
   column of Q and of P over a batch: each column is standardised over the batch, cubed
   elementwise, and the two cubed columns are compared by cosine (the paper's `cos_similarity_
   cubed_single`). Early stopping on the validation rows' similarity.
3. Concepts whose validation similarity is below the interpretability cutoff (0.45, the
   paper's default) are removed (if none survive, the best 10% are kept and the note says so).
4. The final layer on the standardised activations of the kept concepts along an elastic-net
   path (heads.cbm.elastic_net, alpha = 0.99 as the paper's GLM-SAGA) stopped at NEC = 5.

Returns test metrics through the same metric functions as every head. Published defaults:
proj_steps 1000, lr 1e-3, batch = all fit rows up to 50,000.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from clipcbm.heads.cbm.elastic_net import PATH_MAX_ITER, fit_elastic_net
from clipcbm.heads.chunks import CHUNK_ROWS, SOLVER_GIB, iter_chunks
from clipcbm.heads.eval.metrics import (
    NecEvaluator,
    activation_sparsity,
    classification_metrics,
    mean_of,
    ranked,
    weight_metrics,
)

log = logging.getLogger(__name__)

CUTOFF = 0.45  # interpretability cutoff on the validation cos³ similarity
PROJ_STEPS = 1000
PROJ_LR = 1e-3
PROJ_BATCH = 50_000
TARGET_ROWS = 200_000  # fit rows up to which the targets are computed once, whole


def cos3_similarity(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Per-concept cos³ similarity of (B, |D|) activations q and targets p -> (|D|,)."""

    def prep(x):
        x = (x - x.mean(0)) / x.std(0).clamp_min(1e-8)
        return x.pow(3)

    q3, p3 = prep(q), prep(p)
    return (q3 * p3).sum(0) / (q3.norm(dim=0) * p3.norm(dim=0)).clamp_min(1e-12)


def cos3_similarity_chunked(x: torch.Tensor, w: torch.Tensor, d: torch.Tensor,
                            chunk: int = CHUNK_ROWS) -> torch.Tensor:  # fmt: skip
    """`cos3_similarity(x @ w.T, x @ d.T)` over all rows of x without the (N, |D|) matrices:
    a first pass over row chunks gives each column's mean and (unbiased) std, a second
    accumulates the cubed standardised columns' products and squared norms (float64)."""
    n = len(x)
    s1 = torch.zeros(2, len(w), dtype=torch.float64, device=x.device)
    s2 = torch.zeros_like(s1)
    for sl in iter_chunks(n, chunk):
        qp = torch.stack([x[sl] @ w.T, x[sl] @ d.T]).double()
        s1 += qp.sum(1)
        s2 += qp.pow(2).sum(1)
    mean = s1 / n
    std = ((s2 - n * mean.pow(2)) / max(n - 1, 1)).clamp_min(0).sqrt().clamp_min(1e-8)
    dot = torch.zeros(len(w), dtype=torch.float64, device=x.device)
    nq, np_ = torch.zeros_like(dot), torch.zeros_like(dot)
    for sl in iter_chunks(n, chunk):
        qp = ((torch.stack([x[sl] @ w.T, x[sl] @ d.T]).double() - mean[:, None])
              / std[:, None]).pow(3)  # fmt: skip
        dot += (qp[0] * qp[1]).sum(0)
        nq += qp[0].pow(2).sum(0)
        np_ += qp[1].pow(2).sum(0)
    return (dot / (nq.sqrt() * np_.sqrt()).clamp_min(1e-12)).to(x.dtype)


@dataclass(frozen=True)
class LabelFreeResult:
    metrics: dict  # test: n, top1, top5, mean_per_class_acc, nec, acc_nec5, act_sparsity
    kept_concepts: list[int]
    val_similarity: list[float]
    note: str


def fit_label_free_cbm(
    data,
    *,
    nec: float = 5.0,
    seed: int = 0,
    steps: int = PROJ_STEPS,
    progress: bool = False,
    solver_gib: float = SOLVER_GIB,
    path_max_iter: int = PATH_MAX_ITER,
) -> LabelFreeResult:
    """Label-free CBM on HeadData `data`; test metrics of the resulting head.

    Memory: the targets are whole only up to TARGET_ROWS fit rows; the validation similarity
    is accumulated over row chunks (`cos3_similarity_chunked`); the elastic-net layer sees the
    rows `data.solver_rows` allows within `solver_gib`. Results equal the whole-matrix run."""
    fit_rows, x_val = data.train_idx, data.train.x[data.val_idx]  # fit rows: drawn per batch
    d = data.text.concept_emb
    # the targets P = I D^T: kept whole only up to TARGET_ROWS fit rows (an N x |D| fp32 matrix
    # is ~24 GB at ImageNet size); above, each batch's rows are computed when drawn
    p_fit = data.train.x[fit_rows] @ d.T if len(fit_rows) <= TARGET_ROWS else None
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(d.shape, generator=g) / d.shape[1] ** 0.5).to(d).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=PROJ_LR)
    best, best_w = -float("inf"), w.detach().clone()
    for step in range(steps):
        rows = torch.randperm(len(fit_rows), generator=g)[:PROJ_BATCH].to(fit_rows.device)
        xb = data.train.x[fit_rows[rows]]
        loss = -cos3_similarity(xb @ w.T, xb @ d.T if p_fit is None else p_fit[rows]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 49 or step == steps - 1:
            with torch.no_grad():
                val = float(cos3_similarity_chunked(x_val, w, d).mean())
            if val > best:
                best, best_w = val, w.detach().clone()
    w = best_w
    with torch.no_grad():
        sim = cos3_similarity_chunked(x_val, w, d)
    keep = torch.nonzero(sim >= CUTOFF).flatten()
    note = f"{len(keep)} of {len(d)} concepts pass the cos³ cutoff {CUTOFF}"
    if len(keep) == 0:
        keep = sim.topk(max(1, len(d) // 10)).indices.sort().values
        note = f"no concept passes the cos³ cutoff {CUTOFF}; kept the best {len(keep)}"
    log.info("label-free CBM: %s", note)
    wk = w[keep].detach()
    fit_idx, val_idx = data.solver_rows(len(keep), solver_gib)
    with torch.no_grad():
        a_fit, a_val = data.train.x[fit_idx] @ wk.T, data.train.x[val_idx] @ wk.T
    path = fit_elastic_net(
        a_fit, data.train.y[fit_idx], n_classes=data.n_classes, target_nec=nec,
        x_val=a_val, y_val=data.train.y[val_idx], seed=seed, progress=progress,
        max_iter=path_max_iter,
    )  # fmt: skip
    del a_fit, a_val
    a_test = data.test.x @ wk.T
    logits = a_test @ path.weight.to(a_test).T + path.bias.to(a_test)
    y = data.test.y.cpu().numpy()
    m = classification_metrics(ranked(logits, 5).cpu(), y, data.n_classes)
    wm = weight_metrics(path.weight.cpu())
    trunc = NecEvaluator(path.weight.to(a_test), path.bias.to(a_test), (5,))
    trunc.update(a_test, y)
    m.update(wm, nec=wm["nec_mean"], acc_nec5=trunc.result()["acc_nec5"])
    m["act_sparsity"] = mean_of([activation_sparsity(a_test)["sparsity"]])
    return LabelFreeResult(m, keep.tolist(), sim.tolist(), note)
