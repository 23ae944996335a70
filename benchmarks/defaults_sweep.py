"""Do `fit-head`'s defaults work at every size? A small sweep around them on 1k/10k/50k rows.

For each cache size and CBM loss, the default config and a few one-knob changes around it
(learning rates x0.1 / x10, step budget x0.25 / x4, batch 64 / 1024, fc-init zero / prior) are
fitted; the defaults pass when their held-out top-1 (cross-validated where fit-head refits on
the validation rows: metrics.heldout) is within 1 point of the best of the
sweep. Caches: planted synthetic (cache.planted), 10 classes, |D| = 143, E = 128, noise chosen
so zero-shot is far from perfect. Writes benchmarks/results/defaults_sweep.json (`--out`, alias
`--json`), whole, with a `provenance` block (benchmarks/_provenance.py).

    python benchmarks/defaults_sweep.py [--sizes 1000 10000 50000] [--losses l1 contrastive sparse]
    python benchmarks/defaults_sweep.py --quick    # smoke run (CI): 500 rows, sparse, 2 configs;
                                                   # writes defaults_sweep.quick.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _provenance import Run, add_common_args, parse_args  # noqa: E402

from clipcbm.cache.planted import make_planted_cache  # noqa: E402
from clipcbm.heads.cbm.config import FitHeadConfig  # noqa: E402
from clipcbm.heads.cbm.train import run  # noqa: E402

D = FitHeadConfig.__dataclass_fields__
SWEEP = {
    "default": {},
    "lr x0.1": {"lr_cbl": D["lr_cbl"].default / 10, "lr_fc": D["lr_fc"].default / 10},
    "lr x10": {"lr_cbl": D["lr_cbl"].default * 10, "lr_fc": D["lr_fc"].default * 10},
    "steps x0.25": {"max_steps": D["max_steps"].default // 4},
    "steps x4": {"max_steps": D["max_steps"].default * 4},
    "batch 64": {"batch_size": 64},
    "batch 1024": {"batch_size": 1024},
    "fc-init zero": {"fc_init": "zero"},
    "fc-init prior": {"fc_init": "prior"},
}
# --quick: one small cache, one loss, the default and one neighbour: seconds, not a result
QUICK = {"sizes": [500], "losses": ["sparse"], "configs": ["default", "lr x10"], "n_test": 200}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    ap.add_argument("--losses", nargs="+", default=["l1", "contrastive", "sparse"])
    ap.add_argument("--configs", nargs="+", default=list(SWEEP))
    ap.add_argument("--n-test", type=int, default=2000, help="test rows of every cache")
    add_common_args(ap, ROOT / "benchmarks/results/defaults_sweep.json", quick=QUICK,
                    out_aliases=("--json",))  # fmt: skip
    args = parse_args(ap, argv)
    if "default" not in args.configs:
        ap.error("--configs must include default (the gap is measured from it)")
    run_ = Run(args.quick)
    logging.disable(logging.INFO)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = make_planted_cache(
                Path(tmp) / f"p{n}.zarr", n_train=n, n_test=args.n_test, n_classes=10,
                n_concepts=143, embed_dim=128, concepts_per_class=5, noise=6.0, seed=0,
            )  # fmt: skip
            for loss in args.losses:
                rows = {}
                for name in args.configs:
                    cfg = FitHeadConfig(cache=path, out=Path(tmp) / "h", loss=loss,
                                        overwrite=True, progress=False, **SWEEP[name])  # fmt: skip
                    t0 = time.perf_counter()
                    r = run(cfg)
                    rows[name] = {
                        "heldout_top1": r.metrics["heldout"]["top1"],  # CV where val is in the fit
                        "test_top1": r.metrics["test"]["top1"],
                        "zero_shot_val_top1": r.metrics["zero_shot"]["val"]["top1"],
                        "act_sparsity": r.metrics["test"]["act_sparsity"],
                        "seconds": round(time.perf_counter() - t0, 2),
                    }
                    print(f"n={n:<6} {loss:<12} {name:<14} " + "  ".join(
                        f"{k} {v:.4g}" for k, v in rows[name].items()), flush=True)  # fmt: skip
                best = max(v["heldout_top1"] for v in rows.values())
                gap = best - rows["default"]["heldout_top1"]
                results[f"{n}/{loss}"] = {
                    "rows": n, "loss": loss, "configs": rows, "best_heldout_top1": best,
                    "default_gap_points": round(100 * gap, 2), "within_1_point": gap <= 0.01,
                }  # fmt: skip
                print(f"n={n} {loss}: default is {100 * gap:.2f} points below the best", flush=True)
    out = {
        "benchmark": "defaults_sweep",
        "cache": f"planted: 10 classes, |D|=143, E=128, 5 concepts/class, noise 6.0, "
        f"{args.n_test} test",
        "sweep": {k: SWEEP[k] for k in args.configs},
        "results": results,
        "all_within_1_point": all(v["within_1_point"] for v in results.values()),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    run_.write(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
