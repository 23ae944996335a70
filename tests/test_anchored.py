"""Heads that learn while keeping their prior: the anchored logistic regression, its
cross-validated choice and refit, the probe's protocol and the zero-shot start."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipcbm.cache.planted import make_planted_cache
from clipcbm.heads.baselines.logreg import (
    cv_folds,
    fit_logreg_cv,
    fit_logreg_path,
    logreg_objective,
)
from clipcbm.heads.cbm.config import FitHeadConfig
from clipcbm.heads.cbm.init import ledoit_wolf_shrinkage, pseudo_rows
from clipcbm.heads.cbm.train import run
from clipcbm.heads.io.artifact import load_head


def _blobs(n, e, c, sep, seed=0, flip=0.0):
    g = torch.Generator().manual_seed(seed)
    mu = F.normalize(torch.randn(c, e, generator=g), dim=1)
    y = torch.randint(0, c, (n,), generator=g)
    x = F.normalize(sep * mu[y] + torch.randn(n, e, generator=g) / e**0.5, dim=1)
    if flip:  # label noise: no separating hyperplane, so the unpenalised optimum is finite
        noisy = torch.rand(n, generator=g) < flip
        y = torch.where(noisy, torch.randint(0, c, (n,), generator=g), y)
    return x, y


def _anchor(c, e, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c, e + 1, generator=g, dtype=torch.float64)


def test_an_infinite_pull_returns_the_start_exactly():
    x, y = _blobs(200, 8, 3, sep=1.0)
    a = _anchor(3, 8)
    fit = fit_logreg_path(x, y, x, y, n_classes=3, l2_grid=(1e12,), anchor=a)
    torch.testing.assert_close(fit.weight.double(), a[:, :-1], rtol=0, atol=1e-6)
    torch.testing.assert_close(fit.bias.double(), a[:, -1], rtol=0, atol=1e-6)


def test_a_vanishing_pull_is_the_unpenalised_fit():
    """At l2 -> 0 the anchor no longer matters: the anchored fit and the probe reach the same
    (finite, label noise) optimum of the plain cross-entropy."""
    x, y = _blobs(400, 6, 3, sep=0.7, flip=0.3)
    args = dict(n_classes=3, l2_grid=(1e-9,), max_iter=2000, tol=1e-9)
    free = fit_logreg_path(x, y, x, y, **args)
    pulled = fit_logreg_path(x, y, x, y, anchor=_anchor(3, 6), **args)
    f_free = logreg_objective(free.weight, free.bias, x, y, 0.0)
    f_pulled = logreg_objective(pulled.weight, pulled.bias, x, y, 0.0)
    assert f_pulled == pytest.approx(f_free, rel=1e-6)
    p_free = (x @ free.weight.T + free.bias).softmax(1)
    p_pulled = (x @ pulled.weight.T + pulled.bias).softmax(1)
    torch.testing.assert_close(p_pulled, p_free, rtol=0, atol=1e-3)


def test_the_pull_moves_the_fit_monotonically_toward_the_start():
    x, y = _blobs(300, 8, 3, sep=0.8, flip=0.1)
    a = _anchor(3, 8)
    dist = []
    for l2 in (1e-4, 1e-2, 1.0, 100.0):
        f = fit_logreg_path(x, y, x, y, n_classes=3, l2_grid=(l2,), anchor=a, max_iter=500)
        theta = torch.cat([f.weight, f.bias[:, None]], 1).double()
        dist.append(float((theta - a).norm()))
    assert dist == sorted(dist, reverse=True) and dist[-1] < 0.1 * dist[0]


def test_stratified_folds_spread_every_class():
    y = np.repeat(np.arange(4), [10, 7, 5, 1])
    f = cv_folds(y, 5, seed=0)
    for c, n in zip(range(4), (10, 7, 5, 1), strict=True):
        counts = np.bincount(f[y == c], minlength=5)
        assert counts.max() - counts.min() <= 1 and counts.sum() == n
    assert np.array_equal(f, cv_folds(y, 5, seed=0))  # seeded


def test_cross_validation_refits_on_every_row():
    """The returned weights are the fit on ALL rows at the chosen L2 -- the same as fitting the
    path down to it on all rows directly -- and rows marked -1 are never held out."""
    x, y = _blobs(300, 8, 3, sep=0.6, flip=0.1)
    grid = (1e-1, 1e-2, 1e-3)
    cv = fit_logreg_cv(x, y, n_classes=3, l2_grid=grid, folds=4, seed=1, tol=1e-9, max_iter=500)
    chosen = [g for g in grid if g >= cv.l2]
    direct = fit_logreg_path(x, y, x[:1], y[:1], n_classes=3, l2_grid=chosen, tol=1e-9,
                             max_iter=500)  # fmt: skip
    if direct.l2 != cv.l2:  # the path keeps its best on the (1-row) val: refit the last alone
        direct = fit_logreg_path(x, y, x, y, n_classes=3, l2_grid=(cv.l2,), tol=1e-9,
                                 max_iter=2000)  # fmt: skip
    torch.testing.assert_close(cv.weight, direct.weight, rtol=0, atol=2e-4)
    holdout = torch.full((300,), -1)
    holdout[:60] = 0
    one = fit_logreg_cv(x, y, n_classes=3, l2_grid=grid, folds=holdout, max_iter=300)
    scores = {}
    for l2 in grid:
        f = fit_logreg_path(x[60:], y[60:], x[:60], y[:60], n_classes=3, l2_grid=(l2,),
                            max_iter=300)  # fmt: skip
        scores[l2] = f.val_top1_per_l2[l2]
    assert one.val_top1_per_l2 == pytest.approx(scores, abs=1 / 60 + 1e-9)  # scored on row 0-59
    with pytest.raises(ValueError, match="fold ids"):
        fit_logreg_cv(x, y, n_classes=3, folds=np.zeros(5, dtype=int))


def test_ledoit_wolf_shrinkage_matches_scikit_learn():
    lw = pytest.importorskip("sklearn.covariance").ledoit_wolf_shrinkage
    g = torch.Generator().manual_seed(0)
    for n, p in ((3, 50), (10, 50), (100, 20), (20_000, 5)):
        x = torch.randn(n, p, generator=g, dtype=torch.float64) * torch.linspace(1, 3, p)
        xc = x - x.mean(0)
        assert ledoit_wolf_shrinkage(xc) == pytest.approx(lw(xc.numpy(), assume_centered=True))
    assert ledoit_wolf_shrinkage(xc) < 0.05  # many rows: little shrinkage
    few = torch.randn(3, 50, generator=g, dtype=torch.float64)
    rows, beta = pseudo_rows(few.float(), 64, seed=3)
    assert rows.shape == (64, 50) and torch.allclose(rows.norm(dim=1), torch.ones(64))
    again, _ = pseudo_rows(few.float(), 64, seed=3)
    assert torch.equal(rows, again) and 0.0 <= beta <= 1.0


@pytest.fixture(scope="module")
def few_shot(tmp_path_factory):
    """A planted cache with 3 train rows per class (8 classes, 40 concepts, 32 dims)."""
    root = tmp_path_factory.mktemp("anchored")
    path = make_planted_cache(root / "p.zarr", n_train=24, n_test=400, n_classes=8,
                              n_concepts=40, noise=2.5, seed=0)  # fmt: skip
    return root, path


def test_the_probe_refits_on_train_plus_validation(few_shot):
    root, path = few_shot
    res = run(FitHeadConfig(cache=path, out=root / "probe", loss="probe", progress=False))
    fit = load_head(res.out_dir).config["fit"]
    assert fit["refit_rows"] == 24  # fit rows + validation rows: all of train
    assert fit["selection"].endswith("cross-validation") and repr(fit["C"]) in fit["cv_top1_per_C"]
    # the head's weights are the fit on all 24 rows at the chosen C (nothing held out)
    from clipcbm.cache import open_cache
    from clipcbm.heads.baselines.probe import l2_for_c
    from clipcbm.heads.io.data import load_data

    with open_cache(path) as c:
        data = load_data(c, FitHeadConfig(cache=path), "cpu")
    rows = torch.cat([data.train_idx, data.val_idx])
    x, y = data.train.x[rows], data.train.y[rows]
    (l2,) = l2_for_c((fit["C"],), x, len(y))
    direct = fit_logreg_path(x, y, x, y, n_classes=8, l2_grid=(l2,), max_iter=2000, tol=1e-9)
    head = load_head(res.out_dir).module
    torch.testing.assert_close(head.weight.detach(), direct.weight, rtol=0, atol=5e-3)


def test_few_shot_cbm_heads_keep_the_zero_shot_start_and_learn_with_labels(few_shot):
    """With 3 rows per class the dense head stays at zero-shot on test (its start reproduces
    zero-shot: span(D) holds the planted class embeddings); the anchored refit uses all 24
    train rows and records the pull it chose."""
    root, path = few_shot
    res = run(FitHeadConfig(cache=path, out=root / "l1", loss="l1", progress=False))
    fit = load_head(res.out_dir).config["fit"]
    assert fit["fc_init"]["pseudo_rows"] >= 1024 and fit["fc_init"]["rows"] < 24
    ff = fit["final_fit"]
    assert ff["refit_rows"] == 24 and ff["anchor"] == "step-0 final layer"
    zs = res.metrics["zero_shot"]["test"]["top1"]
    assert res.metrics["test"]["top1"] >= zs - 0.02
    assert res.metrics["test"]["faithfulness"] > 0.99  # identity CBL: CLIP's own scores
    sgd = run(FitHeadConfig(cache=path, out=root / "l1-sgd", loss="l1", final_fit="sgd",
                            progress=False))  # fmt: skip
    assert "final_fit" not in load_head(sgd.out_dir).config["fit"]


def test_a_start_fitted_on_the_labels_gets_an_out_of_fit_estimate(tmp_path):
    """--fc-init prior builds its start from the fit rows' class means, so cross-validating over
    those rows leaks their labels: the held-out estimate is then the chosen C refitted on the
    fit rows alone, scored on the validation rows."""
    from clipcbm.cache import open_cache
    from clipcbm.heads.io.data import load_data

    path = make_planted_cache(tmp_path / "p.zarr", n_train=400, n_test=200, n_classes=8,
                              n_concepts=40, noise=2.5, seed=1)  # fmt: skip
    zs = run(FitHeadConfig(cache=path, out=tmp_path / "zs", loss="l1", progress=False))
    assert "cross-validation" in zs.metrics["heldout"]["how"]  # zero-shot start: labels unused
    config = FitHeadConfig(cache=path, out=tmp_path / "prior", loss="l1", fc_init="prior",
                           progress=False)  # fmt: skip
    res = run(config)
    heldout, ff = res.metrics["heldout"], load_head(res.out_dir).config["fit"]["final_fit"]
    assert heldout["val_in_fit"] is True and "fit rows only" in heldout["how"]
    assert heldout["top1"] == ff["fit_rows_only"]["top1"] != ff["cv_top1_per_C"][repr(ff["C"])]
    with open_cache(path) as c:
        n_val = len(load_data(c, config, "cpu").val_idx)
    assert ff["fit_rows_only"]["val_rows"] == n_val  # a top-1 over exactly the validation rows
    assert abs(heldout["top1"] * n_val - round(heldout["top1"] * n_val)) < 1e-9


def test_fit_head_options_for_the_anchored_fit_are_checked():
    with pytest.raises(ValueError, match="--cv-folds"):
        FitHeadConfig(cache="c.zarr", cv_folds=1)
    with pytest.raises(ValueError, match="--anchor-c-grid"):
        FitHeadConfig(cache="c.zarr", anchor_c_grid=(1.0, 1.0))
    with pytest.raises(ValueError, match="--final-fit"):
        FitHeadConfig(cache="c.zarr", final_fit="nope")
