"""Joint vs sequential coupling of the CBM heads, on validation and test top-1.

SPEC §2: `--coupling`'s default is whichever coupling scores better on validation in our
benchmark. This script is that benchmark: for every (cache, loss, coupling, seed) it runs the
real `fit-head` (`heads.cbm.train.run(FitHeadConfig(...))`, fit-head's defaults except the
overrides below) and records val and test top-1. Within a seed both couplings share the
validation split, the initialisation and the shuffling, so the comparison is paired.

Caches:
- cifar10: the CIFAR-10-like synthetic cache of `benchmarks/fit_head_speed.py` (50,000 train /
  10,000 test, E = 768, |D| = 143, |C| = 10, seed 0; built with its `make_cache`), fit-head
  defaults;
- planted: `cache.planted.make_planted_cache` as in `benchmarks/planted_heads.py` (8 classes,
  40 concepts, noise 2.0, seed 0; 600 train / 200 test) with its settings (batch 64,
  <= 30 epochs, patience 10).

    python benchmarks/coupling_sweep.py                    # seed 0: ~5 min on 2 idle cores
    python benchmarks/coupling_sweep.py --seeds 0 1 2      # paired over 3 seeds (~3x longer)
    python benchmarks/coupling_sweep.py --caches planted --losses sparse
    python benchmarks/coupling_sweep.py --quick            # smoke run (CI): planted, sparse

Writes benchmarks/results/coupling_sweep.json (`--out`; `--quick`: coupling_sweep.quick.json),
whole, with a `provenance` block (benchmarks/_provenance.py): every run (with its full
hyper-parameters) and, per (cache, loss), the mean over seeds per coupling and which coupling
is better on validation. The code state (commit, uncommitted changes under heads/) is recorded:
the numbers belong to that training code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _provenance import Run, add_common_args, parse_args  # noqa: E402
from fit_head_speed import SIZES, make_cache  # noqa: E402

from clipcbm.cache.planted import N_TEST, N_TRAIN, make_planted_cache  # noqa: E402
from clipcbm.heads.cbm.config import FitHeadConfig  # noqa: E402
from clipcbm.heads.cbm.train import run  # noqa: E402

PLANTED = dict(n_classes=8, n_concepts=40, noise=2.0, seed=0)  # = planted_heads.py's defaults
OVERRIDES = {  # FitHeadConfig fields set per cache (the rest are fit-head's defaults)
    "cifar10": {},
    "planted": {"batch_size": 64, "epochs": 30, "patience": 10},  # = planted_heads.py's
}
COUPLINGS = ("joint", "sequential")
# --quick: the planted cache, one loss, one seed (two fits, both couplings): seconds
QUICK = {"caches": ["planted"], "losses": ["sparse"], "seeds": [0], "epochs": 2}


def build_cache(name: str, tmp: Path) -> tuple[Path, dict]:
    if name == "cifar10":
        path = tmp / "cifar10-like.zarr"
        secs = make_cache(path, SIZES["cifar10"], seed=0)
        return path, {**SIZES["cifar10"], "seed": 0, "builder": "fit_head_speed.make_cache",
                      "write_seconds": round(secs, 1)}  # fmt: skip
    path = make_planted_cache(tmp / "planted.zarr", **PLANTED)
    return path, {**PLANTED, "n_train": N_TRAIN, "n_test": N_TEST,
                  "builder": "cache.planted.make_planted_cache"}  # fmt: skip


def fit(cache: Path, cache_name: str, loss: str, coupling: str, seed: int, tmp: Path,
        epochs: int | None = None) -> dict:  # fmt: skip
    over = {**OVERRIDES[cache_name], **({} if epochs is None else {"epochs": epochs})}
    cfg = FitHeadConfig(
        cache=cache, out=tmp / f"{cache_name}-{loss}-{coupling}-{seed}", loss=loss,
        coupling=coupling, seed=seed, progress=False, overwrite=True, **over,
    )  # fmt: skip
    t0 = time.perf_counter()
    r = run(cfg)
    hist = r.history
    info = json.loads((r.out_dir / "config.json").read_text()).get("fit", {})
    return {
        "cache": cache_name,
        "loss": loss,
        "coupling": coupling,
        "seed": seed,
        "heldout_top1": r.metrics["heldout"]["top1"],  # CV where val is in the fit
        "test_top1": r.metrics["test"]["top1"],
        "zero_shot_val_top1": r.metrics["zero_shot"]["val"]["top1"],
        "zero_shot_test_top1": r.metrics["zero_shot"]["test"]["top1"],
        "history_records": len(hist),
        "last_step_or_epoch": (hist[-1].get("step", hist[-1].get("epoch")) if hist else None),
        # where the kept (best on validation) weights come from; 0 = the start (with the
        # zero-shot final-layer start: the zero-shot classifier itself)
        "best_step": info.get("best_step"),
        "best_val_top1": info.get("best_val_top1"),
        "seconds": round(time.perf_counter() - t0, 2),
        "hyperparameters": {k: v for k, v in cfg.to_json().items() if k not in ("cache", "out")},
    }


def summarize(runs: list[dict]) -> dict:
    """cache -> loss -> {joint: {...}, sequential: {...}, better_on_val, val_diff_mean}."""
    out: dict = {}
    keys = sorted({(r["cache"], r["loss"]) for r in runs}, key=str)
    for cache, loss in keys:
        row = {}
        by = {c: [r for r in runs if (r["cache"], r["loss"], r["coupling"]) == (cache, loss, c)]
              for c in COUPLINGS}  # fmt: skip
        for c, rs in by.items():
            if not rs:
                continue
            rs = sorted(rs, key=lambda r: r["seed"])
            row[c] = {
                "seeds": [r["seed"] for r in rs],
                "heldout_top1": [round(r["heldout_top1"], 4) for r in rs],
                "test_top1": [round(r["test_top1"], 4) for r in rs],
                "heldout_top1_mean": round(float(np.mean([r["heldout_top1"] for r in rs])), 4),
                "test_top1_mean": round(float(np.mean([r["test_top1"] for r in rs])), 4),
            }
        if all(c in row for c in COUPLINGS):
            j, s = row["joint"], row["sequential"]
            diffs = [a - b for a, b in zip(j["heldout_top1"], s["heldout_top1"], strict=True)]
            d = float(np.mean(diffs))
            row["val_diff_mean_joint_minus_sequential"] = round(d, 4)
            row["joint_better_on_val_seeds"] = sum(x > 0 for x in diffs)
            row["sequential_better_on_val_seeds"] = sum(x < 0 for x in diffs)
            row["better_on_val"] = "joint" if d > 0 else ("sequential" if d < 0 else "tie")
        out.setdefault(cache, {})[loss] = row
    return out


def code_state() -> dict:
    """Commit, files changed under heads/ cache/ core/, and the sha256 of the training code
    (read when the sweep starts: the numbers belong to that code)."""

    def git(*args):
        try:
            done = subprocess.run(["git", "--no-optional-locks", *args], cwd=ROOT,
                                  capture_output=True, text=True)  # fmt: skip
            return done.stdout.strip() if done.returncode == 0 else None
        except OSError:
            return None

    dirty = git("status", "--porcelain", "--", "heads", "cache", "core") or ""
    files = sorted((ROOT / "heads" / "cbm").glob("*.py"))
    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted": dirty.splitlines(),
        "heads_cbm_sha256": {
            f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in files
        },
    }


def print_table(summary: dict) -> None:
    print(f"\n{'cache':<8} {'loss':<12} {'joint val':>10} {'seq val':>10} {'joint test':>11} "
          f"{'seq test':>10}  better on val")  # fmt: skip
    for cache, losses in summary.items():
        for loss, row in losses.items():
            j, s = row.get("joint", {}), row.get("sequential", {})
            cells = [j.get("heldout_top1_mean"), s.get("heldout_top1_mean"),
                     j.get("test_top1_mean"), s.get("test_top1_mean")]  # fmt: skip
            txt = [f"{c:.4f}" if c is not None else "-" for c in cells]
            print(f"{cache:<8} {loss:<12} {txt[0]:>10} {txt[1]:>10} {txt[2]:>11} {txt[3]:>10}  "
                  f"{row.get('better_on_val', '-')}")  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caches", nargs="+", default=["cifar10", "planted"],
                    choices=["cifar10", "planted"])  # fmt: skip
    ap.add_argument("--losses", nargs="+", default=["l1", "contrastive", "sparse"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="fit seeds (paired across couplings); 0 1 2 takes 3x as long")  # fmt: skip
    add_common_args(ap, ROOT / "benchmarks/results/coupling_sweep.json", quick=QUICK)
    ap.add_argument("--epochs", type=int, default=None,
                    help="cap on epochs of every fit (default: each cache's settings)")  # fmt: skip
    ap.add_argument("--code-note", default=None, help="recorded with the code state (e.g. which "
                    "snapshot of the code this copy runs on)")  # fmt: skip
    args = parse_args(ap, argv)
    run = Run(args.quick)
    t_all = time.perf_counter()
    code = {**code_state(), "note": args.code_note}
    runs, caches = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.caches:
            path, caches[name] = build_cache(name, tmp)
            for loss in args.losses:
                for seed in args.seeds:
                    for coupling in COUPLINGS:
                        r = fit(path, name, loss, coupling, seed, tmp, args.epochs)
                        runs.append(r)
                        print(f"{name:<8} {loss:<12} {coupling:<10} seed {seed}: held-out "
                              f"{r['heldout_top1']:.4f} test {r['test_top1']:.4f} "
                              f"({r['seconds']:.1f} s)", flush=True)  # fmt: skip
    summary = summarize(runs)
    result = {
        "benchmark": "coupling_sweep",
        "argv": sys.argv[1:] if argv is None else list(argv),
        "caches": caches,
        "fit_overrides": OVERRIDES,
        "epochs_cap": args.epochs,
        "summary": summary,
        "runs": runs,
        "code": code,
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "load_avg_1min": os.getloadavg()[0]},
        "seconds": round(time.perf_counter() - t_all, 1),
    }  # fmt: skip
    run.write(args.out, result)
    print_table(summary)
    print(f"\nwrote {args.out} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
