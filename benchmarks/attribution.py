"""Known-answer benchmark of attribution maps: M2IB and the baselines on a tiny CLIP trained
on CPU on synthetic shape scenes (`pipeline.attribution.known_answer`).

Trains the tiny CLIP (or loads it from --model-dir when it is there), checks its retrieval
accuracy, then on the same held-out pairs reports per method: pointing game (map maximum inside
the shape's box; chance = mean box area / image area), word AUC (colour/shape words above filler
words; chance 0.5), drop / increase in confidence, deletion / insertion AUC, pairs/s, and the
model-randomisation rank correlation (maps of an untrained model of the same shape vs the
trained one's; near 0 is what a faithful method shows). Writes JSON (`--out`).

    python benchmarks/attribution.py                       # ~7 min on one CPU thread
    python benchmarks/attribution.py --steps 50 --pairs 16 --out /tmp/a.json   # smoke

The real CLIP BPE tokenizer is read from ../shared/data/clip_tokenizer (--tokenizer).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.attribution import known_answer as ka  # noqa: E402
from pipeline.attribution.baselines import BASELINE_FNS  # noqa: E402
from pipeline.attribution.bottleneck import M2IBSettings  # noqa: E402
from pipeline.attribution.evaluate import make_batch, score_maps  # noqa: E402
from pipeline.preprocess import PreprocessSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("m2ib", "m2ib-beta1", *BASELINE_FNS)  # m2ib-beta1: M2IB with beta = 1


def load_or_train(args, tok, spec):
    from transformers import CLIPImageProcessorPil, CLIPModel

    d = Path(args.model_dir)
    if (d / "config.json").is_file() and not args.retrain:
        return CLIPModel.from_pretrained(d).eval().requires_grad_(False), None  # loaded
    t0 = time.perf_counter()
    model = ka.train(ka.build_model(tok, args.size, args.seed), tok, spec, steps=args.steps,
                     seed=args.seed, log=print)  # fmt: skip
    seconds = time.perf_counter() - t0
    model.save_pretrained(d)
    tok.save_pretrained(d)
    size = {"shortest_edge": args.size}
    CLIPImageProcessorPil(size=size, crop_size={"height": args.size, "width": args.size}
                          ).save_pretrained(d)  # fmt: skip
    return model, seconds


def evaluate(model, tok, spec, scenes, args, gen):
    """Per method: every metric averaged over the pairs, and the crop-resolution image maps."""
    m2ib = M2IBSettings(layer_fraction=args.layer_fraction)
    variants = {"m2ib": m2ib, "m2ib-beta1": dataclasses.replace(m2ib, beta=1.0)}
    eval_cfg = SimpleNamespace(ig_steps=20)
    out, maps = {}, {}
    for name in METHODS:
        rows, seconds, imgs = [], 0.0, []
        for start in range(0, len(scenes), args.batch):
            chunk = scenes[start : start + args.batch]
            ids = [tok(s.caption)["input_ids"] for s in chunk]
            b = make_batch(model, spec, "cpu", torch.float32, [s.image for s in chunk], ids)
            method = "m2ib" if name in variants else name
            settings = variants.get(name, m2ib)
            img, txt, sec = ka.method_maps(method, model, b, settings, spec, eval_cfg, gen)
            seconds += sec
            imgs.append(img)
            scores = score_maps(model, b, img, txt, 16)
            for r, s in enumerate(chunk):
                tokens = tok.convert_ids_to_tokens(ids[r])
                rows.append({
                    "pointing_game": float(ka.pointing_hits(img[r : r + 1], [s])[0]),
                    "word_auc": ka.word_auc(tokens, txt[r, : len(ids[r])].numpy(), s),
                    **{k: float(v[r]) for k, v in scores.items()},
                })  # fmt: skip
        means = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
        out[name] = {**means, "pairs_per_s": len(scenes) / seconds}
        maps[name] = torch.cat(imgs)
        print(name, {k: round(v, 3) for k, v in out[name].items()})
    return out, maps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", type=Path, default=ROOT.parent / "shared/data/clip_tokenizer")
    p.add_argument("--model-dir", type=Path, default=ROOT / "runs/known_answer_clip")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--steps", type=int, default=800, help="training steps (64 scenes each)")
    p.add_argument("--size", type=int, default=64, help="scene side, px")
    p.add_argument("--pairs", type=int, default=64, help="held-out pairs explained")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--layer-fraction", type=float, default=0.75)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/attribution.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(args.tokenizer / "vocab.json"), str(args.tokenizer / "merges.txt"))
    spec = PreprocessSpec(resize=args.size, crop=args.size)
    model, train_s = load_or_train(args, tok, spec)
    rng = np.random.default_rng(args.seed + 1000)
    acc = ka.retrieval_accuracy(
        model, tok, spec, [ka.make_scene(rng, args.size) for _ in range(512)]
    )
    print(f"retrieval top-1 (16 classes): {acc:.3f}")
    scenes = [ka.make_scene(rng, args.size) for _ in range(args.pairs)]
    chance = float(np.mean([(s.box[2] - s.box[0]) * (s.box[3] - s.box[1]) for s in scenes]))
    chance /= args.size**2
    methods, trained_maps = evaluate(
        model, tok, spec, scenes, args, torch.Generator().manual_seed(0)
    )
    random_model = ka.build_model(tok, args.size, seed=args.seed + 1).eval().requires_grad_(False)
    _, random_maps = evaluate(
        random_model, tok, spec, scenes, args, torch.Generator().manual_seed(0)
    )
    for name in METHODS:
        rho = ka.spearman(trained_maps[name], random_maps[name])
        methods[name]["randomisation_rank_corr"] = float(np.nanmean(rho))
    result = {
        "benchmark": "attribution known-answer (synthetic shape scenes, tiny CLIP)",
        "machine": f"{platform.machine()} CPU, torch threads 1 (shared 2-core machine)",
        "model": {
            "dir": str(args.model_dir),
            "train_steps": args.steps,
            "train_seconds": train_s,
            "image_size": args.size,
            "patch": 8,
            "layers": 4,
            "width": 64,
        },  # fmt: skip
        "retrieval_top1": acc,
        "pairs": args.pairs,
        "pointing_chance": chance,
        "word_auc_chance": 0.5,
        "m2ib": {"layer_fraction": args.layer_fraction, **M2IBSettings().__dict__},
        "methods": methods,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: {m: round(v["pointing_game"], 3) for m, v in methods.items()}
                      for k in ["pointing_game"]}))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
