"""Class-grounded positives and sparse bottlenecks (heads/cbm/positives.py). Tiny, CPU, exact."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from clipcbm.heads.cbm.losses import contrastive_loss
from clipcbm.heads.cbm.positives import (
    active_fraction,
    class_positive_mask,
    gumbel_multi_positive_loss,
    gumbel_noise,
    gumbel_softmax_sample,
    links_from_concept_classes,
    lowtau_softmax,
    multi_positive_loss,
    nearest_concept_links,
    sparsemax,
    topk_mask,
)

# 2 images x 3 concepts; image 0 has positives {0, 1}, image 1 has {2}
Z = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]], dtype=torch.float64)
POS = torch.tensor([[True, True, False], [False, False, True]])


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- multi-positive loss ------------------------------------------------------------------


def test_multi_positive_loss_hand_computed_2x3():
    s0 = math.exp(1.0) + math.exp(2.0) + math.exp(0.0)
    s1 = math.exp(0.5) + math.exp(-1.0) + math.exp(3.0)
    p00, p01, p12 = math.exp(1.0) / s0, math.exp(2.0) / s0, math.exp(3.0) / s1
    row1 = -math.log(p12)
    mean_in_log = 0.5 * (-math.log((p00 + p01) / 2) + row1)
    mean_of_losses = 0.5 * ((-math.log(p00) - math.log(p01)) / 2 + row1)
    assert multi_positive_loss(Z, POS).item() == pytest.approx(mean_in_log, rel=1e-12)
    got = multi_positive_loss(Z, POS, aggregate="mean-of-losses").item()
    assert got == pytest.approx(mean_of_losses, rel=1e-12)
    assert mean_of_losses > mean_in_log  # Jensen: -log mean <= mean -log

    # symmetric: columns softmaxed over the 2 images; column j's positives = images linking j
    def col_p(j, i):
        return math.exp(Z[i, j].item()) / (math.exp(Z[0, j].item()) + math.exp(Z[1, j].item()))

    cols = (-math.log(col_p(0, 0)) - math.log(col_p(1, 0)) - math.log(col_p(2, 1))) / 3
    got = multi_positive_loss(Z, POS, symmetric=True).item()
    assert got == pytest.approx(0.5 * (mean_in_log + cols), rel=1e-12)


def test_aggregations_coincide_with_one_positive_per_row_and_rows_without_are_ignored():
    z = torch.randn(5, 7, generator=_gen(1), dtype=torch.float64)
    pos = torch.zeros(5, 7, dtype=torch.bool)
    pos[torch.arange(4), torch.tensor([3, 0, 6, 3])] = True  # row 4 has no positive
    a = multi_positive_loss(z, pos, aggregate="mean-in-log")
    b = multi_positive_loss(z, pos, aggregate="mean-of-losses")
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    assert a.item() == pytest.approx(F.cross_entropy(z[:4], torch.tensor([3, 0, 6, 3])).item())
    zz = z.clone().requires_grad_(True)
    multi_positive_loss(zz, pos, symmetric=True).backward()
    assert torch.isfinite(zz.grad).all() and (zz.grad[4] != 0).any()  # row 4 via its columns
    zz.grad = None
    multi_positive_loss(zz, pos).backward()
    assert torch.isfinite(zz.grad).all() and (zz.grad[4] == 0).all()  # ignored row: no gradient


def test_diagonal_positives_equal_infonce():
    z = torch.randn(4, 6, generator=_gen(2), dtype=torch.float64)
    diag = torch.eye(4, 6, dtype=torch.bool)
    row_half = F.cross_entropy(z, torch.arange(4))
    assert multi_positive_loss(z, diag).item() == pytest.approx(row_half.item(), rel=1e-12)
    # square batch, symmetric: exactly the diagonal contrastive CBL loss (eq. 8) at alpha_c = 1
    sq = z[:, :4]
    got = multi_positive_loss(sq, torch.eye(4, dtype=torch.bool), symmetric=True)
    assert got.item() == pytest.approx(contrastive_loss(sq, 1.0).item(), rel=1e-12)


@pytest.mark.parametrize("aggregate", ["mean-in-log", "mean-of-losses"])
def test_gradient_moves_mass_onto_positives_and_sparsifies(aggregate):
    links = torch.zeros(2, 8, dtype=torch.bool)
    links[0, [0, 1]] = True
    links[1, [2, 3]] = True
    pos = class_positive_mask(torch.tensor([0, 1, 0, 1]), links)
    z0 = torch.randn(4, 8, generator=_gen(3), dtype=torch.float64)
    z = z0.clone().requires_grad_(True)
    mass = [(z.detach().softmax(1) * pos).sum(1)]
    for _ in range(200):  # plain SGD, lr 5
        (grad,) = torch.autograd.grad(multi_positive_loss(z, pos, aggregate=aggregate), z)
        with torch.no_grad():
            z -= 5.0 * grad
        mass.append((z.detach().softmax(1) * pos).sum(1))
    steps = torch.stack(mass)
    assert (steps[1:] > steps[:-1]).all()  # positive mass rises in every row at every step
    assert (z.detach()[~pos] < z0[~pos]).all()  # every non-positive score went down
    assert steps[-1].min() > 0.95 > steps[0].max()
    # the activations become sparse: only positives stay above 1e-2 * the row max. mean-of-losses
    # keeps both positives of a row; mean-in-log only rewards their total mass, so it may let
    # one positive take it all (here it does: 1 active concept per row)
    p0, p = z0.softmax(1), z.detach().softmax(1)
    assert active_fraction(p0, rel=1e-2) == 1.0
    active = p > 1e-2 * p.amax(1, keepdim=True)
    assert not (active & ~pos).any()
    want = 2 / 8 if aggregate == "mean-of-losses" else 1 / 8
    assert active_fraction(p, rel=1e-2) == pytest.approx(want)


def test_gumbel_multi_positive_loss_is_the_loss_on_perturbed_scores():
    z = torch.randn(3, 5, generator=_gen(4), dtype=torch.float64)
    pos = torch.rand(3, 5, generator=_gen(5)) < 0.5
    pos[:, 0] = True
    tau = 0.3
    g = gumbel_noise(z.shape, _gen(6)).double()
    for agg, sym in itertools.product(["mean-in-log", "mean-of-losses"], [False, True]):
        got = gumbel_multi_positive_loss(z, pos, tau, _gen(6), aggregate=agg, symmetric=sym)
        want = multi_positive_loss((z + g) / tau, pos, aggregate=agg, symmetric=sym)
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
    zz = z.clone().requires_grad_(True)
    hard = gumbel_multi_positive_loss(zz, pos, tau, _gen(6), hard=True)
    assert 0.0 <= hard.item() <= 1.0
    hard.backward()
    assert zz.grad.abs().sum() > 0  # straight-through: the soft sample's gradient


def test_class_positive_mask_selects_label_rows():
    links = torch.tensor([[True, False, False], [False, True, True]])
    got = class_positive_mask(torch.tensor([1, 0, 1]), links)
    assert torch.equal(got, links[[1, 0, 1]])


# --- sparse bottlenecks -------------------------------------------------------------------


def _brute_simplex_projection(v: torch.Tensor) -> torch.Tensor:
    """argmin_{p in simplex} ||p - v||^2 by enumerating every support set (small |v| only)."""
    n, best, best_d = v.numel(), None, math.inf
    for r in range(1, n + 1):
        for s in itertools.combinations(range(n), r):
            idx = list(s)
            p = torch.zeros_like(v)
            p[idx] = v[idx] - (v[idx].sum() - 1) / r
            if (p >= 0).all() and (d := float(((p - v) ** 2).sum())) < best_d:
                best, best_d = p, d
    return best


def test_sparsemax_is_the_simplex_projection():
    a = 1.5 * torch.randn(30, 5, generator=_gen(7), dtype=torch.float64)
    p = sparsemax(a)
    assert (p >= 0).all()
    assert torch.allclose(p.sum(1), torch.ones(30, dtype=torch.float64))
    assert (p == 0).any(dim=1).float().mean() > 0.5  # exact zeros, most rows
    want = torch.stack([_brute_simplex_projection(row) for row in a])
    assert torch.allclose(p, want, atol=1e-12)
    assert torch.allclose(sparsemax(a.T, dim=0), p.T)
    assert torch.equal(sparsemax(torch.tensor([[3.0, 0.0, -1.0]])), torch.tensor([[1.0, 0, 0]]))


def test_sparsemax_gradient_matches_finite_differences():
    a = torch.randn(6, 5, generator=_gen(8), dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(sparsemax, (a,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda x: sparsemax(x, dim=0), (a,), eps=1e-6, atol=1e-6)


def test_topk_mask_keeps_exactly_k_largest():
    a = torch.randn(6, 10, generator=_gen(9))
    out = topk_mask(a, 3)
    assert ((out != 0).sum(1) == 3).all()
    kept = torch.topk(a, 3, dim=1).values
    assert torch.equal(torch.sort(out[out != 0].view(6, 3), 1).values, torch.sort(kept, 1).values)


def test_gumbel_sample_and_lowtau_softmax():
    a = torch.randn(4, 6, generator=_gen(10))
    soft = gumbel_softmax_sample(a, 0.5, _gen(11))
    assert torch.allclose(soft.sum(1), torch.ones(4))
    assert torch.equal(soft, gumbel_softmax_sample(a, 0.5, _gen(11)))  # explicit generator
    hard = gumbel_softmax_sample(a, 0.5, _gen(11), hard=True)
    assert torch.equal(hard.argmax(1), soft.argmax(1)) and ((hard != 0).sum(1) == 1).all()
    low = lowtau_softmax(a.double(), 0.1)
    assert torch.equal(low.argmax(1), a.argmax(1)) and (low > 0).all()  # never exactly zero
    assert active_fraction(low) < active_fraction(lowtau_softmax(a, 1.0)) == 1.0


def test_active_fraction():
    a = torch.tensor([[1.0, 0.5, 1e-4, 0.0], [0.0, 0.0, 0.0, 0.0], [-2.0, 1.0, 1.0, 1.0]])
    assert active_fraction(a) == pytest.approx((2 / 4 + 0 + 1) / 3)


# --- links --------------------------------------------------------------------------------


def test_nearest_concept_links_m_per_class_ties_lowest_index():
    concept_emb = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    class_emb = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    one = nearest_concept_links(class_emb, concept_emb, 1)
    assert torch.equal(one, torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.bool))
    two = nearest_concept_links(class_emb, concept_emb, 2)
    assert torch.equal(two, torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool))
    rnd = nearest_concept_links(torch.randn(5, 8, generator=_gen(12)), torch.randn(20, 8), 4)
    assert rnd.shape == (5, 20) and (rnd.sum(1) == 4).all()


def test_links_from_concept_classes():
    classes = ["cat", "dog", "golden retriever"]
    links = links_from_concept_classes(["cat|dog", "", "golden retriever"], classes)
    want = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.bool)
    assert torch.equal(links, want)
    as_lists = links_from_concept_classes([["cat", "dog"], [], ["golden retriever"]], classes)
    assert torch.equal(as_lists, want)  # cache.reader's already-split form
    with pytest.raises(ValueError, match="unknown class name 'cow'"):
        links_from_concept_classes(["cat|cow"], classes)


# --- errors -------------------------------------------------------------------------------


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="no image in the batch has a positive"):
        multi_positive_loss(Z, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="no image in the batch has a positive"):
        gumbel_multi_positive_loss(Z, torch.zeros(2, 3, dtype=torch.bool), 1.0, _gen(), hard=True)
    with pytest.raises(ValueError, match="logits must have shape"):
        multi_positive_loss(Z[0], POS[0])
    with pytest.raises(ValueError, match="pos_mask must have the shape"):
        multi_positive_loss(Z, POS[:, :2])
    with pytest.raises(ValueError, match="aggregate must be one of"):
        multi_positive_loss(Z, POS, aggregate="sum")
    with pytest.raises(ValueError, match="tau must be > 0"):
        gumbel_multi_positive_loss(Z, POS, 0.0, _gen())
    with pytest.raises(ValueError, match="labels must lie in"):
        class_positive_mask(torch.tensor([0, 2]), POS)
    with pytest.raises(ValueError, match="labels must have shape"):
        class_positive_mask(torch.tensor([[0]]), POS)
    with pytest.raises(ValueError, match="k must be an integer"):
        topk_mask(Z, 0)
    with pytest.raises(ValueError, match="m must be an integer"):
        nearest_concept_links(torch.ones(2, 3), torch.ones(4, 3), 5)
    with pytest.raises(ValueError, match="same E"):
        nearest_concept_links(torch.ones(2, 3), torch.ones(4, 2), 1)
    with pytest.raises(ValueError, match="a must have shape"):
        lowtau_softmax(torch.ones(3), 1.0)
