"""Explanations of single predictions as tables (SPEC §2 and §3 "Explanation").

- Concept bottleneck: logit_ŷ = Σ_j W_F[ŷ, j] a_j + b_ŷ, so the contribution of concept j
  is W_F[ŷ, j] · a_j (the bias is reported separately, it belongs to no concept).
- CMS: cos(V_n, T_ŷ) = Σ_j v_j t_j with v, t the normalised rows, so the contribution of
  concept j is v_j · t_j (`heads.baselines.cms.concept_terms`).

Both give a pandas table of the top-k concepts by contribution (largest first; ties in
concept-index order), with the activation next to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from clipcbm.heads.baselines.cms import CmsScorer, cms_explain

TABLE_COLUMNS = ("rank", "concept_index", "concept", "activation", "weight", "contribution")


@dataclass(frozen=True)
class Explanation:
    """One explained prediction."""

    method: str  # "cbm" | "cms"
    pred: int  # predicted class index ŷ
    score: float  # logit_ŷ (cbm) or cos(V_n, T_ŷ) (cms)
    offset: float  # part of the score that no concept owns: the FC bias b_ŷ (0 for cms)
    table: pd.DataFrame  # top-k concepts, columns TABLE_COLUMNS
    contributions: np.ndarray  # (|D|,) float32 all contributions (sum + offset = score)


def contribution_table(concepts, activation, weight, contribution, k: int) -> pd.DataFrame:
    """Top-k rows by contribution (descending, stable), as a table with TABLE_COLUMNS."""
    contribution = np.asarray(contribution, dtype=np.float32)
    if k < 1:
        raise ValueError(f"top-k must be >= 1, got {k}")
    order = np.argsort(-contribution, kind="stable")[:k]
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(order) + 1),
            "concept_index": order,
            "concept": [concepts[j] for j in order],
            "activation": np.asarray(activation, dtype=np.float32)[order],
            "weight": np.asarray(weight, dtype=np.float32)[order],
            "contribution": contribution[order],
        }
    )


def explain_cbm(
    activations: torch.Tensor, fc_weight: torch.Tensor, fc_bias, concepts, k: int = 10
) -> Explanation:
    """Explain logits W_F a + b for one image: activations (|D|,), W_F (|C|, |D|), b (|C|,)."""
    a = activations.detach().float().reshape(-1)
    w = fc_weight.detach().float().to(a.device)
    if w.shape[1] != a.shape[0] or len(concepts) != a.shape[0]:
        raise ValueError(
            f"activations have |D| = {a.shape[0]}, W_F has {w.shape[1]} columns and there are "
            f"{len(concepts)} concept names; they must agree"
        )
    b = None if fc_bias is None else fc_bias.detach().float().to(a.device)
    logits = F.linear(a[None], w, b)[0]
    pred = int(logits.argmax())
    contrib = (w[pred] * a).cpu().numpy()
    table = contribution_table(concepts, a.cpu().numpy(), w[pred].cpu().numpy(), contrib, k)
    offset = 0.0 if b is None else float(b[pred])
    return Explanation("cbm", pred, float(logits[pred]), offset, table, contrib)


def explain_cms_row(scorer: CmsScorer, image_row, concepts, k: int = 10) -> Explanation:
    """Explain the CMS prediction of one image (E,): activation v_j, weight t_j, term v_j t_j."""
    ex = cms_explain(scorer, image_row)
    table = contribution_table(concepts, ex["v"], ex["t"], ex["term"], k)
    return Explanation("cms", ex["cls"], ex["score"], 0.0, table, ex["term"])
