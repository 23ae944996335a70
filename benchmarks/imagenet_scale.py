"""Issue 22: every stage-two command at ImageNet size, its peak RSS and seconds, one child each.

A child writes a synthetic cache of ImageNet's shape (default 1,281,167 train + 50,000 test
rows x 768 fp16 in 65,536-row shards, 4,751 concepts, 1,000 classes, every concept linked to
one class; plus a 5,000-row `query` split that knn-eval classifies against the whole train
bank: its memory is the bank's, and 50,000 queries would take ~20 minutes here):
class-structured unit embeddings (each image near its class's centre, each concept near one
class's centre), so the heads have something to learn. Then each command
runs as `python -m clipcbm ...` in its own process, exactly as a user types it, and reports

    peak_rss_gib   ru_maxrss of that child (os.wait4), i.e. its own peak resident memory
    seconds        its wall time
    within_limit   peak_rss_gib <= --limit-gib (16: the issue's bound on this 24 GiB machine)

A watchdog kills a child whose resident memory passes --kill-gib (so a command that would not
fit shows up as `killed` instead of taking the machine down).

`compare` runs the methods in COMPARE_METHODS, the ones no fit-head run covers (its CBM rows
are the fit-head code, measured by those runs; at this size each takes ~10 minutes here).

Budgets. Memory does not depend on how many optimizer steps or solver iterations a command
runs, but its seconds do, and the defaults (2,000 steps, 300 L-BFGS iterations per C over an
11-point C grid, 2,000 FISTA iterations per lambda of an elastic-net path, Label-free CBM's
1,000 projection steps of 50,000 rows) take many hours at this size on a 2-core CPU. So every
command runs with its defaults except the budgets in BUDGET (steps, iterations, a 1-point C
grid, and a 2% validation split instead of 10%, as the 40 validation checks of a run over
128,000 rows would dominate its time), recorded in the JSON; the seconds are those of these
budgets, not of a default run. Everything else that sizes memory -- the rows, |D|, |C|,
chunk sizes, the solver's row cap, the SAE's width and batch -- is at its default.

    python benchmarks/imagenet_scale.py                 # -> benchmarks/results/imagenet_scale.json
    python benchmarks/imagenet_scale.py --quick         # smoke run (CI, seconds)
    python benchmarks/imagenet_scale.py --only fit-head-sparse compare --keep /tmp/in.zarr
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import ROOT, Run, add_common_args, parse_args  # noqa: E402

WRITER = r"""
import json, sys, time, resource
import numpy as np
from clipcbm.cache import CacheWriter, sha256_lines

s = json.loads(sys.argv[1])
n_train, n_test, dim, n_cls, n_con = s["train"], s["test"], s["dim"], s["classes"], s["concepts"]
g = np.random.default_rng(0)
def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
centre = unit(g.standard_normal((n_cls, dim)))
concept_class = np.arange(n_con) % n_cls
concept_emb = unit(centre[concept_class] + 0.8 * g.standard_normal((n_con, dim)) / dim**0.5 * 4)
class_emb = unit(centre + 0.6 * g.standard_normal((n_cls, dim)) / dim**0.5 * 4)
classes = [f"class {i}" for i in range(n_cls)]
concepts = [f"concept {j}" for j in range(n_con)]
splits = {"train": n_train, "test": n_test, "query": s["query"]}
identity = {"source": "imagenet_scale", "splits": splits,
            "concepts_sha256": sha256_lines(concepts), "classes_sha256": sha256_lines(classes)}
meta = {"embed_dim": dim, "logit_scale": 100.0,
        **{k: identity[k] for k in ("concepts_sha256", "classes_sha256")}}
w = CacheWriter(s["path"], identity=identity, metadata=meta, embed_dim=dim,
                split_sizes=identity["splits"], shard_rows=s["shard_rows"])
t0 = time.perf_counter()
w.prepare(overwrite=False)
for k, split in enumerate(splits):
    for shard in w.pending_shards(split):
        r = w.plans[split].rows(shard)
        rg = np.random.default_rng([k, r.start])  # the same rows on any run
        y = rg.integers(0, n_cls, r.stop - r.start)
        x = centre[y] + 1.5 * rg.standard_normal((len(y), dim), dtype=np.float32) / dim**0.5
        w.write_shard(split, shard, image_emb=unit(x).astype(np.float16),
                      norms=np.ones(len(y), np.float32), labels=y,
                      ids=[f"{split}/{i}" for i in range(r.start, r.stop)],
                      ok=np.ones(len(y), bool))
w.write_text(concept_emb=concept_emb, class_emb=class_emb, concepts=concepts, classes=classes,
             templates=["a photo of a {}."],
             concept_classes=[[classes[c]] for c in concept_class])
w.finalize()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "peak_rss_gib": round(peak, 2)}))
"""

# Budgets of the time-bound knobs (see the module docstring); nothing here sizes memory: the
# validation fraction sets how many rows each of the ~40 validation checks scores (in chunks)
# and the solvers' rows are capped by --solver-gib whatever it is.
BUDGET = {"max_steps": 100, "probe_max_iter": 5, "path_max_iter": 3, "sae_steps": 200,
          "val_fraction": 0.02, "compare_max_steps": 20}  # fmt: skip
QUICK_BUDGET = {"max_steps": 20, "probe_max_iter": 3, "path_max_iter": 3, "sae_steps": 20,
                "val_fraction": 0.1, "compare_max_steps": 20}  # fmt: skip
# compare's rows that no fit-head run below covers. Its CBM rows (l1, contrastive, sparse,
# the elastic-net ones, random-concepts) run the same code in the same kind of process as
# the fit-head runs, which measure them; at this size on 2 cores each takes ~10 minutes.
COMPARE_METHODS = ("zero-shot", "cms", "description", "probe", "sklearn-probe", "lf-cbm-scores")


def commands(cache: str, out: Path, b: dict) -> dict[str, list[str]]:
    """name -> argv after `python -m clipcbm`; evaluate and explain read fit-head-sparse."""
    steps = ["--max-steps", str(b["max_steps"])]
    solve = ["--probe-max-iter", str(b["probe_max_iter"]), "--val-fraction", str(b["val_fraction"])]
    common = ["--cache", cache, "--no-progress"]
    head = lambda loss, *extra: ["fit-head", *common, "--loss", loss, *steps, *solve,  # noqa: E731
                                 "--anchor-c-grid", "1", "--out", str(out / f"head-{loss}"),
                                 *extra]  # fmt: skip
    return {
        "fit-head-l1": head("l1"),
        "fit-head-contrastive": head("contrastive"),
        "fit-head-sparse": head("sparse"),
        "fit-head-sparse-elastic-net": [
            *head("sparse", "--final-layer", "elastic-net")[:-2],
            "--final-layer",
            "elastic-net",
            "--path-max-iter",
            str(b["path_max_iter"]),
            "--out",
            str(out / "head-sparse-en"),
        ],  # fmt: skip
        "fit-head-probe": [*head("probe"), "--c-grid", "1"],
        "cms-eval": ["cms-eval", *common, "--out", str(out / "cms")],
        "evaluate": [
            "evaluate",
            *common,
            "--head",
            str(out / "head-sparse"),
            "--out",
            str(out / "eval"),
        ],  # fmt: skip
        "explain": [
            "explain",
            "--cache",
            cache,
            "--head",
            str(out / "head-sparse"),
            "--index",
            "0",
            "--out",
            str(out / "explain.png"),
        ],  # fmt: skip
        "knn-eval": [
            "knn-eval",
            "--cache",
            cache,
            "--query-split",
            "query",
            "--out",
            str(out / "knn.json"),
        ],  # fmt: skip
        "fit-sae": [
            "fit-sae",
            *common,
            "--max-steps",
            str(b["sae_steps"]),
            "--out",
            str(out / "sae"),
        ],  # fmt: skip
        "compare": [
            "compare",
            *common,
            "--max-steps",
            str(b["compare_max_steps"]),
            *solve,
            "--path-max-iter",
            str(b["path_max_iter"]),
            *[a for m in COMPARE_METHODS for a in ("--method", m)],
            "--out",
            str(out / "compare"),
        ],  # fmt: skip
    }


def _rss_bytes(pid: int) -> int:
    """Resident memory of pid and its descendants now (0 when gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next(int(ln.split()[1]) * 1024 for ln in status.splitlines()
                          if ln.startswith("VmRSS:"))  # fmt: skip
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


def run_child(argv: list[str], kill_bytes: int, log_path: Path) -> dict:
    """Run argv; its seconds, peak RSS (wait4), return code, and whether the watchdog killed it."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        killed = threading.Event()

        def watch():
            while proc.poll() is None:
                if _rss_bytes(proc.pid) > kill_bytes:
                    killed.set()
                    proc.kill()
                    return
                time.sleep(0.2)

        threading.Thread(target=watch, daemon=True).start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    out = {"seconds": round(time.perf_counter() - t0, 1),
           "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2), "rc": proc.returncode,
           "killed_by_watchdog": killed.is_set()}  # fmt: skip
    if proc.returncode != 0:
        out["log_tail"] = log_path.read_text()[-1500:]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=1_281_167)
    p.add_argument("--test", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--concepts", type=int, default=4751)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument(
        "--query",
        type=int,
        default=5_000,
        help="rows of a third split, knn-eval's queries against the whole train bank "
        "(memory is the bank's; 50,000 queries take ~20 minutes on 2 cores)",
    )
    p.add_argument("--shard-rows", type=int, default=65_536)
    p.add_argument("--limit-gib", type=float, default=16.0, help="the bound each command must meet")
    p.add_argument("--kill-gib", type=float, default=19.0, help="watchdog: kill a child above it")
    p.add_argument("--only", nargs="*", default=None, help="run only these commands")
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="write the cache here (reused when it is already complete)",
    )
    add_common_args(p, ROOT / "benchmarks/results/imagenet_scale.json",
                    quick={"train": 6_000, "test": 1_000, "query": 300, "dim": 32, "concepts": 120,
                           "classes": 20, "shard_rows": 2048})  # fmt: skip
    args = parse_args(p, argv)
    run = Run(args.quick)
    budget = QUICK_BUDGET if args.quick else BUDGET
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
        tmp = Path(tmp)
        path = args.keep or tmp / "imagenet-shape.zarr"
        spec = {"path": str(path), "train": args.train, "test": args.test, "dim": args.dim,
                "classes": args.classes, "concepts": args.concepts, "query": args.query,
                "shard_rows": args.shard_rows}  # fmt: skip
        if (path / "zarr.json").exists() and args.keep:
            write = {"reused": str(path)}
        else:
            out = subprocess.run([sys.executable, "-c", WRITER, json.dumps(spec)], cwd=ROOT,
                                 capture_output=True, text=True)  # fmt: skip
            if out.returncode != 0:
                raise SystemExit(f"writing the cache failed:\n{out.stderr[-3000:]}")
            write = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"cache: {write}", flush=True)
        cmds = commands(str(path), tmp / "out", budget)
        names = args.only or list(cmds)
        unknown = sorted(set(names) - set(cmds))
        if unknown:
            raise SystemExit(f"unknown --only {unknown}; choose from {list(cmds)}")
        results = {}
        for name in names:
            argv = [sys.executable, "-m", "clipcbm", *cmds[name]]
            r = run_child(argv, int(args.kill_gib * 2**30), tmp / f"{name}.log")
            r["within_limit"] = r["rc"] == 0 and r["peak_rss_gib"] <= args.limit_gib
            r["argv"] = [a.replace(str(tmp), "$TMP") for a in cmds[name]]
            results[name] = r
            print(f"{name:30s} rc {r['rc']:3d}  {r['peak_rss_gib']:6.2f} GiB  "
                  f"{r['seconds']:8.1f} s{'  KILLED' if r['killed_by_watchdog'] else ''}",
                  flush=True)  # fmt: skip
            if r["rc"] != 0:
                print(r["log_tail"], flush=True)
    embed_gib = (args.train + args.test) * args.dim * 2 / 2**30
    result = {
        "rows": {"train": args.train, "test": args.test, "query": args.query}, "dim": args.dim,
        "concepts": args.concepts, "classes": args.classes, "embeddings_fp16_gib":
        round(embed_gib, 2), "limit_gib": args.limit_gib, "budget": budget, "write": write,
        "commands": results,
        "all_within_limit": all(r["within_limit"] for r in results.values()),
        "max_peak_rss_gib": max(r["peak_rss_gib"] for r in results.values()),
    }  # fmt: skip
    print(run.write(args.out, result))


if __name__ == "__main__":
    main()
