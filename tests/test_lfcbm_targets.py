"""Label-free CBM computes its targets per batch above TARGET_ROWS (no N x |D| matrix): the
result equals the whole-matrix run on a small cache."""

from __future__ import annotations

import pytest

from clipcbm.cache import open_cache
from clipcbm.cache.planted import make_planted_cache
from clipcbm.heads.baselines import lfcbm
from clipcbm.heads.cbm.config import FitHeadConfig
from clipcbm.heads.io.data import load_data


def test_per_batch_targets_equal_the_whole_matrix(tmp_path, monkeypatch):
    path = make_planted_cache(tmp_path / "p.zarr", n_train=600, n_test=200, n_classes=6,
                              n_concepts=30, noise=2.0, seed=2)  # fmt: skip
    with open_cache(path) as c:
        data = load_data(c, FitHeadConfig(cache=path), "cpu")
    monkeypatch.setattr(lfcbm, "PROJ_BATCH", 128)  # batches smaller than the fit rows
    whole = lfcbm.fit_label_free_cbm(data, steps=150)
    monkeypatch.setattr(lfcbm, "TARGET_ROWS", 0)  # every batch computes its own targets
    chunked = lfcbm.fit_label_free_cbm(data, steps=150)
    assert chunked.kept_concepts == whole.kept_concepts
    assert chunked.val_similarity == pytest.approx(whole.val_similarity, abs=1e-5)
    for k in ("top1", "top5", "acc_nec5", "nec"):
        assert chunked.metrics[k] == pytest.approx(whole.metrics[k], abs=1e-6), k
