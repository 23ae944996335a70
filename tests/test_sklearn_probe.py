"""The scikit-learn reference probe never reports the zero model as a fit.

With ~1,000 classes of unit-norm rows, lbfgs' first gradient is within scikit-learn's tol
(1e-4), it takes no step, and the "fit" predicts by its intercept alone: chance top-1 on the
ImageNet-shaped benchmark cache. Tiny-norm rows of balanced classes reproduce that on 20."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from clipcbm.heads.baselines import sklearn_probe  # noqa: E402


def _blobs(scale: float, n: int = 2000, classes: int = 20, dim: int = 16, seed: int = 0):
    g = np.random.default_rng(seed)
    centre = g.standard_normal((classes, dim))
    y = g.permutation(np.arange(n) % classes)  # balanced: the intercept's gradient is 0
    x = centre[y] + 0.3 * g.standard_normal((n, dim))
    return (scale * x).astype(np.float32), y


def test_a_fit_that_takes_no_step_is_repeated_at_a_lower_tolerance():
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(scale=1e-5)
    plain = LogisticRegression().fit(x, y)
    assert int(np.max(plain.n_iter_)) == 0 and not np.any(plain.coef_)  # the pitfall
    coef, intercept, info = sklearn_probe.fit_sklearn_probe(x, y, seed=0)
    top1 = float(((x @ coef.T + intercept).argmax(1) == y).mean())
    assert info["tol_lowered"] and info["tol"] < sklearn_probe.DEFAULT_TOL
    assert top1 > 0.9, top1


def test_an_ordinary_fit_keeps_scikit_learns_tolerance():
    x, y = _blobs(scale=1.0)
    coef, intercept, info = sklearn_probe.fit_sklearn_probe(x, y, seed=0)
    assert not info["tol_lowered"] and info["tol"] == sklearn_probe.DEFAULT_TOL
    assert float(((x @ coef.T + intercept).argmax(1) == y).mean()) > 0.9
