"""fit-head speed on synthetic caches of real sizes (issue 3, SPEC §7).

- cifar10-like: 50,000 train / 10,000 test, E = 768, |D| = 143, |C| = 10. A full
  `heads.cbm.train.run` per loss (defaults: <= 20 epochs, early stopping) is timed end to end,
  cache load included. Target: < 60 s per run on a 2-core CPU.
- imagenet-like: 1,281,167 train / 50,000 test, E = 768, |D| = 4,751, |C| = 1,000. Two modes
  (`--imagenet-mode`):
  - `extrapolate` (default): seconds per epoch are measured on a FRACTION of an epoch
    (`--steps` optimizer steps after warm-up, plus a validation forward pass over
    `--eval-rows` rows) and extrapolated linearly to the full epoch (1,153,051 fit rows,
    128,116 val rows); the JSON says so. The only feasible mode on a CPU.
  - `full`: the real `fit-head` (`heads.cbm.train.run`) for `--epochs` whole epochs (no early
    stop); seconds per epoch are its own per-epoch times (train + the validation pass), the
    run's wall time (cache load and final evaluation included) is `seconds`. For a GPU
    (target < 10 s/epoch on an H100).

Devices: `--devices auto` (default) = cpu, plus cuda when torch sees a GPU; or a list
(`--devices cuda`). `--set SIZE.KEY=VALUE` changes a shape (e.g. `--set imagenet.n_train=4096`
for a quick look); the JSON records the shapes used.

Synthetic images: each class is defined by a few planted concepts (unit weighted sum + noise),
so the accuracies are meaningful but are not CLIP numbers. Writes
benchmarks/results/fit_head_speed.json (or `--out`), whole, with a `provenance` block
(benchmarks/_provenance.py), and prints a table. `--quick` (CI smoke run: both sizes shrunk
with `--set`, 2 losses, 3 timed steps) writes fit_head_speed.quick.json unless `--out`.

    python benchmarks/fit_head_speed.py                       # both sizes, CPU (+ GPU if any)
    python benchmarks/fit_head_speed.py --sizes cifar10 --losses sparse,l1
    python benchmarks/fit_head_speed.py --sizes imagenet --devices cuda --imagenet-mode full \
        --imagenet-losses l1,contrastive,sparse --out benchmarks/results/gpu/fit_head.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
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

from clipcbm.cache import open_cache, write_cache  # noqa: E402
from clipcbm.heads.cbm.config import FitHeadConfig  # noqa: E402
from clipcbm.heads.cbm.losses import tau_schedule  # noqa: E402
from clipcbm.heads.cbm.model import ConceptBottleneck  # noqa: E402
from clipcbm.heads.cbm.train import (  # noqa: E402
    StepState,
    flush_denormals,
    make_optimizers,
    run,
    train_step,
)
from clipcbm.heads.eval.evaluate import Scorer, predict  # noqa: E402
from clipcbm.heads.io.data import load_data  # noqa: E402

# n_train, n_test, E, |D|, |C|, planted concepts per class, noise norm (relative to the unit
# signal; E = 768 needs a large one: cifar10-like zero-shot ~0.84 at 10)
SIZES = {
    "cifar10": dict(n_train=50_000, n_test=10_000, e=768, d=143, c=10, per_class=5, noise=10.0),
    "imagenet": dict(
        n_train=1_281_167, n_test=50_000, e=768, d=4_751, c=1_000, per_class=4, noise=6.0
    ),
}
GEN_CHUNK = 16_384  # rows generated at a time (bounds the float32 temporaries)
# --quick: both sizes shrunk (explicit --set values are applied after these), seconds
QUICK = {
    "set": ["cifar10.n_train=1000", "cifar10.n_test=200", "cifar10.e=64", "cifar10.d=30",
            "cifar10.noise=2.0", "imagenet.n_train=2000", "imagenet.n_test=200", "imagenet.e=64",
            "imagenet.d=120", "imagenet.c=20"],
    "losses": "sparse,probe", "steps": 3, "eval_rows": 256,
}  # fmt: skip


def synthetic_arrays(n: int, d_emb, planted, rng, noise: float):
    """(n, E) float32 images of random classes: unit sum of planted concepts + noise."""
    e = d_emb.shape[1]
    labels = rng.integers(0, len(planted), size=n)
    out = np.empty((n, e), dtype=np.float32)
    for s in range(0, n, GEN_CHUNK):
        lab = labels[s : s + GEN_CHUNK]
        w = rng.uniform(0.5, 1.5, size=(len(lab), planted.shape[1])).astype(np.float32)
        sig = np.einsum("nk,nke->ne", w, d_emb[planted[lab]])
        sig /= np.linalg.norm(sig, axis=1, keepdims=True)
        sig += (noise / np.sqrt(e)) * rng.standard_normal(sig.shape, dtype=np.float32)
        out[s : s + GEN_CHUNK] = sig
    return out, labels.astype(np.int64)


def synthetic_arrays_torch(n: int, d_emb, planted, seed: int, noise: float, device: str):
    """`synthetic_arrays` drawn with torch on `device` (same model, another random stream):
    an ImageNet-sized train split in seconds on a GPU instead of a minute of numpy."""
    gen = torch.Generator(device=device).manual_seed(seed)
    d = torch.from_numpy(d_emb).to(device)
    pl = torch.from_numpy(planted).to(device)
    e = d.shape[1]
    labels = torch.randint(0, len(planted), (n,), generator=gen, device=device)
    out = np.empty((n, e), dtype=np.float32)
    for s in range(0, n, 8 * GEN_CHUNK):
        lab = labels[s : s + 8 * GEN_CHUNK]
        w = 0.5 + torch.rand(len(lab), pl.shape[1], generator=gen, device=device)
        sig = torch.einsum("nk,nke->ne", w, d[pl[lab]])
        sig /= sig.norm(dim=1, keepdim=True)
        sig += (noise / e**0.5) * torch.randn(sig.shape, generator=gen, device=device)
        out[s : s + len(lab)] = sig.cpu().numpy()
    return out, labels.cpu().numpy().astype(np.int64)


def make_cache(path: Path, size: dict, seed: int = 0, generator: str = "numpy") -> float:
    """Write a synthetic cache of `size`; returns the seconds it took.

    generator: "numpy" (the published figures' caches) or "torch[:DEVICE]" (fast, other data).
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    d_emb = rng.standard_normal((size["d"], size["e"]), dtype=np.float32)
    d_emb /= np.linalg.norm(d_emb, axis=1, keepdims=True)
    planted = rng.permutation(size["d"])[: size["c"] * size["per_class"]]
    planted = np.resize(planted, (size["c"], size["per_class"]))
    class_emb = d_emb[planted].mean(axis=1)
    splits = {}
    for k, (name, n) in enumerate((("train", size["n_train"]), ("test", size["n_test"]))):
        if generator == "numpy":
            x, y = synthetic_arrays(n, d_emb, planted, rng, size["noise"])
        else:
            dev = generator.partition(":")[2] or "cpu"
            x, y = synthetic_arrays_torch(n, d_emb, planted, seed + 1 + k, size["noise"], dev)
        splits[name] = {"image_emb": x, "labels": y}
    write_cache(
        path,
        splits=splits,
        concepts=[f"concept {j}" for j in range(size["d"])],
        classes=[f"class {m}" for m in range(size["c"])],
        concept_emb=d_emb,
        class_emb=class_emb,
        metadata={"synthetic": "fit_head_speed", "seed": seed, "generator": generator},
    )
    return time.perf_counter() - t0


def bench_full_runs(cache: Path, losses, device: str, tmp: Path) -> list[dict]:
    rows, n_fit = [], n_fit_rows(cache)
    for loss in losses:
        cfg = FitHeadConfig(
            cache=cache, out=tmp / f"head-{loss}-{device}", loss=loss, device=device,
            progress=False, overwrite=True,
        )  # fmt: skip
        r = run(cfg)
        st = run_stats(r, n_fit, cfg.batch_size)
        rows.append(
            {
                "size": "cifar10", "loss": loss, "device": r.device, "mode": "full run",
                "seconds": round(r.seconds, 2), "epochs": st["epochs"], "steps": st["steps"],
                "seconds_per_epoch": st["seconds_per_epoch"],
                "val_top1": round(r.metrics["val"]["top1"], 4),
                "test_top1": round(r.metrics["test"]["top1"], 4),
                "zero_shot_test_top1": round(r.metrics["zero_shot"]["test"]["top1"], 4),
            }
        )  # fmt: skip
        print(f"  cifar10 {loss:<11} {device}: {r.seconds:.1f} s", flush=True)
    return rows


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def bench_epoch_fraction(cache: Path, loss: str, device: str, steps: int, eval_rows: int):
    """Time `steps` optimizer steps and a val forward pass; extrapolate to one epoch."""
    cfg = FitHeadConfig(cache=cache, loss=loss, device=device, progress=False)
    t0 = time.perf_counter()
    with open_cache(cache) as c:
        data = load_data(c, cfg, torch.device(device))
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = ConceptBottleneck(len(data.text.concept_emb), data.n_classes).to(device)
    opts = make_optimizers(model, cfg)
    state = StepState(cfg.lam, 1.0, torch.Generator(device=device).manual_seed(0), False, "paper")
    idx = data.train_idx[torch.randperm(len(data.train_idx))[: (steps + 3) * cfg.batch_size]]
    n_steps_epoch = -(-len(data.train_idx) // cfg.batch_size)
    times = []
    with flush_denormals():  # as in heads.cbm.train.run
        for i in range(steps + 3):  # the first 3 steps are warm-up, not timed
            rows = idx[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            state.tau = tau_schedule(i, n_steps_epoch, cfg.tau_max, cfg.tau_min)
            _sync(device)
            t = time.perf_counter()
            train_step(model, opts, data.train.x[rows], data.train.y[rows], data, cfg, state)
            _sync(device)
            times.append(time.perf_counter() - t)
    step_s = float(np.mean(times[3:]))
    n_eval = min(eval_rows, len(data.val_idx))
    val_x = data.train.x[data.val_idx[:n_eval]]
    _sync(device)
    t = time.perf_counter()
    predict(Scorer("cbm", model, data.text), val_x)
    _sync(device)
    eval_s = (time.perf_counter() - t) * len(data.val_idx) / n_eval
    train_s = step_s * n_steps_epoch
    return {
        "size": "imagenet", "loss": loss, "device": device, "mode": "extrapolated",
        "note": f"timed {steps} steps of batch {cfg.batch_size} (after 3 warm-up steps) and a val "
                f"forward over {n_eval} rows; extrapolated linearly to {n_steps_epoch} steps and "
                f"{len(data.val_idx)} val rows",
        "cache_load_seconds": round(load_s, 2), "seconds_per_step": round(step_s, 4),
        "train_seconds_per_epoch": round(train_s, 1), "val_seconds_per_epoch": round(eval_s, 1),
        "seconds_per_epoch": round(train_s + eval_s, 1),
    }  # fmt: skip


def fit_seconds(history: list[dict]) -> float:
    """Seconds of the fit loop (train steps and its validation checks) from a run's history.

    Per-epoch records (`epoch`, seconds of that epoch) are summed; step records (`step`,
    seconds since the loop began) give the last one.
    """
    timed = [h for h in history if "seconds" in h]
    if not timed:
        return float("nan")
    if "epoch" in timed[-1]:
        return float(sum(h["seconds"] for h in timed))
    return float(timed[-1]["seconds"])


def run_stats(r, n_fit: int, batch: int) -> dict:
    """Epochs, optimizer steps, fit-loop seconds and seconds per epoch of a fit-head result.

    A step schedule may pick its own batch (read from the head's config.json); per-epoch
    histories count their records."""
    if not r.history:  # probe / zs-probe: no epochs
        return {"epochs": None, "steps": None, "fit_seconds": None, "seconds_per_epoch": None}
    fit = json.loads((r.out_dir / "config.json").read_text()).get("fit", {})
    run_batch = (fit.get("schedule") or {}).get("batch", batch)
    steps = max((h.get("step", 0) for h in r.history), default=0)
    epochs = steps / -(-n_fit // run_batch) if steps else float(len(r.history))
    fit_s = fit_seconds(r.history)
    return {"epochs": round(epochs, 3), "steps": steps or None, "fit_seconds": round(fit_s, 3),
            "seconds_per_epoch": round(fit_s / epochs, 3) if epochs else None}  # fmt: skip


def n_fit_rows(cache: Path) -> int:
    """Train rows minus fit-head's default validation hold-out."""
    with open_cache(cache) as c:
        n = len(c.split("train").valid().labels)
    return n - round(FitHeadConfig(cache=cache).val_fraction * n)


def bench_full_epochs(cache: Path, loss: str, device: str, epochs: int, tmp: Path) -> dict:
    """The real fit-head run for exactly `epochs` whole epochs (no early stop)."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    n_fit = n_fit_rows(cache)
    batch = FitHeadConfig(cache=cache).batch_size
    over = {"epochs": epochs, "patience": 10**6}
    if "max_steps" in {f.name for f in dataclasses.fields(FitHeadConfig)}:
        # a step budget: let the epochs cap decide (whatever batch the schedule picks)
        over["max_steps"] = epochs * n_fit
    cfg = FitHeadConfig(cache=cache, out=tmp / f"head-imagenet-{loss}-{device}", loss=loss,
                        device=device, progress=False, overwrite=True, **over)  # fmt: skip
    r = run(cfg)
    st = run_stats(r, n_fit, batch)
    checks = sum("val_top1" in h for h in r.history)
    return {
        "size": "imagenet", "loss": loss, "device": r.device, "mode": "full epoch",
        "note": f"heads.cbm.train.run capped at {epochs} whole epoch(s) of {n_fit} fit rows, "
                "no early stop; seconds_per_epoch = the fit loop's seconds (train steps and its "
                "validation checks) / epochs run; seconds = the whole run (cache load, fit, final "
                "evaluation, head written)",
        "seconds": round(r.seconds, 2), "epochs": st["epochs"], "steps": st["steps"],
        "seconds_per_epoch": st["seconds_per_epoch"], "fit_seconds": st["fit_seconds"],
        "validation_checks": checks,
        "val_top1": round(r.metrics["val"]["top1"], 4),
        "test_top1": round(r.metrics["test"]["top1"], 4),
        "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
    }  # fmt: skip


def parse_devices(spec: str) -> list[str]:
    if spec == "auto":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [d for d in spec.split(",") if d]


def apply_overrides(sizes: dict, sets: list[str]) -> dict:
    """`SIZE.KEY=VALUE` strings applied to a copy of `sizes` (values parsed as numbers)."""
    out = {k: dict(v) for k, v in sizes.items()}
    for item in sets:
        try:
            target, value = item.split("=", 1)
            name, key = target.split(".", 1)
            out[name][key]  # noqa: B018 - a KeyError names an unknown size or key
        except (ValueError, KeyError):
            raise SystemExit(
                f"--set {item!r}: expected SIZE.KEY=VALUE with SIZE in "
                f"{sorted(out)} and KEY in {sorted(out['cifar10'])}"
            ) from None
        out[name][key] = float(value) if key == "noise" else int(value)
    return out


def cache_name(name: str, size: dict, generator: str = "numpy") -> str:
    """`<name>-like.zarr`; a changed shape or generator gets its own name (a --workdir may hold
    the default cache)."""
    changed = [f"{k}{v}" for k, v in size.items() if v != SIZES[name][k]]
    if generator != "numpy":
        changed.append(generator.replace(":", ""))
    return f"{name}-like{''.join('-' + c for c in changed)}.zarr"


def _cell(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if row.get(key) is not None else "-"


def print_table(rows):
    cols = [("size", "<9", "s"), ("loss", "<12", "s"), ("device", "<6", "s"), ("mode", "<13", "s"),
            ("seconds", ">7", ".1f"), ("seconds_per_epoch", ">9", ".2f"), ("epochs", ">6", "g"),
            ("val_top1", ">6", ".3f"), ("test_top1", ">6", ".3f")]  # fmt: skip
    heads = {"seconds": "s/run", "seconds_per_epoch": "s/epoch", "val_top1": "val",
             "test_top1": "test"}  # fmt: skip
    print("\n" + " ".join(format(heads.get(k, k), a) for k, a, _ in cols))
    for r in rows:
        print(" ".join(format(_cell(r, k, f), a) for k, a, f in cols))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="cifar10,imagenet")
    ap.add_argument("--losses", default="l1,contrastive,sparse,probe,zs-probe")
    ap.add_argument("--imagenet-losses", default="sparse")
    ap.add_argument("--imagenet-mode", choices=["extrapolate", "full"], default="extrapolate")
    ap.add_argument("--epochs", type=int, default=1, help="whole epochs (--imagenet-mode full)")
    ap.add_argument("--devices", default="auto", help="auto | comma list (cpu,cuda)")
    ap.add_argument("--set", action="append", default=[], metavar="SIZE.KEY=VALUE",
                    help="change a shape, e.g. imagenet.n_train=4096 (repeatable)")  # fmt: skip
    ap.add_argument("--steps", type=int, default=20, help="timed steps (imagenet-like)")
    ap.add_argument("--eval-rows", type=int, default=16_384, help="timed val rows (imagenet)")
    ap.add_argument(
        "--generator", default="numpy",
        help="synthetic images: numpy (default, the published caches) | torch | torch:cuda "
             "(fast on a GPU; another random stream, so other accuracies)",
    )  # fmt: skip
    ap.add_argument("--workdir", type=Path, default=None, help="where caches go (default: tmp)")
    add_common_args(ap, ROOT / "benchmarks/results/fit_head_speed.json", quick=QUICK)
    args = parse_args(ap, argv)
    run_ = Run(args.quick)
    devices = parse_devices(args.devices)
    sizes = apply_overrides(SIZES, args.set)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fit_head_speed_"))
    rows, setup = [], {}
    try:
        for name in args.sizes.split(","):
            path = work / cache_name(name, sizes[name], args.generator)
            if not path.exists():
                setup[f"{name}_cache_write_seconds"] = round(
                    make_cache(path, sizes[name], generator=args.generator), 1
                )
            for device in devices:
                if name == "cifar10":
                    rows += bench_full_runs(path, args.losses.split(","), device, work)
                    continue
                for loss in args.imagenet_losses.split(","):
                    if args.imagenet_mode == "full":
                        r = bench_full_epochs(path, loss, device, args.epochs, work)
                    else:
                        r = bench_epoch_fraction(path, loss, device, args.steps, args.eval_rows)
                    rows.append(r)
                    print(f"  imagenet {loss} {device}: {r['seconds_per_epoch']} s/epoch",
                          flush=True)  # fmt: skip
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "fit_head_speed",
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "load_avg_1min": os.getloadavg()[0]},
        "sizes": sizes, "setup": setup, "generator": args.generator,
        "imagenet_mode": args.imagenet_mode, "results": rows,
    }  # fmt: skip
    run_.write(args.out, result)
    print_table(rows)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
