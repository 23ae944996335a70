"""Class-grounded positives and sparse bottlenecks for the CBL (SPEC §2, "Finding and extension").

Notation: B images per batch, |D| concepts, |C| classes, E the CLIP embedding width.
`logits` z (B, |D|) are the CBL scores of a batch (row = image, e.g. alpha_c * a), `a` (B, |D|)
the concept activations a = W_CBL psi.

Why: the diagonal positives of heads/cbm/losses.py (image k <-> concept k) are, under shuffled
batches, a cross-entropy to a uniform target and cannot sparsify `a`. Here an image of class y
has as positives the concepts *linked* to y, a boolean class -> concept matrix P (|C|, |D|)
built from the cache's concept -> class links (`links_from_concept_classes`) or from the m
concepts nearest to each class embedding (`nearest_concept_links`). The row softmax then
pushes each image's probability mass onto its class's concepts and away from all others, so
the loss *does* sparsify (tests/test_positives.py).

The sparse bottlenecks (`topk_mask`, `sparsemax`, `gumbel_softmax_sample` / `lowtau_softmax`)
map a (B, |D|) -> (B, |D|) and are what the final layer sees. `active_fraction` measures the
result (softmax outputs are never exactly zero, so a relative threshold is used).

Pure functions over tensors; imports only torch (and numpy for inputs given as arrays).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

AGGREGATES = ("mean-in-log", "mean-of-losses")
CLASS_SEP = "|"  # the cache's separator in /text/concept_classes (cache/layout.py)
_U_EPS = 1e-10  # keeps u inside (0, 1) so that -log(-log u) is finite (as heads/cbm/losses.py)


# --- positives ----------------------------------------------------------------------------


def _as_bool_2d(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    return t.bool()


def class_positive_mask(labels: torch.Tensor, links: torch.Tensor) -> torch.Tensor:
    """Positive concepts of each image: mask[i, j] = links[labels[i], j].

    labels: (B,) integer class ids in [0, |C|).
    links:  (|C|, |D|) bool, links[c, j] = concept j is a positive of class c.
    returns (B, |D|) bool, on links' device.
    """
    links = _as_bool_2d(links, "links")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (B,), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= links.shape[0]):
        raise ValueError(
            f"labels must lie in [0, |C|) = [0, {links.shape[0]}), got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return links[labels.to(links.device).long()]


def nearest_concept_links(
    class_emb: torch.Tensor, concept_emb: torch.Tensor, m: int
) -> torch.Tensor:
    """Each class's m nearest concepts by cosine similarity (ties: lowest concept index first).

    class_emb:   (|C|, E) class (text) embeddings (need not be normalised).
    concept_emb: (|D|, E) concept embeddings.
    returns (|C|, |D|) bool with exactly m True per row.
    """
    class_emb, concept_emb = torch.as_tensor(class_emb), torch.as_tensor(concept_emb)
    if class_emb.ndim != 2 or concept_emb.ndim != 2 or class_emb.shape[1] != concept_emb.shape[1]:
        raise ValueError(
            "class_emb and concept_emb must be (|C|, E) and (|D|, E) with the same E, got "
            f"{tuple(class_emb.shape)} and {tuple(concept_emb.shape)}"
        )
    n_concepts = concept_emb.shape[0]
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n_concepts:
        raise ValueError(f"m must be an integer in [1, |D|] = [1, {n_concepts}], got {m!r}")
    sim = F.normalize(class_emb.double(), dim=1) @ F.normalize(concept_emb.double(), dim=1).T
    # a stable descending sort keeps equal similarities in index order -> lowest index wins
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :m]
    links = torch.zeros(sim.shape, dtype=torch.bool, device=sim.device)
    return links.scatter_(1, order, True)


def links_from_concept_classes(
    concept_classes: Sequence[str] | Sequence[Sequence[str]], classes: Sequence[str]
) -> torch.Tensor:
    """Class -> concept links from the cache's per-concept class names.

    concept_classes: length |D|; entry j is either the cache's raw string ("cat|dog", "" = no
        link) or an already split list of names (as cache.reader returns, [] = no link).
        Names are matched exactly (no whitespace stripping), as the cache writes them.
    classes: length |C|, the class names (index = class id).
    returns (|C|, |D|) bool, links[c, j] = concept j came from class c.
    Raises ValueError on a name that is not in `classes` or an empty name inside "a||b".
    """
    index = {name: c for c, name in enumerate(classes)}
    if len(index) != len(classes):
        raise ValueError("classes contains duplicate names")
    links = torch.zeros((len(classes), len(concept_classes)), dtype=torch.bool)
    for j, entry in enumerate(concept_classes):
        names = (entry.split(CLASS_SEP) if entry else []) if isinstance(entry, str) else entry
        for name in names:
            if name not in index:
                raise ValueError(
                    f"concept {j}: unknown class name {name!r} in {entry!r} (not one of the "
                    f"{len(classes)} classes)"
                )
            links[index[name], j] = True
    return links


# --- multi-positive contrastive losses ------------------------------------------------------


def _check_logits_mask(logits: torch.Tensor, pos_mask: torch.Tensor) -> torch.Tensor:
    if logits.ndim != 2 or min(logits.shape) < 1:
        raise ValueError(f"logits must have shape (B, |D|), got {tuple(logits.shape)}")
    if tuple(pos_mask.shape) != tuple(logits.shape):
        raise ValueError(
            f"pos_mask must have the shape of logits {tuple(logits.shape)}, "
            f"got {tuple(pos_mask.shape)}"
        )
    return pos_mask.to(device=logits.device, dtype=torch.bool)


def _check_aggregate(aggregate: str) -> None:
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")


def _multi_pos_nll(logp: torch.Tensor, pos: torch.Tensor, aggregate: str, dim: int):
    """Mean over lines (rows if dim=1, columns if dim=0) with >= 1 positive; None if none has.

    logp: log-probabilities normalised along `dim`; pos: bool mask of the same shape.
    """
    n_pos = pos.sum(dim=dim)
    valid = n_pos > 0
    if not bool(valid.any()):
        return None
    # lines without a positive get a dummy all-positive mask (finite, NaN-free gradient) and
    # are dropped below
    pos = pos | ~valid.unsqueeze(dim)
    if aggregate == "mean-in-log":
        # -log (1/|P|) sum_P p = -logsumexp_P logp + log|P|
        per_line = -torch.logsumexp(logp.masked_fill(~pos, float("-inf")), dim=dim)
        per_line = per_line + n_pos.clamp(min=1).to(logp.dtype).log()
    else:
        per_line = -(logp.masked_fill(~pos, 0.0)).sum(dim=dim) / n_pos.clamp(min=1)
    return per_line[valid].mean()


def _combine(logp_rows, logp_cols, pos, aggregate: str, symmetric: bool) -> torch.Tensor:
    rows = _multi_pos_nll(logp_rows, pos, aggregate, dim=1)
    if rows is None:
        raise ValueError(
            "no image in the batch has a positive concept (pos_mask is all False): check the "
            "class -> concept links (every class needs >= 1 linked concept)"
        )
    if not symmetric:
        return rows
    cols = _multi_pos_nll(logp_cols, pos, aggregate, dim=0)
    return 0.5 * (rows + cols)


def multi_positive_loss(
    logits: torch.Tensor,
    pos_mask: torch.Tensor,
    *,
    aggregate: str = "mean-in-log",
    symmetric: bool = False,
) -> torch.Tensor:
    """Softmax contrastive loss with several positives per image. -> scalar.

    logits:   (B, |D|) image -> concept scores z (e.g. alpha_c * a).
    pos_mask: (B, |D|) bool, pos_mask[i, j] = concept j is a positive of image i
              (`class_positive_mask(labels, links)`).
    Row term (image -> concepts), p = softmax(z[i]) over all |D| concepts, P_i = positives:
      "mean-in-log":    -log( (1/|P_i|) sum_{j in P_i} p_j )
                        = -logsumexp_{P_i} z + log|P_i| + logsumexp_all z
                        (only the total mass on P_i counts: under SGD one positive may take
                        it all, i.e. this is the sparser of the two);
      "mean-of-losses": (1/|P_i|) sum_{j in P_i} -log p_j  (each positive pulled up equally).
    Both equal cross_entropy(z[i], j) when P_i = {j}. Rows with no positive are ignored; the
    result is the mean over the other rows.
    symmetric=True adds the column term (concept -> images) and returns 1/2 [rows + cols]:
      for concept j the softmax runs over the B images of the batch and its positives are the
      images whose class links j (column j of pos_mask); columns with no positive in the batch
      are ignored (so are all columns if none has one, leaving the column term out).
    Raises ValueError on bad shapes, an unknown aggregate, or a batch in which no row has a
    positive.
    """
    _check_aggregate(aggregate)
    pos = _check_logits_mask(logits, pos_mask)
    logp_cols = F.log_softmax(logits, dim=0) if symmetric else None
    return _combine(F.log_softmax(logits, dim=1), logp_cols, pos, aggregate, symmetric)


def gumbel_noise(shape, generator: torch.Generator | None, device=None) -> torch.Tensor:
    """G = -log(-log u), u ~ U(0, 1) drawn from `generator` (fp32, clamped away from 0 and 1)."""
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return -torch.log(-torch.log(u.clamp(_U_EPS, 1.0 - _U_EPS)))


def _straight_through(z: torch.Tensor, dim: int) -> torch.Tensor:
    """One-hot argmax of softmax(z) along `dim`; forward value one-hot, gradient the soft one's."""
    y = F.softmax(z, dim=dim)
    hard = torch.zeros_like(y).scatter_(dim, y.argmax(dim=dim, keepdim=True), 1.0)
    return hard - y.detach() + y


def _hard_miss_rate(z: torch.Tensor, pos: torch.Tensor, dim: int):
    """Mean over lines with a positive of 1 - (one-hot sample lands on a positive)."""
    valid = pos.any(dim=dim)
    if not bool(valid.any()):
        return None
    hit = (_straight_through(z, dim) * pos).sum(dim=dim)
    return (1.0 - hit)[valid].mean()


def gumbel_multi_positive_loss(
    logits: torch.Tensor,
    pos_mask: torch.Tensor,
    tau: float,
    generator: torch.Generator | None = None,
    *,
    aggregate: str = "mean-in-log",
    hard: bool = False,
    symmetric: bool = False,
) -> torch.Tensor:
    """`multi_positive_loss` on the Gumbel-perturbed, tempered scores (z + G) / tau. -> scalar.

    logits, pos_mask: (B, |D|) as in multi_positive_loss; tau > 0 the temperature;
    G (B, |D|) Gumbel noise from `generator` (one sample per entry, shared by the row and
    column terms). The softmax of (z + G) / tau is the Gumbel-softmax sample, so the loss is
    -log of the sample's (mean) mass on the positives.
    hard=True: straight-through one-hot samples y_st; the NLL of a one-hot is 0 or inf, so the
    objective is the sampled miss rate mean_i (1 - sum_{j in P_i} y_st[i, j]) (same for both
    aggregates), with the soft sample's gradient.
    """
    _check_aggregate(aggregate)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    pos = _check_logits_mask(logits, pos_mask)
    z = (logits + gumbel_noise(logits.shape, generator, logits.device)) / tau
    if not hard:
        logp_cols = F.log_softmax(z, dim=0) if symmetric else None
        return _combine(F.log_softmax(z, dim=1), logp_cols, pos, aggregate, symmetric)
    rows = _hard_miss_rate(z, pos, dim=1)
    if rows is None:
        raise ValueError("no image in the batch has a positive concept (pos_mask is all False)")
    if not symmetric:
        return rows
    cols = _hard_miss_rate(z, pos, dim=0)
    return rows if cols is None else 0.5 * (rows + cols)


# --- sparse bottlenecks: (B, |D|) -> (B, |D|) -----------------------------------------------


def _check_2d(a: torch.Tensor, name: str = "a") -> None:
    if a.ndim != 2 or min(a.shape) < 1:
        raise ValueError(f"{name} must have shape (B, |D|), got {tuple(a.shape)}")


def topk_mask(a: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each row's k largest activations (by value, as ConceptBottleneck's topk), zero the rest.

    a (B, |D|) -> (B, |D|) with at most k non-zeros per row (exactly k unless a kept value is
    itself 0). Gradient: identity on the kept entries, zero on the others (the selection is
    piecewise constant and not differentiated).
    """
    _check_2d(a)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= a.shape[1]:
        raise ValueError(f"k must be an integer in [1, |D|] = [1, {a.shape[1]}], got {k!r}")
    values, idx = a.topk(k, dim=1)
    return torch.zeros_like(a).scatter(1, idx, values)


class _Sparsemax(torch.autograd.Function):
    """Sparsemax along the last dim (Martins & Astudillo 2016, Alg. 1 and eq. 14)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        z_sorted = torch.sort(z, dim=-1, descending=True).values
        cssv = z_sorted.cumsum(dim=-1)
        ks = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
        # support size k(z) = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)}; k = 1 always qualifies
        support = (1 + ks * z_sorted) > cssv
        k = support.to(z.dtype).sum(dim=-1, keepdim=True)  # the condition holds on a prefix
        tau = (cssv.gather(-1, k.long() - 1) - 1) / k
        p = (z - tau).clamp(min=0)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (p,) = ctx.saved_tensors
        s = (p > 0).to(grad.dtype)  # support S
        # J = diag(s) - s s^T / |S|  ->  J^T g = s * (g - sum_S g / |S|)
        v = (grad * s).sum(dim=-1, keepdim=True) / s.sum(dim=-1, keepdim=True)
        return s * (grad - v)


def sparsemax(a: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean projection of a onto the probability simplex along `dim` (exact).

    a (B, |D|) -> (B, |D|): non-negative, sums to 1 along dim, exact zeros off the support.
    sparsemax(a) = argmin_{p in simplex} ||p - a||^2 = max(a - tau(a), 0).
    Gradient (exact, custom autograd): on the support S, g - mean_S(g); zero off the support
    (inactive concepts get no gradient, as with TopK).
    """
    if a.ndim < 1 or a.shape[dim] < 1:
        raise ValueError(f"sparsemax needs a non-empty dimension {dim}, got {tuple(a.shape)}")
    if dim in (-1, a.ndim - 1):
        return _Sparsemax.apply(a)
    return _Sparsemax.apply(a.transpose(dim, -1)).transpose(dim, -1)


def gumbel_softmax_sample(
    a: torch.Tensor, tau: float, generator: torch.Generator | None = None, hard: bool = False
) -> torch.Tensor:
    """Training-time bottleneck: softmax((a + G) / tau) along concepts, G Gumbel from generator.

    a (B, |D|) -> (B, |D|), rows sum to 1. Gradient: that of the softmax (to every entry;
    as tau -> 0 it concentrates on the sampled concept and grows like 1/tau).
    hard=True: one-hot argmax in the forward pass, the soft sample's gradient (straight-through).
    Never exactly sparse unless hard; pair with `lowtau_softmax` at inference.
    """
    _check_2d(a)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    z = (a + gumbel_noise(a.shape, generator, a.device).to(a.dtype)) / tau
    return _straight_through(z, dim=1) if hard else F.softmax(z, dim=1)


def lowtau_softmax(a: torch.Tensor, tau: float) -> torch.Tensor:
    """Deterministic inference form of `gumbel_softmax_sample`: softmax(a / tau) along concepts.

    a (B, |D|) -> (B, |D|), rows sum to 1 (the noise-free mode of the Gumbel-softmax sample's
    temperature-tau relaxation). Gradient: that of the softmax. Entries are never exactly 0
    (short of floating-point underflow at very small tau): measure sparsity with
    `active_fraction`.
    """
    _check_2d(a)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return F.softmax(a / tau, dim=1)


def active_fraction(a: torch.Tensor, rel: float = 1e-3) -> float:
    """Mean over rows of the fraction of concepts with |a_j| > rel * max_j |a_j| (per row).

    a (B, |D|) -> float in [0, 1]. 1 - this is SPEC §2's activation sparsity (fraction of
    |a_j| <= 1e-3 max|a|). An all-zero row counts as 0 active. Softmax outputs are never exactly
    zero, so for them this thresholded fraction (not L0) is what counts; for TopK / sparsemax /
    hard samples it is at most the L0 fraction. No gradient (a metric).
    """
    _check_2d(a)
    if rel < 0:
        raise ValueError(f"rel must be >= 0, got {rel}")
    mag = a.detach().abs()
    active = mag > rel * mag.amax(dim=1, keepdim=True)
    return float(active.to(torch.float64).mean(dim=1).mean())
