"""TopK SAE benchmark: quality on real embeddings, speed on an ImageNet-sized synthetic cache.

Real embeddings: every concept string and GPT-3 description in `../shared/data/concept_sets/`
(Label-free CBM's filtered / ablation concept sets and GPT-3 "important / around / superclass"
descriptions incl. the reruns, SparseCBM's ConceptNet sets; class lists excluded), stripped
and deduplicated, embedded by the offline all-MiniLM-L6-v2 (E = 384, unit rows). They are
split 90 / 10 (numpy default_rng(0) permutation) into train / test of one cache whose concepts
are the concept strings (the naming vocabulary). `fit-sae` (the library call behind the
command) is run at expansion 8 with k in {16, 32, 64}, with and without AuxK and centring;
each row reports held-out FVU / cosine / normalised MAE / L0 / dead fraction and training
samples/s. The default SAE is then scored with `sae-eval` on the CIFAR-10 / CUB description
proxy caches of `benchmarks/description_proxy.py` (same model, so the SAE applies): accuracy
kept by the zero-shot classifier.

Synthetic: a 1.28M x 768 cache (ImageNet-1k's train size at ViT-L/14's width) of unit rows
x = normalise(μ + sparse mix of 8,192 random atoms (16 per row, exponential weights) + noise
0.01 per dimension),
written with `cache.write_cache`, then one epoch of fit-sae at expansion 8, k = 32, batch 4096
(in memory), and a fraction of an epoch with --stream on. samples/s are training-loop
throughput; seconds include loading the split and the held-out evaluation.

    python benchmarks/sae.py [--part real synthetic tuning] [--data ../shared/data] [--quick]

Tuning (the evidence behind the defaults): k = 32, 1000 steps of 512 rows on the real-text
cache, one knob changed at a time (learning rate, bf16 vs fp32 selection, expansion).

Writes benchmarks/results/sae.json (or --out) and prints markdown tables. One run writes one
whole file (benchmarks/_provenance.py: a `provenance` block with commit, clean flag, command,
threads, load average); nothing is merged from an older JSON. A run of some parts only
(`--part real`) writes `sae.part-<parts>.json` (e.g. sae.part-real.json) unless --out is
given, so sae.json, which the README tables read, always holds all three parts of one run.

`--quick` (CI smoke run, seconds): 300 of the texts, k = 32 only, one tuning knob, 20 steps per
fit, sae-eval on the text cache itself instead of the description proxies, a 4,000 x 64
synthetic cache; everything in a temporary folder (not runs/sae-bench) unless --work; writes
sae.quick.json unless --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _provenance import Run, add_common_args, parse_args  # noqa: E402

from clipcbm.cache import open_cache, write_cache  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
WORK = ROOT / "runs" / "sae-bench"
PARTS = ("real", "synthetic", "tuning")
QUICK_TEXTS = 300  # --quick: a seeded sample of the texts
QUICK_STEPS = 20  # --quick: optimizer steps of every fit
CLASS_LISTS = ("_classes.txt", "categories_places365_clean.txt")
ANCHORS = {
    "MSAE (Matryoshka SAE on CLIP)": "cosine ~0.99, FVU < 0.1 at ~20% active latents",
    "CLIP CLS-token TopK SAEs, k = 64": "explained variance 0.84-0.90 (FVU 0.10-0.16), ~0 dead",
    "quick reference, crude AuxK, real sentence embeddings": "FVU 0.09, 8% dead",
}


def collect_texts(data: Path) -> dict:
    """Concept strings (.txt concept sets) and GPT-3 descriptions (.json), deduplicated."""
    root = data / "concept_sets"
    concepts, descriptions, files = set(), set(), []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name.endswith(CLASS_LISTS) or p.name == "all_classes.txt":
            continue
        if p.suffix == ".json":
            for items in json.loads(p.read_text()).values():
                descriptions.update(s.strip() for s in items if s.strip())
        elif p.suffix == ".txt":
            text = p.read_text(encoding="utf-8", errors="replace")
            concepts.update(s.strip() for s in text.splitlines() if s.strip())
        else:
            continue
        files.append(str(p.relative_to(data)))
    texts = sorted(concepts | descriptions)
    return {"texts": texts, "concepts": sorted(concepts), "n_descriptions": len(descriptions),
            "files": files}  # fmt: skip


def subsample(src: dict, n: int, seed: int = 0) -> dict:
    """`src` restricted to a seeded sample of n texts (the concepts among them kept)."""
    keep = sorted(np.random.default_rng(seed).permutation(len(src["texts"]))[:n])
    texts = [src["texts"][i] for i in keep]
    chosen = set(texts)
    concepts = [c for c in src["concepts"] if c in chosen]
    return {**src, "texts": texts, "concepts": concepts,
            "n_descriptions": len(chosen - set(concepts))}  # fmt: skip


def build_text_cache(
    data: Path, out: Path, seed: int = 0, max_texts: int | None = None
) -> tuple[Path, dict]:
    from description_proxy import _model_record, model_path

    src = collect_texts(data)
    if max_texts is not None and max_texts < len(src["texts"]):
        src = subsample(src, max_texts, seed)
    mpath = model_path()
    model = _model_record(mpath)
    ident = {"texts": len(src["texts"]), "files": src["files"], "seed": seed, "builder": 1,
             "model": model["weights_sha256"]}  # fmt: skip
    if max_texts is not None:
        ident["max_texts"] = max_texts
    if out.exists():
        try:
            with open_cache(out) as c:
                if c.metadata.get("sae_bench") == ident:
                    return out, src
        except Exception:  # incomplete or stale: rebuilt below
            pass
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(mpath), device="cpu")
    emb = st.encode(src["texts"], batch_size=256, normalize_embeddings=True,
                    convert_to_numpy=True, show_progress_bar=False).astype(np.float32)  # fmt: skip
    row = {t: i for i, t in enumerate(src["texts"])}
    perm = np.random.default_rng(seed).permutation(len(src["texts"]))
    n_test = len(perm) // 10
    parts = {"test": np.sort(perm[:n_test]), "train": np.sort(perm[n_test:])}
    splits = {s: {"image_emb": emb[ix], "labels": np.zeros(len(ix), np.int64),
                  "ids": [src["texts"][i] for i in ix]} for s, ix in parts.items()}  # fmt: skip
    concepts = src["concepts"]
    meta = {"sae_bench": ident, "model": {**model, "embed_dim": int(emb.shape[1])},
            "dataset": {"name": "concept-set-texts", "root": str(data)}}  # fmt: skip
    path = write_cache(out, splits=splits, concepts=concepts, classes=["text"],
                       concept_emb=emb[[row[c] for c in concepts]], class_emb=emb[:1],
                       templates=("{}",), metadata=meta, overwrite=True)  # fmt: skip
    return path, src


def fit(cache: Path, out: Path, **kw) -> dict:
    from clipcbm.heads.sae.config import FitSaeConfig
    from clipcbm.heads.sae.train import run

    t0 = time.perf_counter()
    r = run(FitSaeConfig(cache=cache, out=out, overwrite=True, progress=False, **kw))
    keep = ("fvu", "cosine", "cosine_centred", "nmae", "l0", "dead_fraction", "n")
    return {**{k: r.metrics[k] for k in keep}, "samples_per_s": r.samples_per_s,
            "train_seconds": r.seconds, "wall_seconds": time.perf_counter() - t0,
            "train_fvu": r.history[-1]["fvu"],  # training batches, the last 1% of the steps
            "steps": r.steps, "dead_train": r.dead_train, "n_train": r.n_train,
            "n_latents": r.n_latents}  # fmt: skip


def pca_baseline(cache: Path, ranks=(32, 64, 128)) -> dict:
    """Held-out FVU of the best rank-r linear reconstruction (PCA of the train rows)."""
    with open_cache(cache) as c:
        tr, te = c.split("train").image_emb, c.split("test").image_emb
    mu = tr.mean(0)
    vt = np.linalg.svd(tr - mu, full_matrices=False)[2]
    total = ((te - te.mean(0)) ** 2).sum()
    out = {}
    for r in ranks:
        rec = (te - mu) @ vt[:r].T @ vt[:r] + mu
        out[str(r)] = float(((te - rec) ** 2).sum() / total)
    return out


RUN = {"batch_size": 512, "max_steps": 3000}  # the sweep's budget: ~68 passes over the rows


def _log(name: str, r: dict) -> None:
    print(f"{name}: FVU {r['fvu']:.4f} cos {r['cosine']:.4f} dead "
          f"{100 * r['dead_fraction']:.2f}% {r['samples_per_s']:,.0f}/s", flush=True)  # fmt: skip


def real_part(data: Path, quick: bool, work: Path = WORK) -> dict:
    cache, src = text_cache(data, quick, work)
    run = {**RUN, "max_steps": QUICK_STEPS} if quick else RUN
    rows = []
    for k in (32,) if quick else (16, 32, 64):
        for aux in (True, False):
            for center in (True, False):
                if quick and not (aux and center):
                    continue
                name = f"x8-k{k}-{'aux' if aux else 'noaux'}-{'c' if center else 'nc'}"
                r = fit(cache, work / "real" / name, expansion=8, k=k,
                        k_aux=None if aux else 0, center=center, **run)  # fmt: skip
                rows.append({"k": k, "auxk": aux, "center": center, **r})
                _log(name, r)
    defaults = fit(cache, work / "real" / "defaults", expansion=8, k=32,
                   **({"max_steps": QUICK_STEPS} if quick else {}))  # fmt: skip
    _log("fit-sae defaults", defaults)
    # --quick: sae-eval on the text cache itself (the proxy caches embed thousands of texts)
    kept = accuracy_kept(work / "real" / "x8-k32-aux-c", work, {"texts": cache} if quick else None)
    return {"texts": len(src["texts"]), "concepts": len(src["concepts"]),
            "descriptions": src["n_descriptions"], "files": src["files"], "settings": run,
            "runs": rows, "defaults": defaults, "pca_fvu": pca_baseline(cache),
            "accuracy_kept": kept}  # fmt: skip


TUNING = [  # one knob away from the sweep's settings (k = 32, 1000 steps of 512 rows)
    {"lr": 1e-3}, {"lr": 3e-3}, {"lr": 1e-2}, {"lr": 1e-2, "k_aux": 0},
    {"lr": 3e-3, "select_dtype": "fp32"},
    {"lr": 3e-3, "expansion": 4}, {"lr": 3e-3, "expansion": 16},
]  # fmt: skip


def text_cache(data: Path, quick: bool, work: Path) -> tuple[Path, dict]:
    if quick:
        return build_text_cache(data, work / "texts-quick.zarr", max_texts=QUICK_TEXTS)
    return build_text_cache(data, work / "texts.zarr")


def tuning_part(data: Path, quick: bool, work: Path = WORK) -> dict:
    """The evidence behind fit-sae's defaults: learning rate, selection precision, width."""
    cache, _ = text_cache(data, quick, work)
    rows = []
    for knobs in TUNING[:1] if quick else TUNING:
        kw = {"expansion": 8, "k": 32, "batch_size": 512,
              "max_steps": QUICK_STEPS if quick else 1000, **knobs}  # fmt: skip
        r = fit(cache, work / "tuning" / "run", **kw)
        rows.append({"settings": kw, **r})
        _log(str(knobs), r)
    return {"runs": rows}


def accuracy_kept(sae: Path, work: Path = WORK, caches: dict | None = None) -> list[dict]:
    """sae-eval of the default real-text SAE on the description proxy caches (same model);
    `caches` (name -> cache path) replaces them (--quick)."""
    from clipcbm.heads.sae.config import SaeEvalConfig
    from clipcbm.heads.sae.evaluation import run_sae_eval

    if caches is None:
        from description_proxy import build_proxy_cache

        caches = {ds: build_proxy_cache(ds) for ds in ("cifar10", "cub")}
    out = []
    for ds, cache in caches.items():
        r = run_sae_eval(SaeEvalConfig(sae=sae, cache=cache, out=work / "eval" / ds,
                                       progress=False))  # fmt: skip
        m = r.metrics
        out.append(
            {
                "cache": f"{ds}-desc",
                **{
                    k: m[k]
                    for k in (
                        "n",
                        "fvu",
                        "cosine",
                        "zero_shot_top1",
                        "zero_shot_top1_recon",
                        "accuracy_kept",
                    )
                },
            }
        )
    return out


NOISE = 0.01  # per dimension: ~2% of the rows' variance


def synthetic_arrays(n: int, e: int, seed: int, n_atoms: int = 8192, active: int = 16):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=e).astype(np.float32)
    mu /= np.linalg.norm(mu)
    atoms = rng.normal(size=(n_atoms, e)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    out = np.empty((n, e), np.float16)
    for s in range(0, n, 4096):
        m = min(4096, n - s)
        idx = rng.integers(0, n_atoms, size=(m, active))
        w = rng.exponential(size=(m, active, 1)).astype(np.float32) * 0.35
        x = mu + (atoms[idx] * w).sum(1) + NOISE * rng.normal(size=(m, e)).astype(np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def synthetic_part(quick: bool, work: Path = WORK) -> dict:
    n, e, n_test = (4_000, 64, 500) if quick else (1_281_167, 768, 50_000)
    path = work / ("synthetic-quick.zarr" if quick else "synthetic.zarr")
    t0 = time.perf_counter()
    ok = False
    if path.exists():
        try:
            with open_cache(path) as c:
                ok = c.metadata.get("sae_bench_synthetic") == [n, e, n_test, NOISE]
        except Exception:
            ok = False
    if not ok:
        x = synthetic_arrays(n + n_test, e, seed=0)
        splits = {"train": {"image_emb": x[:n], "labels": np.zeros(n, np.int64)},
                  "test": {"image_emb": x[n:], "labels": np.zeros(n_test, np.int64)}}  # fmt: skip
        cpt = synthetic_arrays(64, e, seed=1).astype(np.float32)
        write_cache(path, splits=splits, concepts=[f"c{i}" for i in range(64)],
                    classes=["x"], concept_emb=cpt, class_emb=cpt[:1],
                    metadata={"sae_bench_synthetic": [n, e, n_test, NOISE]},
                    overwrite=True)  # fmt: skip
        del x, splits
    write_s = time.perf_counter() - t0
    mem = fit(path, work / "synthetic" / "memory", expansion=8, k=32, epochs=1,
              max_steps=10**6)  # fmt: skip
    frac = 0.25
    stream = fit(path, work / "synthetic" / "stream", expansion=8, k=32, epochs=frac,
                 max_steps=10**6, stream="on")  # fmt: skip
    return {"rows": n, "embed_dim": e, "test_rows": n_test, "cache_write_seconds": write_s,
            "one_epoch_in_memory": mem, "stream_fraction_of_epoch": frac,
            "streamed": stream}  # fmt: skip


def environment() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor(),
            "load_average": os.getloadavg()}  # fmt: skip


def _row(label: str, x: dict, train: bool = False) -> str:
    cells = [f"{x['train_fvu']:.4f}"] if train else []
    cells += [f"{x['fvu']:.4f}", f"{x['cosine']:.4f}", f"{x['nmae']:.4f}", f"{x['l0']:.1f}",
             f"{100 * x['dead_fraction']:.2f}", f"{x['samples_per_s']:,.0f}"]  # fmt: skip
    return f"| {label} | " + " | ".join(cells) + " |"


def markdown(res: dict) -> str:
    lines = []
    head = ["| {} | FVU | cosine | NMAE | L0 | dead % | samples/s |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    if "real" in res:
        r = res["real"]
        lines += [f"Real embeddings: {r['texts']} texts (all-MiniLM-L6-v2, E = 384), expansion 8, "
                  f"{r['settings']}; held-out {r['runs'][0]['n']} rows", "",
                  "| k / AuxK / centred | train FVU | FVU | cosine | NMAE | L0 | dead % | "
                  "samples/s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for x in r["runs"]:
            yn = lambda b: "yes" if b else "no"  # noqa: E731
            lines.append(_row(f"{x['k']} / {yn(x['auxk'])} / {yn(x['center'])}", x, True))
        lines.append(_row("32 / fit-sae defaults", r["defaults"], True))
        pca = ", ".join(
            f"rank {k}: {v:.3f}" for k, v in sorted(r["pca_fvu"].items(), key=lambda kv: int(kv[0]))
        )
        lines += ["", f"PCA (held-out FVU of the best rank-r linear reconstruction): {pca}", "",
                  "| proxy cache | rows | FVU | zero-shot top-1 % on x | on x̂ | kept |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for x in r["accuracy_kept"]:
            lines.append(f"| {x['cache']} | {x['n']} | {x['fvu']:.4f} | "
                         f"{100 * x['zero_shot_top1']:.1f} | {100 * x['zero_shot_top1_recon']:.1f}"
                         f" | {x['accuracy_kept']:.3f} |")  # fmt: skip
    if "synthetic" in res:
        s = res["synthetic"]
        lines += ["", f"Synthetic {s['rows']:,} x {s['embed_dim']}, expansion 8, k 32:", "",
                  "| run | steps | train s | samples/s | wall s | FVU | dead % |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, x in (("one epoch, in memory", s["one_epoch_in_memory"]),
                        (f"{s['stream_fraction_of_epoch']} epoch, streamed",
                         s["streamed"])):  # fmt: skip
            lines.append(f"| {name} | {x['steps']} | {x['train_seconds']:.0f} | "
                         f"{x['samples_per_s']:,.0f} | {x['wall_seconds']:.0f} | "
                         f"{x['fvu']:.4f} | {100 * x['dead_fraction']:.2f} |")  # fmt: skip
    if "tuning" in res:
        lines += ["", "Tuning (real texts, k = 32, 1000 steps x 512 rows):", "",
                  head[0].format("changed knob"), head[1]]  # fmt: skip
        for x in res["tuning"]["runs"]:
            s = x["settings"]
            shown = ("lr", "select_dtype", "expansion", "k_aux")
            knob = ", ".join(f"{k} {v}" for k, v in s.items() if k in shown)
            lines.append(_row(knob, x))
    return "\n".join(lines)


def default_out(args) -> Path:
    """sae.json; a run of some parts only: sae.part-<parts>.json (never merged into sae.json)"""
    chosen = [p for p in PARTS if p in set(args.part)]
    name = "sae.json" if chosen == list(PARTS) else f"sae.part-{'-'.join(chosen)}.json"
    return ROOT / "benchmarks" / "results" / name


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", nargs="+", default=list(PARTS), choices=list(PARTS),
                    help="parts to run (a subset writes sae.part-<parts>.json)")  # fmt: skip
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=None,
                    help=f"caches and models (default {WORK.relative_to(ROOT)}; --quick: a "
                    "temporary folder)")  # fmt: skip
    add_common_args(ap, default_out)
    args = parse_args(ap, argv)
    run = Run(args.quick)
    with tempfile.TemporaryDirectory(prefix="sae-bench-") as tmp:
        work = args.work or (Path(tmp) if args.quick else WORK)
        res = {"environment": environment(), "anchors": ANCHORS, "parts": list(args.part)}
        if "real" in args.part:
            res["real"] = real_part(args.data, args.quick, work)
        if "synthetic" in args.part:
            res["synthetic"] = synthetic_part(args.quick, work)
        if "tuning" in args.part:
            res["tuning"] = tuning_part(args.data, args.quick, work)
    run.write(args.out, res, sort_keys=True)
    print(markdown(res))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
