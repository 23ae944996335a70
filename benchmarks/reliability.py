"""Issue 13's measurements: what checked reads cost, what `--jpeg-draft` buys, and whether
`embed` survives being killed anywhere.

(a) checked reads: read one split of a synthetic cache with and without sha256 verification
    (`open_cache(verify=...)`), beside the zero-shot matmul that follows (1,000 classes).
(b) `--jpeg-draft`: decode + preprocess of the real ImageNet JPEGs in `../shared/data`
    (`_Decoded`, one process) with and without the draft step.
(c) fault injection: `embed` (tiny CLIP, 48 CIFAR-10 JPEGs, 12 shards, zarr and HDF5) killed
    with SIGKILL at `--kills` random moments, re-run after each kill until complete; every
    finished cache must equal an uninterrupted run array for array.

    python benchmarks/reliability.py                      # all three, JSON to results/
    python benchmarks/reliability.py --rows 200000 --kills 20
    python benchmarks/reliability.py --only concurrent    # -> results/reliability.concurrent.json
    python benchmarks/reliability.py --quick              # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))
from _provenance import Run, quick_out  # noqa: E402

PARTS = ("reads", "jpeg", "faults", "concurrent")


def bench_checked_reads(rows: int, dim: int, tmp: Path) -> dict:
    import torch

    from clipcbm.cache import open_cache, write_cache

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((rows, dim), dtype=np.float32)
    path = write_cache(
        tmp / "reads.zarr",
        splits={"train": {"image_emb": emb, "labels": rng.integers(0, 1000, rows)}},
        concepts=["c"],
        classes=[f"class {i}" for i in range(1000)],
        concept_emb=rng.normal(size=(1, dim)),
        class_emb=rng.normal(size=(1000, dim)),
    )
    out = {"rows": rows, "dim": dim, "bytes": rows * dim * 2}
    for verify in (False, True, False, True):  # twice each: the second is the warm figure
        t0 = time.perf_counter()
        with open_cache(path, verify=verify) as c:
            x = c.split("train").image_emb
            t = c.class_emb()
        out[f"read_{'verified' if verify else 'unverified'}_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    (torch.from_numpy(x) @ torch.from_numpy(t).T).argmax(1)
    out["zero_shot_matmul_s"] = time.perf_counter() - t0
    out["verify_overhead_s"] = out["read_verified_s"] - out["read_unverified_s"]
    out["verify_overhead_fraction_of_read"] = out["verify_overhead_s"] / out["read_unverified_s"]
    return out


def bench_jpeg_draft(n: int, short_side: int | None = None) -> dict:
    """Decode rate with and without the draft step. short_side: re-encode each JPEG (quality
    90) at this short side first — camera-sized photos, where decode is the bottleneck; the
    ImageNet sample itself is ~500x375, below 2x the 224 target, so the draft rarely applies."""
    from PIL import Image

    from clipcbm.pipeline.datasets import build_dataset
    from clipcbm.pipeline.embed import _Decoded
    from clipcbm.pipeline.preprocess import PreprocessSpec

    files = sorted((SHARED / "imagenet_sample").glob("*.JPEG"))[:n]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "test" / "x").mkdir(parents=True, exist_ok=True)
        for f in files:
            if short_side is None:
                os.link(f, root / "test" / "x" / f.name)
                continue
            with Image.open(f) as im:
                w, h = im.size
                k = short_side / min(w, h)
                big = im.convert("RGB").resize((round(w * k), round(h * k)), Image.BICUBIC)
                big.save(root / "test" / "x" / f.name, format="JPEG", quality=90)
        ds = build_dataset("imagefolder", root, "test")
        out = {"images": len(ds), "short_side": short_side or "as published"}
        crops = {}
        for draft in (False, True, False, True):
            dec = _Decoded(ds, PreprocessSpec(jpeg_draft=draft))
            t0 = time.perf_counter()
            crops[draft] = np.stack([dec[i][1] for i in range(len(ds))])
            out[f"{'draft' if draft else 'full'}_img_per_s"] = len(ds) / (time.perf_counter() - t0)
        diff = np.abs(crops[True].astype(int) - crops[False].astype(int))
        out["speedup"] = out["draft_img_per_s"] / out["full_img_per_s"]
        out["mean_abs_diff_grey_levels"] = float(diff.mean())
        out["identical_crops"] = int(
            sum(np.array_equal(a, b) for a, b in zip(*crops.values(), strict=True))
        )
    return out


def _state(path: Path) -> dict:
    from clipcbm.cache import open_cache

    with open_cache(path) as c:
        s = {"fingerprint": c.fingerprint}
        for split in c.splits:
            d = c.split(split)
            s[split] = (d.image_emb.tobytes(), d.labels.tobytes(), tuple(d.ids), d.ok.tobytes())
        s["text"] = (c.concept_emb().tobytes(), c.class_emb().tobytes())
    return s


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _embed_setup(tmp: Path, n_images: int):
    """A tiny CLIP and `n_images` real CIFAR-10 JPEGs (3 in 4 train); returns cmd(out)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny_clip

    model = tmp / "model"
    if not model.is_dir():
        build_tiny_clip(model)
    root = tmp / f"data{n_images}"
    files = sorted((SHARED / "cifar10_test_jpg").rglob("*.jpg"))[:n_images]
    for i, f in enumerate(files):
        split = "train" if i % 4 else "test"
        d = root / split / f.parent.name
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, d / f.name)
    concepts = tmp / "concepts.txt"
    concepts.write_text("wings\nwheels\nfur\nwater\n")

    def cmd(out):
        return [sys.executable, str(ROOT / "cli.py"), "embed", "--dataset", "imagefolder",
                "--root", str(root), "--out", str(out), "--concepts", str(concepts), "--model",
                str(model), "--device", "cpu", "--workers", "0", "--batch-size", "4",
                "--shard-rows", "4", "--chunk-rows", "2", "--no-progress"]  # fmt: skip

    return cmd


def bench_fault_injection(kills: int, tmp: Path, seed: int, n_images: int = 48,
                          formats=("zarr", "hdf5")) -> dict:  # fmt: skip
    cmd, env = _embed_setup(tmp, n_images), ENV
    rng, results = random.Random(seed), []
    for fmt in formats:
        ref = tmp / f"ref.{'zarr' if fmt == 'zarr' else 'h5'}"
        t0 = time.perf_counter()
        subprocess.run(cmd(ref), check=True, env=env, capture_output=True)
        full = time.perf_counter() - t0
        want = _state(ref)
        for k in range(kills // 2):
            out = tmp / f"run{k}.{'zarr' if fmt == 'zarr' else 'h5'}"
            for _ in range(5):  # a moment after the run already ended is drawn again
                at = rng.uniform(0.5, 0.95 * full)  # from start-up to the end of the run
                p = subprocess.Popen(cmd(out), env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
                time.sleep(at)
                killed = p.poll() is None
                if killed:
                    os.kill(p.pid, signal.SIGKILL)
                p.wait()
                if killed:
                    break
                (shutil.rmtree if out.is_dir() else Path.unlink)(out)
            resumes = 0
            while True:  # the user's retry: the same command until it succeeds
                r = subprocess.run(cmd(out), env=env, capture_output=True, text=True)
                resumes += 1
                if r.returncode == 0 or resumes > 3:
                    break
            got = _state(out) if r.returncode == 0 else {}
            diff = sorted(k for k in want if got.get(k) != want[k])
            same = r.returncode == 0 and not diff
            detail = r.stderr.strip().splitlines()[-1] if r.returncode else ", ".join(diff)
            results.append({"format": fmt, "kill_at_s": round(at, 2), "killed": killed,
                            "resumes": resumes, "identical": same, "detail": detail})  # fmt: skip
            print(f"  {fmt} kill at {at:5.2f} s (killed={killed}): identical={same}", flush=True)
            (shutil.rmtree if out.is_dir() else Path.unlink)(out)
    return summarize_faults(results)


def summarize_faults(results: list[dict]) -> dict:
    return {
        "runs": results,
        "killed_by_format": {
            f: sum(r["killed"] for r in results if r["format"] == f) for f in ("zarr", "hdf5")
        },  # fmt: skip
        "kills": sum(r["killed"] for r in results),
        "identical": sum(r["identical"] for r in results),
        "total": len(results),
    }


def _head_cache(tmp: Path, rows: int) -> Path:
    from clipcbm.cache import write_cache

    rng = np.random.default_rng(0)
    e, c, d = 64, 10, 200
    splits = {s: {"image_emb": rng.normal(size=(n, e)), "labels": rng.integers(0, c, n)}
              for s, n in (("train", rows), ("test", rows // 4))}  # fmt: skip
    return write_cache(tmp / "heads.zarr", splits=splits,
                       concepts=[f"concept {i}" for i in range(d)],
                       classes=[f"class {i}" for i in range(c)],
                       concept_emb=rng.normal(size=(d, e)),
                       class_emb=rng.normal(size=(c, e)))  # fmt: skip


def _busy(r: subprocess.CompletedProcess) -> bool:
    return r.returncode == 2 and "another run is writing" in r.stderr


def bench_concurrent(trials: int, tmp: Path, seed: int, n_images: int = 480,
                     head_rows: int = 40_000) -> dict:  # fmt: skip
    """Two runs of one command on one output, the second started a random offset after the first
    (0 .. the run's length; runs long enough that most trials overlap): `embed` (zarr, HDF5)
    and `fit-head`. Every run must end in exactly one of: it wrote (exit 0), it found the same
    work already done (embed: "nothing to do"), or it was refused with exit 2 (another run
    holds the lock; a head is there already).
    A run is LOST when it exited 0 claiming to have written, but what is on disk is not its
    output (two fit-head runs both "wrote", or the finished cache differs from a reference), or
    a run ended in anything else (a traceback, another exit code)."""
    cmd = _embed_setup(tmp, n_images)
    cache = _head_cache(tmp, head_rows)

    def fit(out, s):
        return [sys.executable, str(ROOT / "cli.py"), "fit-head", "--cache", str(cache), "--out",
                str(out), "--loss", "l1", "--device", "cpu", "--no-progress", "--seed",
                str(s)]  # fmt: skip

    refs, full = {}, {}

    def reference(kind):  # one uninterrupted run: the state to compare with, and its length
        if kind not in full:
            t0 = time.perf_counter()
            if kind == "fit-head":
                subprocess.run(fit(tmp / "href", 0), check=True, env=ENV, capture_output=True)
            else:
                ref = tmp / f"cref.{'zarr' if kind == 'zarr' else 'h5'}"
                subprocess.run(cmd(ref), check=True, env=ENV, capture_output=True)
                refs[kind] = _state(ref)
            full[kind] = time.perf_counter() - t0

    rng, runs = random.Random(seed), []
    kinds = ("zarr", "hdf5", "fit-head")
    for t in range(trials):
        kind = kinds[t % 3]
        reference(kind)
        out = tmp / f"race{t}.{ {'zarr': 'zarr', 'hdf5': 'h5'}.get(kind, 'head') }"
        offset = rng.uniform(0, full[kind])
        argv = [fit(out, 0), fit(out, 1)] if kind == "fit-head" else [cmd(out), cmd(out)]
        first = subprocess.Popen(argv[0], env=ENV, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(offset)
        second = subprocess.run(argv[1], env=ENV, capture_output=True, text=True)
        o1, e1 = first.communicate()
        results = [subprocess.CompletedProcess(argv[0], first.returncode, o1, e1), second]
        if kind == "fit-head":
            wrote = [r.returncode == 0 for r in results]
            seed_on_disk = json.loads((out / "config.json").read_text())["seed"]
            refused = [r.returncode == 2 and ("another run is writing" in r.stderr
                                              or "holds a head directory already" in r.stderr)
                       for r in results]  # fmt: skip
            lost = sum(wrote) - (1 if wrote[seed_on_disk] else 0)
            lost += sum(not (w or f) for w, f in zip(wrote, refused, strict=True))
            busy = sum(_busy(r) for r in results)
        else:
            ok = [r.returncode == 0 for r in results]
            same = any(ok) and _state(out) == refs[kind]
            lost = 0 if same else sum(ok)  # a run that said it finished, and the cache is not it
            lost += sum(not (r.returncode == 0 or _busy(r)) for r in results)
            busy = sum(_busy(r) for r in results)
        detail = [r.stderr.strip().splitlines()[-1] if r.returncode and r.stderr.strip() else ""
                  for r in results]  # fmt: skip
        runs.append({"command": kind, "offset_s": round(offset, 2), "exit_codes":
                     [r.returncode for r in results], "busy_refusals": busy, "lost": lost,
                     "detail": detail})  # fmt: skip
        print(f"  {kind:8s} second run at +{offset:5.2f} s: exit {runs[-1]['exit_codes']}, "
              f"lost {lost}", flush=True)  # fmt: skip
    return {"trials": trials, "run_seconds": full, "runs": runs,
            "lost_runs": sum(r["lost"] for r in runs),
            "busy_refusals": sum(r["busy_refusals"] for r in runs),
            "overlapping_trials": sum(r["busy_refusals"] > 0 for r in runs)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--jpegs", type=int, default=300)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=20, help="concurrent-run trials")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON to write (default results/reliability.json; with --only or "
                         "--quick a separate file: one run writes one whole JSON)")  # fmt: skip
    ap.add_argument("--only", choices=PARTS, action="append",
                    help="only these parts (repeatable), written to their own JSON")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a result")
    args = ap.parse_args()
    run = Run(args.quick)
    if args.quick:
        args.rows, args.jpegs, args.kills, args.trials = 2000, 6, 2, 1
    only = set(args.only or PARTS)
    default = ROOT / "benchmarks/results/reliability.json"
    if args.only:
        default = default.with_name(f"reliability.{'-'.join(sorted(only))}.json")
    args.out = args.out or quick_out(default, args.quick)
    result = {"platform": platform.platform(), "cpus": os.cpu_count(), "parts": sorted(only)}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "reads" in only:
            print("(a) checked reads", flush=True)
            result["checked_reads"] = bench_checked_reads(args.rows, args.dim, tmp)
            print(json.dumps(result["checked_reads"], indent=1))
        if "jpeg" in only:
            print("(b) --jpeg-draft", flush=True)
            result["jpeg_draft"] = bench_jpeg_draft(args.jpegs)
            result["jpeg_draft_large"] = bench_jpeg_draft(args.jpegs // 3, short_side=1500)
            print(json.dumps([result["jpeg_draft"], result["jpeg_draft_large"]], indent=1))
        if "faults" in only:
            print("(c) fault injection", flush=True)
            n, formats = (12, ("zarr",)) if args.quick else (48, ("zarr", "hdf5"))
            result["fault_injection"] = bench_fault_injection(args.kills, tmp, args.seed, n,
                                                              formats)  # fmt: skip
            fi = result["fault_injection"]
            print(f"identical after resume: {fi['identical']} / {fi['total']} "
                  f"({fi['kills']} killed)")  # fmt: skip
        if "concurrent" in only:
            print("(d) two runs on one output", flush=True)
            n, rows = (12, 2000) if args.quick else (480, 40_000)
            result["concurrent"] = bench_concurrent(args.trials, tmp, args.seed, n, rows)
            c = result["concurrent"]
            print(f"lost runs: {c['lost_runs']} of {2 * c['trials']} ({c['busy_refusals']} "
                  f"refused as busy, {c['overlapping_trials']} trials overlapped)")  # fmt: skip
    run.write(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
