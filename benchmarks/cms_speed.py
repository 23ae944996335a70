"""CMS speed and peak memory at ImageNet-val scale (issue 3: < 60 s, < 4 GiB on a 2-core CPU).

Synthetic CLIP-like unit embeddings (all rows share a common direction, as CLIP's do, so
column normalisation is meaningful): N images x E, |D| concepts, |C| classes. Three
measurements per normalisation, each in a fresh child process so its peak RSS
(`ru_maxrss`, which counts torch's allocations, unlike tracemalloc) is its own:

- core: `heads.baselines.cms.cms_predict` on in-memory fp16 embeddings (+ zero-shot);
- e2e:  `heads.eval.commands.run_cms_eval`, i.e. `cli.py cms-eval`, on a synthetic cache written
        with `cache.write_cache`: cache read, CMS, zero-shot, 50k-row CSVs, metrics JSON;
- numpy: the plain numpy script a user would write instead (`numpy_script`: plain `zarr` read
        of the same cache, V, T, argmax cos(V_n, T_m) per chunk, zero-shot, the same
        predictions CSV); `numpy_over_e2e` = its seconds / cms-eval's (issue 22: >= 1).

Each run records its wall seconds, CPU seconds, peak RSS (and peak GPU memory with
`--device cuda`) and the CMS and zero-shot top-1 on the synthetic labels; `by_normalize` in the
JSON puts seconds and top-1 side by side per normalisation (the accuracy is part of the result:
a fast normalisation that loses the classes is no win).

    python benchmarks/cms_speed.py                  # writes benchmarks/results/cms_speed.json
    python benchmarks/cms_speed.py --repeats 1      # one run per figure (default: fastest of 3)
    python benchmarks/cms_speed.py --n 5000 --modes core   # quick look
    python benchmarks/cms_speed.py --device cuda --out benchmarks/results/gpu/cms.json
    python benchmarks/cms_speed.py --quick          # smoke run (CI): 2,000 x 64, |D| 200, |C| 20

The JSON (`--out`) is written whole by one run with a `provenance` block
(benchmarks/_provenance.py); `--quick` writes cms_speed.quick.json unless `--out` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _provenance import Run, add_common_args, parse_args  # noqa: E402

# --quick: tiny shapes, one normalisation, every mode once (three children): not a result
QUICK = {"n": 2000, "concepts": 200, "classes": 20, "dim": 64, "chunk": 512,
         "normalize": ["column"], "repeats": 1}  # fmt: skip
MODES = ("core", "e2e", "numpy")


def synthetic(n, n_concepts, n_classes, dim, seed=0):
    """fp16 images (N, E) near their class, concepts and classes (fp32), labels (N,)."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(dim).astype(np.float32)
    common /= np.linalg.norm(common)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    concepts = unit(common + 0.9 * rng.standard_normal((n_concepts, dim), np.float32) / dim**0.5)
    classes = unit(common + 0.9 * rng.standard_normal((n_classes, dim), np.float32) / dim**0.5)
    labels = rng.integers(0, n_classes, n)
    images = np.empty((n, dim), np.float16)
    for s in range(0, n, 8192):  # bounded temporaries
        y = labels[s : s + 8192]
        noise = rng.standard_normal((len(y), dim), np.float32) / dim**0.5
        images[s : s + 8192] = unit(classes[y] + 3.0 * noise)
    return images, concepts, classes, labels


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def numpy_script(cache: str, normalize: str, out_dir: str, chunk: int) -> dict:
    """The plain numpy CMS a user would write against the cache (zarr v3, no clipcbm): the bar
    `cms-eval` has to clear. Same inputs and the same predictions CSV columns as cms-eval
    (CMS and zero-shot predictions, the CMS score, the top-5 terms of cos(V_n, T_pred)).

    V = cos(images, concepts), T = cos(classes, concepts), pred = argmax cos(V_n, T_m) in
    fp32, per chunk of rows; `column` / `zscore` take V's column statistics over all images,
    so for them V is held whole (N x |D| fp32), as `V = (V - V.mean(0)) / V.std(0)` would.
    """
    import pandas as pd
    import zarr

    def unit(x):
        x = np.asarray(x, np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    root = zarr.open_group(cache, mode="r")
    ok = root["test/ok"][:]
    x = root["test/image_emb"][:][ok]  # (N, E) fp16, upcast per chunk below
    labels, ids = root["test/labels"][:][ok], root["test/ids"][:][ok]
    concepts, classes = root["text/concepts"][:], root["text/classes"][:]
    d, c = unit(root["text/concept_emb"][:]), unit(root["text/class_emb"][:])
    t = c @ d.T  # (|C|, |D|)
    v_all = None
    if normalize == "column":
        t = t / t.mean(0)
    elif normalize == "zscore":
        t = (t - t.mean(0)) / t.std(0)
    if normalize in ("column", "zscore"):
        v_all = unit(x) @ d.T  # (N, |D|): the statistics span every image
        if normalize == "column":
            v_all /= v_all.mean(0)
        else:
            v_all -= v_all.mean(0)
            v_all /= v_all.std(0)
    t = unit(t)
    n = len(x)
    pred, zs = np.empty(n, np.int64), np.empty(n, np.int64)
    score = np.empty(n, np.float32)
    top_c, top_t = np.empty((n, 5), np.int64), np.empty((n, 5), np.float32)
    for s in range(0, n, chunk):
        xs = unit(x[s : s + chunk])
        v = xs @ d.T if v_all is None else v_all[s : s + chunk].copy()  # (B, |D|)
        v /= np.maximum(np.sqrt(np.einsum("ij,ij->i", v, v)), 1e-12)[:, None]  # unit rows
        sc = v @ t.T  # (B, |C|) = cos(V_n, T_m)
        p = sc.argmax(1)
        pred[s : s + chunk], score[s : s + chunk] = p, sc[np.arange(len(p)), p]
        zs[s : s + chunk] = (xs @ c.T).argmax(1)
        terms = v * t[p]  # (B, |D|): they sum to the score
        idx = np.argpartition(terms, -5, axis=1)[:, -5:]  # the 5 largest, then in order
        val = np.take_along_axis(terms, idx, 1)
        order = np.argsort(-val, axis=1)
        top_c[s : s + chunk] = np.take_along_axis(idx, order, 1)
        top_t[s : s + chunk] = np.take_along_axis(val, order, 1)
    df = pd.DataFrame({"id": ids, "label": labels, "label_name": classes[labels],
                       "cms_pred": pred, "cms_pred_name": classes[pred], "zs_pred": zs,
                       "zs_pred_name": classes[zs], "cms_score": score})  # fmt: skip
    for r in range(5):
        df[f"concept_{r + 1}"], df[f"term_{r + 1}"] = concepts[top_c[:, r]], top_t[:, r]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    df.to_csv(Path(out_dir) / "predictions_test.csv", index=False)
    return {"cms_top1": float((pred == labels).mean()), "zs_top1": float((zs == labels).mean())}


def worker(args) -> dict:
    """Runs inside the child: one measurement, result as JSON on stdout."""
    if args.mode == "numpy":  # no torch in this child: the script a user would write
        t0, c0 = time.perf_counter(), cpu_seconds()
        top1 = numpy_script(args.cache, args.normalize, args.out_dir, args.chunk)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        return {"mode": "numpy", "normalize": args.normalize, "device": "cpu",
                "seconds": seconds, "cpu_seconds": cpu, "threads": None,
                "load_avg_1min": os.getloadavg()[0], "peak_rss_mib": peak_rss_mib(),
                "gpu_peak_mib": None, **top1}  # fmt: skip
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda:  # CUDA context and cuBLAS start outside the timed region, as in a long-lived process
        torch.ones(8, 8, device=args.device) @ torch.ones(8, 8, device=args.device)
        torch.cuda.synchronize(args.device)
    if args.mode == "e2e":
        from clipcbm.heads.eval.commands import CmsEvalConfig, run_cms_eval

        cfg = CmsEvalConfig(
            cache=Path(args.cache),
            normalize=args.normalize,
            out=Path(args.out_dir),
            chunk_size=args.chunk,
            device=args.device,
            progress=False,
        )
        t0, c0 = time.perf_counter(), cpu_seconds()
        res = run_cms_eval(cfg)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        m = res.metrics["metrics"]
        top1 = {"cms_top1": m["test/cms/top1"], "zs_top1": m["test/zero_shot/top1"]}
    else:
        from clipcbm.heads.baselines.cms import cms_predict, zero_shot_predict

        images, concepts, classes, labels = synthetic(args.n, args.concepts, args.classes, args.dim)
        base = peak_rss_mib()
        t0, c0 = time.perf_counter(), cpu_seconds()
        out = cms_predict(
            images,
            concepts,
            classes,
            normalize=args.normalize,
            chunk_size=args.chunk,
            device=args.device,
        )
        zs, _ = zero_shot_predict(images, classes, chunk_size=args.chunk, device=args.device)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        y = torch.from_numpy(labels)
        top1 = {"cms_top1": float((out.pred == y).float().mean())}
        top1["zs_top1"] = float((zs == y).float().mean())
        top1["rss_before_mib"] = base
    # cpu_seconds (user + sys, all threads) is the work done; wall seconds also count waiting
    # for the cores, and load_avg_1min says how busy the machine was with other processes.
    return {
        "mode": args.mode,
        "normalize": args.normalize,
        "device": args.device,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
        "peak_rss_mib": peak_rss_mib(),
        "gpu_peak_mib": torch.cuda.max_memory_allocated(args.device) / 2**20 if cuda else None,
        **top1,
    }


def child(args, mode, normalize, cache, out_dir) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--normalize", normalize]
    cmd += ["--n", str(args.n), "--concepts", str(args.concepts), "--classes", str(args.classes)]
    cmd += ["--dim", str(args.dim), "--chunk", str(args.chunk), "--threads", str(args.threads)]
    cmd += ["--device", args.device]
    cmd += ["--cache", str(cache), "--out-dir", str(out_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"worker failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_synthetic_cache(args, path: Path) -> float:
    from clipcbm.cache import write_cache

    t0 = time.perf_counter()
    images, concepts, classes, labels = synthetic(args.n, args.concepts, args.classes, args.dim)
    write_cache(
        path,
        splits={"test": {"image_emb": images, "labels": labels}},
        concepts=[f"concept {j}" for j in range(args.concepts)],
        classes=[f"class {m}" for m in range(args.classes)],
        concept_emb=concepts,
        class_emb=classes,
        metadata={"synthetic": "cms_speed"},
    )
    return time.perf_counter() - t0


def summarize(runs: list[dict]) -> dict:
    """normalize -> {"<mode>_seconds", "<mode>_peak_rss_mib", "<mode>_cms_top1", "cms_top1",
    "zs_top1", "numpy_over_e2e", "numpy_over_core"}; cms_top1 / zs_top1 are the e2e run's
    (cms-eval's) when there is one. With repeats, the fastest run of each (normalize, mode) is
    kept (`<mode>_seconds_all`: all); numpy_over_<mode> = numpy_seconds / <mode>_seconds of
    those fastest runs (>= 1: CMS is at least as fast as the plain numpy script)."""
    best: dict[tuple[str, str], dict] = {}
    times: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        key = (r["normalize"], r["mode"])
        times.setdefault(key, []).append(round(r["seconds"], 2))
        if key not in best or r["seconds"] < best[key]["seconds"]:
            best[key] = r
    out: dict[str, dict] = {}
    for (norm, mode), r in best.items():
        row = out.setdefault(norm, {})
        row[f"{mode}_seconds"] = round(r["seconds"], 2)
        row[f"{mode}_cpu_seconds"] = round(r["cpu_seconds"], 2)
        if len(times[(norm, mode)]) > 1:
            row[f"{mode}_seconds_all"] = times[(norm, mode)]
        row[f"{mode}_peak_rss_mib"] = round(r["peak_rss_mib"], 1)
        if r.get("gpu_peak_mib") is not None:
            row[f"{mode}_gpu_peak_mib"] = round(r["gpu_peak_mib"], 1)
        row[f"{mode}_cms_top1"] = round(r["cms_top1"], 4)
        if mode == "e2e" or "cms_top1" not in row:
            row["cms_top1"] = round(r["cms_top1"], 4)
            row["zs_top1"] = round(r["zs_top1"], 4)
    for row in out.values():  # the speed of CMS relative to the plain numpy script: >= 1 wins
        for mode in ("e2e", "core"):
            if f"{mode}_seconds" in row and "numpy_seconds" in row:
                row[f"numpy_over_{mode}"] = round(row["numpy_seconds"] / row[f"{mode}_seconds"], 3)
    return out


def print_table(by_norm: dict) -> None:
    cols = [("core_seconds", "core s"), ("e2e_seconds", "e2e s"), ("numpy_seconds", "numpy s"),
            ("numpy_over_e2e", "numpy / e2e"), ("cms_top1", "CMS top-1"),
            ("zs_top1", "zero-shot top-1")]  # fmt: skip
    print(f"{'normalize':<10}" + "".join(f"{h:>17}" for _, h in cols))
    for norm, row in by_norm.items():
        cells = ["-" if row.get(k) is None else f"{row[k]:.4g}" for k, _ in cols]
        print(f"{norm:<10}" + "".join(f"{c:>17}" for c in cells))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000, help="images")
    p.add_argument("--concepts", type=int, default=4751, help="|D|")
    p.add_argument("--classes", type=int, default=1000, help="|C|")
    p.add_argument("--dim", type=int, default=768, help="embedding width E")
    p.add_argument("--chunk", type=int, default=4096, help="image rows per matmul")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--normalize", nargs="+", default=["none", "column", "zscore"])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (CMS and zero-shot)")
    p.add_argument(
        "--repeats", type=int, default=3,
        help="run each measurement N times (fresh children, interleaved); by_normalize keeps "
             "the fastest",
    )  # fmt: skip
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    add_common_args(p, ROOT / "benchmarks/results/cms_speed.json", quick=QUICK)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="core", help=argparse.SUPPRESS)
    p.add_argument("--cache", default="", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", default="", help=argparse.SUPPRESS)
    args = parse_args(p, argv)
    if args.worker:
        args.normalize = args.normalize[0]
        print(json.dumps(worker(args)))
        return 0
    run = Run(args.quick)
    runs, cache_seconds = [], None
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "synthetic.zarr"
        if {"e2e", "numpy"} & set(args.modes):
            cache_seconds = write_synthetic_cache(args, cache)
        for rep in range(args.repeats):  # interleaved: a busy spell hits every mode alike
            for norm in args.normalize:
                for mode in args.modes:
                    r = child(args, mode, norm, cache, Path(tmp) / f"out-{mode}-{norm}-{rep}")
                    r["repeat"] = rep
                    print(json.dumps(r), flush=True)
                    runs.append(r)
    by_norm = summarize(runs)
    ours = [m for m in args.modes if m != "numpy"]  # the targets are cms-eval's / CMS's
    worst_s = max((row[f"{m}_seconds"] for row in by_norm.values() for m in ours), default=0)
    worst_mib = max((r["peak_rss_mib"] for r in runs if r["mode"] != "numpy"), default=0)
    result = {
        "benchmark": "cms_speed",
        "shape": {"n": args.n, "concepts": args.concepts, "classes": args.classes, "dim": args.dim},
        "chunk": args.chunk,
        "repeats": args.repeats,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "device": args.device,
        "synthetic_cache_write_seconds": cache_seconds,
        "by_normalize": by_norm,
        "runs": runs,
        "targets": {"seconds": 60, "peak_rss_mib": 4096},
        "pass": worst_s < 60 and worst_mib < 4096,
    }
    run.write(args.out, result)
    print_table(by_norm)
    verdict = "PASS" if result["pass"] else "FAIL"
    print(f"worst: {worst_s:.1f} s, peak RSS {worst_mib:.0f} MiB -> {verdict}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
