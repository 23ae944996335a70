"""Multinomial logistic regression along an L2 path: a fast full-batch linear probe.

Objective, for each strength ``l2`` of the grid (the same as ``heads.baselines.probe``)::

    f(W, b) = mean_i CE(W x_i + b, y_i) + l2 / 2 * ||W||_F^2        (bias unpenalised)

scikit-learn's ``LogisticRegression(C=...)`` minimises ``0.5 ||W||^2 + C * sum_i CE``, i.e. the
same problem with ``C = 1 / (l2 * N)``.

Solver: L-BFGS with three things that make it cheap on an (N x E) fp32 feature matrix:

- **Two GEMMs per iteration, whatever the line search does.** The logits are linear in the
  parameters, so along a search direction d they are ``z + t * (X d_W^T + d_b)``: one GEMM
  gives the direction's logits, after which every trial step of the line search costs only a
  softmax over the (N x C) logits (with exact first and second derivatives along the line, so
  a safeguarded Newton search lands near the 1-D minimiser in one or two trials). The accepted
  step's softmax is reused for the analytic gradient ``(softmax - onehot)^T X / N + l2 W``,
  the second GEMM. No autograd, no recomputed forward pass.
- **A Kronecker-factored preconditioner** as the L-BFGS initial inverse Hessian:
  ``H ~= A (x) B + l2 I`` with ``A = mean_i(diag(p_i) - p_i p_i^T)`` (C x C, refreshed from the
  current probabilities) and ``B = mean_i [x_i, 1][x_i, 1]^T`` (E+1 x E+1, from a row
  subsample, eigendecomposed once). It undoes the bad scaling of raw embeddings (a large
  shared mean direction, a decaying spectrum, bias vs weights), which is what makes plain
  L-BFGS need hundreds of iterations at weak L2.
- **Warm starts** from strong to weak L2, starting from zero weights (deterministic).

fp32 features and logits; float64 for the parameters, the L-BFGS memory, the preconditioner
and every reduction (loss sums, dot products). The stopping rule is scikit-learn's
(``max |grad| <= tol`` or ``max_iter`` iterations), but the default tol is 1e-5, not 1e-4:
with warm starts, 1e-4 can already hold at the start of a weak L2 (unit-norm embeddings make
the W-gradient small), stopping after 0 iterations well above the optimum; at 1e-5 the
objective is at or below scikit-learn's (tol 1e-4) at every L2 of the benchmark grid.

Memory: besides x, about four (N x C) fp32 buffers (logits, direction logits, line-search
work), e.g. 80 MB for 50k rows x 100 classes.

Pure module: imports only numpy and torch.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
PRECOND_ROWS = 16_384  # rows of the subsample that estimates B = E[x~ x~^T]
EVAL_CHUNK = 16_384  # rows per chunk when scoring / evaluating the objective in float64

_C1, _C2 = 1e-4, 0.25  # Wolfe constants of the line search (c2 fairly tight: trials are cheap)
_MAX_LS = 20
_HISTORY = 20
_REFRESH = 10  # iterations between refreshes of the preconditioner's class factor A


@dataclass(frozen=True)
class LogRegFit:
    """Result of `fit_logreg_path`: the weights of the chosen L2 and the whole path's scores."""

    weight: torch.Tensor  # (C, E) float32
    bias: torch.Tensor  # (C,) float32
    l2: float  # chosen strength (best val top-1; ties -> stronger L2)
    val_top1_per_l2: dict[float, float]  # (cross-validated top-1 for fit_logreg_cv)
    iterations: dict[float, int]  # L-BFGS iterations (= pairs of GEMMs) per L2
    cv_loss_per_l2: dict[float, float] | None = None  # fit_logreg_cv: held-out mean CE


# ------------------------------------------------------------------------------- threads

_GEMM_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "logreg_gemm_threads", default=None
)


@contextlib.contextmanager
def _serial_except_gemm():
    """Run torch CPU ops on one thread, except the GEMMs (see `_gemm`), then restore.

    The solver's non-GEMM work is a handful of passes over (N x C) logits and small vectors.
    On a 2-core machine shared with other processes, OpenMP regions for those ops stall on
    their barriers (measured: 10x slower than serial), while a serial pass over N x C floats
    costs a small fraction of a GEMM over N x E. GEMMs keep torch's thread count."""
    threads = torch.get_num_threads()
    token = _GEMM_THREADS.set(threads)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _GEMM_THREADS.reset(token)


def _gemm(fn, *args):
    threads = _GEMM_THREADS.get()
    if threads is None or threads == 1:
        return fn(*args)
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(1)


# ----------------------------------------------------------------------------- validation


def _features(name: str, x, device=None, check_finite: bool = True) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, features), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name} must be real-valued, got dtype {x.dtype}")
    x = x.to(device=device, dtype=torch.float32).contiguous()
    if check_finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _labels(name: str, y, n_rows: int, n_classes: int, device) -> torch.Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(y).__name__}")
    if y.ndim != 1 or y.shape[0] != n_rows:
        raise ValueError(
            f"{name} must be 1-D with one label per row ({n_rows}), got shape {tuple(y.shape)}"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    y = y.to(device=device, dtype=torch.int64)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            f"{name} has labels outside [0, {n_classes}) (n_classes={n_classes}): "
            f"min {lo}, max {hi}"
        )
    return y.contiguous()


def _grid(l2_grid) -> list[float]:
    try:
        grid = [float(v) for v in l2_grid]
    except TypeError as err:
        raise ValueError(f"l2_grid must be a sequence of numbers, got {l2_grid!r}") from err
    if not grid:
        raise ValueError("l2_grid is empty: give at least one L2 strength")
    if any(not math.isfinite(v) or v <= 0 for v in grid):
        raise ValueError(f"l2_grid values must be finite and > 0, got {grid}")
    if len(set(grid)) != len(grid):
        raise ValueError(f"l2_grid has duplicate values: {grid}")
    return sorted(grid, reverse=True)  # warm start from strong to weak


# ------------------------------------------------------------------- objective and gradient


def _softmax_stats(z: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(sum_i CE_i in float64, softmax probabilities) of fp32 logits z; z is left unchanged."""
    m = z.amax(dim=1, keepdim=True)
    e = torch.sub(z, m).exp_()
    s = e.sum(dim=1, keepdim=True)
    lse_sum = (m.squeeze(1).double() + s.squeeze(1).log().double()).sum()
    zy = z.gather(1, y[:, None]).sum(dtype=torch.float64)
    return float(lse_sum - zy), e.div_(s)


def _gradient(
    p: torch.Tensor, y: torch.Tensor, x: torch.Tensor, theta: torch.Tensor, l2: float
) -> torch.Tensor:
    """Analytic gradient [(p - Y)^T X / N + l2 W | sum_i (p - Y) / N] as float64 (C, E+1).

    Overwrites p with p - onehot(y)."""
    n = x.shape[0]
    p[torch.arange(n, device=p.device), y] -= 1.0
    g = torch.empty_like(theta)
    g[:, :-1] = _gemm(torch.mm, p.T, x).double().div_(n).add_(theta[:, :-1], alpha=l2)
    g[:, -1] = p.sum(dim=0, dtype=torch.float64).div_(n)
    return g


def _logits(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    w = theta[:, :-1].to(torch.float32)
    b = theta[:, -1].to(torch.float32)
    return _gemm(torch.addmm, b, x, w.T)


def logreg_loss_grad(weight, bias, x, y, l2: float) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(objective, grad_W, grad_b) at (weight, bias): the solver's own analytic formulas."""
    x = _features("x", x)
    weight = torch.as_tensor(weight, dtype=torch.float64, device=x.device)
    bias = torch.as_tensor(bias, dtype=torch.float64, device=x.device)
    y = _labels("y", torch.as_tensor(y), x.shape[0], weight.shape[0], x.device)
    theta = torch.cat([weight, bias[:, None]], dim=1)
    ce, p = _softmax_stats(_logits(x, theta), y)
    f = ce / x.shape[0] + 0.5 * l2 * float(weight.pow(2).sum())
    g = _gradient(p, y, x, theta, l2)
    return f, g[:, :-1], g[:, -1]


def logreg_objective(weight, bias, x, y, l2: float) -> float:
    """mean CE + l2/2 ||W||^2 evaluated in float64 throughout (for comparing solvers)."""
    w = torch.as_tensor(weight).to(torch.float64)
    b = torch.as_tensor(bias).to(torch.float64)
    x = torch.as_tensor(x)
    y = torch.as_tensor(y).to(torch.int64)
    total = 0.0
    for s in range(0, x.shape[0], EVAL_CHUNK):
        z = torch.addmm(b, x[s : s + EVAL_CHUNK].to(torch.float64), w.T)
        lse = torch.logsumexp(z, dim=1)
        total += float((lse - z.gather(1, y[s : s + EVAL_CHUNK, None]).squeeze(1)).sum())
    return total / x.shape[0] + 0.5 * l2 * float(w.pow(2).sum())


def _top1_correct(x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> int:
    """Correct top-1 predictions; ties between classes go to the lowest class index."""
    w = theta[:, :-1].to(torch.float32)
    b = theta[:, -1].to(torch.float32)
    correct = 0
    for s in range(0, x.shape[0], EVAL_CHUNK):
        z = _gemm(torch.addmm, b, x[s : s + EVAL_CHUNK], w.T)
        # torch.argmax returns the first maximal index; made explicit so it cannot drift
        top = z.amax(dim=1, keepdim=True)
        classes = torch.arange(z.shape[1], device=z.device)
        pred = torch.where(z == top, classes, z.shape[1]).amin(dim=1)
        correct += int((pred == y[s : s + EVAL_CHUNK]).sum())
    return correct


# ------------------------------------------------------------------------------ the solver


class _Preconditioner:
    """Inverse of A (x) B + l2 I, with B fixed (eigendecomposed once) and A refreshable."""

    def __init__(self, x: torch.Tensor):
        n = x.shape[0]
        step = max(1, -(-n // PRECOND_ROWS))
        xs = x[::step]
        xt = torch.cat([xs, torch.ones(xs.shape[0], 1, dtype=xs.dtype, device=xs.device)], 1)
        gram = _gemm(torch.mm, xt.T, xt).double().div_(xs.shape[0])
        eig_b, self.q_b = torch.linalg.eigh(gram)  # serial: see _serial_except_gemm
        self.eig_b = eig_b.clamp_min_(0.0)
        self.l2 = 1.0
        self.eig_a = self.q_a = None  # set by `refresh` before the first use

    def refresh(self, p: torch.Tensor) -> None:
        """A = mean_i (diag(p_i) - p_i p_i^T) from probabilities p (N x C)."""
        n = p.shape[0]
        a = torch.diag(p.sum(0, dtype=torch.float64)) - _gemm(torch.mm, p.T, p).double()
        a = a.div_(n)
        eig_a, self.q_a = torch.linalg.eigh(0.5 * (a + a.T))
        self.eig_a = eig_a.clamp_min_(0.0)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        r = self.q_a.T @ v @ self.q_b
        r /= self.eig_a[:, None] * self.eig_b[None, :] + self.l2
        return self.q_a @ r @ self.q_b.T


class _LineSearch:
    """phi(t) = f(theta + t d) from the fixed logits z and direction logits zd (no GEMMs)."""

    def __init__(self, z, zd, y, state, d, l2):
        self.z, self.zd, self.l2, self.n = z, zd, l2, z.shape[0]
        self.zy = float(z.gather(1, y[:, None]).sum(dtype=torch.float64))
        self.zdy = float(zd.gather(1, y[:, None]).sum(dtype=torch.float64))
        w, dw = state.delta(), d[:, : state.cols]
        self.ww, self.wd, self.dd = (
            float((w * w).sum()),
            float((w * dw).sum()),
            float(dw.pow(2).sum()),
        )

    def value(self, t: float):
        """(phi(t), phi'(t), state); state = (exp(z_t - max), row sums) for `curvature`/`probs`."""
        e = torch.add(self.z, self.zd, alpha=t)
        m = e.amax(dim=1, keepdim=True)
        e.sub_(m).exp_()
        s = e.sum(dim=1)
        lse = float(m.squeeze(1).double().sum() + s.log().double().sum())
        ezd = e * self.zd
        r = ezd.sum(dim=1).div_(s)  # E_p[zd] per row
        n, l2 = self.n, self.l2
        f = (lse - self.zy - t * self.zdy) / n
        f += 0.5 * l2 * (self.ww + 2 * t * self.wd + t * t * self.dd)
        d1 = (float(r.sum(dtype=torch.float64)) - self.zdy) / n + l2 * (self.wd + t * self.dd)
        return f, d1, (e, s, ezd, r)

    def curvature(self, state) -> float:
        """phi''(t) = mean_i Var_{p_i}(zd_i) + l2 ||dW||^2 (two extra passes; only on demand)."""
        e, s, ezd, r = state
        second = ezd.mul_(self.zd).sum(dim=1).div_(s)
        return float((second - r * r).sum(dtype=torch.float64)) / self.n + self.l2 * self.dd

    @staticmethod
    def probs(state) -> torch.Tensor:
        e, s, _, _ = state
        return e.div_(s[:, None])

    def search(self, f0: float, g0: float):
        """Safeguarded Newton on phi' from t = 1 until the strong Wolfe conditions hold.

        Returns (t, phi(t), softmax at t) or None when no decrease could be found."""
        lo, hi, t = 0.0, math.inf, 1.0
        best = None
        # fp32 logits make f noisy at ~1e-9 relative; the accurate phi' is what really decides
        slack = 1e-8 * max(1.0, abs(f0))
        for _ in range(_MAX_LS):
            f, d1, state = self.value(t)
            armijo = f <= f0 + _C1 * t * g0 + slack
            if armijo and abs(d1) <= _C2 * abs(g0):
                return t, f, self.probs(state)
            if f < f0 and (best is None or f < best[1]):
                best = (t, f, state)
            if d1 > 0 or not armijo:
                hi = t
            else:
                lo = t
            d2 = self.curvature(state)
            tn = t - d1 / d2 if d2 > 0 and math.isfinite(d2) else math.nan
            if math.isinf(hi):
                t = tn if math.isfinite(tn) and t < tn <= 8 * t else 4 * t
            else:
                t = tn if math.isfinite(tn) and lo < tn < hi else 0.5 * (lo + hi)
            if hi - lo <= 1e-12 * hi:
                break
        if best is None:
            return None
        return best[0], best[1], self.probs(best[2])


class _State:
    """Parameters and what the solver keeps about them between L2 values of the path.

    theta: float64 (C, E+1) = [W | b]; z: fp32 logits X W^T + b (tracked along the steps, so a
    new L2 starts without any GEMM); ce, g_ce: mean CE and its gradient (float64).

    anchor: None (the probe: the penalty is l2/2 ||W||^2, bias free, start at zero) or a
    float64 (C, E+1) [W0 | b0] the fit starts at and is pulled toward: the penalty is
    l2/2 ||[W | b] - [W0 | b0]||^2 (bias included, so an infinite l2 returns the anchor)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_classes: int, anchor=None):
        shape = (n_classes, x.shape[1] + 1)
        if anchor is None:
            self.anchor, self.cols = None, shape[1] - 1
            self.theta = torch.zeros(shape, dtype=torch.float64, device=x.device)
        else:
            self.anchor = torch.as_tensor(anchor, dtype=torch.float64).to(x.device)
            if tuple(self.anchor.shape) != shape:
                raise ValueError(f"anchor must be [W0 | b0] of shape {shape}, got "
                                 f"{tuple(self.anchor.shape)}")  # fmt: skip
            if not bool(torch.isfinite(self.anchor).all()):
                raise ValueError("anchor contains NaN or infinite values")
            self.cols, self.theta = shape[1], self.anchor.clone()
        self.z = _logits(x, self.theta)
        ce, p = _softmax_stats(self.z, y)
        self.ce, self.g_ce = ce / x.shape[0], _gradient(p, y, x, self.theta, 0.0)
        if not bool(torch.isfinite(self.g_ce).all()):  # X^T (p - Y): NaN/inf in x shows here
            raise ValueError("x contains NaN or infinite values (or values too large for fp32)")

    def delta(self) -> torch.Tensor:
        """The penalised part of theta minus its anchor: W (probe) or [W | b] - [W0 | b0]."""
        w = self.theta[:, : self.cols]
        return w if self.anchor is None else w - self.anchor

    def penalty(self, l2: float) -> float:
        return 0.5 * l2 * float(self.delta().pow(2).sum())

    def objective(self, l2: float) -> tuple[float, torch.Tensor]:
        g = self.g_ce.clone()
        g[:, : self.cols].add_(self.delta(), alpha=l2)
        return self.ce + self.penalty(l2), g


def _minimise(x, y, state: _State, l2: float, precond: _Preconditioner, max_iter, tol) -> int:
    """L-BFGS on the objective at strength l2 from `state`, updated in place; iterations."""
    theta, z = state.theta, state.z
    f, g = state.objective(l2)
    precond.l2 = l2
    precond.refresh(_softmax_stats(z, y)[1])
    s_hist: list[torch.Tensor] = []
    y_hist: list[torch.Tensor] = []
    rho_hist: list[float] = []
    it = 0
    while it < max_iter and float(g.abs().max()) > tol:
        # two-loop recursion, H0 = gamma * preconditioner
        q = g.clone()
        alphas = []
        for s_k, y_k, rho in zip(
            reversed(s_hist), reversed(y_hist), reversed(rho_hist), strict=True
        ):
            a = rho * float((s_k * q).sum())
            alphas.append(a)
            q.sub_(y_k, alpha=a)
        r = precond(q)
        if s_hist:
            hy = precond(y_hist[-1])
            r.mul_(float((s_hist[-1] * y_hist[-1]).sum()) / float((y_hist[-1] * hy).sum()))
        for s_k, y_k, rho, a in zip(s_hist, y_hist, rho_hist, reversed(alphas), strict=True):
            b = rho * float((y_k * r).sum())
            r.add_(s_k, alpha=a - b)
        d = r.neg_()
        g0 = float((g * d).sum())
        if not g0 < 0:  # not a descent direction (memory gone stale): restart
            s_hist, y_hist, rho_hist = [], [], []
            d = precond(g).neg_()
            g0 = float((g * d).sum())
            if not g0 < 0:
                break
        zd = _logits(x, d)
        found = _LineSearch(z, zd, y, state, d, l2).search(f, g0)
        if found is None:
            if s_hist:  # retry once from the preconditioned gradient
                s_hist, y_hist, rho_hist = [], [], []
                continue
            break
        t, f, p = found
        it += 1
        z.add_(zd, alpha=t)
        theta.add_(d, alpha=t)
        if it % _REFRESH == 0:
            precond.refresh(p)
        state.ce = f - state.penalty(l2)
        state.g_ce = _gradient(p, y, x, theta, 0.0)
        _, g_new = state.objective(l2)
        s_k, y_k = d.mul_(t), g_new - g
        sy = float((s_k * y_k).sum())
        if sy > 1e-12 * float(y_k.pow(2).sum()) ** 0.5 * float(s_k.pow(2).sum()) ** 0.5:
            s_hist.append(s_k)
            y_hist.append(y_k)
            rho_hist.append(1.0 / sy)
            if len(s_hist) > _HISTORY:
                del s_hist[0], y_hist[0], rho_hist[0]
        g = g_new
    return it


def fit_logreg_path(
    x,
    y,
    x_val,
    y_val,
    *,
    n_classes: int,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    max_iter: int = 100,
    tol: float = 1e-5,
    progress: bool = False,
    anchor=None,
) -> LogRegFit:
    """Fit multinomial logistic regression for every L2 of the grid; keep the best on val.

    x (N, E) and x_val (M, E): features (numpy or torch; used as fp32, on x's device).
    y (N,), y_val (M,): integer labels in [0, n_classes). The grid is solved from strong to
    weak L2, each fit warm-started from the previous one (the first from zero, or from
    `anchor`). The chosen L2 has the highest val top-1 (argmax ties go to the lowest class
    index); equal val top-1 goes to the stronger L2. Each fit stops when max |grad| <= tol or
    after max_iter iterations. anchor: see `_State` (a start the fit is pulled toward).
    """
    grid, max_iter, tol = _check_solver_args(n_classes, l2_grid, max_iter, tol)
    with _serial_except_gemm():
        x, y = _checked_xy("x", "y", x, y, n_classes, None)
        x_val, y_val = _checked_xy("x_val", "y_val", x_val, y_val, n_classes, x)
        scores: dict[float, float] = {}
        iterations: dict[float, int] = {}
        best_key, best_theta = None, None
        for l2, theta, its in _path(x, y, n_classes, grid, anchor, max_iter, tol):
            correct = _top1_correct(x_val, y_val, theta)
            scores[l2], iterations[l2] = correct / x_val.shape[0], its
            if progress:
                print(f"logreg: l2 {l2:.1e}: {its} iterations, val top-1 "
                      f"{correct / x_val.shape[0]:.4f}", file=sys.stderr)  # fmt: skip
            key = (correct, l2)  # more correct first; then the stronger L2
            if best_key is None or key > best_key:
                best_key, best_theta = key, theta.clone()
    return _result(best_theta, best_key[1], scores, iterations)


def _check_solver_args(n_classes, l2_grid, max_iter, tol):
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)):
        raise ValueError(f"n_classes must be an int, got {n_classes!r}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    return _grid(l2_grid), int(max_iter), float(tol)


def _checked_xy(xname, yname, x, y, n_classes, like):
    """(fp32 features, int64 labels), on `like`'s device and with its width when given."""
    if like is None:
        x = _features(xname, x, check_finite=False)  # checked for free by `_State`
    else:
        x = _features(xname, x, like.device)
        if x.shape[1] != like.shape[1]:
            raise ValueError(
                f"{xname} has {x.shape[1]} features but x has {like.shape[1]} (shapes "
                f"{tuple(x.shape)} vs {tuple(like.shape)})"
            )
    return x, _labels(yname, y, x.shape[0], n_classes, x.device)


def _path(x, y, n_classes, grid, anchor, max_iter, tol):
    """Yield (l2, theta, iterations) along `grid` (strong to weak), each fit warm-started from
    the previous one; theta is the solver's live (C, E+1) float64 array: clone it to keep it."""
    state = _State(x, y, n_classes, anchor)
    precond = _Preconditioner(x)
    for l2 in grid:
        yield l2, state.theta, _minimise(x, y, state, l2, precond, max_iter, tol)


def _result(theta, l2, scores, iterations, **extra) -> LogRegFit:
    weight = theta[:, :-1].to(torch.float32).contiguous()
    bias = theta[:, -1].to(torch.float32).contiguous()
    return LogRegFit(weight, bias, l2, scores, iterations, **extra)


def cv_folds(y, folds: int, seed: int) -> np.ndarray:
    """(N,) fold index in [0, folds) of each row: stratified -- each class's rows, in a seeded
    order, are dealt round-robin from a seeded offset, so every fold gets about 1/folds of
    every class (a class with fewer rows than folds is in fewer folds)."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    out = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        rows = rows[rng.permutation(len(rows))]
        out[rows] = (np.arange(len(rows)) + rng.integers(folds)) % folds
    return out


def fit_logreg_cv(
    x,
    y,
    *,
    n_classes: int,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    folds: int = 5,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-5,
    anchor=None,
    criterion: str = "top1",
    progress: bool = False,
) -> LogRegFit:
    """Choose L2 by stratified k-fold cross-validation on (x, y), then refit on ALL rows.

    For each fold, the grid is solved on the other folds (strong to weak, warm-started) and
    scored on the held-out fold; the chosen L2 has the most held-out rows right over all folds,
    ties going to the lower held-out cross-entropy (smoother than top-1 on a few rows). The
    returned weights are the refit on every row at that L2 (the path from the strongest L2
    down to it, warm-started), so no labelled row is left out of the final model.
    `val_top1_per_l2` holds the cross-validated top-1; `cv_loss_per_l2` the held-out CE.
    folds: an int >= 2 (stratified folds by `cv_folds`; fewer when there are fewer rows), or
    an (N,) array of fold ids given by the caller, where -1 marks rows never held out (a single
    hold-out split is `0` for its validation rows and `-1` elsewhere). anchor: see `_State`.
    """
    grid, max_iter, tol = _check_solver_args(n_classes, l2_grid, max_iter, tol)
    with _serial_except_gemm():
        x, y = _checked_xy("x", "y", x, y, n_classes, None)
        if x.shape[0] < 2:
            raise ValueError(f"cross-validation needs at least 2 rows, got {x.shape[0]}")
        fold = _fold_ids(folds, y, seed)
        scored = 0
        correct = dict.fromkeys(grid, 0)
        loss = dict.fromkeys(grid, 0.0)
        for f in range(int(fold.max()) + 1):
            held = fold == f
            if not bool(held.any()) or bool(held.all()):
                continue
            scored += int(held.sum())
            xv, yv = x[held], y[held]
            for l2, theta, _ in _path(x[~held], y[~held], n_classes, grid, anchor, max_iter, tol):
                correct[l2] += _top1_correct(xv, yv, theta)
                loss[l2] += _softmax_stats(_logits(xv, theta), yv)[0]
        n = x.shape[0]
        if scored == 0:
            raise ValueError("no fold could be held out: every row is in one fold, or none is")
        if criterion == "top1":
            chosen = min(grid, key=lambda l2: (-correct[l2], loss[l2], -l2))
        elif criterion == "loss":
            chosen = min(grid, key=lambda l2: (loss[l2], -correct[l2], -l2))
        else:
            raise ValueError(f"criterion must be 'top1' or 'loss', got {criterion!r}")
        refit_grid = [l2 for l2 in grid if l2 >= chosen]
        iterations: dict[float, int] = {}
        for l2, live, its in _path(x, y, n_classes, refit_grid, anchor, max_iter, tol):
            iterations[l2], theta = its, live
        if progress:
            print(f"logreg: {int(fold.max()) + 1}-fold CV chose l2 {chosen:.1e} (CV top-1 "
                  f"{correct[chosen] / scored:.4f}), refit on all {n} rows",
                  file=sys.stderr)  # fmt: skip
        return _result(theta, chosen, {k: v / scored for k, v in correct.items()}, iterations,
                       cv_loss_per_l2={k: v / scored for k, v in loss.items()})  # fmt: skip


def _fold_ids(folds, y: torch.Tensor, seed: int) -> torch.Tensor:
    if isinstance(folds, (int, np.integer)) and not isinstance(folds, bool):
        if folds < 2:
            raise ValueError(f"folds must be >= 2 (or an array of fold ids), got {folds}")
        ids = cv_folds(y.cpu().numpy(), min(int(folds), y.shape[0]), seed)
    else:
        ids = np.asarray(folds.cpu() if isinstance(folds, torch.Tensor) else folds)
        if ids.shape != (y.shape[0],) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"fold ids must be integers, one per row ({y.shape[0]}), got "
                             f"shape {ids.shape} dtype {ids.dtype}")  # fmt: skip
        if ids.min() < -1:
            raise ValueError("fold ids must be >= 0, or -1 for rows never held out")
    return torch.from_numpy(ids.astype(np.int64)).to(y.device)
