"""What does a sparse bottleneck cost? The default sparse head at several TopK sizes.

For each cache, `fit-head --loss sparse` with its defaults except `--topk k`, k a fraction of
|D| (0 = dense), against zero-shot on the same test split. This is the measurement behind the
default TopK of `--loss sparse` (heads.cbm.config.AUTO_TOPK_FRACTION). Caches: the CIFAR-10
and CUB description caches of benchmarks/description_proxy.py (built or reused here through
its `build_proxy_cache`, so they are always the label-disjoint, overlap-free ones; skipped when
the shared data is absent) and the planted cache. fit-head runs with its overlap check on
(never --allow-overlap). Writes benchmarks/results/sparsity_tradeoff.json and a PNG beside it.

    python benchmarks/sparsity_tradeoff.py [--fractions 0.02 0.05 0.1 0.2 0.5 0] [--out PATH]
        [--data ../shared/data] [--quick]

`--quick`: a smoke run in seconds (3 CIFAR-10 classes and a tiny planted cache in a temporary
directory, TopK 10 % and dense, 20 steps), written to sparsity_tradeoff.quick.json (+ .png)
unless --out is given. `--json` is an alias of `--out`.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import description_proxy as dp  # noqa: E402
from _provenance import Run, quick_out  # noqa: E402

from clipcbm.cache import open_cache  # noqa: E402
from clipcbm.cache.planted import make_planted_cache  # noqa: E402
from clipcbm.heads.cbm.config import FitHeadConfig  # noqa: E402
from clipcbm.heads.cbm.train import run  # noqa: E402
from clipcbm.heads.eval.plots import new_figure, save_figure  # noqa: E402

DATASETS = ("cifar10", "cub")  # -> "<ds>-desc" caches of description_proxy.py
PLANTED = {"n_classes": 8, "n_concepts": 40, "noise": 2.0, "seed": 0}
QUICK = {"fractions": [0.1, 0], "max_steps": 20, "datasets": ("cifar10",),
         "planted": {"n_train": 96, "n_test": 48, "n_classes": 4, "n_concepts": 12,
                     "noise": 2.0, "seed": 0}}  # fmt: skip


def caches(work: Path, data: Path, quick: bool) -> tuple[dict[str, Path], dict[str, str]]:
    """name -> cache path (description caches built or reused, planted written) and name ->
    why a cache was skipped."""
    out, skipped = {}, {}
    have_data = (data / "concept_sets").is_dir()
    for ds in QUICK["datasets"] if quick else DATASETS:
        if not have_data:
            skipped[f"{ds}-desc"] = f"shared data not found at {data}"
            continue
        path = (work if quick else dp.PROXY_DIR) / f"{ds}-desc.zarr"
        limit = {k: dp.QUICK[k] for k in ("classes", "concepts")} if quick else None
        out[f"{ds}-desc"] = dp.build_proxy_cache(ds, path, seed=0, data=data, limit=limit)
    out["planted"] = make_planted_cache(work / "planted.zarr",
                                        **(QUICK["planted"] if quick else PLANTED))  # fmt: skip
    return out, skipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=None,
                    help="TopK sizes as fractions of |D| (0 = dense); default 0.02 0.05 0.1 "
                         "0.2 0.5 0 (--quick: 0.1 0)")  # fmt: skip
    ap.add_argument("--out", "--json", dest="out", type=Path, default=None,
                    help="default: benchmarks/results/sparsity_tradeoff.json (--quick: "
                         "sparsity_tradeoff.quick.json); the PNG goes beside it")  # fmt: skip
    ap.add_argument("--data", type=Path, default=dp.DATA)
    ap.add_argument("--quick", action="store_true", help="smoke run in seconds; not a result")
    args = ap.parse_args()
    prov = Run(args.quick)
    out_path = args.out or quick_out(ROOT / "benchmarks/results/sparsity_tradeoff.json", args.quick)
    fractions = args.fractions or (QUICK["fractions"] if args.quick else
                                   [0.02, 0.05, 0.1, 0.2, 0.5, 0])  # fmt: skip
    extra = {"max_steps": QUICK["max_steps"]} if args.quick else {}
    logging.disable(logging.INFO)
    t_all = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths, skipped = caches(Path(tmp), args.data, args.quick)
        for name, why in skipped.items():
            print(f"{name}: skipped ({why})")
        for name, path in paths.items():
            rows = []
            with open_cache(path) as c:
                n_d = len(c.concepts)
                shape = {"classes": len(c.classes), "train_rows": int(c.split_attrs("train")["n"]),
                         "test_rows": int(c.split_attrs("test")["n"]),
                         "train_test_shared_rows": (c.metadata.get("overlap") or {})
                         .get("test|train")}  # fmt: skip
            for frac in fractions:
                k = 0 if frac == 0 else max(1, round(frac * n_d))
                cfg = FitHeadConfig(cache=path, out=Path(tmp) / "h", loss="sparse", topk=k,
                                    overwrite=True, progress=False, **extra)  # fmt: skip
                t0 = time.perf_counter()
                r = run(cfg)
                rows.append({
                    "fraction": frac, "topk": k, "test_top1": r.metrics["test"]["top1"],
                    "heldout_top1": r.metrics["heldout"]["top1"],  # CV where val is in the fit
                    "act_sparsity": r.metrics["test"]["act_sparsity"],
                    "zero_shot_test_top1": r.metrics["zero_shot"]["test"]["top1"],
                    "seconds": round(time.perf_counter() - t0, 2),
                })  # fmt: skip
                print(
                    f"{name:<14} k={k:<5} "
                    + "  ".join(f"{a} {b:.4g}" for a, b in rows[-1].items() if a != "fraction"),
                    flush=True,
                )
            results[name] = {"n_concepts": n_d, **shape, "rows": rows}
    fig, ax = new_figure((6, 4))
    for name, r in results.items():
        xs = [row["act_sparsity"] for row in r["rows"]]
        ax.plot(xs, [100 * row["test_top1"] for row in r["rows"]], "o-", label=name)
        ax.axhline(100 * r["rows"][0]["zero_shot_test_top1"], linestyle="--", linewidth=0.8,
                   color=ax.lines[-1].get_color())  # fmt: skip
    ax.set_xlabel("activation sparsity (fraction of concepts inactive per image)")
    ax.set_ylabel("test top-1 % (dashed: zero-shot)")
    ax.legend(fontsize=8)
    ax.set_title("sparse head: accuracy against bottleneck sparsity", fontsize=10)
    png = save_figure(fig, out_path.with_suffix(".png"))
    out = {
        "benchmark": "sparsity_tradeoff",
        "results": results,
        "skipped": skipped,
        "settings": {
            "fractions": fractions,
            "fit_head": {"loss": "sparse", **extra, "other flags": "defaults (overlap check on)"},
            "planted": QUICK["planted"] if args.quick else PLANTED,
            "description_caches": "benchmarks/description_proxy.py build_proxy_cache, "
            f"builder_version {dp.BUILDER_VERSION}" + (" (quick subset)" if args.quick else ""),
        },  # fmt: skip
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "total_seconds": round(time.perf_counter() - t_all, 2),
    }
    prov.write(out_path, out)
    print(f"wrote {out_path} and {png}")


if __name__ == "__main__":
    main()
