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


def bench_checked_reads(rows: int, dim: int, tmp: Path) -> dict:
    import torch

    from cache import open_cache, write_cache

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

    from pipeline.datasets import build_dataset
    from pipeline.embed import _Decoded
    from pipeline.preprocess import PreprocessSpec

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
    from cache import open_cache

    with open_cache(path) as c:
        s = {"fingerprint": c.fingerprint}
        for split in c.splits:
            d = c.split(split)
            s[split] = (d.image_emb.tobytes(), d.labels.tobytes(), tuple(d.ids), d.ok.tobytes())
        s["text"] = (c.concept_emb().tobytes(), c.class_emb().tobytes())
    return s


def bench_fault_injection(kills: int, tmp: Path, seed: int) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny_clip

    model = build_tiny_clip(tmp / "model")
    root = tmp / "data"
    files = sorted((SHARED / "cifar10_test_jpg").rglob("*.jpg"))[:48]
    for i, f in enumerate(files):
        split = "train" if i % 4 else "test"
        d = root / split / f.parent.name
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, d / f.name)
    concepts = tmp / "concepts.txt"
    concepts.write_text("wings\nwheels\nfur\nwater\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def cmd(out):
        return [sys.executable, str(ROOT / "cli.py"), "embed", "--dataset", "imagefolder",
                "--root", str(root), "--out", str(out), "--concepts", str(concepts), "--model",
                str(model), "--device", "cpu", "--workers", "0", "--batch-size", "4",
                "--shard-rows", "4", "--chunk-rows", "2", "--no-progress"]  # fmt: skip

    rng, results = random.Random(seed), []
    for fmt in ("zarr", "hdf5"):
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--jpegs", type=int, default=300)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/reliability.json")
    ap.add_argument("--only", choices=("reads", "jpeg", "faults"), action="append",
                    help="only these parts (repeatable; the JSON keeps the rest)")  # fmt: skip
    args = ap.parse_args()
    only = set(args.only or ("reads", "jpeg", "faults"))
    result = json.loads(args.out.read_text()) if args.only and args.out.is_file() else {}
    result.update({"platform": platform.platform(), "cpus": os.cpu_count()})
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
            result["fault_injection"] = bench_fault_injection(args.kills, tmp, args.seed)
            fi = result["fault_injection"]
            print(f"identical after resume: {fi['identical']} / {fi['total']} "
                  f"({fi['kills']} killed)")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
