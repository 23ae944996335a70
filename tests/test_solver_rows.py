"""The one row cap of full-batch solves (heads.chunks.solver_row_cap / cap_rows,
HeadData.solver_rows): a memory budget, never a silent change where the rows fit, and the
subset keeps every class in proportion. Label-free CBM's chunked validation similarity equals
the whole-matrix one."""

from __future__ import annotations

import pytest
import torch

from clipcbm.cache import open_cache
from clipcbm.cache.planted import make_planted_cache
from clipcbm.heads.baselines import lfcbm
from clipcbm.heads.cbm.config import FitHeadConfig
from clipcbm.heads.cbm.train import fit
from clipcbm.heads.chunks import cap_rows, solver_row_cap
from clipcbm.heads.io.data import load_data


def test_cap_is_bytes_per_row_and_zero_means_none():
    # 4 (3 F + 6 C) bytes a row
    assert solver_row_cap(100, 10, gib=1.0) == 2**30 // (4 * (300 + 60))
    assert solver_row_cap(4751, 1000, gib=4.0) == 4 * 2**30 // (4 * (3 * 4751 + 6000))
    assert solver_row_cap(10, 2, gib=0) is None
    with pytest.raises(ValueError, match=">= 0"):
        solver_row_cap(10, 2, gib=-1)


def test_cap_rows_is_identity_under_the_cap_and_stratified_above():
    y = torch.tensor([0] * 600 + [1] * 300 + [2] * 90 + [3] * 10)
    idx = torch.arange(1000)
    assert cap_rows(idx, y, 1000, seed=0) is idx
    assert cap_rows(idx, y, None, seed=0) is idx
    sub = cap_rows(idx, y, 100, seed=0)
    assert torch.equal(sub, sub.sort().values) and len(set(sub.tolist())) == len(sub)
    assert torch.bincount(y[sub], minlength=4).tolist() == [60, 30, 9, 1]
    assert torch.equal(sub, cap_rows(idx, y, 100, seed=0))  # seeded
    assert not torch.equal(sub, cap_rows(idx, y, 100, seed=1))
    # a class far below its share keeps one row; positions refer to idx, not to 0..n-1
    tiny = cap_rows(idx[:990:2] + 5, y, 10, seed=0)
    assert set(y[tiny].tolist()) == {0, 1, 2, 3} and bool((tiny % 2 == 1).all())


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = make_planted_cache(tmp_path_factory.mktemp("solver") / "p.zarr", n_train=600,
                              n_test=200, n_classes=6, n_concepts=30, noise=2.0,
                              seed=2)  # fmt: skip
    with open_cache(path) as c:
        data = load_data(c, FitHeadConfig(cache=path), "cpu")
    return path, data


def test_head_data_splits_the_cap_between_fit_and_validation(planted):
    _, data = planted
    assert data.solver_rows(30, 0) == (data.train_idx, data.val_idx)
    assert data.solver_rows(30, 4.0) == (data.train_idx, data.val_idx)  # they fit
    gib = 100 * 4 * (3 * 30 + 6 * 6) / 2**30  # room for 100 rows
    fit_i, val_i = data.solver_rows(30, gib)
    assert len(fit_i) + len(val_i) == pytest.approx(100, abs=6)
    assert len(val_i) == pytest.approx(10, abs=6)  # the validation fraction, 0.1
    assert set(fit_i.tolist()) <= set(data.train_idx.tolist())
    assert set(val_i.tolist()) <= set(data.val_idx.tolist())
    assert set(data.train.y[fit_i].tolist()) == set(range(6))


@pytest.mark.parametrize("loss", ["probe", "sparse"])
def test_a_capped_solve_records_its_rows_and_a_generous_one_changes_nothing(planted, loss):
    path, data = planted
    base = dict(cache=path, loss=loss, max_steps=30, probe_max_iter=30, progress=False)
    _, info_all, m_all = fit(data, FitHeadConfig(**base, solver_gib=0), "cpu")
    _, info_big, m_big = fit(data, FitHeadConfig(**base), "cpu")
    assert m_big["test"]["top1"] == m_all["test"]["top1"]
    small = 150 * 4 * (3 * 30 + 6 * 6) / 2**30
    _, info, m = fit(data, FitHeadConfig(**base, solver_gib=small), "cpu")
    rows = info["solver_rows"] if loss == "probe" else info["final_fit"]["solver_rows"]
    assert rows["subset"] and rows["fit"] + rows["val"] < rows["of"] == 600
    assert m["test"]["top1"] > 1 / 6 + 0.2  # still learns on the subset


def test_chunked_label_free_similarity_equals_the_whole_matrix(planted):
    _, data = planted
    x = data.train.x[data.val_idx]
    g = torch.Generator().manual_seed(0)
    w = torch.randn(data.text.concept_emb.shape, generator=g)
    d = data.text.concept_emb
    whole = lfcbm.cos3_similarity(x @ w.T, x @ d.T)
    for chunk in (7, 1000):
        assert torch.allclose(lfcbm.cos3_similarity_chunked(x, w, d, chunk=chunk), whole,
                              atol=1e-5)  # fmt: skip


def test_path_max_iter_bounds_every_lambda_of_the_elastic_net_path(planted):
    path, data = planted
    cfg = FitHeadConfig(cache=path, loss="sparse", final_layer="elastic-net", max_steps=20,
                        path_max_iter=3, progress=False)  # fmt: skip
    _, info, _ = fit(data, cfg, "cpu")
    points = info["elastic_net"]["path"]
    assert points and max(p["n_iter"] for p in points) <= 3
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="path.max.iter"):
            FitHeadConfig(cache=path, path_max_iter=bad)


def test_compare_checks_its_budgets():
    from clipcbm.heads.eval.config import CompareConfig

    for field, bad in (("path_max_iter", 0), ("probe_max_iter", True), ("val_fraction", 1.0)):
        with pytest.raises(ValueError, match=field.replace("_", ".")):
            CompareConfig(cache="x.zarr", **{field: bad})


def test_the_path_budget_default_is_the_solvers_own():
    from clipcbm.heads.cbm.elastic_net import PATH_MAX_ITER

    # config.py stays torch-free, so it writes the number; the two must agree
    assert FitHeadConfig.__dataclass_fields__["path_max_iter"].default == PATH_MAX_ITER
