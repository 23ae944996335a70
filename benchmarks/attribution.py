"""Known-answer benchmark of attribution maps: M2IB and the baselines on a tiny CLIP trained
on CPU on synthetic shape scenes (`pipeline.attribution.known_answer`).

Trains the tiny CLIP (or loads it from --model-dir when it is there; `train.json` beside it
keeps the steps, seed and seconds of the run that trained it), checks its retrieval accuracy,
then on the same held-out pairs reports per method, each mean over pairs with its standard
error (`<metric>_se`; the pointing game also binomial `pointing_game_se_binomial` and a
seeded bootstrap `pointing_game_se_bootstrap`, and its paired difference from m2ib): pointing
game (map maximum inside the shape's box; chance = mean box area / image area), word AUC
(colour/shape words above filler words; chance 0.5), drop / increase in confidence, deletion
/ insertion AUC, pairs/s, and two model-randomisation checks (Adebayo et al. 2018):

- `randomisation_rank_corr` (kept as before): Spearman ρ between the maps of the trained model
  and of a separately built untrained one (whose own embeddings are the targets);
- `cascading_randomisation`: the layers of a deep copy of the trained model are re-initialised
  from the top down, cumulatively (projection heads, blocks 4..1, embeddings; both towers, the
  targets stay the trained model's), and at every step k = 0..L the per-pair Spearman ρ (ties
  averaged) and SSIM between the original and the step-k maps, mean ± standard error, per
  method, with the ρ between two noise seeds on the trained model (`seed_floor`: what a
  stochastic method's own noise costs) and a summary (after the projection heads, the top
  block, half the blocks, all). `independent_randomisation`: one group at a time (the others
  trained; `--no-independent` skips it).

Writes JSON through `benchmarks/_provenance.py` (`--out`; `--quick`: tiny sizes in seconds,
a throw-away model, written to attribution.quick.json unless --out is given).

    python benchmarks/attribution.py                       # ~25 min on one CPU thread
    python benchmarks/attribution.py --quick --out /tmp/a.json   # smoke, seconds

The real CLIP BPE tokenizer is read from ../shared/data/clip_tokenizer (--tokenizer).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _provenance import Run, quick_out  # noqa: E402

from clipcbm.pipeline.attribution import known_answer as ka  # noqa: E402
from clipcbm.pipeline.attribution.baselines import BASELINE_FNS  # noqa: E402
from clipcbm.pipeline.attribution.bottleneck import M2IBSettings  # noqa: E402
from clipcbm.pipeline.attribution.evaluate import (  # noqa: E402
    binomial_se,
    bootstrap_se,
    make_batch,
    mean_se,
    randomisation_curves,
    score_maps,
    summarise_curves,
)
from clipcbm.pipeline.preprocess import PreprocessSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("m2ib", "m2ib-beta1", *BASELINE_FNS)  # m2ib-beta1: M2IB with beta = 1
TRAIN_INFO = "train.json"  # steps, seed, size, seconds of the run that trained --model-dir


def load_or_train(args, tok, spec):
    from transformers import CLIPImageProcessorPil, CLIPModel

    d = Path(args.model_dir)
    if (d / "config.json").is_file() and not args.retrain:
        info = json.loads((d / TRAIN_INFO).read_text()) if (d / TRAIN_INFO).is_file() else {}
        if info.get("steps", args.steps) != args.steps or info.get("seed", args.seed) != args.seed:
            sys.exit(f"{d} was trained with {info}; pass --retrain or another --model-dir")
        model = CLIPModel.from_pretrained(d).eval().requires_grad_(False)
        return model, info.get("seconds")  # loaded: the seconds of the run that trained it
    t0 = time.perf_counter()
    model = ka.train(ka.build_model(tok, args.size, args.seed), tok, spec, steps=args.steps,
                     seed=args.seed, log=print)  # fmt: skip
    seconds = time.perf_counter() - t0
    model.save_pretrained(d)
    info = {"steps": args.steps, "seed": args.seed, "size": args.size, "seconds": seconds}
    (d / TRAIN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    tok.save_pretrained(d)
    size = {"shortest_edge": args.size}
    CLIPImageProcessorPil(size=size, crop_size={"height": args.size, "width": args.size}
                          ).save_pretrained(d)  # fmt: skip
    return model, seconds


def m2ib_variants(args) -> dict[str, M2IBSettings]:
    m2ib = M2IBSettings(layer_fraction=args.layer_fraction)
    if args.quick:
        m2ib = dataclasses.replace(m2ib, steps=2, samples=2)
    return {"m2ib": m2ib, "m2ib-beta1": dataclasses.replace(m2ib, beta=1.0)}


def map_fns(args, spec) -> dict:
    """name -> fn(model, batch, generator) -> (image (B, S, S), text (B, T)) maps."""
    variants = m2ib_variants(args)
    eval_cfg = SimpleNamespace(ig_steps=args.ig_steps)

    def one(name):
        method = "m2ib" if name in variants else name
        settings = variants.get(name, variants["m2ib"])

        def fn(model, b, gen):
            img, txt, _ = ka.method_maps(method, model, b, settings, spec, eval_cfg, gen)
            return img, txt

        return fn

    return {name: one(name) for name in METHODS}


def batches_of(model, tok, spec, scenes, args):
    out = []
    for start in range(0, len(scenes), args.batch):
        chunk = scenes[start : start + args.batch]
        ids = [tok(s.caption)["input_ids"] for s in chunk]
        out.append((chunk, ids, make_batch(model, spec, "cpu", torch.float32,
                                           [s.image for s in chunk], ids)))  # fmt: skip
    return out


def evaluate(model, tok, spec, scenes, args, gen):
    """Per method: every metric averaged over the pairs (with standard errors), the per-pair
    rows and the crop-resolution image maps."""
    variants = m2ib_variants(args)
    eval_cfg = SimpleNamespace(ig_steps=args.ig_steps)
    out, maps, per_pair = {}, {}, {}
    batches = batches_of(model, tok, spec, scenes, args)
    for name in METHODS:
        rows, seconds, imgs = [], 0.0, []
        for chunk, ids, b in batches:
            method = "m2ib" if name in variants else name
            settings = variants.get(name, variants["m2ib"])
            img, txt, sec = ka.method_maps(method, model, b, settings, spec, eval_cfg, gen)
            seconds += sec
            imgs.append(img)
            scores = score_maps(model, b, img, txt, args.curve_steps)
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
        per_pair[name] = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        print(name, {k: round(v, 3) for k, v in out[name].items()}, flush=True)
    return out, maps, per_pair


def standard_errors(methods: dict, per_pair: dict, seed: int) -> None:
    """Add `<metric>_se` (sample std / sqrt n over the pairs with a value) beside every mean;
    for the pointing game also the binomial and bootstrap SEs and the paired difference from
    m2ib (mean of per-pair hit differences, with its SE)."""
    ref = per_pair["m2ib"]["pointing_game"]
    for name, rows in per_pair.items():
        m = methods[name]
        for k, v in rows.items():
            m[f"{k}_se"] = mean_se(v)[1]
        hits = rows["pointing_game"]
        m["pointing_game_se_binomial"] = binomial_se(float(hits.mean()), len(hits))
        m["pointing_game_se_bootstrap"] = bootstrap_se(hits, seed=seed)
        diff = mean_se(hits - ref)
        m["pointing_game_diff_vs_m2ib"], m["pointing_game_diff_vs_m2ib_se"] = diff


def curves_block(curves: dict, mode: str, seed: int, pairs: int) -> dict:
    """The JSON of one randomisation run: steps, curves per method, a compact summary."""
    summary = summarise_curves(curves)
    steps = curves["steps"]
    n_blocks = sum(s.startswith("block") for s in steps)
    if mode == "cascade":  # cumulative: what has been randomised so far
        at = {"after_projection": 1, "after_top_block": 2,
              "after_half_blocks": 1 + -(-n_blocks // 2), "after_all_blocks": 1 + n_blocks,
              "after_all": len(steps) - 1}  # fmt: skip
    else:  # one group alone
        at = {"only_" + name.replace(" ", "_"): k for k, name in enumerate(steps) if k}
    compact = {}
    for method, d in summary.items():
        compact[method] = {}
        for key in ("image_spearman", "image_ssim", "text_spearman"):
            compact[method][key] = {
                label: {"mean": d[key]["mean"][k], "se": d[key]["se"][k]} for label, k in at.items()
            }  # fmt: skip
    block = {
        "mode": mode,
        "seed": seed,
        "pairs": pairs,
        "steps": steps,
        "randomised": curves["randomised"],
        "summary_steps": {label: steps[k] for label, k in at.items()},
        "curves": summary,
        "summary": compact,
    }
    if "seed_floor" in curves:
        block["seed_floor"] = {
            method: {key: dict(zip(("mean", "se"), mean_se(v), strict=True))
                     for key, v in d.items()}
            for method, d in curves["seed_floor"].items()
        }  # fmt: skip
    return block


def main(argv=None) -> dict:
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
    p.add_argument("--randomisation-seed", type=int, default=None,
                   help="seed of the re-initialised weights (default --seed + 1: the same "
                   "weights as the untrained model of randomisation_rank_corr)")  # fmt: skip
    p.add_argument("--independent", action=argparse.BooleanOptionalAction, default=None,
                   help="also randomise one layer group at a time (default: on, off with "
                   "--quick)")  # fmt: skip
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 training steps into a temporary model dir, 3 pairs, "
                   "M2IB 2 steps x 2 samples; not a result")  # fmt: skip
    p.add_argument("--out", type=Path, default=None,
                   help="JSON (default benchmarks/results/attribution.json; "
                   "attribution.quick.json with --quick)")  # fmt: skip
    args = p.parse_args(argv)
    run = Run(args.quick)
    out_path = args.out or quick_out(ROOT / "benchmarks/results/attribution.json", args.quick)
    args.ig_steps, args.curve_steps, retrieval_scenes = 20, 16, 512
    tmp = None
    if args.quick:
        tmp = tempfile.TemporaryDirectory(prefix="attr-quick-")
        args.model_dir, args.retrain = Path(tmp.name) / "model", True
        args.steps, args.pairs, args.batch = 3, 3, 3
        args.ig_steps, args.curve_steps, retrieval_scenes = 4, 4, 32
    if args.size != 64:
        sys.exit("--size must be 64: the training scenes are 64 px (known_answer.train)")
    if not (args.tokenizer / "vocab.json").is_file():
        sys.exit(f"no CLIP tokenizer at {args.tokenizer} (vocab.json, merges.txt): --tokenizer")
    if args.independent is None:
        args.independent = not args.quick
    rseed = args.seed + 1 if args.randomisation_seed is None else args.randomisation_seed
    torch.set_num_threads(1)
    from transformers import CLIPTokenizer

    seconds = {}
    tok = CLIPTokenizer(str(args.tokenizer / "vocab.json"), str(args.tokenizer / "merges.txt"))
    spec = PreprocessSpec(resize=args.size, crop=args.size)
    model, train_s = load_or_train(args, tok, spec)
    rng = np.random.default_rng(args.seed + 1000)
    acc = ka.retrieval_accuracy(
        model, tok, spec, [ka.make_scene(rng, args.size) for _ in range(retrieval_scenes)]
    )
    print(f"retrieval top-1 (16 classes): {acc:.3f}", flush=True)
    scenes = [ka.make_scene(rng, args.size) for _ in range(args.pairs)]
    chance = float(np.mean([(s.box[2] - s.box[0]) * (s.box[3] - s.box[1]) for s in scenes]))
    chance /= args.size**2
    t0 = time.perf_counter()
    methods, trained_maps, per_pair = evaluate(
        model, tok, spec, scenes, args, torch.Generator().manual_seed(0)
    )
    standard_errors(methods, per_pair, args.seed)
    seconds["evaluate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    random_model = ka.build_model(tok, args.size, seed=args.seed + 1).eval().requires_grad_(False)
    _, random_maps, _ = evaluate(
        random_model, tok, spec, scenes, args, torch.Generator().manual_seed(0)
    )
    for name in METHODS:
        rho = ka.spearman(trained_maps[name], random_maps[name])
        methods[name]["randomisation_rank_corr"] = float(np.nanmean(rho))
        methods[name]["randomisation_rank_corr_se"] = mean_se(rho)[1]
    seconds["randomisation_untrained_model"] = time.perf_counter() - t0
    batches = [b for _, _, b in batches_of(model, tok, spec, scenes, args)]
    fns = map_fns(args, spec)
    t0 = time.perf_counter()
    cascade = randomisation_curves(model, batches, fns, seed=rseed, mode="cascade",
                                   seed_floor=True, log=print)  # fmt: skip
    seconds["cascading_randomisation"] = time.perf_counter() - t0
    settings = m2ib_variants(args)["m2ib"]
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
        "retrieval_scenes": retrieval_scenes,
        "pairs": args.pairs,
        "pointing_chance": chance,
        "word_auc_chance": 0.5,
        "m2ib": dict(settings.__dict__),
        "ig_steps": args.ig_steps,
        "curve_steps": args.curve_steps,
        "methods": methods,
        "cascading_randomisation": curves_block(cascade, "cascade", rseed, args.pairs),
    }
    if args.independent:
        t0 = time.perf_counter()
        indep = randomisation_curves(model, batches, fns, seed=rseed, mode="independent",
                                     log=print)  # fmt: skip
        seconds["independent_randomisation"] = time.perf_counter() - t0
        result["independent_randomisation"] = curves_block(indep, "independent", rseed,
                                                           args.pairs)  # fmt: skip
    result["seconds"] = seconds
    run.write(out_path, result)
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps({m: round(v["pointing_game"], 3) for m, v in methods.items()}))
    for m, d in result["cascading_randomisation"]["summary"].items():
        rho = d["image_spearman"]
        print(m, "image rho:", {k: round(v["mean"], 3) for k, v in rho.items()})
    print(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
