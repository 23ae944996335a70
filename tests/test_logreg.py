"""heads.baselines.logreg: the fast full-batch multinomial logistic-regression probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipcbm.heads.baselines.logreg import (
    LogRegFit,
    fit_logreg_path,
    logreg_loss_grad,
    logreg_objective,
)


def _blobs(n: int, e: int, c: int, sep: float, seed: int = 0):
    """Unit-norm rows around c random unit class means (a tiny stand-in for CLIP embeddings)."""
    g = torch.Generator().manual_seed(seed)
    mu = F.normalize(torch.randn(c, e, generator=g), dim=1)
    y = torch.randint(0, c, (n,), generator=g)
    x = F.normalize(sep * mu[y] + torch.randn(n, e, generator=g) / e**0.5, dim=1)
    return x, y


@pytest.fixture(scope="module")
def problem():
    x, y = _blobs(600, 12, 4, sep=0.8, seed=1)
    return x[:400], y[:400], x[400:], y[400:]


def test_analytic_gradient_matches_autograd(problem):
    x, y, _, _ = problem
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 12, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    l2 = 0.03
    f, gw, gb = logreg_loss_grad(w, b, x, y, l2)

    w_ = w.clone().requires_grad_(True)
    b_ = b.clone().requires_grad_(True)
    ref = F.cross_entropy(x.double() @ w_.T + b_, y) + 0.5 * l2 * w_.pow(2).sum()
    ref.backward()
    assert f == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(gw, w_.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gb, b_.grad, rtol=1e-5, atol=1e-7)
    assert logreg_objective(w, b, x, y, l2) == pytest.approx(ref.item(), rel=1e-12)


@pytest.mark.parametrize("l2", [1e-1, 1e-3])
def test_converged_objective_matches_sklearn(problem, l2):
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y, xv, yv = problem
    fit = fit_logreg_path(x, y, xv, yv, n_classes=4, l2_grid=(l2,), max_iter=500, tol=1e-9)
    # sklearn: 0.5 ||W||^2 + C sum CE == N * C * (mean CE + l2/2 ||W||^2) with C = 1/(l2 N)
    ref = sklearn.LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-12, max_iter=10_000)
    ref.fit(x.numpy().astype(np.float64), y.numpy())
    ours = logreg_objective(fit.weight, fit.bias, x, y, l2)
    theirs = logreg_objective(ref.coef_, ref.intercept_, x, y, l2)
    assert ours == pytest.approx(theirs, rel=1e-4)
    assert ours <= theirs + 1e-6
    torch.testing.assert_close(
        fit.weight.double(), torch.from_numpy(ref.coef_), rtol=0, atol=5e-3 * ref.coef_.std()
    )


def test_result_shapes_and_path(problem):
    x, y, xv, yv = problem
    grid = (1e-4, 1e-2, 1e-3)
    fit = fit_logreg_path(x, y, xv, yv, n_classes=4, l2_grid=grid)
    assert isinstance(fit, LogRegFit)
    assert fit.weight.shape == (4, 12) and fit.bias.shape == (4,)
    assert fit.weight.dtype == torch.float32 and fit.bias.dtype == torch.float32
    assert list(fit.val_top1_per_l2) == [1e-2, 1e-3, 1e-4]  # solved strong -> weak
    assert set(fit.iterations) == set(grid)
    assert fit.l2 in grid
    # the returned weights are those of the chosen L2: they reproduce its val top-1
    pred = (xv @ fit.weight.T + fit.bias).argmax(1)
    assert float((pred == yv).double().mean()) == fit.val_top1_per_l2[fit.l2]


def test_choice_rule_ties_go_to_the_stronger_l2():
    # well separated: every L2 of the grid classifies val perfectly -> the strongest wins
    x, y = _blobs(400, 8, 3, sep=8.0, seed=2)
    fit = fit_logreg_path(x[:300], y[:300], x[300:], y[300:], n_classes=3, l2_grid=(1e-4, 1e-3))
    assert fit.val_top1_per_l2 == {1e-3: 1.0, 1e-4: 1.0}
    assert fit.l2 == 1e-3
    # generic rule on a harder problem: highest val top-1, then the largest L2
    x, y = _blobs(600, 12, 4, sep=0.5, seed=4)
    fit = fit_logreg_path(
        x[:400], y[:400], x[400:], y[400:], n_classes=4, l2_grid=(1e-5, 1e-1, 3.0)
    )
    top = max(fit.val_top1_per_l2.values())
    assert fit.l2 == max(v for v, a in fit.val_top1_per_l2.items() if a == top)
    assert fit.val_top1_per_l2[3.0] < top  # a very strong L2 is visibly worse here


def test_argmax_ties_go_to_the_lowest_class(problem):
    x, y, _, _ = problem
    # max_iter=0 keeps the zero start: every logit ties, so every prediction is class 0
    yv = torch.tensor([0, 0, 1, 2, 3, 0])
    xv = torch.randn(6, 12)
    fit = fit_logreg_path(x, y, xv, yv, n_classes=4, l2_grid=(1e-2,), max_iter=0)
    assert fit.iterations == {1e-2: 0}
    assert fit.val_top1_per_l2 == {1e-2: 0.5}


def test_deterministic_and_accepts_numpy(problem):
    x, y, xv, yv = problem
    a = fit_logreg_path(x, y, xv, yv, n_classes=4)
    b = fit_logreg_path(x.numpy(), y.numpy(), xv.numpy(), yv.numpy(), n_classes=4)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert (a.l2, a.val_top1_per_l2, a.iterations) == (b.l2, b.val_top1_per_l2, b.iterations)


def test_restores_torch_threads(problem):
    x, y, xv, yv = problem
    before = torch.get_num_threads()
    fit_logreg_path(x, y, xv, yv, n_classes=4, l2_grid=(1e-2,))
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(x=torch.zeros(10)), "x must be 2-D"),
        (dict(y=torch.zeros(9, dtype=torch.long)), "one label per row"),
        (dict(y=torch.full((10,), 4)), r"labels outside \[0, 4\)"),
        (dict(y_val=torch.full((5,), -1)), r"y_val has labels outside"),
        (dict(y=torch.zeros(10)), "integer class indices"),
        (dict(x_val=torch.zeros(5, 2)), "x_val has 2 features but x has 3"),
        (dict(x=torch.full((10, 3), float("nan"))), "NaN or infinite"),
        (dict(x=torch.zeros(0, 3), y=torch.zeros(0, dtype=torch.long)), "x is empty"),
        (dict(l2_grid=()), "l2_grid is empty"),
        (dict(l2_grid=(1e-3, -1.0)), "finite and > 0"),
        (dict(l2_grid=(1e-3, 1e-3)), "duplicate"),
        (dict(n_classes=1), "n_classes must be >= 2"),
        (dict(max_iter=-1), "max_iter must be"),
        (dict(tol=float("nan")), "tol must be"),
        (dict(x=[[0.0] * 3] * 10), "numpy array or a torch tensor"),
    ],
)
def test_bad_inputs_raise(change, match):
    args = dict(
        x=torch.zeros(10, 3),
        y=torch.zeros(10, dtype=torch.long),
        x_val=torch.zeros(5, 3),
        y_val=torch.zeros(5, dtype=torch.long),
        n_classes=4,
    )
    args.update(change)
    with pytest.raises(ValueError, match=match):
        fit_logreg_path(args.pop("x"), args.pop("y"), args.pop("x_val"), args.pop("y_val"), **args)
