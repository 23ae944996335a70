"""GPU line of the SAE benchmark: fit-sae's training loop at ImageNet size on one GPU.

Synthetic unit rows (1.28M x 768, the generator of benchmarks/sae.py, made on the device) are
held in GPU memory in fp16 exactly as fit-sae holds an in-memory split, and
`heads.sae.train.train_sae` (the loop behind `fit-sae`) runs one epoch per setting: expansion
8 with k in {16, 32, 64}, and expansion 32 at k = 32; bf16 selection (the `auto` choice on a
GPU). The held-out FVU of each model on 50k further rows is reported beside samples/s. No
cache is written or read, so the GPU machine needs torch only (no zarr).

    python benchmarks/gpu_sae.py [--device cuda] [--rows 1281167] [--out FILE] [--quick]
    GPU_SUITE: python benchmarks/gpu_sae.py --out "$RESULTS/sae_gpu.json"

`--device cpu --quick` is the dry run (tiny sizes: 20,000 + 2,000 rows x 64; CI runs it). The
JSON is written whole by one run with a `provenance` block (benchmarks/_provenance.py);
`--quick` writes sae_gpu.quick.json unless --out is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _provenance import Run, add_common_args, parse_args  # noqa: E402

from clipcbm.heads.sae.config import FitSaeConfig  # noqa: E402
from clipcbm.heads.sae.data import TrainRows  # noqa: E402
from clipcbm.heads.sae.metrics import evaluate_sae  # noqa: E402
from clipcbm.heads.sae.train import resolve_select_dtype, train_sae  # noqa: E402


def synthetic(n: int, e: int, device, seed: int = 0, n_atoms: int = 8192, active: int = 16):
    """The rows of benchmarks/sae.py's synthetic cache, generated on `device` in fp16."""
    g = torch.Generator(device=device).manual_seed(seed)
    mu = torch.randn(e, generator=g, device=device)
    mu /= mu.norm()
    atoms = torch.randn(n_atoms, e, generator=g, device=device)
    atoms /= atoms.norm(dim=1, keepdim=True)
    out = torch.empty(n, e, dtype=torch.float16, device=device)
    for s in range(0, n, 16384):
        m = min(16384, n - s)
        idx = torch.randint(0, n_atoms, (m, active), generator=g, device=device)
        w = torch.empty(m, active, 1, device=device).exponential_(generator=g) * 0.35
        x = mu + (atoms[idx] * w).sum(1) + 0.01 * torch.randn(m, e, generator=g, device=device)
        out[s : s + m] = (x / x.norm(dim=1, keepdim=True)).half()
    return out


def rows_of(x: torch.Tensor) -> TrainRows:
    xf = x.float()
    mean = xf.mean(0)
    total = float((xf - mean).pow(2).sum(1).mean())
    del xf
    return TrainRows(cache=None, split="train", keep=np.ones(len(x), bool), mean=mean,
                     total_var=total, block_rows=65536, buffer_blocks=4, device=x.device,
                     rows=x)  # fmt: skip


def one(rows, held, expansion: int, k: int, device, epochs: float) -> dict:
    cfg = FitSaeConfig(cache="synthetic", expansion=expansion, k=k, epochs=epochs,
                       max_steps=10**7, progress=False, device=str(device))  # fmt: skip
    dtype = resolve_select_dtype("auto", device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    trained = train_sae(rows, cfg, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    ev = evaluate_sae(trained.sae, held.float().cpu().numpy(), device=device)
    s = trained.schedule
    return {"expansion": expansion, "k": k, "steps": s.steps, "batch": s.batch,
            "seconds": seconds, "samples_per_s": s.steps * s.batch / seconds,
            "select_dtype": str(dtype), "fvu": ev.metrics["fvu"],
            "cosine": ev.metrics["cosine"], "dead_fraction": ev.metrics["dead_fraction"],
            "dead_train": trained.dead_train}  # fmt: skip


QUICK = {"rows": 20_000, "held": 2_000, "dim": 64}  # --quick: seconds on a CPU


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rows", type=int, default=1_281_167)
    ap.add_argument("--held", type=int, default=50_000, help="held-out rows for the FVU")
    ap.add_argument("--dim", type=int, default=768, help="embedding width E")
    ap.add_argument("--epochs", type=float, default=1.0)
    add_common_args(ap, ROOT / "benchmarks/results/gpu/sae_gpu.json", quick=QUICK)
    args = parse_args(ap, argv)
    run = Run(args.quick)
    device = torch.device(args.device)
    n, n_held, e = args.rows, args.held, args.dim
    x = synthetic(n + n_held, e, device)
    rows, held = rows_of(x[:n]), x[n:]
    settings = [(8, 16), (8, 32), (8, 64), (32, 32)]
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "rows": n, "embed_dim": e, "epochs": args.epochs,
           "runs": []}  # fmt: skip
    for expansion, k in settings:
        r = one(rows, held, expansion, k, device, args.epochs)
        res["runs"].append(r)
        print(
            f"x{expansion} k{k}: {r['samples_per_s']:,.0f} samples/s, {r['seconds']:.1f} s, "
            f"FVU {r['fvu']:.4f}, dead {100 * r['dead_fraction']:.2f}%",
            flush=True,
        )
    run.write(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
