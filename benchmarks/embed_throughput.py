"""Stage-one throughput: (a) decode + preprocess with N workers on real JPEGs, (b) model forward
for an architecture built from config (random weights cost the same FLOPs), (c) end to end
through `pipeline.embed.run`. Prints a table and writes JSON (`--out`).

(c) is `EmbedResult.images_per_s` of one `embed` run over `--images` images (it starts after
the model load, so it still holds the DataLoader start and, with `--compile`, the compilation).
With `--e2e-small N` a second, smaller run over N images is made first and the steady-state
rate (`end_to_end_marginal_img_per_s`) = extra images / extra wall seconds between the two
runs, which cancels every fixed cost (model load, workers' start, dynamo tracing).
The JSON is written whole by one run with a `provenance` block (benchmarks/_provenance.py).

`--compile` compiles the vision tower (`torch.compile`, as `embed --compile`) in (b) and (c);
(b)'s warm-up then holds the compilation (`model_warmup_seconds`). The JPEGs are cycled (hard
links) when `--images` exceeds the distinct files; decoding each link is real work.

    python benchmarks/embed_throughput.py --arch vit-l-14 --device cuda --dtype fp16   # the target
    python benchmarks/embed_throughput.py --arch vit-l-14 --device cuda --dtype fp16 --compile \
        --images 4096 --e2e-small 1024 --model-dir /tmp/vitl14 --out /tmp/embed.json
    python benchmarks/embed_throughput.py --arch tiny --device cpu                     # CPU smoke
    python benchmarks/embed_throughput.py --quick      # CI smoke: tiny arch, 16 + 8 images, seconds
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _provenance import Run, add_common_args, parse_args  # noqa: E402

from clipcbm.pipeline.embed import EmbedConfig, _collate, _Decoded, run  # noqa: E402
from clipcbm.pipeline.encoder import DTYPES, ClipEncoder  # noqa: E402
from clipcbm.pipeline.preprocess import PreprocessSpec, normalize_batch  # noqa: E402

ARCHS = {  # vision tower shapes; text tower kept small (it runs once per cache, not per image)
    "vit-l-14": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=768,
    ),
    "vit-b-16": dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
        projection_dim=512,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=224,
        patch_size=16,
        projection_dim=64,
    ),
}
# --quick: the tiny arch on 16 JPEGs (+ a run of 8 for the marginal rate): seconds, not a result
QUICK = {"arch": "tiny", "images": 16, "e2e_small": 8, "batch": 8, "iters": 2, "workers": 1}


def build_model_dir(arch: str, out: Path) -> Path:
    """A CLIP of the given vision shape, random init, saved like a hub checkpoint.

    A directory holding a finished build of the same arch (marker file) is reused as is.
    """
    marker = out / ".embed_throughput_arch"
    if marker.exists() and marker.read_text() == arch:
        return out
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_tiny_clip  # the byte-level tokenizer writer
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    build_tiny_clip(out)  # tokenizer + small model, then replace the model with `arch`
    a = dict(ARCHS[arch])
    proj = a.pop("projection_dim")
    text = CLIPConfig.from_pretrained(out).text_config.to_dict()
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=a, projection_dim=proj))
    model.save_pretrained(out)
    CLIPImageProcessorPil().save_pretrained(out)  # 224 shortest side, 224 crop, bicubic
    marker.write_text(arch)
    return out


def sample_jpegs(data: Path) -> list[Path]:
    files = sorted((data / "imagenet_sample").glob("*.JPEG"))
    if not files:
        raise SystemExit(f"no JPEGs under {data}/imagenet_sample: pass --data")
    return files


def image_folder(data: Path, n: int, tmp: Path, name: str = "images") -> Path:
    """imagefolder layout of n real JPEGs (ImageNet sample, cycled) via hard links."""
    files = sample_jpegs(data)
    root = tmp / name
    (root / "test" / "all").mkdir(parents=True)
    for i in range(n):
        dst = root / "test" / "all" / f"{i:06d}.jpg"
        try:
            os.link(files[i % len(files)], dst)
        except OSError:
            shutil.copy(files[i % len(files)], dst)
    return root


def bench_decode(root: Path, workers: int, batch: int) -> float:
    from torch.utils.data import DataLoader

    from clipcbm.pipeline.datasets import build_dataset

    ds = build_dataset("imagefolder", root, "test")
    loader = DataLoader(
        _Decoded(ds, PreprocessSpec()),
        batch_size=batch,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=4 if workers else None,
    )
    t0, n = time.perf_counter(), 0
    for idx, *_ in loader:
        n += len(idx)
    return n / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(
    model_dir: Path, device: str, dtype: str, batch: int, iters: int, compile: bool = False
) -> tuple[float, float]:
    """(images/s over `iters` timed forwards, seconds of the 2 warm-up forwards)."""
    enc = ClipEncoder.load(str(model_dir), device=device, dtype=dtype, compile=compile)
    imgs = torch.randint(0, 255, (batch, 224, 224, 3), dtype=torch.uint8, device=enc.device)
    spec = PreprocessSpec()
    t0 = time.perf_counter()
    for _ in range(2):  # warm-up (cuDNN/SDPA kernel selection; the compilation with --compile)
        enc.encode_images(normalize_batch(imgs, spec, enc.dtype))
    _sync(enc.device)
    warmup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(iters):
        emb, _ = enc.encode_images(normalize_batch(imgs, spec, enc.dtype))
    emb.cpu()
    return batch * iters / (time.perf_counter() - t0), warmup


def bench_e2e(root: Path, model_dir: Path, out: Path, device: str, args, workers: int):
    """One `pipeline.embed.run` over the imagefolder `root`; (EmbedResult, wall s, cache bytes)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    concepts = out.parent / "concepts.txt"
    concepts.write_text("a dog\na cat\n")
    cfg = EmbedConfig(
        dataset="imagefolder",
        root=root,
        out=out,
        concepts=concepts,
        model=str(model_dir),
        splits=("test",),
        device=device,
        dtype=args.dtype,
        batch_size=args.batch,
        workers=workers,
        compile=args.compile,
        progress=False,
    )
    t0 = time.perf_counter()
    res = run(cfg)
    wall = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return res, wall, size


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(ARCHS), default="vit-l-14")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    p.add_argument("--images", type=int, default=2000, help="images for (a) and (c)")
    p.add_argument(
        "--e2e-small", type=int, default=0,
        help="also run (c) on this many images first; reports the marginal (steady) rate",
    )  # fmt: skip
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--iters", type=int, default=10, help="forward batches for (b)")
    p.add_argument("--workers", type=int, default=-1)
    p.add_argument("--compile", action="store_true", help="torch.compile the vision tower")
    p.add_argument(
        "--compile-backend", default="inductor",
        help="torch.compile backend for --compile (inductor = torch's default; eager or "
             "aot_eager trace without code generation: a quick check of the --compile path)",
    )  # fmt: skip
    p.add_argument("--skip-decode", action="store_true", help="skip (a)")
    p.add_argument(
        "--model-dir", type=Path, default=None,
        help="build the random-weight model here (reused when it holds the same arch)",
    )  # fmt: skip
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data")
    add_common_args(p, ROOT / "benchmarks/results/embed_throughput.json", quick=QUICK)
    args = parse_args(p, argv)
    run_ = Run(args.quick)
    if not 0 <= args.e2e_small < args.images:
        p.error("--e2e-small must be in [0, --images)")
    workers = args.workers if args.workers >= 0 else max(1, (os.cpu_count() or 1) - 1)
    device = (
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    distinct = len(sample_jpegs(args.data))
    if args.compile and args.compile_backend != "inductor":
        # ClipEncoder.load calls torch.compile(vision_model): give it the backend asked for
        torch.compile = functools.partial(torch.compile, backend=args.compile_backend)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = image_folder(args.data, args.images, tmp)
        t0 = time.perf_counter()
        model_dir = build_model_dir(args.arch, args.model_dir or tmp / "model")
        build_s = time.perf_counter() - t0
        decode = None if args.skip_decode else bench_decode(root, workers, 64)
        model, warmup = bench_model(
            model_dir, device, args.dtype, args.batch, args.iters, args.compile
        )
        small = None
        if args.e2e_small:
            small_root = image_folder(args.data, args.e2e_small, tmp, "images-small")
            small = bench_e2e(small_root, model_dir, tmp / "small" / "cache.zarr", device, args,
                              workers)  # fmt: skip
        res, wall, size = bench_e2e(root, model_dir, tmp / "big" / "cache.zarr", device, args,
                                    workers)  # fmt: skip
    marginal = None
    if small is not None and wall > small[1]:
        marginal = (args.images - args.e2e_small) / (wall - small[1])
    cuda = device.startswith("cuda")
    result = {
        "benchmark": "embed_throughput",
        "arch": args.arch,
        "arch_config": ARCHS[args.arch],
        "device": device,
        "device_name": torch.cuda.get_device_name()
        if cuda
        else platform.processor() or platform.machine(),
        "dtype": args.dtype,
        "compile": args.compile,
        "compile_backend": args.compile_backend if args.compile else None,
        "cpu_cores": os.cpu_count(),
        "workers": workers,
        "batch": args.batch,
        "iters": args.iters,
        "images": args.images,
        "distinct_jpegs": distinct,
        "model_build_seconds": round(build_s, 2),
        "decode_preprocess_img_per_s": None if decode is None else round(decode, 1),
        "model_forward_img_per_s": round(model, 1),
        "model_warmup_seconds": round(warmup, 2),
        "end_to_end_img_per_s": round(res.images_per_s, 1),
        "end_to_end_wall_s_incl_model_load": round(wall, 2),
        "e2e_small_images": args.e2e_small or None,
        "e2e_small_wall_s": None if small is None else round(small[1], 2),
        "end_to_end_marginal_img_per_s": None if marginal is None else round(marginal, 1),
        "cache_bytes_per_10k_images": int(size / args.images * 10_000),
        "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        "torch": torch.__version__,
    }
    run_.write(args.out, result)
    width = max(map(len, result))
    for k, v in result.items():
        if k != "arch_config":
            print(f"{k:<{width}}  {v}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
