"""Elastic-net sparse final layer: our FISTA path vs glm-saga vs scikit-learn SAGA.

Label-free CBM / VLG-CBM fit the final layer by elastic net (alpha = 0.99) with GLM-SAGA
(PyPI `glm-saga`, MadryLab) and report accuracy at NEC = 5. This script measures, on
synthetic concept activations with a sparse ground truth (correlated features from a few
shared factors, k true concepts per class, labels sampled from the softmax):

- ours, path: `heads.cbm.elastic_net.fit_elastic_net(target_nec=5)` from lam_max down,
  stopping at NEC 5; the wall time is the time to reach NEC <= 5, including the path.
- ours, one lam (tol 1e-4): the same solver at the selected lam* alone, cold (from W = 0),
  tighter tol, up to 20,000 iterations (the reference objective).
- glm-saga at lam*: `glm_saga.elasticnet.train_saga` with Label-free CBM's settings (step
  0.1, batch 256, zero init, tol 1e-4), one epoch per call, evaluated after every epoch, until
  its own convergence test fires or the epoch budget is spent.
- sklearn at lam*: `LogisticRegression(solver="saga", l1_ratio=alpha, C=1/(lam* N))`, the
  same objective (sklearn: C * sum CE + penalty), tol 1e-4, `max_iter` epochs; at the
  realistic size also fitted (from scratch, same seed) at smaller epoch budgets, for its
  time-to-NEC curve (`sklearn_budgets`).
- ours, one lam cold (tol 1e-3): the cold single-lam solve at the path's own settings (the
  product defaults: tol 1e-3, max_iter 2000), i.e. what the warm path saves (appended last,
  so the older rows keep their index).

Budgets (epochs; one epoch of either SAGA costs O(N |C| |D|)): small 2,000 for both (enough
for both to stop by their own test: glm-saga needs ~400); realistic 36 for both (3x the
previous 12; convergence there would take hundreds of epochs, an hour or more per solver on
this shared 2-core box, so the realistic size reports the time-to-NEC curve instead:
glm-saga's NEC / objective after every epoch, sklearn's after 4, 12 and 36 epochs).

Convergence, two fields per solver row:
- `converged`: what the solver itself reports (ours: every FISTA solve met its tol; glm-saga:
  its step-norm test fired before the epoch budget ran out; sklearn: no ConvergenceWarning).
- `converged_measured`: one criterion for all, measured on the returned layer in float64:
  max |gradient mapping| at step 1/L (L = ||[X, 1]||_2^2 / (2N), the CE gradient's Lipschitz
  bound; bias included) <= `MEASURED_TOL` * alpha * lam_max, the product's own stopping scale
  (`grad_map_rel` is the measured max |gradient mapping| / (alpha * lam_max)).

All objectives are evaluated by one function on the standardised train features:
mean CE + lam (alpha |W|_1 + (1 - alpha)/2 |W|_2^2). NEC counts exact non-zeros (glm-saga's
|w| > 1e-5 count is also given). Wall and CPU seconds are both recorded: this machine may be
shared (the load average is in the provenance); CPU seconds are the steadier measure there.
Threads: 1 by default for every solver (sklearn's SAGA is single-threaded; torch, for ours and
glm-saga, is set to the same count; `--threads N` sets torch and threadpoolctl to N).

    python benchmarks/elastic_net_solvers.py                    # small + realistic sizes
    python benchmarks/elastic_net_solvers.py --sizes small --saga-epochs 300
    python benchmarks/elastic_net_solvers.py --quick            # tiny smoke run

Writes benchmarks/results/elastic_net_solvers.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _provenance import Run, quick_out  # noqa: E402

from clipcbm.heads.cbm.elastic_net import elastic_net_objective, fit_elastic_net  # noqa: E402

# n_train, n_test, |D|, |C|, true concepts per class, shared factors, logit scale
SIZES = {
    "small": dict(n_train=2_000, n_test=2_000, d=100, c=10, k_true=3, factors=5, scale=3.0),
    "realistic": dict(
        n_train=10_000, n_test=5_000, d=1_000, c=100, k_true=5, factors=20, scale=3.0
    ),
    "quick": dict(n_train=300, n_test=300, d=20, c=4, k_true=2, factors=3, scale=3.0),
}
ALPHA = 0.99
TARGET_NEC = 5.0
# per size: glm-saga epochs and sklearn max_iter (an epoch of either costs O(N |C| |D|))
BUDGETS = {"small": (2000, 2000), "realistic": (36, 36), "quick": (20, 20)}
# sklearn's time-to-NEC curve: extra fits from scratch at these epoch budgets (< max_iter)
SKLEARN_LADDER = {"realistic": (4, 12)}
MEASURED_TOL = 1e-3  # converged_measured: max |gradient mapping| <= this * alpha * lam_max
DEFAULT_OUT = ROOT / "benchmarks/results/elastic_net_solvers.json"


def make_problem(n_train, n_test, d, c, k_true, factors, scale, seed=0):
    """Concept-activation-like features (a shared low-rank part + noise, offset) and labels
    sampled from softmax(scale * standardised x W*^T) with k_true non-zeros per class."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    a = torch.randn(factors, d, generator=g) * 0.5
    x = torch.randn(n, factors, generator=g) @ a + torch.randn(n, d, generator=g) + 2.0
    w = torch.zeros(c, d)
    for ci in range(c):
        j = torch.randperm(d, generator=g)[:k_true]
        sign = torch.sign(torch.randn(k_true, generator=g))
        w[ci, j] = (torch.rand(k_true, generator=g) + 0.5) * sign
    z = scale * ((x - x.mean(0)) / x.std(0)) @ w.T
    gumbel = -torch.log(-torch.log(torch.rand(n, c, generator=g).clamp_min(1e-20)))
    y = (z + gumbel).argmax(1)
    bayes = float((z.argmax(1) == y).double().mean())
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], bayes


def _top1(w, b, x, y) -> float:
    return float(((x @ w.T + b).argmax(1) == y).double().mean())


def _nec(w) -> float:
    return float((w != 0).sum(1).double().mean())


class Checker:
    """The measured convergence criterion, the same for every solver (float64)."""

    def __init__(self, xs, y, lam_max, seed=0, iters=50):
        self.x = xs.double()
        self.y = y
        self.n = xs.shape[0]
        self.lam_max = lam_max
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(xs.shape[1] + 1, generator=g, dtype=torch.float64)
        v /= v.norm()
        est = 1.0
        for _ in range(iters):  # power iteration on [X, 1]^T [X, 1]
            u = self.x @ v[:-1] + v[-1]
            w = torch.cat([self.x.T @ u, u.sum().reshape(1)])
            est = float(w.norm())
            v = w / est
        self.lipschitz = 0.5 * est / self.n

    def grad_map_rel(self, w, b, lam) -> float:
        """max |G_{1/L}(W, b)| / (alpha lam_max); G = (theta - prox(theta - grad / L)) * L."""
        w, b = w.double(), b.double()
        p = torch.softmax(self.x @ w.T + b, dim=1)
        p[torch.arange(self.n), self.y] -= 1.0
        gw, gb = p.T @ self.x / self.n, p.mean(0)
        t = 1.0 / self.lipschitz
        u = w - t * gw
        prox = torch.sign(u) * (u.abs() - t * ALPHA * lam).clamp_min(0.0)
        prox /= 1.0 + t * lam * (1.0 - ALPHA)
        gmap = max(float(((w - prox) / t).abs().max()), float(gb.abs().max()))
        return gmap / (ALPHA * self.lam_max)


def _check(row: dict, checker: Checker, w, b, lam) -> dict:
    rel = checker.grad_map_rel(w, b, lam)
    row["grad_map_rel"] = rel
    row["converged_measured"] = rel <= MEASURED_TOL
    return row


class _Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def run_ours(xtr, ytr, xs, xs_te, yte, mean, std, tol_ref):
    rows = []
    with _Clock() as clk:
        r = fit_elastic_net(xtr, ytr, n_classes=int(ytr.max()) + 1, alpha=ALPHA, target_nec=5.0)
    lam = r.lam
    checker = Checker(xs, ytr, r.lam_max)
    w_s, b_s = r.weight * std, r.bias + r.weight @ mean  # the layer on standardised x
    rows.append(
        {
            "solver": "ours path -> NEC<=5",
            "lam": lam,
            "seconds": clk.wall,
            "cpu_seconds": clk.cpu,
            "nec": r.nec,
            "objective": elastic_net_objective(w_s, b_s, xs, ytr, lam, ALPHA),
            "test_top1": _top1(w_s, b_s, xs_te, yte),
            "work": f"{len(r.path)} lams, {sum(p['n_iter'] for p in r.path)} FISTA iters",
            "converged": all(p["converged"] for p in r.path),
            "reached_nec_target": r.nec <= TARGET_NEC,
            "seconds_to_nec_target": clk.wall,
            "cpu_seconds_to_nec_target": clk.cpu,
        }
    )
    _check(rows[-1], checker, w_s, b_s, lam)

    def one_lam(label: str, **solver) -> dict:
        """Our solver at the given lam alone (no path), checked like every row."""
        with _Clock() as clk:
            r = fit_elastic_net(
                xtr, ytr, n_classes=int(ytr.max()) + 1, alpha=ALPHA, lambdas=[lam],
                target_nec=math.inf, refine_steps=0, **solver,
            )  # fmt: skip
        last = r.path[-1]
        w, b = r.weight * std, r.bias + r.weight @ mean
        row = {
            "solver": label,
            "lam": lam,
            "seconds": clk.wall,
            "cpu_seconds": clk.cpu,
            "nec": r.nec,
            "objective": elastic_net_objective(w, b, xs, ytr, lam, ALPHA),
            "test_top1": _top1(w, b, xs_te, yte),
            "work": f"{last['n_iter']} FISTA iters, {last['n_kkt_rounds']} KKT rounds",
            "converged": last["converged"],
            "reached_nec_target": r.nec <= TARGET_NEC,
            "seconds_to_nec_target": None,  # not a path: lam* is given
        }
        _check(row, checker, w, b, lam)
        return row

    rows.append(one_lam(f"ours one lam (tol {tol_ref:g})", tol=tol_ref, max_iter=20_000))
    # cold single lam at the product defaults (tol 1e-3, max_iter 2000): appended last
    cold = one_lam("ours one lam cold (tol 0.001)")
    return lam, rows, cold, checker


def glm_saga_missing() -> str | None:
    """Why glm-saga cannot run here (it is not a dependency of the project), or None."""
    try:
        from glm_saga.elasticnet import IndexedTensorDataset, train_saga  # noqa: F401
    except Exception as e:  # noqa: BLE001 - report whatever stops it
        return f"{type(e).__name__}: {e}"
    return None


def run_glm_saga(xs, ytr, xs_te, yte, lam, epochs, checker, lr=0.1, batch=256, seed=0):
    """Label-free CBM's call at one lam, one epoch per train_saga call (state carried)."""
    try:
        from glm_saga.elasticnet import IndexedTensorDataset, train_saga
    except Exception as e:  # noqa: BLE001 - report whatever stops it
        return {"solver": "glm-saga", "error": f"{type(e).__name__}: {e}"}, []
    from torch.utils.data import DataLoader

    n, d = xs.shape
    c = int(ytr.max()) + 1
    torch.manual_seed(seed)
    loader = DataLoader(IndexedTensorDataset(xs, ytr), batch_size=batch, shuffle=True)
    linear = torch.nn.Linear(d, c)
    linear.weight.data.zero_()
    linear.bias.data.zero_()
    state, traj = None, []
    wall = cpu = 0.0
    to_target = cpu_target = None
    converged = False
    for epoch in range(1, epochs + 1):
        notes: list[str] = []
        with _Clock() as clk, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # implicit softmax dim (deprecated)
            state = train_saga(
                linear, loader, lr, 1, lam, ALPHA, group=False, state=state, n_ex=n,
                n_classes=c, tol=1e-4, logger=notes.append,
            )  # fmt: skip
        wall += clk.wall
        cpu += clk.cpu
        with torch.no_grad():
            w, b = linear.weight.detach().clone(), linear.bias.detach().clone()
        row = {
            "epoch": epoch,
            "seconds": wall,
            "cpu_seconds": cpu,
            "nec": _nec(w),
            "nec_abs_gt_1e-5": float((w.abs() > 1e-5).sum(1).double().mean()),
            "objective": elastic_net_objective(w, b, xs, ytr, lam, ALPHA),
            "test_top1": _top1(w, b, xs_te, yte),
        }
        traj.append(row)
        if to_target is None and row["nec"] <= TARGET_NEC:
            to_target, cpu_target = wall, cpu
        if not notes:  # train_saga logs "did not converge" only when it ran the whole epoch
            converged = True
            break
    last = traj[-1]
    row = {
        "solver": "glm-saga (LF-CBM settings)",
        "lam": lam,
        "seconds": wall,
        "cpu_seconds": cpu,
        "nec": last["nec"],
        "nec_abs_gt_1e-5": last["nec_abs_gt_1e-5"],
        "objective": last["objective"],
        "test_top1": last["test_top1"],
        "work": f"{last['epoch']} epochs (lr {lr}, batch {batch})",
        "converged": converged,
        "reached_nec_target": last["nec"] <= TARGET_NEC,
        "seconds_to_nec_target": to_target,
        "cpu_seconds_to_nec_target": cpu_target,
        "epoch_budget": epochs,
    }
    return _check(row, checker, w, b, lam), traj


def run_sklearn(xs, ytr, xs_te, yte, lam, max_iter, checker):
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
    except Exception as e:  # noqa: BLE001
        return {"solver": "sklearn saga", "error": f"{type(e).__name__}: {e}"}
    n = xs.shape[0]
    model = LogisticRegression(
        C=1.0 / (lam * n), l1_ratio=ALPHA, solver="saga", max_iter=max_iter, tol=1e-4,
        random_state=0,
    )  # fmt: skip
    with _Clock() as clk, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(xs.numpy(), ytr.numpy())
    w = torch.from_numpy(model.coef_).float()
    b = torch.from_numpy(model.intercept_).float()
    n_warn = sum(issubclass(c.category, ConvergenceWarning) for c in caught)
    for c in caught:  # anything else is shown as usual
        if not issubclass(c.category, ConvergenceWarning):
            warnings.showwarning(c.message, c.category, c.filename, c.lineno)
    reached = _nec(w) <= TARGET_NEC
    row = {
        "solver": "sklearn saga",
        "lam": lam,
        "seconds": clk.wall,
        "cpu_seconds": clk.cpu,
        "nec": _nec(w),
        "objective": elastic_net_objective(w, b, xs, ytr, lam, ALPHA),
        "test_top1": _top1(w, b, xs_te, yte),
        "work": f"{int(np.max(model.n_iter_))} epochs (max_iter {max_iter})",
        "converged": n_warn == 0,
        "convergence_warnings": n_warn,
        "epochs": int(np.max(model.n_iter_)),
        "max_iter": max_iter,
        "reached_nec_target": reached,
        "seconds_to_nec_target": clk.wall if reached else None,
        "cpu_seconds_to_nec_target": clk.cpu if reached else None,
    }
    return _check(row, checker, w, b, lam)


def bench_size(name, spec, saga_epochs, sk_iter, tol_ref, skip, ladder=()):
    xtr, ytr, xte, yte, bayes = make_problem(**spec)
    mean, std = xtr.mean(0), xtr.std(0)
    xs, xs_te = (xtr - mean) / std, (xte - mean) / std
    print(f"[{name}] {spec} bayes top-1 {bayes:.4f}", flush=True)
    lam, rows, cold, checker = run_ours(xtr, ytr, xs, xs_te, yte, mean, std, tol_ref)
    print(f"  ours: lam* {lam:.5g}, {rows[0]['seconds']:.1f}s to NEC<=5; cold one lam "
          f"{cold['seconds']:.1f}s (tol 1e-3), {rows[1]['seconds']:.1f}s (tol {tol_ref:g})",
          flush=True)  # fmt: skip
    traj, budgets = [], []
    if "glm-saga" not in skip:
        row, traj = run_glm_saga(xs, ytr, xs_te, yte, lam, saga_epochs, checker)
        rows.append(row)
        print(f"  glm-saga: {row.get('error') or row['work']}", flush=True)
    if "sklearn" not in skip:
        for it in sorted(i for i in ladder if i < sk_iter):
            budgets.append(run_sklearn(xs, ytr, xs_te, yte, lam, it, checker))
            print(f"  sklearn (curve): {budgets[-1].get('error') or budgets[-1]['work']}",
                  flush=True)  # fmt: skip
        rows.append(run_sklearn(xs, ytr, xs_te, yte, lam, sk_iter, checker))
        print(f"  sklearn: {rows[-1].get('error') or rows[-1]['work']}", flush=True)
        if budgets and "error" not in rows[-1]:
            budgets.append({k: v for k, v in rows[-1].items()})
    rows.append(cold)
    scored = [r for r in rows + budgets if "objective" in r]
    best = min(r["objective"] for r in scored)
    for r in rows + budgets:
        r["size"] = name
        if "objective" in r:
            r["objective_gap"] = r["objective"] - best
    for r in traj:
        r["objective_gap"] = r["objective"] - best
    return {"size": name, "bayes_top1": bayes, "lam_star": lam, "lam_max": checker.lam_max,
            "lipschitz": checker.lipschitz, "rows": rows, "glm_saga": traj,
            "sklearn_budgets": budgets}  # fmt: skip


def print_table(sizes):
    cols = ["solver", "seconds", "cpu_seconds", "to_nec5_s", "nec", "objective", "obj_gap"]
    cols += ["test_top1", "conv", "gmap_rel"]
    print(
        f"\n{'size':<10}"
        + "".join(f"{c:>22}" if i == 0 else f"{c:>14}" for i, c in enumerate(cols))
    )
    for s in sizes:
        for r in s["rows"]:
            if "error" in r:
                print(f"{s['size']:<10}{r['solver']:>22}  ERROR {r['error']}")
                continue
            line = f"{s['size']:<10}{r['solver']:>22}"
            to5 = r.get("seconds_to_nec_target")
            if to5 is not None:
                to5 = f"{to5:.1f}"
            else:  # the one-lam reference is given lam*; the others did not get there in budget
                to5 = "n/a" if r["solver"].startswith("ours one") else "never"
            line += f"{r['seconds']:>14.1f}{r['cpu_seconds']:>14.1f}{to5:>14}{r['nec']:>14.2f}"
            line += f"{r['objective']:>14.6f}{r['objective_gap']:>14.2e}{r['test_top1']:>14.4f}"
            conv = f"{'y' if r['converged'] else 'n'}/{'y' if r['converged_measured'] else 'n'}"
            line += f"{conv:>14}{r['grad_map_rel']:>14.2e}"
            print(line + f"   {r['work']}")
        for r in s.get("sklearn_budgets", []):
            if "error" not in r:
                print(f"{s['size']:<10}{'  sklearn curve':>22}{r['seconds']:>14.1f}"
                      f"{r['cpu_seconds']:>14.1f}{'':>14}{r['nec']:>14.2f}{r['objective']:>14.6f}"
                      f"{r['objective_gap']:>14.2e}{r['test_top1']:>14.4f}"
                      f"   {r['work']}")  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="small,realistic")
    ap.add_argument("--saga-epochs", type=int, default=None, help="glm-saga epoch budget")
    ap.add_argument("--sklearn-max-iter", type=int, default=None)
    ap.add_argument("--tol-ref", type=float, default=1e-4, help="tol of the one-lam reference")
    ap.add_argument("--skip", default="",
                    help="comma list: glm-saga,sklearn (a full run without glm-saga installed "
                         "refuses unless it is skipped)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1,
                    help="torch + threadpoolctl threads, every solver (default 1)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (not a result)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes = "quick"
    out = args.out if args.out is not None else quick_out(DEFAULT_OUT, args.quick)
    skip = [s for s in args.skip.split(",") if s]
    missing = None if "glm-saga" in skip else glm_saga_missing()
    if missing and not args.quick:
        # a full run without glm-saga would write a table with an ERROR row for it: refuse
        # before any work instead of publishing a partial comparison
        sys.exit(f"error: glm-saga cannot run here ({missing}). It is not a dependency: "
                 f"`pip install glm-saga` (it needs no torchvision), or pass --skip glm-saga "
                 f"to compare the other solvers only.")  # fmt: skip
    if missing:  # a smoke run is not a result: leave glm-saga out and say so
        print(f"quick run: glm-saga left out ({missing})", flush=True)
        skip.append("glm-saga")
    run = Run(args.quick)
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    sizes = []
    with threadpool_limits(limits=args.threads):
        for name in args.sizes.split(","):
            ep, it = BUDGETS[name]
            ep = args.saga_epochs or ep
            it = args.sklearn_max_iter or it
            ladder = SKLEARN_LADDER.get(name, ())
            sizes.append(bench_size(name, SIZES[name], ep, it, args.tol_ref, skip, ladder))
    try:
        from importlib.metadata import version

        glm_version = version("glm_saga")
    except Exception:  # noqa: BLE001
        glm_version = None
    try:
        import glm_saga

        glm_path = str(Path(glm_saga.__file__).parent)
    except Exception:  # noqa: BLE001
        glm_path = None
    import sklearn

    result = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "cpu_count": os.cpu_count(), "cpu_threads": torch.get_num_threads(),
                    "load_avg_1min_start": load0, "load_avg_1min_end": os.getloadavg()[0],
                    "glm_saga": glm_version, "glm_saga_path": glm_path,
                    "sklearn": sklearn.__version__},
        "setup": {"alpha": ALPHA, "target_nec": TARGET_NEC, "sizes": SIZES, "budgets": BUDGETS,
                  "budgets_are": "(glm-saga epochs, sklearn max_iter epochs)",
                  "sklearn_ladder": SKLEARN_LADDER, "threads": args.threads,
                  "skipped": skip,
                  "measured_tol": MEASURED_TOL,
                  "converged": "the solver's own report (ours: every FISTA solve met tol; "
                               "glm-saga: its step-norm test fired within the budget; sklearn: "
                               "no ConvergenceWarning)",
                  "converged_measured": "max |gradient mapping at step 1/L| (float64, bias "
                                        "included) <= measured_tol * alpha * lam_max; "
                                        "grad_map_rel = that max / (alpha * lam_max)",
                  "objective": "mean CE + lam*(alpha*|W|_1 + (1-alpha)/2*|W|_2^2), "
                               "standardised train features, bias unpenalised"},
        "results": sizes,
    }  # fmt: skip
    run.write(out, result)
    print_table(sizes)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
