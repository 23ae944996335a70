"""Contrastive losses with M positives per anchor, as pure functions over unit projections.

Seed 002 ("distribution bias in contrastive learning") compares three losses, and SupCon is the
supervised reference:

- `contrastive`: NT-Xent (SimCLR, Chen et al. 2020): -log h(x,v) / (h(x,v) + sum_i h(x,u_i)).
- `debiased-neg`: DebiasedNeg (Chuang et al. 2020): the negative sum is replaced by the
  estimator Ng = (sum_i h(x,u_i) - N tau+ h(x,v)) / tau-, clamped at N e^{-1/t} (their code).
- `debiased-pos`: the seed's DebiasedPos, exactly as written there:
  P_emp = (sum_i h(x,u_i) + h(x,v) + h(x,x)) / (N + 2), P-_emp = sum_i h(x,u_i) / N,
  loss = -log (P_emp - tau- P-_emp) / (P_emp + (N tau+ - tau-) P-_emp).
- `supcon`: SupCon L_out (Khosla et al. 2020, their eq. 2): positives are every other sample
  with the anchor's label, -mean_p log h(x,p) / sum_{a != x} h(x,a).

h(x, y) = exp(x.y / t), tau- = 1 - tau+, N = the anchor's number of negatives.

Views and positives. `views` is (B, V, E): V = M + 1 unit-norm views of each of B images. The
M positives of an anchor view are the other views of its image (SupCon: every sample of its
class); its negatives are all views of the other images. Two aggregations (seed, "M positives"):

- `pos-grouping`: all B*V views form one batch and every view is an anchor; h(x,v) above is the
  mean of h over the anchor's M positives (inside the estimator). N = (B - 1) V.
- `loss-combination`: the two-view loss (SimCLR's 2B anchors, N = 2B - 2) for every pair of
  views (a, b), a < b, averaged over the V (V - 1) / 2 pairs.

Both are the same loss when M = 1. Labels: required by `supcon`; given to the other three they
are an oracle that removes same-class samples from the negatives (the seed's false-negative
removal), so N then varies per anchor.

Numerics: every ratio above is homogeneous of degree 0 in h, so h is computed as
exp((sim - 1) / t) <= 1 (no overflow at small t); the DebiasedNeg clamp N e^{-1/t} is scaled
the same way (N e^{-2/t}). Registry contract (keep it):

    LOSSES[name](views, *, t, tau_plus, aggregate, labels=None) -> scalar tensor
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import combinations

import torch
from torch import Tensor

AGGREGATES = ("pos-grouping", "loss-combination")


def _check(views: Tensor, t: float, tau_plus: float, aggregate: str, labels) -> None:
    if not isinstance(views, Tensor) or views.ndim != 3:
        shape = tuple(views.shape) if isinstance(views, Tensor) else type(views).__name__
        raise ValueError(f"views must be a (B, V, E) tensor of unit rows, got {shape}")
    b, v, _ = views.shape
    if b < 2 or v < 2:
        raise ValueError(
            f"views (B, V, E) needs B >= 2 images and V >= 2 views (M = V - 1 >= 1 positives), "
            f"got B = {b}, V = {v}"
        )
    if not (isinstance(t, int | float) and math.isfinite(t) and t > 0):
        raise ValueError(f"temperature t must be a finite number > 0, got {t!r}")
    if not (isinstance(tau_plus, int | float) and 0.0 <= tau_plus < 1.0):
        raise ValueError(f"tau_plus (class prior tau+) must be in [0, 1), got {tau_plus!r}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {list(AGGREGATES)}, got {aggregate!r}")
    if labels is not None and tuple(labels.shape) != (b,):
        raise ValueError(
            f"labels must have shape ({b},) (one per image), got {tuple(labels.shape)}"
        )


def _masks(ids: Tensor, labels: Tensor | None, supervised: bool) -> tuple[Tensor, Tensor]:
    """(pos, neg) (n, n) bool masks of the n samples of a batch; the diagonal is in neither."""
    eye = torch.eye(len(ids), dtype=torch.bool, device=ids.device)
    same = ids[:, None] == ids[None, :]
    pos, neg = same & ~eye, ~same
    if labels is not None:
        same_class = labels[:, None] == labels[None, :]
        if supervised:
            pos, neg = same_class & ~eye, ~same_class
        else:  # oracle false-negative removal
            neg = neg & ~same_class
    return pos, neg


def _terms(z: Tensor, pos: Tensor, neg: Tensor, t: float):
    """Shifted h = exp((sim - 1) / t) pieces: (mean positive h, negative sum, N) per anchor."""
    h = torch.exp((z @ z.T - 1.0) / t)  # (n, n), <= 1 (up to rounding)
    n_pos = pos.sum(1)
    n_neg = neg.sum(1)
    hp = (h * pos).sum(1) / n_pos.clamp_min(1)
    s_neg = (h * neg).sum(1)
    return h, hp, s_neg, n_neg.to(z.dtype)


def _nt_xent(z, pos, neg, t, tau_plus):
    _, hp, s_neg, _ = _terms(z, pos, neg, t)
    return -torch.log(hp / (hp + s_neg))


def _debiased_neg(z, pos, neg, t, tau_plus):
    _, hp, s_neg, n = _terms(z, pos, neg, t)
    ng = (s_neg - n * tau_plus * hp) / (1.0 - tau_plus)
    ng = torch.maximum(ng, n * math.exp(-2.0 / t))  # N e^{-1/t}, in units of e^{1/t}
    return -torch.log(hp / (hp + ng))


def _debiased_pos(z, pos, neg, t, tau_plus):
    h, hp, s_neg, n = _terms(z, pos, neg, t)
    tau_minus = 1.0 - tau_plus
    h_self = torch.diagonal(h)
    p_emp = (s_neg + hp + h_self) / (n + 2.0)
    p_neg = s_neg / n.clamp_min(1.0)
    num = p_emp - tau_minus * p_neg
    den = p_emp + (n * tau_plus - tau_minus) * p_neg
    bad = num <= 0
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"debiased-pos: the numerator P_emp - tau- P-_emp is <= 0 for {int(bad.sum())} of "
            f"{len(num)} anchors (e.g. anchor {k}: N = {int(n[k])} negatives, tau+ = {tau_plus}; "
            f"it can be once N tau+ < 2 tau-, here {float(n[k]) * tau_plus:.3g} vs "
            f"{2 * tau_minus:.3g}); use a larger batch or a larger tau+"
        )
    return -torch.log(num / den)


def _supcon(z, pos, neg, t, tau_plus):
    logits = (z @ z.T - 1.0) / t
    others = pos | neg  # every a != anchor
    log_den = torch.logsumexp(logits.masked_fill(~others, -math.inf), dim=1)
    log_prob = logits - log_den[:, None]
    # anchors without a positive have no SupCon term; `loss` leaves them out of the mean
    return -(log_prob * pos).sum(1) / pos.sum(1).clamp_min(1)


_ANCHOR_LOSSES = {
    "contrastive": _nt_xent,
    "debiased-neg": _debiased_neg,
    "debiased-pos": _debiased_pos,
    "supcon": _supcon,
}


def _anchor_mean(per_anchor: Tensor, pos: Tensor) -> Tensor:
    """Mean over the anchors that have a positive: an anchor without one has no loss term (it
    is left out, not counted as 0). With V >= 2 views every anchor has one (its other views)."""
    has = pos.any(1)
    if not bool(has.any()):
        raise ValueError("no anchor of the batch has a positive; every loss term is undefined")
    return per_anchor[has].mean()


def _loss(name: str) -> Callable[..., Tensor]:
    per_anchor = _ANCHOR_LOSSES[name]
    supervised = name == "supcon"

    def loss(
        views: Tensor, *, t: float, tau_plus: float, aggregate: str, labels: Tensor | None = None
    ) -> Tensor:
        _check(views, t, tau_plus, aggregate, labels)
        if supervised and labels is None:
            raise ValueError("supcon needs labels (one per image): its positives are the class")
        if name == "debiased-pos" and tau_plus == 0:
            raise ValueError(
                "debiased-pos needs tau_plus > 0: at tau+ = 0 numerator and denominator are "
                "equal and the loss is identically 0"
            )
        b, v, e = views.shape
        img = torch.arange(b, device=views.device)
        if aggregate == "pos-grouping":
            groups = [tuple(range(v))]
        else:
            groups = list(combinations(range(v), 2))
        total = views.new_zeros(())
        for group in groups:
            z = views[:, list(group)].transpose(0, 1).reshape(-1, e)  # view-major (|g| B, E)
            ids = img.repeat(len(group))
            lab = None if labels is None else labels.to(views.device).repeat(len(group))
            pos, neg = _masks(ids, lab, supervised)
            total = total + _anchor_mean(per_anchor(z, pos, neg, t, tau_plus), pos)
        return total / len(groups)

    loss.__name__ = name.replace("-", "_")
    loss.__doc__ = f"{name}: (B, V, E) unit views -> scalar loss (see heads.contrastive.losses)."
    return loss


# name -> loss(views (B, V, E) unit rows, *, t, tau_plus, aggregate, labels=None) -> scalar
LOSSES: dict[str, Callable[..., Tensor]] = {name: _loss(name) for name in _ANCHOR_LOSSES}
