"""Elastic-net sparse final layer along a regularisation path (Label-free CBM / VLG-CBM).

Fits W_F (|C| x |D|) and a bias b of a multinomial logistic regression on features x by

    min_{W, b}  mean_i CE(W x_i + b, y_i) + lam * (alpha * ||W||_1 + (1 - alpha) / 2 * ||W||_2^2)

(the bias is not penalised; GLM-SAGA's and glmnet's convention, alpha = 0.99 is Label-free CBM's
default) for lam on a geometric grid from lam_max down to lam_max * lam_min_ratio, with warm
starts, and stops as soon as the NEC (mean number of non-zero weights per class) of a solution
exceeds `target_nec`. A few bisection steps in log(lam) between the last point within budget
and the first point over it then bring the NEC closer to the target from below.

Selection: without validation data the point with the smallest lam whose NEC is <= target_nec
(i.e. the densest layer within the NEC budget; Label-free CBM / VLG-CBM pick by NEC budget).
With `x_val`/`y_val` the point with the best validation top-1 among those within budget (ties:
smaller lam).

Solver (deterministic, fp32, full batch, torch only):
- lam_max = max |dCE/dW at W = 0, b = log class frequencies| / alpha (times 1 + 1e-5 of fp32
  headroom): W = 0 is optimal for every lam >= lam_max; the path starts there with W = 0.
- Working set + KKT check: at each lam only the entries that are non-zero in the warm start
  or whose gradient there already exceeds alpha * lam are free; after solving, the KKT
  conditions |grad_cj| <= alpha * lam of all other entries are checked on the full gradient
  and violators are added until there are none. So the result solves the full problem (to
  `tol`), while an iteration costs O(working set), not O(|C| |D|). (The sequential strong
  rule keeps more entries; on a path the violators the check finds are rare.)
- The restricted problem is solved by FISTA with backtracking (the step may grow by 25% per
  iteration), gradient-based adaptive restart, and the proximal map of the elastic net
  (soft-threshold by t*alpha*lam, then shrink by 1 / (1 + t*lam*(1 - alpha))), which gives
  exact zeros. The first step is 1/L with L = 0.5 * ||[X, 1]||_2^2 / N, a valid Lipschitz
  bound of the mean softmax-CE gradient (the Hessian of CE in the logits, diag(p) - p p^T,
  has largest eigenvalue <= 1/2; ||.||_2 by power iteration, +5%). The sufficient-decrease
  test uses the Bregman divergence of CE in logit space, log sum_c p_c e^{d_c} - <p, d>, via
  log1p/expm1, exact enough in fp32 where a difference of two CE values is not. Logits at the
  momentum point come from the iterates' logits by linearity, so an iteration costs one
  forward and one gradient product (a CSR product over the gathered feature rows of the
  working set when it is small, masked dense matmuls otherwise).
- Convergence of each solve: max |gradient mapping| <= tol * alpha * lam_max (default 1e-3;
  on the 10k x 1k x 100 benchmark the objective at the selected lam is then within ~1e-5
  relative of a tol = 1e-4 solve).

Standardisation (`standardize=True`, default, as Label-free CBM does before GLM-SAGA): the
problem is solved on (x - mean) / std (train statistics, unbiased std; a constant feature gets
std 1), so `lam` and the objective refer to standardised features; the returned layer is folded
back to raw x: W = W_s / std, b = b_s - W mean. Dividing by std keeps zeros zero, so the
sparsity pattern and NEC are those of the standardised solution.

This module imports only numpy and torch, so it can be copied anywhere.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "ElasticNetPath",
    "elastic_net_objective",
    "fit_elastic_net",
    "lambda_max",
    "nec_of",
]

_LAM_MAX_MARGIN = 1.0 + 1e-5  # fp32 headroom: at lam_max the first prox step must give 0
_SPARSE_MAX_ELEMS = 2**28  # cap on the gathered (K, N) feature rows of the sparse operator (1 GiB)


@dataclass(frozen=True)
class ElasticNetPath:
    """Result of `fit_elastic_net`: the selected point of the path and the path itself.

    weight (C, D) fp32 and bias (C,) apply to raw x (folded back if standardize=True); `lam`
    is the selected point's regularisation strength (in standardised units if standardized);
    `nec` the mean number of non-zeros per class of `weight`; `path` one dict per solved lam
    (in solve order: grid points, then refinement points), with keys lam, nec, objective
    (standardised units), train_loss (mean CE), train_top1, n_iter, n_backtracks, n_restarts,
    n_kkt_rounds, converged, op, free_entries, seconds, refine (bool) and val_top1 (if
    validation data was given). `lam_max`, `mean`, `std` (None if not standardised) and
    `selected` (index into `path`) are extras.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    lam: float
    nec: float
    path: list[dict]
    lam_max: float = float("nan")
    selected: int = -1
    mean: torch.Tensor | None = field(default=None, repr=False)
    std: torch.Tensor | None = field(default=None, repr=False)


PATH_MAX_ITER = 2000  # FISTA iterations per lambda (fit-head --path-max-iter's default)


# ------------------------------------------------------------------ small helpers


def nec_of(weight: torch.Tensor) -> float:
    """Mean number of exactly non-zero weights per class (row) of a (C, D) weight."""
    if weight.ndim != 2 or weight.shape[0] == 0:
        raise ValueError(f"weight must be (C, D) with C >= 1, got {tuple(weight.shape)}")
    return float((weight != 0).sum(1).double().mean())


def _check_xy(x, y, n_classes: int, name: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(np.asarray(y))
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y{'' if name == 'x' else '_val'} must be 1-D with {x.shape[0]} labels (one per row "
            f"of {name}), got shape {tuple(y.shape)}"
        )
    if torch.is_floating_point(y) or y.dtype == torch.bool or torch.is_complex(y):
        raise ValueError(f"labels must be integers, got {y.dtype}")
    y = y.detach().to(torch.int64)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            f"labels must lie in [0, {n_classes - 1}] (n_classes={n_classes}), got [{lo}, {hi}]"
        )
    x = x.detach().to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x, y


def _check_scalars(n_classes, target_nec, alpha) -> None:
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    if not (isinstance(target_nec, (int, float)) and not math.isnan(target_nec) and target_nec > 0):
        raise ValueError(
            f"target_nec must be a number > 0 (math.inf: no budget), got {target_nec!r}"
        )
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha <= 1.0):
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")


def _standardizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(0)
    std = x.std(0) if x.shape[0] > 1 else torch.ones_like(mean)
    std = torch.where(torch.isfinite(std) & (std > 0), std, torch.ones_like(std))
    return mean, std


def _fold(w_s: torch.Tensor, b_s: torch.Tensor, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer on standardised x -> the same layer on raw x (zeros stay zeros)."""
    if mean is None:
        return w_s.clone(), b_s.clone()
    w = w_s / std
    return w, b_s - w @ mean


def _penalty(w: torch.Tensor, lam: float, alpha: float) -> float:
    l1 = float(w.abs().sum(dtype=torch.float64))
    l2 = float(w.double().pow(2).sum())
    return lam * (alpha * l1 + 0.5 * (1.0 - alpha) * l2)


def _ce_sum(z: torch.Tensor, y: torch.Tensor) -> float:
    """Sum over rows of CE(z, y), accumulated in float64 from fp32 logits."""
    lse = torch.logsumexp(z, dim=1)
    return float((lse - z.gather(1, y[:, None]).squeeze(1)).sum(dtype=torch.float64))


def elastic_net_objective(weight, bias, x, y, lam: float, alpha: float = 0.99) -> float:
    """mean CE(x W^T + b, y) + lam * (alpha ||W||_1 + (1 - alpha)/2 ||W||_2^2), in float64.

    Evaluate on the features the layer was penalised on (standardised ones for a result of
    `fit_elastic_net(standardize=True)`: pass the standardised weight, i.e. weight * std).
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    w = torch.as_tensor(weight, dtype=torch.float32)
    b = torch.as_tensor(bias, dtype=torch.float32)
    y = torch.as_tensor(y).to(torch.int64)
    z = torch.addmm(b, x, w.T)
    return _ce_sum(z, y) / x.shape[0] + _penalty(w, lam, alpha)


# ------------------------------------------------------------------ the problem


class _Problem:
    """Standardised data on the compute device plus the quantities every solve needs.

    Features are kept transposed, xt (D, N) contiguous, and logits as (C, N): rows of xt are
    what the entry-sparse operator gathers, and a (C, N) row is one class over all samples.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_classes: int, alpha: float, seed: int):
        self.xt = x.T.contiguous()
        self.y = y
        self.n, self.d = x.shape
        self.c = n_classes
        self.alpha = alpha
        counts = torch.bincount(y, minlength=n_classes).to(torch.float64)
        freq = counts / counts.sum()
        self.freq = freq.to(torch.float32)
        # optimal bias at W = 0; an absent class gets a finite, ~zero probability
        self.b0 = freq.clamp_min(1e-12).log().to(torch.float32)
        # (C, D) class-conditional feature sums / N: the label part of the CE gradient
        self.class_means = torch.zeros(n_classes, self.d, device=x.device).index_add_(0, y, x)
        self.class_means /= self.n
        self.lipschitz = 0.5 * self._sigma2(seed) / self.n

    def _sigma2(self, seed: int, iters: int = 30) -> float:
        """Upper estimate of ||[X, 1]||_2^2 by power iteration on [X, 1]^T [X, 1] (+5%)."""
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(self.d + 1, generator=g, dtype=torch.float32).to(self.xt.device)
        v /= v.norm()
        est = 0.0
        for _ in range(iters):
            u = self.xt.T @ v[:-1] + v[-1]
            w = torch.cat([self.xt @ u, u.sum().reshape(1)])
            est = float(w.norm())
            if est == 0.0:
                return 1.0
            v = w / est
        return 1.05 * est + 1e-6

    def logits(self, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(C, N) logits of a full (C, D) weight (sparse product when W is sparse)."""
        nnz = int((w != 0).sum())
        if nnz * 8 < w.numel():
            return torch.addmm(b[:, None], _csr(w), self.xt)
        return torch.addmm(b[:, None], w, self.xt)

    def full_grad(self, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Gradient of mean CE in W (C, D) at (w, b), and the mean CE."""
        z = self.logits(w, b)
        ce = _ce_sum(z.T, self.y) / self.n
        p = torch.softmax(z, dim=0)
        return (p @ self.xt.T).div_(self.n).sub_(self.class_means), ce


def _csr(w: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta state"
        warnings.simplefilter("ignore")
        return w.to_sparse_csr()


@torch.no_grad()
def lambda_max(x, y, *, n_classes: int, alpha: float = 0.99, standardize: bool = True) -> float:
    """Smallest lam at which W = 0 (with the optimal bias, log class frequencies) is optimal.

    max_cj |dCE/dW_cj| / alpha at W = 0 (times 1 + 1e-5 of fp32 headroom), on the standardised
    features if `standardize`.
    """
    _check_scalars(n_classes, 1.0, alpha)
    x, y = _check_xy(x, y, n_classes)
    if standardize:
        mean, std = _standardizer(x)
        x = (x - mean) / std
    prob = _Problem(x, y, n_classes, alpha, seed=0)
    g0, _ = prob.full_grad(torch.zeros(n_classes, prob.d, device=x.device), prob.b0)
    return _lam_max_from_grad(g0, alpha)


def _lam_max_from_grad(g0: torch.Tensor, alpha: float) -> float:
    m = float(g0.abs().max()) if g0.numel() else 0.0
    return max(m / alpha * _LAM_MAX_MARGIN, 1e-12)


# ------------------------------------------------------------------ restricted operators


class _DenseOp:
    """W restricted to a mask, on the columns the mask uses: v is (C, D_a), masked."""

    def __init__(self, prob: _Problem, mask: torch.Tensor):
        self.cols = mask.any(0).nonzero().squeeze(1)
        self.full = self.cols.numel() == prob.d
        if self.full:
            self.xt, self.maf, self.xy = prob.xt, mask.to(torch.float32), prob.class_means
        else:
            self.xt = prob.xt.index_select(0, self.cols)
            self.maf = mask.index_select(1, self.cols).to(torch.float32)
            self.xy = prob.class_means.index_select(1, self.cols)
        self.prob = prob

    def restrict(self, w: torch.Tensor) -> torch.Tensor:
        v = w if self.full else w.index_select(1, self.cols)
        return v * self.maf

    def expand(self, v: torch.Tensor) -> torch.Tensor:
        if self.full:
            return v
        w = torch.zeros(self.prob.c, self.prob.d, device=v.device)
        return w.index_copy_(1, self.cols, v)

    def forward(self, v, b, out):
        return torch.addmm(b[:, None], v, self.xt, out=out)

    def grad(self, p):
        return (p @ self.xt.T).div_(self.prob.n).sub_(self.xy).mul_(self.maf)

    def project(self, v):
        return v.mul_(self.maf)


class _SparseOp:
    """W restricted to a list of entries (class-major order): v is (K,) values.

    The feature rows of the K entries are gathered once, xg (K, N); logits are a CSR (C, K)
    product with it and the gradient one matrix-vector product per class segment, so an
    iteration costs O(K N) instead of O(C D N).
    """

    def __init__(self, prob: _Problem, mask: torch.Tensor):
        self.c_idx, self.j_idx = mask.nonzero(as_tuple=True)  # row-major = class-major order
        k = self.c_idx.numel()
        self.xg = prob.xt.index_select(0, self.j_idx)
        self.xy = prob.class_means[self.c_idx, self.j_idx]
        counts = torch.bincount(self.c_idx, minlength=prob.c)
        crow = torch.zeros(prob.c + 1, dtype=torch.int64, device=mask.device)
        crow[1:] = counts.cumsum(0)
        self.crow = crow
        self.col = torch.arange(k, device=mask.device)
        bounds, cnt = crow.tolist(), counts.tolist()
        self.segs = [(c, bounds[c], bounds[c + 1]) for c in range(prob.c) if cnt[c] > 0]
        self.prob = prob

    def restrict(self, w: torch.Tensor) -> torch.Tensor:
        return w[self.c_idx, self.j_idx]

    def expand(self, v: torch.Tensor) -> torch.Tensor:
        w = torch.zeros(self.prob.c, self.prob.d, device=v.device)
        w[self.c_idx, self.j_idx] = v
        return w

    def forward(self, v, b, out):
        with warnings.catch_warnings():  # "sparse CSR support is in beta state"
            warnings.simplefilter("ignore")
            a = torch.sparse_csr_tensor(
                self.crow, self.col, v, (self.prob.c, v.numel()), check_invariants=False
            )
        return torch.addmm(b[:, None], a, self.xg, out=out)

    def grad(self, p):
        g = torch.empty_like(self.xy)
        for c, lo, hi in self.segs:  # (a gather-multiply-sum over rows is ~3x slower)
            torch.mv(self.xg[lo:hi], p[c], out=g[lo:hi])
        return g.div_(self.prob.n).sub_(self.xy)

    def project(self, v):
        return v


def _make_op(prob: _Problem, mask: torch.Tensor):
    """Entry-sparse operator when it is cheaper (and its gather fits in memory), else dense."""
    k = int(mask.sum())
    d_a = int(mask.any(0).sum())
    if k > 0 and 4 * k <= prob.c * d_a and k * prob.n <= _SPARSE_MAX_ELEMS:
        return _SparseOp(prob, mask)
    return _DenseOp(prob, mask)


# ------------------------------------------------------------------ restricted FISTA


def _fista(prob: _Problem, lam: float, w0, b0, mask, t0: float, tol_abs: float, max_iter: int):
    """Solve the problem with W restricted to `mask` (C, D) by FISTA with backtracking.

    The sufficient-decrease test is written as the Bregman divergence of CE in logit space
    (log sum p e^d - <p, d>, evaluated with log1p/expm1), which is accurate in fp32 where a
    difference of two CE values is not. Restart: gradient-based (O'Donoghue & Candes 2015).
    The (C, N) logit arrays live in rotating buffers (large allocations are slow on some
    machines). Returns the full (C, D) weight, the bias, the last accepted step and a stats
    dict (iterations, backtracks, restarts, converged, free entries, operator).
    """
    alpha = prob.alpha
    op = _make_op(prob, mask)
    v = op.restrict(w0)
    b = b0.clone()
    n = prob.n
    thr_scale = alpha * lam
    shrink = lam * (1.0 - alpha)
    t_floor = 1e-6 / prob.lipschitz  # far below the safe step 1/L: accept (rounding only)

    def prox(u, t):
        out = u.abs().sub_(t * thr_scale).clamp_min_(0.0).mul_(torch.sign(u))
        if shrink > 0.0:
            out.div_(1.0 + t * shrink)
        return op.project(out)

    z_x = op.forward(v, b, torch.empty(prob.c, n, device=b.device))
    z_old = torch.empty_like(z_x)
    z_y_buf = torch.empty_like(z_x)
    z_new = torch.empty_like(z_x)
    d = torch.empty_like(z_x)
    p = torch.empty_like(z_x)
    v_old, b_old = v, b
    theta, beta = 1.0, 0.0
    t = t0
    grow = False
    stats = {
        "iters": 0,
        "backtracks": 0,
        "restarts": 0,
        "converged": False,
        "entries": int(mask.sum()),
        "op": "sparse" if isinstance(op, _SparseOp) else "dense",
    }
    for it in range(1, max_iter + 1):
        stats["iters"] = it
        if beta > 0.0:
            yv = v + beta * (v - v_old)
            yb = b + beta * (b - b_old)
            z_y = torch.lerp(z_x, z_old, -beta, out=z_y_buf)  # logits are linear in (W, b)
        else:
            yv, yb, z_y = v, b, z_x
        # softmax over classes (dim 0), in place in a buffer (faster than torch.softmax here)
        torch.sub(z_y, z_y.amax(0), out=p).exp_()
        p.div_(p.sum(0))
        gv = op.grad(p)
        gb = p.sum(1).div_(n).sub_(prob.freq)
        if grow:
            t *= 1.25
        grow = True
        while True:
            v_new = prox(yv - t * gv, t)
            b_new = yb - t * gb
            dv, db = v_new - yv, b_new - yb
            op.forward(v_new, b_new, z_new)
            torch.sub(z_new, z_y, out=d)
            m = (p * d).sum(0)
            breg = d.sub_(m).expm1_().mul_(p).sum(0).log1p_().sum(dtype=torch.float64)
            breg = float(breg) / n
            quad = float(dv.pow(2).sum(dtype=torch.float64) + db.pow(2).sum(dtype=torch.float64))
            if (math.isfinite(breg) and breg <= quad / (2.0 * t)) or t < t_floor:
                break
            t *= 0.5
            grow = False
            stats["backtracks"] += 1
        gmap = max(float(dv.abs().max()) if dv.numel() else 0.0, float(db.abs().max())) / t
        # gradient-based restart: the momentum points against the step just taken
        restart = (
            beta > 0.0
            and float(
                ((yv - v_new) * (v_new - v)).sum(dtype=torch.float64)
                + ((yb - b_new) * (b_new - b)).sum(dtype=torch.float64)
            )
            > 0.0
        )
        v_old, b_old, v, b = v, b, v_new, b_new
        z_old, z_x, z_new = z_x, z_new, z_old  # rotate the logit buffers
        if gmap <= tol_abs:
            stats["converged"] = True
            break
        if restart:
            theta, beta = 1.0, 0.0
            stats["restarts"] += 1
        else:
            theta_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * theta * theta))
            beta = (theta - 1.0) / theta_next
            theta = theta_next
    return op.expand(v), b, t, stats


# ------------------------------------------------------------------ path


def _solve_at(prob, lam, w, b, g_prev, t, tol_abs, max_iter, max_kkt_rounds=50):
    """Working set + restricted FISTA + KKT check on the full gradient at one lam.

    Working set: the non-zeros of the warm start plus the entries whose gradient there
    already violates the new threshold, |g| > alpha * lam (tighter than the sequential strong
    rule, which also keeps |g| >= alpha (2 lam - lam_prev): on a path the violators found by
    the KKT check afterwards are rare, and every iteration costs O(working set))."""
    alpha = prob.alpha
    mask = (w != 0) | (g_prev.abs() > alpha * lam)
    kkt_thr = alpha * lam + 0.5 * tol_abs
    info = {"n_iter": 0, "n_backtracks": 0, "n_restarts": 0, "n_kkt_rounds": 0, "converged": True}
    while True:
        info["n_kkt_rounds"] += 1
        w, b, t, st = _fista(prob, lam, w, b, mask, t, tol_abs, max_iter)
        info["n_iter"] += st["iters"]
        info["n_backtracks"] += st["backtracks"]
        info["n_restarts"] += st["restarts"]
        info["converged"] &= st["converged"]
        info["op"] = st["op"]
        g, ce = prob.full_grad(w, b)
        viol = (~mask) & (g.abs() > kkt_thr)
        if not bool(viol.any()) or info["n_kkt_rounds"] >= max_kkt_rounds:
            break
        mask |= viol
    info["free_entries"] = int(mask.sum())
    return w, b, g, ce, t, info


def _top1(w, b, x, y) -> float:
    return float((torch.addmm(b, x, w.T).argmax(1) == y).double().mean())


def _top1_t(prob: _Problem, w, b) -> float:
    return float((prob.logits(w, b).argmax(0) == prob.y).double().mean())


@torch.no_grad()
def fit_elastic_net(
    x,
    y,
    *,
    n_classes: int,
    target_nec: float = 5.0,
    alpha: float = 0.99,
    x_val=None,
    y_val=None,
    n_lambdas: int = 50,
    lam_min_ratio: float = 1e-3,
    lambdas=None,
    refine_steps: int = 4,
    max_iter: int = PATH_MAX_ITER,
    tol: float = 1e-3,
    standardize: bool = True,
    device=None,
    progress: bool = False,
    seed: int = 0,
) -> ElasticNetPath:
    """Elastic-net path of a softmax final layer, selected at `target_nec` (see module doc).

    x (N, D) float features, y (N,) integer labels in [0, n_classes). The grid has `n_lambdas`
    geometric points from lam_max to lam_max * lam_min_ratio, or is `lambdas` (decreasing,
    positive; lam_max is put in front when the first one is smaller). The path stops at the
    first point whose NEC exceeds target_nec (`math.inf`: never), then `refine_steps`
    bisections in log(lam) between it and the last point within budget are solved
    (warm-started from the latter). `max_iter` bounds the FISTA iterations per solve; `tol` is
    the convergence threshold on max |gradient mapping| relative to alpha * lam_max.
    Deterministic for a given device and thread count (`seed` only seeds the power iteration
    of the step-size bound). The returned tensors are on x's device.
    """
    _check_scalars(n_classes, target_nec, alpha)
    n_classes = int(n_classes)
    alpha = float(alpha)
    x, y = _check_xy(x, y, n_classes)
    if (x_val is None) != (y_val is None):
        raise ValueError("give both x_val and y_val, or neither")
    if x_val is not None:
        x_val, y_val = _check_xy(x_val, y_val, n_classes, name="x_val")
        if x_val.shape[1] != x.shape[1]:
            raise ValueError(f"x_val has {x_val.shape[1]} features, x has {x.shape[1]}")
    if not (isinstance(n_lambdas, (int, np.integer)) and n_lambdas >= 1):
        raise ValueError(f"n_lambdas must be an integer >= 1, got {n_lambdas!r}")
    if not (0.0 < lam_min_ratio < 1.0):
        raise ValueError(f"lam_min_ratio must be in (0, 1), got {lam_min_ratio!r}")
    if lambdas is not None:
        lambdas = [float(v) for v in np.asarray(lambdas, dtype=np.float64).reshape(-1)]
        if not lambdas or not all(math.isfinite(v) and v > 0 for v in lambdas):
            raise ValueError("lambdas must be a non-empty sequence of finite values > 0")
        if any(b >= a for a, b in zip(lambdas[:-1], lambdas[1:], strict=True)):
            raise ValueError("lambdas must be strictly decreasing")
    if not (isinstance(refine_steps, (int, np.integer)) and refine_steps >= 0):
        raise ValueError(f"refine_steps must be an integer >= 0, got {refine_steps!r}")
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and tol > 0.0):
        raise ValueError(f"tol must be > 0, got {tol!r}")

    out_device = x.device
    dev = torch.device(device) if device is not None else x.device
    x, y = x.to(dev), y.to(dev)
    mean = std = None
    if standardize:
        mean, std = _standardizer(x)
        x = (x - mean) / std
    if x_val is not None:
        x_val, y_val = x_val.to(dev), y_val.to(dev)
        if standardize:
            x_val = (x_val - mean) / std

    prob = _Problem(x, y, n_classes, alpha, seed)
    del x
    w = torch.zeros(n_classes, prob.d, device=dev)
    b = prob.b0.clone()
    g, _ = prob.full_grad(w, b)
    lam_max = _lam_max_from_grad(g, alpha)
    tol_abs = tol * alpha * lam_max
    t = 1.0 / prob.lipschitz
    if lambdas is None:
        if n_lambdas == 1:
            grid = [lam_max]
        else:
            grid = [lam_max * lam_min_ratio ** (k / (n_lambdas - 1)) for k in range(n_lambdas)]
    else:
        grid = lambdas if lambdas[0] >= lam_max else [lam_max, *lambdas]

    path: list[dict] = []
    best: dict = {}  # the selected point so far: index, key, weight, bias
    t_start = time.perf_counter()

    def record(lam, w, b, ce, info, secs, refine):
        nec = nec_of(w)
        row = {
            "lam": lam,
            "nec": nec,
            "objective": ce + _penalty(w, lam, alpha),
            "train_loss": ce,
            "train_top1": _top1_t(prob, w, b),
            **info,
            "seconds": round(secs, 4),
            "refine": refine,
        }
        if x_val is not None:
            row["val_top1"] = _top1(w, b, x_val, y_val)
        path.append(row)
        if nec <= target_nec:
            # without validation data: the smallest lam within budget; with: best val top-1
            key = (row["val_top1"], -lam) if x_val is not None else (-lam,)
            if not best or key > best["key"]:
                best.update(index=len(path) - 1, key=key, weight=w, bias=b)
        if progress:
            val = f" val_top1 {row['val_top1']:.4f}" if x_val is not None else ""
            print(
                f"[elastic-net] {'refine' if refine else f'{len(path) - 1:3d}'} lam {lam:.3e} "
                f"nec {nec:7.3f} loss {ce:.4f} iters {info['n_iter']}{val} "
                f"({time.perf_counter() - t_start:.1f}s)",
                file=sys.stderr,
            )
        return nec

    feasible = None  # (lam, w, b, g) of the last point with nec <= target
    over = None  # lam of the first point with nec > target
    for lam in grid:
        t0 = time.perf_counter()
        w_n, b_n, g_n, ce_n, t, info = _solve_at(prob, lam, w, b, g, t, tol_abs, max_iter)
        nec = record(lam, w_n, b_n, ce_n, info, time.perf_counter() - t0, False)
        if nec > target_nec:
            over = lam
            break
        w, b, g = w_n, b_n, g_n
        feasible = (lam, w, b, g)

    if over is not None and feasible is not None:
        for _ in range(refine_steps):
            lam_f, w_f, b_f, g_f = feasible
            lam = math.sqrt(lam_f * over)
            t0 = time.perf_counter()
            w_n, b_n, g_n, ce_n, t, info = _solve_at(prob, lam, w_f, b_f, g_f, t, tol_abs, max_iter)
            nec = record(lam, w_n, b_n, ce_n, info, time.perf_counter() - t0, True)
            if nec > target_nec:
                over = lam
            else:
                feasible = (lam, w_n, b_n, g_n)

    # best is never empty: the path starts at lam >= lam_max, where W = 0 (nec 0)
    w_raw, b_raw = _fold(best["weight"], best["bias"], mean, std)
    sel = best["index"]
    return ElasticNetPath(
        weight=w_raw.to(out_device),
        bias=b_raw.to(out_device),
        lam=path[sel]["lam"],
        nec=path[sel]["nec"],
        path=path,
        lam_max=lam_max,
        selected=sel,
        mean=None if mean is None else mean.to(out_device),
        std=None if std is None else std.to(out_device),
    )
