"""heads/cbm/elastic_net.py: the elastic-net sparse final layer (Label-free CBM / VLG-CBM).

Tiny CPU problems: lam_max, the NEC budget, KKT conditions, the standardisation fold, sparse
path vs truncated dense layer, validation selection, determinism and input errors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipcbm.heads.cbm.elastic_net import (
    ElasticNetPath,
    elastic_net_objective,
    fit_elastic_net,
    lambda_max,
    nec_of,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """These problems are tiny: one torch thread is faster (and immune to a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sparse_problem(n=600, d=40, c=5, k=3, n_test=600, factors=4, scale=3.0, seed=0):
    """Correlated features (a few shared factors), each class driven by k of them."""
    g = torch.Generator().manual_seed(seed)
    m = n + n_test
    a = torch.randn(factors, d, generator=g) * 0.7
    x = torch.randn(m, factors, generator=g) @ a + torch.randn(m, d, generator=g) + 1.5
    w = torch.zeros(c, d)
    for ci in range(c):
        j = torch.randperm(d, generator=g)[:k]
        w[ci, j] = 1.0 + torch.rand(k, generator=g)
    xs = (x - x.mean(0)) / x.std(0)
    z = scale * xs @ w.T
    y = (z - torch.log(-torch.log(torch.rand(m, c, generator=g).clamp_min(1e-20)))).argmax(1)
    return x[:n], y[:n], x[n:], y[n:]


def _grad(x, y, w, b):
    w = w.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    F.cross_entropy(x @ w.T + b, y).backward()
    return w.grad, b.grad


def _top1(r: ElasticNetPath, x, y) -> float:
    return float(((x @ r.weight.T + r.bias).argmax(1) == y).double().mean())


def test_lam_max_gives_exactly_zero_and_is_the_smallest():
    x, y, _, _ = _sparse_problem()
    lm = lambda_max(x, y, n_classes=5, alpha=0.99)
    r = fit_elastic_net(
        x, y, n_classes=5, lambdas=[lm, 0.97 * lm], target_nec=math.inf, refine_steps=0
    )
    assert r.lam_max == pytest.approx(lm, rel=1e-6)
    assert r.path[0]["nec"] == 0.0 and r.path[0]["lam"] == pytest.approx(lm)
    assert r.path[1]["nec"] > 0.0  # just below lam_max some weight is non-zero
    # at lam_max itself W = 0 exactly and the bias is the log class prior
    lm_raw = lambda_max(x, y, n_classes=5, standardize=False)
    r0 = fit_elastic_net(x, y, n_classes=5, lambdas=[lm_raw], standardize=False)
    assert r0.path[0]["nec"] == 0.0
    assert torch.count_nonzero(r0.weight) == 0
    prior = torch.bincount(y, minlength=5).double() / len(y)
    assert torch.allclose(torch.softmax(r0.bias.double(), 0), prior, atol=1e-6)


def test_path_reaches_the_nec_budget_and_stops():
    x, y, _, _ = _sparse_problem(c=5, d=40)
    r = fit_elastic_net(x, y, n_classes=5, target_nec=5.0, n_lambdas=25)
    assert r.nec <= 5.0
    assert r.nec >= 4.0  # close to the budget (refinement bisects towards it)
    assert nec_of(r.weight) == r.nec
    grid = [p for p in r.path if not p["refine"]]
    assert all(p["nec"] <= 5.0 for p in grid[:-1]) and grid[-1]["nec"] > 5.0  # stopped at once
    assert len(grid) < 25
    assert r.path[r.selected]["lam"] == r.lam
    assert all(p["converged"] for p in r.path)
    # NEC is exact: the other weights are exactly zero
    assert int((r.weight != 0).sum()) == round(5 * r.nec)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_kkt_conditions_hold_at_the_solution(alpha):
    x, y, _, _ = _sparse_problem(n=300, d=20, c=4)
    r = fit_elastic_net(
        x, y, n_classes=4, alpha=alpha, target_nec=4.0, standardize=False, tol=1e-5,
        n_lambdas=12, refine_steps=2,
    )  # fmt: skip
    assert 0 < r.nec <= 4.0
    lam, w = r.lam, r.weight
    gw, gb = _grad(x, y, w, r.bias)
    gw = gw + lam * (1 - alpha) * w  # gradient of the smooth part (CE + l2)
    tol = 5e-5 * alpha * r.lam_max  # fp32 solve to 1e-5 * alpha * lam_max
    zero = w == 0
    assert bool((gw[zero].abs() <= alpha * lam + tol).all())
    assert torch.allclose(gw[~zero], -alpha * lam * torch.sign(w[~zero]), atol=tol, rtol=0)
    assert gb.abs().max() <= tol
    # the recorded objective is the one elastic_net_objective computes
    obj = elastic_net_objective(w, r.bias, x, y, lam, alpha)
    assert obj == pytest.approx(r.path[r.selected]["objective"], rel=1e-5)


def test_standardize_folds_back_to_raw_features():
    x, y, _, _ = _sparse_problem()
    mean, std = x.mean(0), x.std(0)
    xs = (x - mean) / std
    kw = dict(n_classes=5, target_nec=3.0, n_lambdas=15, tol=1e-3)
    r_raw = fit_elastic_net(x, y, standardize=True, **kw)
    r_std = fit_elastic_net(xs, y, standardize=False, **kw)
    assert r_raw.lam == pytest.approx(r_std.lam, rel=1e-6)
    assert torch.equal(r_raw.weight != 0, r_std.weight != 0)  # same sparsity pattern
    z_raw = x @ r_raw.weight.T + r_raw.bias
    z_std = xs @ r_std.weight.T + r_std.bias
    assert torch.allclose(z_raw, z_std, atol=1e-4, rtol=1e-4)
    assert torch.equal(z_raw.argmax(1), z_std.argmax(1))
    assert torch.allclose(r_raw.mean, mean) and torch.allclose(r_raw.std, std)


def test_sparse_layer_beats_truncated_dense_layer():
    x, y, xt, yt = _sparse_problem(n=800, d=60, c=6, k=3, n_test=2000, factors=6)
    sparse = fit_elastic_net(x, y, n_classes=6, target_nec=5.0, n_lambdas=25, tol=1e-3)
    dense = fit_elastic_net(
        x, y, n_classes=6, target_nec=math.inf, n_lambdas=6, lam_min_ratio=1e-4, tol=1e-3
    )
    assert dense.nec > 30  # (nearly) dense
    keep = dense.weight.abs().topk(5, dim=1).indices
    trunc = torch.zeros_like(dense.weight).scatter_(1, keep, dense.weight.gather(1, keep))
    acc_trunc = float(((xt @ trunc.T + dense.bias).argmax(1) == yt).double().mean())
    acc_sparse = _top1(sparse, xt, yt)
    assert sparse.nec <= 5.0
    assert acc_sparse > acc_trunc + 0.05, (acc_sparse, acc_trunc)


def test_validation_selection_and_determinism():
    x, y, xv, yv = _sparse_problem()
    kw = dict(n_classes=5, target_nec=5.0, x_val=xv, y_val=yv, n_lambdas=15, tol=1e-3)
    r = fit_elastic_net(x, y, **kw)
    ok = [p for p in r.path if p["nec"] <= 5.0]
    assert all("val_top1" in p for p in r.path)
    assert r.path[r.selected]["val_top1"] == max(p["val_top1"] for p in ok)
    assert r.path[r.selected]["val_top1"] == pytest.approx(_top1(r, xv, yv), abs=1e-9)
    r2 = fit_elastic_net(x, y, **kw)
    assert torch.equal(r.weight, r2.weight) and torch.equal(r.bias, r2.bias)


def _xy():
    g = torch.Generator().manual_seed(1)
    return torch.randn(20, 4, generator=g), torch.arange(20) % 3


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(x=torch.zeros(20)), "2-D"),
        (dict(y=torch.zeros(19, dtype=torch.int64)), "one per row"),
        (dict(y=torch.full((20,), 3)), r"labels must lie in \[0, 2\]"),
        (dict(y=-torch.ones(20, dtype=torch.int64)), "labels must lie"),
        (dict(y=torch.zeros(20)), "labels must be integers"),
        (dict(target_nec=0.0), "target_nec"),
        (dict(target_nec=-1), "target_nec"),
        (dict(alpha=0.0), r"alpha must be in \(0, 1\]"),
        (dict(alpha=1.5), "alpha"),
        (dict(n_classes=1), "n_classes"),
        (dict(x=torch.full((20, 4), float("nan"))), "NaN"),
        (dict(x_val=torch.zeros(5, 4)), "both x_val and y_val"),
        (dict(x_val=torch.zeros(5, 3), y_val=torch.zeros(5, dtype=torch.int64)), "features"),
        (dict(lambdas=[0.1, 0.2]), "decreasing"),
        (dict(lambdas=[0.1, -1.0]), "lambdas"),
        (dict(tol=0.0), "tol"),
    ],
)
def test_bad_inputs_raise(change, match):
    x, y = _xy()
    kw = dict(x=x, y=y, n_classes=3)
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        fit_elastic_net(kw.pop("x"), kw.pop("y"), **kw)
