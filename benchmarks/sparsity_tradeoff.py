"""What does a sparse bottleneck cost? The default sparse head at several TopK sizes.

For each cache, `fit-head --loss sparse` with its defaults except `--topk k`, k a fraction of
|D| (0 = dense), against zero-shot on the same test split. This is the measurement behind the
default TopK of `--loss sparse` (heads.cbm.config.AUTO_TOPK_FRACTION). Caches: the CIFAR-10
and CUB description caches of benchmarks/description_proxy.py (run it first) and the planted
cache. Writes benchmarks/results/sparsity_tradeoff.json and a PNG beside it.

    python benchmarks/sparsity_tradeoff.py [--fractions 0.02 0.05 0.1 0.2 0.5 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cache import open_cache  # noqa: E402
from cache.planted import make_planted_cache  # noqa: E402
from heads.cbm.config import FitHeadConfig  # noqa: E402
from heads.cbm.train import run  # noqa: E402
from heads.eval.plots import new_figure, save_figure  # noqa: E402

CACHES = {
    "cifar10-desc": ROOT / "runs/proxy/cifar10-desc.zarr",
    "cub-desc": ROOT / "runs/proxy/cub-desc.zarr",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.5, 0])
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/sparsity_tradeoff.json")
    args = ap.parse_args()
    logging.disable(logging.INFO)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        caches = dict(CACHES)
        caches["planted"] = make_planted_cache(Path(tmp) / "planted.zarr", n_classes=8,
                                               n_concepts=40, noise=2.0, seed=0)  # fmt: skip
        for name, path in caches.items():
            if not Path(path).exists():
                print(f"{name}: {path} missing (run benchmarks/description_proxy.py); skipped")
                continue
            rows = []
            with open_cache(path) as c:
                n_d = len(c.concepts)
            for frac in args.fractions:
                k = 0 if frac == 0 else max(1, round(frac * n_d))
                cfg = FitHeadConfig(cache=path, out=Path(tmp) / "h", loss="sparse", topk=k,
                                    overwrite=True, progress=False)  # fmt: skip
                t0 = time.perf_counter()
                r = run(cfg)
                rows.append({
                    "fraction": frac, "topk": k, "test_top1": r.metrics["test"]["top1"],
                    "val_top1": r.metrics["val"]["top1"],
                    "act_sparsity": r.metrics["test"]["act_sparsity"],
                    "zero_shot_test_top1": r.metrics["zero_shot"]["test"]["top1"],
                    "seconds": round(time.perf_counter() - t0, 2),
                })  # fmt: skip
                print(
                    f"{name:<14} k={k:<5} "
                    + "  ".join(f"{a} {b:.4g}" for a, b in rows[-1].items() if a != "fraction"),
                    flush=True,
                )
            results[name] = {"n_concepts": n_d, "rows": rows}
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
    png = save_figure(fig, args.json.with_suffix(".png"))
    out = {"benchmark": "sparsity_tradeoff", "results": results,
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json} and {png}")


if __name__ == "__main__":
    main()
