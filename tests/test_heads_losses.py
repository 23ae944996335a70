"""CBL losses (SPEC §2) against hand-computed values on a 2 x 3 activation matrix."""

import itertools
import math

import pytest
import torch

from clipcbm.heads.cbm.losses import (
    CBL_LOSSES,
    contrastive_loss,
    gumbel_contrastive_loss,
    gumbel_noise,
    l1_penalty,
    tau_schedule,
)
from clipcbm.heads.psi import class_logits, concept_logits

# B = 2 images, |D| = 3 concepts: positives (0, 0) and (1, 1); column 2 has none.
A = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def _lse(*v):
    return math.log(sum(math.exp(x) for x in v))


def test_l1_penalty_hand_value():
    w = torch.tensor([[1.0, -2.0, 0.0], [0.0, 3.0, 0.0], [0.5, 0.0, -0.5]])  # ||W||_1 = 7
    assert l1_penalty(w, lam=0.3).item() == pytest.approx(0.3 / 3 * 7.0)


def test_contrastive_hand_value():
    s = 0.5  # alpha_c
    rows = (_lse(1.0, 0.0, 0.5) - 1.0) + (_lse(0.0, 0.5, 0.0) - 0.5)  # row k vs concept k
    cols = (_lse(1.0, 0.0) - 1.0) + (_lse(0.0, 0.5) - 0.5)  # concept k vs the 2 images
    expected = 0.5 * (rows / 2 + cols / 2)
    assert contrastive_loss(A, s).item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_alpha_is_differentiable():
    alpha_tilde = torch.tensor(2.659, requires_grad=True)
    contrastive_loss(A, alpha_tilde.exp()).backward()
    assert alpha_tilde.grad is not None and alpha_tilde.grad.abs() > 0


def test_gumbel_noise_is_minus_log_minus_log_u_from_the_generator():
    g = gumbel_noise((2, 3), torch.Generator().manual_seed(7))
    u = torch.rand((2, 3), generator=torch.Generator().manual_seed(7))
    assert torch.allclose(g, -torch.log(-torch.log(u)))
    again = gumbel_noise((2, 3), torch.Generator().manual_seed(7))
    other = gumbel_noise((2, 3), torch.Generator().manual_seed(8))
    assert torch.equal(g, again) and not torch.equal(g, other)


def test_gumbel_paper_hand_value():
    s, tau = 0.5, 0.5
    g = gumbel_noise((2, 3), torch.Generator().manual_seed(3)).tolist()
    z = [[(s * A[i, j].item() + g[i][j]) / tau for j in range(3)] for i in range(2)]
    rows = sum(_lse(*z[k]) - z[k][k] for k in range(2)) / 2
    cols = sum(_lse(z[0][k], z[1][k]) - z[k][k] for k in range(2)) / 2
    got = gumbel_contrastive_loss(A, s, tau, torch.Generator().manual_seed(3))
    assert got.item() == pytest.approx(0.5 * (rows + cols), rel=1e-6)


def test_gumbel_reference_hand_value():
    gen = torch.Generator().manual_seed(11)
    g0, g1 = gumbel_noise((2, 3), gen).tolist(), gumbel_noise((2, 3), gen).tolist()
    z0 = [[A[i, j].item() + g0[i][j] for j in range(3)] for i in range(2)]  # tau fixed at 1
    z1 = [[A[i, j].item() + g1[i][j] for j in range(3)] for i in range(2)]
    dim0 = sum(_lse(z0[0][j], z0[1][j]) - z0[i][j] for i in range(2) for j in range(3)) / 6
    dim1 = sum(_lse(*z1[i]) - z1[i][j] for i in range(2) for j in range(3)) / 6
    got = gumbel_contrastive_loss(
        A, 123.0, 0.01, torch.Generator().manual_seed(11), variant="reference"
    )  # alpha_c and tau are ignored by the published form
    assert got.item() == pytest.approx(0.5 * (dim0 + dim1), rel=1e-6)


def test_gumbel_hard_is_the_straight_through_misassignment_rate():
    a = A.clone().requires_grad_(True)
    loss = gumbel_contrastive_loss(a, 1.0, 0.5, torch.Generator().manual_seed(0), hard=True)
    z = (A + gumbel_noise((2, 3), torch.Generator().manual_seed(0))) / 0.5
    row_hits = sum(int(z[k].argmax() == k) for k in range(2)) / 2
    col_hits = sum(int(z[:, k].argmax() == k) for k in range(2)) / 2
    assert loss.item() == pytest.approx(0.5 * ((1 - row_hits) + (1 - col_hits)), abs=1e-6)
    loss.backward()
    assert a.grad.abs().sum() > 0  # gradient of the soft sample flows through


def test_losses_are_invariant_to_a_constant_shift_of_a():
    """Why no softmax-based CBL loss can zero activations: adding c to A changes nothing."""
    for shift in (-7.0, 3.0, 50.0):
        assert contrastive_loss(A + shift, 0.7).item() == pytest.approx(
            contrastive_loss(A, 0.7).item(), rel=1e-5
        )
        gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
        assert gumbel_contrastive_loss(A + shift, 0.7, 0.3, gen()).item() == pytest.approx(
            gumbel_contrastive_loss(A, 0.7, 0.3, gen()).item(), rel=1e-5
        )


def _expected_over_pairings(loss_fn, a: torch.Tensor) -> float:
    """Mean loss over every order of the batch rows: shuffling makes the diagonal pairing
    image k <-> concept k uniformly random, and this is the loss's expectation under it."""
    perms = list(itertools.permutations(range(a.shape[0])))
    return sum(loss_fn(a[list(p)]) for p in perms) / len(perms)


@pytest.mark.parametrize("loss", ("contrastive", "sparse"))
def test_under_shuffled_batches_the_losses_prefer_dense_over_sparse_activations(loss):
    """Why `--loss sparse` is not sparser than `--loss contrastive` (heads/losses.py, Sparsity):
    averaged over the random pairings that shuffling produces, both losses score equal (dense)
    activations at their minimum log|D| and peaked one-concept-per-image (sparse) rows higher."""
    n = 4
    sparse = 3.0 * torch.eye(n)  # each image activates one concept
    dense = torch.full((n, n), 3.0 / n)  # the same total activation, spread evenly
    if loss == "contrastive":
        fn = lambda a: contrastive_loss(a, 1.0).item()  # noqa: E731
    else:

        def fn(a):  # Gumbel expectation by Monte Carlo with a fixed generator
            g = torch.Generator().manual_seed(0)
            return sum(gumbel_contrastive_loss(a, 1.0, 0.5, g).item() for _ in range(200)) / 200

    e_sparse, e_dense = _expected_over_pairings(fn, sparse), _expected_over_pairings(fn, dense)
    if loss == "contrastive":
        assert e_dense == pytest.approx(math.log(n), rel=1e-6)
    assert e_sparse > e_dense + 0.5, (e_sparse, e_dense)


def test_tau_schedule_endpoints_and_geometric_midpoint():
    assert tau_schedule(0, 101, 1.0, 0.1) == pytest.approx(1.0)
    assert tau_schedule(100, 101, 1.0, 0.1) == pytest.approx(0.1)
    assert tau_schedule(50, 101, 1.0, 0.1) == pytest.approx(math.sqrt(0.1))
    assert tau_schedule(500, 101, 1.0, 0.1) == pytest.approx(0.1)  # clamped after the end
    assert tau_schedule(0, 1, 1.0, 0.1) == pytest.approx(0.1)


def test_loss_errors_are_readable():
    with pytest.raises(ValueError, match="variant must be one of"):
        gumbel_contrastive_loss(A, 1.0, 1.0, variant="nope")
    with pytest.raises(ValueError, match="tau must be > 0"):
        gumbel_contrastive_loss(A, 1.0, 0.0)
    with pytest.raises(ValueError, match="hard=True that is -log"):
        gumbel_contrastive_loss(A, 1.0, 1.0, hard=True, variant="reference")
    with pytest.raises(ValueError, match=r"shape \(B, \|D\|\)"):
        contrastive_loss(torch.zeros(3), 1.0)


def test_registry_names():
    assert set(CBL_LOSSES) == {"l1", "contrastive", "sparse"}


def test_psi_is_scaled_image_concept_cosine_in_fp32():
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float16)
    con = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    psi = concept_logits(img, con, 100.0)
    assert psi.dtype == torch.float32
    assert torch.allclose(psi, torch.tensor([[0.0, 100.0, 60.0], [80.0, 60.0, 100.0]]), atol=0.1)
    assert torch.equal(class_logits(img, con, 100.0), psi)
    with pytest.raises(ValueError, match="embedding width mismatch"):
        concept_logits(img, torch.zeros(3, 5), 100.0)
