"""M2IB speed: pairs/s (both maps per pair) for the ViT-B/32 and ViT-L/14 shapes built from
`CLIPConfig` with random weights (the cost does not depend on the weights).

One "pair" = the image map and the text map, 10 Adam steps x 10 noise samples each (the
defaults), `--batch` pairs fitted together. The published implementation runs about 0.7
pairs/s; the goal is >= 10 pairs/s for ViT-B/32 on one H100. Writes JSON (`--out`, default
benchmarks/results/gpu/gpu_attribution.json), whole, with a `provenance` block
(benchmarks/_provenance.py).

    python benchmarks/gpu_attribution.py --device cuda --dtype fp16 \
        --out benchmarks/results/gpu_attribution.json
    python benchmarks/gpu_attribution.py --quick --device cpu --dtype fp32   # tiny shape, 2 x 2
    python benchmarks/gpu_attribution.py --dry-run      # = that: CPU, tiny shape, seconds (tested)

`--quick` (tiny shape, batch 2, one repeat, 2 Adam steps x 2 noise samples) writes
gpu_attribution.quick.json unless --out is given.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _provenance import Run, add_common_args, parse_args  # noqa: E402

from clipcbm.pipeline.attribution.bottleneck import (  # noqa: E402
    M2IBSettings,
    attribute_images,
    attribute_texts,
)

ARCHS = {  # (vision width, layers, heads, patch, image size, text width, layers, heads, proj)
    "vit-b-32": (768, 12, 12, 32, 224, 512, 12, 8, 512),
    "vit-l-14": (1024, 24, 16, 14, 224, 768, 12, 12, 768),
    "tiny": (32, 2, 2, 8, 32, 32, 2, 2, 16),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build(arch: str, device, dtype):
    from transformers import CLIPConfig, CLIPModel

    vw, vl, vh, patch, size, tw, tl, th, proj = ARCHS[arch]
    cfg = CLIPConfig(
        vision_config=dict(hidden_size=vw, num_hidden_layers=vl, num_attention_heads=vh,
                           intermediate_size=4 * vw, patch_size=patch, image_size=size),
        text_config=dict(hidden_size=tw, num_hidden_layers=tl, num_attention_heads=th,
                         intermediate_size=4 * tw, max_position_embeddings=77),
        projection_dim=proj,
    )  # fmt: skip
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = CLIPModel(cfg).to(device, dtype).eval().requires_grad_(False)
    return model, size


def measure(model, size, batch, tokens, settings, device, dtype, repeats) -> dict:
    px = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(0, vocab - 2, (batch, tokens), device=device)
    ids[:, -1] = model.config.text_config.eos_token_id
    mask = torch.ones_like(ids)
    emb = torch.nn.functional.normalize(torch.randn(batch, model.config.projection_dim,
                                                    device=device), dim=-1)  # fmt: skip
    gen = torch.Generator(device).manual_seed(0)
    scale = 1024.0 if dtype != torch.float32 else 1.0

    def once():
        attribute_images(model, px, emb, settings, generator=gen, loss_scale=scale)
        attribute_texts(model, ids, mask, emb, settings, generator=gen, loss_scale=scale)
        if device.type == "cuda":
            torch.cuda.synchronize()

    once()  # warm-up (kernels, allocator)
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    sec = (time.perf_counter() - t0) / repeats
    out = {"batch": batch, "tokens": tokens, "seconds_per_batch": sec, "pairs_per_s": batch / sec}
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


class _DryRun(argparse.Action):
    """--dry-run: sets --quick too (so the quick defaults apply)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.dry_run = namespace.quick = True


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", choices=list(ARCHS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    p.add_argument("--batch", type=int, action="append", help="pairs per batch (repeatable)")
    p.add_argument("--tokens", type=int, default=16, help="text length incl. BOS/EOS")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dry-run", action=_DryRun, nargs=0, default=False,
                   help="--quick on the CPU in fp32 (tiny shape, 2 steps x 2 samples)")  # fmt: skip
    add_common_args(p, ROOT / "benchmarks/results/gpu/gpu_attribution.json",
                    quick={"repeats": 1})  # fmt: skip
    a = parse_args(p, argv)
    run = Run(a.quick)
    if a.dry_run:
        a.device, a.dtype = "cpu", "fp32"
    if a.quick:
        a.arch, a.batch = a.arch or ["tiny"], a.batch or [2]
        settings = M2IBSettings(steps=2, samples=2)
    else:
        settings = M2IBSettings()
    arches = a.arch or ["vit-b-32", "vit-l-14"]
    batches = a.batch or [8, 32]
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "dtype": a.dtype,
              "settings": settings.__dict__, "archs": {}}  # fmt: skip
    for arch in arches:
        model, size = build(arch, device, dtype)
        result["archs"][arch] = [
            measure(model, size, b, a.tokens, settings, device, dtype, a.repeats) for b in batches
        ]
        for r in result["archs"][arch]:
            print(f"{arch} batch {r['batch']}: {r['pairs_per_s']:.2f} pairs/s")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    run.write(a.out, result)
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
