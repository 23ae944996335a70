"""The standard linear probe as a reference row: scikit-learn's LogisticRegression (optional).

`SKLEARN_PROTOCOL` (the protocol the heads issue measures against): lbfgs, max_iter=1000, on
the train rows' image embeddings (float64); C from SKLEARN_C_GRID chosen on a seeded fifth of
train (default_rng(seed) permutation, not stratified; best held-out top-1, ties -> the smaller
C, the grid warm-started from small to large C), then one fit on all of train at that C.
scikit-learn's tol (1e-4 on the largest gradient entry) is kept, except where lbfgs takes no
step at all: with ~1,000 classes of unit-norm rows the zero model's gradient is already within
it, and the "fit" would predict by the intercept alone (chance). Such a fit is repeated at
tol / 100 until it moves (recorded as `tol`, `tol_lowered`). When
a class has a single train row a hold-out cannot represent it: one fit at C = 1 (scikit-learn's
default). ConvergenceWarnings are counted, not hidden.

scikit-learn is an optional extra (`pip install -e ".[reference]"`); `available()` says whether
it is installed, and `compare` leaves the row out (with a log line) when it is not.
"""

from __future__ import annotations

import importlib.util
import time
import warnings

import numpy as np

SKLEARN_C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)
SKLEARN_FIXED_C = 1.0
SKLEARN_PROTOCOL = (
    "scikit-learn LogisticRegression(lbfgs, max_iter=1000) on the image embeddings (float64): "
    f"C from {list(SKLEARN_C_GRID)} chosen on a seeded fifth of train (best held-out top-1, "
    "ties -> smaller C), then refitted on all of train; a class with a single row: one fit at "
    f"C = {SKLEARN_FIXED_C}"
)


DEFAULT_TOL = 1e-4  # scikit-learn's own
MIN_TOL = 1e-10


def _stopped_at_zero(clf) -> bool:
    """A fit that ended where it started, at all-zero weights (not a warm start)."""
    return int(np.max(clf.n_iter_)) == 0 and not np.any(clf.coef_)


def available() -> bool:
    return importlib.util.find_spec("sklearn") is not None


def fit_sklearn_probe(
    x: np.ndarray, y: np.ndarray, seed: int, max_iter: int = 1000
) -> tuple[np.ndarray, np.ndarray, dict]:
    """SKLEARN_PROTOCOL on train rows (x (N, E), y (N,)): (coef (C', E), intercept, info) with
    rows for the classes present in y (`info["classes"]`). max_iter: the protocol's 1,000
    unless a caller sets a smaller budget (recorded in info)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    t0 = time.perf_counter()
    n = len(y)
    counts = np.bincount(y)
    counts = counts[counts > 0]
    n_warn = 0

    tols: list[float] = []

    def fit(c, xs, ys, clf=None):
        nonlocal n_warn
        clf = clf or LogisticRegression(max_iter=max_iter)
        clf.set_params(C=c, tol=DEFAULT_TOL)
        while True:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                clf.fit(xs, ys)
            n_warn += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
            if not _stopped_at_zero(clf) or clf.tol <= MIN_TOL:
                break
            # lbfgs took no step: the zero model's gradient is already within tol (1,000
            # classes of unit-norm rows), so the "fit" predicts by the intercept alone
            clf.set_params(tol=clf.tol / 100)
        tols.append(float(clf.tol))
        return clf

    perm = np.random.default_rng(seed).permutation(n)
    n_val = round(n / 5)
    val, rest = perm[:n_val], perm[n_val:]
    info: dict = {"protocol": SKLEARN_PROTOCOL, "rows": int(n), "max_iter": max_iter}
    if counts.min() >= 2 and n_val >= 1 and len(np.unique(y[rest])) >= 2:
        clf, scores = LogisticRegression(max_iter=max_iter, warm_start=True), {}
        for c in SKLEARN_C_GRID:
            fit(c, x[rest], y[rest], clf)
            scores[repr(c)] = float((clf.predict(x[val]) == y[val]).mean())
        best = max(SKLEARN_C_GRID, key=lambda c: (scores[repr(c)], -c))
        info.update(choice="hold-out", val_rows=int(n_val), C=best, val_top1_per_C=scores)
    else:
        best = SKLEARN_FIXED_C
        info.update(choice="fixed C (a class has a single row)", C=best)
    final = fit(best, x, y)
    coef, intercept = final.coef_, final.intercept_
    if coef.shape[0] == 1:  # two classes: scikit-learn stores one row (class 1 vs class 0)
        coef, intercept = (
            np.vstack([-coef / 2, coef / 2]),
            np.array([-intercept[0] / 2, intercept[0] / 2]),
        )
    info.update(classes=final.classes_.tolist(), convergence_warnings=n_warn, tol=tols[-1],
                tol_lowered=any(t < DEFAULT_TOL for t in tols),
                seconds=round(time.perf_counter() - t0, 3))  # fmt: skip
    return coef, intercept, info
