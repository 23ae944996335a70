"""The three CBL losses of SPEC §2 (thesis §4.4-4.6) as pure functions, plus the tau schedule.

Notation: A is the (B, |D|) activation matrix of a batch (row = image, column = concept).
The contrastive objectives put their positives on the diagonal: image k <-> concept k for
k < K = min(B, |D|). Rows (images) are softmaxed over all |D| concepts, columns (concepts) over
all B images; rows/columns without a positive (k >= K) do not contribute.

- l1:          (lam / |D|) * ||W_CBL||_1          (added to the CE of the FC layer)
- contrastive: 1/2 [CE_rows + CE_cols] of alpha_c * A                         (eq. 8)
- sparse:      the same with softmax replaced by Gumbel-softmax at temperature tau (eq. 9-10):
               Z = (alpha_c * A + G) / tau, G = -log(-log u), u ~ U(0, 1) drawn from an explicit
               torch.Generator, one Gumbel sample per entry shared by both directions.
  variant="reference" reproduces the published code instead: mean of -log gumbel_softmax(A)
  over ALL entries, for dim 0 and dim 1 (fresh noise each), tau fixed at 1.0, no alpha_c.
  hard=True (paper variant only): straight-through one-hot samples y_st. The NLL of a one-hot
  sample is 0 or +inf, so the hard objective is the sampled mis-assignment rate
  1/2 [mean_k (1 - y_st_rows[k, k]) + mean_k (1 - y_st_cols[k, k])], whose gradient is the
  soft sample's (straight-through estimator).

Sparsity (a finding, tested in tests/test_heads_losses.py and tests/test_heads_planted.py):
the positives are "image k <-> concept k" by batch position, and batches are shuffled, so
over an epoch each image is paired with a uniformly random concept. The expected contrastive
and Gumbel losses are then cross-entropies against a *uniform* target, which dense, equal
activations minimise and a peaked (sparse) row is penalised for. Neither loss therefore makes
`a` sparser than the other (thesis §4.5 expects Sparse-CBM to); the fitted heads are equally
dense. `fit-head --topk k` (heads/cbm/model.py) is the opt-in bottleneck for exactly k active
concepts per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from clipcbm.heads.cbm.positives import (
    class_positive_mask,
    gumbel_multi_positive_loss,
    multi_positive_loss,
)

REFERENCE_TAU = 1.0  # the published code's fixed Gumbel temperature
_U_EPS = 1e-10  # keeps u inside (0, 1) so that -log(-log u) is finite


def l1_penalty(w_cbl: torch.Tensor, lam: float) -> torch.Tensor:
    """(lam / |D|) * ||W_CBL||_1; w_cbl (|D|, |D|) -> scalar. Default lam = 1e-3 (SPEC §2)."""
    return (lam / w_cbl.shape[1]) * w_cbl.abs().sum()


def _diag_nll(logp: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of -logp[j, j] for j < k; logp (B, |D|)."""
    idx = torch.arange(k, device=logp.device)
    return -logp[idx, idx].mean()


def _check_batch(a: torch.Tensor) -> int:
    if a.ndim != 2 or min(a.shape) < 1:
        raise ValueError(f"CBL losses expect activations A of shape (B, |D|), got {tuple(a.shape)}")
    return min(a.shape)


def contrastive_loss(a: torch.Tensor, alpha_c: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE with diagonal positives (eq. 8). a (B, |D|), alpha_c scalar -> scalar.

    1/2 [ mean_k -log softmax_row(alpha_c A)[k, k] + mean_k -log softmax_col(alpha_c A)[k, k] ]
    over k < min(B, |D|).
    """
    k = _check_batch(a)
    z = alpha_c * a
    return 0.5 * (_diag_nll(F.log_softmax(z, dim=1), k) + _diag_nll(F.log_softmax(z, dim=0), k))


def gumbel_noise(shape, generator: torch.Generator | None, device=None) -> torch.Tensor:
    """G = -log(-log u), u ~ U(0, 1) from `generator` (fp32, clamped away from 0 and 1)."""
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    u = u.clamp(_U_EPS, 1.0 - _U_EPS)
    return -torch.log(-torch.log(u))


def _straight_through(z: torch.Tensor, dim: int) -> torch.Tensor:
    """One-hot argmax of softmax(z) along `dim` with the soft sample's gradient."""
    y = F.softmax(z, dim=dim)
    hard = torch.zeros_like(y).scatter_(dim, y.argmax(dim=dim, keepdim=True), 1.0)
    return hard - y.detach() + y


def _hard_diag_error(z: torch.Tensor, k: int) -> torch.Tensor:
    idx = torch.arange(k, device=z.device)
    rows = 1.0 - _straight_through(z, 1)[idx, idx].mean()
    cols = 1.0 - _straight_through(z, 0)[idx, idx].mean()
    return 0.5 * (rows + cols)


def gumbel_contrastive_loss(
    a: torch.Tensor,
    alpha_c: torch.Tensor | float,
    tau: float,
    generator: torch.Generator | None = None,
    *,
    hard: bool = False,
    variant: str = "paper",
) -> torch.Tensor:
    """Sparse-CBM loss (eq. 9-10). a (B, |D|) -> scalar; see the module docstring.

    tau: Gumbel-softmax temperature (> 0; ignored by variant="reference", which uses 1.0).
    generator: the torch.Generator the uniform noise is drawn from (on a's device).
    """
    if variant not in GUMBEL_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(GUMBEL_VARIANTS)}, got {variant!r}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return GUMBEL_VARIANTS[variant](a, alpha_c, tau, generator, hard)


def _gumbel_paper(a, alpha_c, tau, generator, hard):
    k = _check_batch(a)
    z = (alpha_c * a + gumbel_noise(a.shape, generator, a.device)) / tau
    if hard:
        return _hard_diag_error(z, k)
    return 0.5 * (_diag_nll(F.log_softmax(z, dim=1), k) + _diag_nll(F.log_softmax(z, dim=0), k))


def _gumbel_reference(a, alpha_c, tau, generator, hard):
    _check_batch(a)
    if hard:
        raise ValueError(
            "variant='reference' takes -log of the Gumbel-softmax sample over all entries; with "
            "hard=True that is -log(0) = inf. Use variant='paper' with hard=True"
        )
    # log_softmax == log(gumbel_softmax) without its underflow to -inf
    z0 = (a + gumbel_noise(a.shape, generator, a.device)) / REFERENCE_TAU
    z1 = (a + gumbel_noise(a.shape, generator, a.device)) / REFERENCE_TAU
    return 0.5 * (-F.log_softmax(z0, dim=0).mean() - F.log_softmax(z1, dim=1).mean())


GUMBEL_VARIANTS: dict[str, Callable] = {
    "paper": _gumbel_paper,  # symmetric diagonal objective of eq. 9-10, annealed tau
    "reference": _gumbel_reference,  # the published code's form, tau = 1.0
}


def tau_schedule(step: int, total_steps: int, tau_max: float = 1.0, tau_min: float = 0.1) -> float:
    """Exponential annealing: tau_max at step 0, tau_min at step total_steps - 1 (clamped after).

    tau(t) = tau_max * (tau_min / tau_max) ** (t / (total_steps - 1)).
    """
    if total_steps <= 1:
        return tau_min
    frac = min(max(step, 0), total_steps - 1) / (total_steps - 1)
    return tau_max * math.exp(frac * math.log(tau_min / tau_max))


# --- CBL loss registry: name -> fn(a, model, state) -> scalar -----------------------------
# `state` carries lam, tau (current), generator, hard, variant, and for --positives class the
# batch labels and the (|C|, |D|) class-concept links (see train.StepState).


def _cbl_l1(a, model, state):
    return l1_penalty(model.cbl.weight, state.lam)


def _cbl_contrastive(a, model, state):
    if state.links is not None:  # --positives class: the image's class's concepts
        pos = class_positive_mask(state.labels, state.links)
        return multi_positive_loss(model.alpha_tilde.exp() * a, pos, aggregate=state.aggregate)
    return contrastive_loss(a, model.alpha_tilde.exp())


def _cbl_sparse(a, model, state):
    if state.links is not None:
        pos = class_positive_mask(state.labels, state.links)
        return gumbel_multi_positive_loss(
            model.alpha_tilde.exp() * a, pos, state.tau, state.generator,
            aggregate=state.aggregate, hard=state.hard,
        )  # fmt: skip
    return gumbel_contrastive_loss(
        a,
        model.alpha_tilde.exp(),
        state.tau,
        state.generator,
        hard=state.hard,
        variant=state.variant,
    )


CBL_LOSSES: dict[str, Callable] = {
    "l1": _cbl_l1,
    "contrastive": _cbl_contrastive,
    "sparse": _cbl_sparse,
}
