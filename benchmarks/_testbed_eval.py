"""The real-photo testbed's stage-two evaluations, run through the command line as a user runs
them (not a benchmark: `benchmarks/testbed.py` calls these and writes testbed.json).

Every number comes from a `python cli.py ...` subprocess (repo root as working directory,
default flags except where a function says otherwise; never --allow-overlap), read back from
the files the command wrote. `--no-progress` (display only) and `--overwrite` (so a work
directory can be reused) are the only other flags added. The subprocesses run with
OMP_NUM_THREADS=1 / MKL_NUM_THREADS=1 unless the caller's environment sets them: on the shared
2-core machine one thread was 2-3x faster than two (fit-adapter 150 steps 7.5 s vs 22.7 s,
fit-sae 100 steps 12.9 s vs 27.1 s, the same load).

- `sae_report(cache, work, quick=False)`: `fit-sae` at its defaults (train split `train`,
  held-out `test`), `sae-eval` on `test`, `sae-inspect --n-latents 15 --top 20`: held-out FVU /
  cosine / L0 / dead fraction / zero-shot accuracy kept, the k-sweep, a PCA baseline
  (benchmarks/sae.py `pca_baseline`), and "SAE latents vs concept names": how many latent names
  are class names or concepts of the cache, and for the 15 most often firing latents their name,
  firing rate and purity (share of their top-20 test images in the latents' majority class).
- `sae_page(cache, sae_dir, work, png)`: `sae-inspect --html` (defaults) and a headless
  Chromium screenshot of the page (`{"screenshot": None, "reason": ...}` without a browser).
  Thumbnails need the cache's metadata["dataset"] = {"name": "imagefolder", "root": R} with ids
  relative to R ("test/cat/0001.jpg") and R/<split>/<class>/ holding the files of the inspected
  split (see `THUMBNAILS`).
- `adapter_report(cache, work, seeds=(0, 1, 2), quick=False)`: seed 002's study on the cache's
  views (benchmarks/debiased.py runs it in process on text / planted caches; here every run is
  `fit-adapter` then `knn-eval`): each loss at M = 1, each loss x each aggregation at M = V - 1,
  false-negative removal and 30 % false positives for the three unsupervised losses (M = 1);
  knn-eval (k = 200, t = 0.5, train bank -> test) raw and through each adapter; mean +- std over
  the seeds and which beat raw.

    python benchmarks/_testbed_eval.py [--cache runs/testbed/cifar10-photos.zarr] [--quick]
        [--work DIR] [--standin PATH]   # --standin: write a small stand-in cache there first
"""

from __future__ import annotations

import argparse
import csv
import html as html_lib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import debiased as db  # noqa: E402  (seed 002's study: run names, losses, summaries)
import sae as sae_bench  # noqa: E402  (the SAE benchmark: PCA baseline)

from clipcbm.cache import open_cache, write_cache  # noqa: E402

CLI = ROOT / "cli.py"
DEFAULT_CACHE = ROOT / "runs" / "testbed" / "cifar10-photos.zarr"
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # unless the caller sets them
THUMBNAILS = (
    "sae-inspect --html inlines thumbnails when the cache's metadata['dataset'] is "
    "{'name': <a stage-one dataset, here 'imagefolder'>, 'root': R} and the inspected split "
    "can be rebuilt as build_dataset(name, R, split): for imagefolder R/<split>/<class>/<file>, "
    "whose ids ('<split>/<class>/<file>', relative to R) must equal the cache's ids; otherwise "
    "each card shows its id and the page says why"
)

# sae_report
SAE_QUICK_STEPS = 30  # --quick: fit-sae --max-steps (the full report uses the default 2000)
N_LATENTS = 15  # sae-inspect --n-latents: the most often firing latents
TOP_IMAGES = 20  # sae-inspect --top: images per latent (the purity sample)

# adapter_report
ADAPTER_STEPS = 150  # 10 epochs of 4,000 rows at the default batch 256 (the ragged tail dropped)
ADAPTER_QUICK_STEPS = 5
LOSSES = ("contrastive", "debiased-neg", "debiased-pos", "supcon")
AGGREGATES = ("pos-grouping", "loss-combination")
JOBS = 2  # runs in flight (each a fit-adapter then a knn-eval subprocess, one thread each)


# --------------------------------------------------------------------------- helpers


def _rel(p: Path | str) -> str:
    p = Path(p)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


class CliError(RuntimeError):
    pass


def cli(*args, timeout: float | None = None) -> dict:
    """Run `python cli.py ARGS` from the repo root; {"argv", "seconds", "stdout"}; raises
    CliError (with the output's tail) on a non-zero exit."""
    cmd = [sys.executable, str(CLI), *(str(a) for a in args)]
    env = {**THREAD_ENV, **os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    argv = ["python", "cli.py", *(_rel(a) if os.sep in a else a for a in cmd[2:])]
    if p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-15:])
        raise CliError(f"{' '.join(argv)} -> rc {p.returncode}:\n{tail}")
    return {"argv": " ".join(argv), "seconds": round(time.perf_counter() - t0, 2),
            "stdout": p.stdout}  # fmt: skip


def _threads() -> dict:
    return {k: os.environ.get(k, v) for k, v in THREAD_ENV.items()}


def _cache_info(cache: Path) -> dict:
    with open_cache(cache) as c:
        splits = {s: int(c.split_attrs(s)["n"]) for s in c.splits}
        return {"path": _rel(cache), "splits": splits, "views": int(c.views or 0),
                "embed_dim": int(c.embed_dim), "classes": list(c.classes),
                "concepts": list(c.concepts), "dataset": c.metadata.get("dataset")}  # fmt: skip


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _num(v: str):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return v
    return int(x) if x.is_integer() and "." not in v else x


# --------------------------------------------------------------------------- 1. SAE report

_FIRES = re.compile(r"fires on ([0-9.]+)% of (\d+) images")


def _top_latents(inspect_rows: list[dict], names: dict[str, dict], classes: list[str]) -> list:
    groups: dict[str, list[dict]] = {}
    for r in inspect_rows:
        if r["view"] == "latent":
            groups.setdefault(r["latent"], []).append(r)
    out = []
    for latent, rows in groups.items():
        shown = [r for r in rows if int(r["rank"]) >= 0]
        counts = Counter(r["class"] for r in shown)
        major, n_major = counts.most_common(1)[0] if counts else (None, 0)
        fires = _FIRES.search(rows[0]["detail"])
        rec = names.get(latent, {})
        name = rows[0]["name"] or rec.get("name")
        out.append({
            "latent": int(latent), "name": name, "name_source": rec.get("source"),
            "name_cosine": float(rec["cosine"]) if rec.get("cosine") else None,
            "runner_up": rec.get("runner_up"),
            "fires_fraction": float(fires.group(1)) / 100 if fires else None,
            "top_images": len(shown), "majority_class": major,
            "purity": n_major / len(shown) if shown else None,
            "name_is_class": name in classes, "name_is_majority_class": name == major,
            "top_classes": dict(counts.most_common()),
        })  # fmt: skip
    return out


def _name_counts(names: list[dict], classes: list[str], concepts: list[str]) -> dict:
    cls, cpt = set(classes), set(concepts)
    alive = [r for r in names if r.get("alive") == "True"]

    def tally(rows):
        return {"latents": len(rows), "class_names": sum(r["name"] in cls for r in rows),
                "concept_names": sum(r["name"] in cpt and r["name"] not in cls for r in rows),
                "in_cache_vocabulary": sum(r["name"] in cls | cpt for r in rows),
                "distinct_names": len({r["name"] for r in rows})}  # fmt: skip

    common = Counter(r["name"] for r in alive).most_common(10)
    return {"all": tally(names), "alive_in_training": tally(alive),
            "classes_naming_an_alive_latent": sorted({r["name"] for r in alive} & cls),
            "most_common_alive_names": [{"name": n, "latents": k} for n, k in common],
            "source": "names.csv of fit-sae (each latent: the nearest vocabulary text to its "
            "decoder direction; vocabulary = the cache's concepts + classes)"}  # fmt: skip


def sae_report(cache: Path, work: Path, quick: bool = False) -> dict:
    """fit-sae (defaults; --quick: --max-steps 30) on the train split, held-out test;
    sae-eval on test; sae-inspect of the 15 most often firing latents (top 20 images each)."""
    cache, work = Path(cache), Path(work)
    info = _cache_info(cache)
    if "train" not in info["splits"] or "test" not in info["splits"]:
        raise ValueError(f"{cache}: expected splits train and test, got {sorted(info['splits'])}")
    t0 = time.perf_counter()
    sae_dir, eval_dir, insp_dir = work / "sae", work / "sae-eval", work / "sae-inspect"
    fit_args = ["fit-sae", "--cache", cache, "--out", sae_dir, "--overwrite", "--no-progress"]
    if quick:
        fit_args += ["--max-steps", SAE_QUICK_STEPS]
    runs = [cli(*fit_args)]
    runs.append(cli("sae-eval", "--sae", sae_dir, "--cache", cache, "--split", "test",
                    "--out", eval_dir, "--no-progress"))  # fmt: skip
    runs.append(cli("sae-inspect", "--sae", sae_dir, "--cache", cache, "--split", "test",
                    "--n-latents", N_LATENTS, "--top", TOP_IMAGES, "--out", insp_dir,
                    "--overwrite"))  # fmt: skip
    cfg = json.loads((sae_dir / "cfg.json").read_text())["clipcbm"]
    ev = json.loads((eval_dir / "metrics.json").read_text())
    keep = ("n", "fvu", "cosine", "cosine_centred", "nmae", "mse", "l0", "dead_fraction",
            "zero_shot_top1", "zero_shot_top1_recon", "accuracy_kept")  # fmt: skip
    names = _read_csv(sae_dir / "names.csv")
    top = _top_latents(_read_csv(insp_dir / "inspect.csv"), {r["latent"]: r for r in names},
                       info["classes"])  # fmt: skip
    purities = [t["purity"] for t in top if t["purity"] is not None]
    with open_cache(cache) as c:
        y = np.asarray(c.split("test").labels)
    chance = float(np.bincount(y).max() / len(y)) if len(y) else None
    sched = cfg.get("schedule", {})
    return {
        "cache": {k: v for k, v in info.items() if k not in ("classes", "concepts")}
        | {"classes": len(info["classes"]), "concepts": len(info["concepts"])},
        "sae_dir": str(sae_dir),
        "settings": "fit-sae defaults"
        + (f" but --max-steps {SAE_QUICK_STEPS} (quick)" if quick else ""),  # fmt: skip
        "fit": {
            "latents": cfg["n_latents"],
            "expansion": cfg["expansion"],
            "k": cfg["k"],
            "k_aux": cfg.get("k_aux"),
            "steps": sched.get("steps"),
            "batch": sched.get("batch"),
            "train_rows": cfg["n_train"],
            "train_split": cfg["train_split"],
            "heldout": cfg.get("heldout"),
            "train_seconds": cfg["seconds"],
            "samples_per_s": cfg["samples_per_s"],
            "dead_in_training": cfg["dead_train"],
            "threads": _threads(),
            "train_fvu_last": (cfg.get("history") or [{}])[-1].get("fvu"),
            "heldout_metrics": {k: cfg["metrics"].get(k) for k in keep},
        },  # fmt: skip
        "heldout": {"split": ev.get("split", "test"), **{k: ev.get(k) for k in keep}},
        "k_sweep": [{k: _num(v) for k, v in r.items()} for r in _read_csv(eval_dir / "ksweep.csv")],
        "pca_fvu": sae_bench.pca_baseline(cache),
        "names": _name_counts(names, info["classes"], info["concepts"]),
        "top_latents": top,
        "purity": {
            "latents": len(purities),
            "images_per_latent": TOP_IMAGES,
            "mean": float(np.mean(purities)) if purities else None,
            "median": float(np.median(purities)) if purities else None,
            "chance": chance,  # the largest class's share of the test split
            "class_named": sum(t["name_is_class"] for t in top),
            "name_is_majority_class": sum(t["name_is_majority_class"] for t in top),
        },
        "commands": [{k: r[k] for k in ("argv", "seconds")} for r in runs],
        "wall_seconds": round(time.perf_counter() - t0, 2),
    }


def sae_markdown(rep: dict) -> str:
    h = rep["heldout"]
    lines = [f"SAE ({rep['settings']}; {rep['fit']['latents']} latents, k = {rep['fit']['k']}, "
             f"{rep['fit']['steps']} steps): held-out {h['split']} ({h['n']} rows) FVU "
             f"{h['fvu']:.4f}, cosine {h['cosine']:.4f}, L0 {h['l0']:.1f}, dead "
             f"{100 * h['dead_fraction']:.1f} %, zero-shot kept {h['accuracy_kept']:.3f}", "",
             "| latent | name | source | fires % | majority class | purity |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for t in rep["top_latents"]:
        f = "–" if t["fires_fraction"] is None else f"{100 * t['fires_fraction']:.1f}"
        p = "–" if t["purity"] is None else f"{t['purity']:.2f}"
        lines.append(f"| {t['latent']} | {t['name']} | {t['name_source']} | {f} | "
                     f"{t['majority_class']} | {p} |")  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------- 2. the page


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def sae_page(cache: Path, sae_dir: Path, work: Path, png: Path) -> dict:
    """`sae-inspect --html` (defaults) over the cache's test split, then a 1400 x 2000 headless
    Chromium screenshot at `png`."""
    cache, sae_dir, work, png = Path(cache), Path(sae_dir), Path(work), Path(png)
    out_dir = work / "sae-page"
    html = out_dir / "latents.html"
    run = cli("sae-inspect", "--sae", sae_dir, "--cache", cache, "--out", out_dir,
              "--html", html, "--overwrite")  # fmt: skip
    meta = json.loads((out_dir / "inspect.json").read_text())
    text = html.read_text(encoding="utf-8")
    warn = re.search(r"<p class='warn'>(.*?)</p>", text)
    res = {"html": _rel(html), "html_bytes": len(text.encode()), "split": meta["split"],
           "latents": meta["latents"], "dataset": meta.get("dataset"),
           "thumbnails": text.count("data:image/jpeg;base64,"),
           "thumbnail_note": html_lib.unescape(warn.group(1)) if warn else None,
           "thumbnails_need": THUMBNAILS,
           "commands": [{k: run[k] for k in ("argv", "seconds")}]}  # fmt: skip
    browser = _browser()
    if browser is None:
        return {**res, "png": None, "screenshot": None,
                "reason": "no chromium, chromium-browser or google-chrome on PATH"}  # fmt: skip
    png.parent.mkdir(parents=True, exist_ok=True)
    cmd = [browser, "--headless", f"--screenshot={png}", "--window-size=1400,2000",
           "--hide-scrollbars", "--disable-gpu"]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    cmd.append(html.resolve().as_uri())
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        ok, why = p.returncode == 0 and png.is_file(), (p.stderr or p.stdout)[-500:]
    except (OSError, subprocess.SubprocessError) as e:
        ok, why = False, str(e)
    shot = {"browser": browser, "seconds": round(time.perf_counter() - t0, 2)}
    if not ok:
        return {**res, **shot, "png": None, "screenshot": None, "reason": why.strip()}
    return {**res, **shot, "png": _rel(png), "screenshot": _rel(png)}


# --------------------------------------------------------------------------- 3. adapters


def adapter_runs(views: int, quick: bool = False) -> list[dict]:
    """The study's runs (debiased.py's spec format): each loss at M = 1; each loss x each
    aggregation at M = V - 1 (all views; skipped when V = 2); false-negative removal and
    false-positive addition for the unsupervised losses at M = 1."""
    m = views - 1
    out = [{"group": "M = 1", "loss": loss, "positives": 1, "aggregate": "loss-combination"}
           for loss in LOSSES]  # fmt: skip
    if m > 1:
        out += [{"group": f"M = {m}", "loss": loss, "positives": m, "aggregate": agg}
                for loss in LOSSES for agg in AGGREGATES]  # fmt: skip
    out += [{"group": "false-negative removal", "loss": loss, "positives": 1,
             "aggregate": "loss-combination", "remove_false_negatives": True}
            for loss in db.LOSSES3]  # fmt: skip
    out += [{"group": f"false positives {db.FP_RATE:.0%}", "loss": loss, "positives": 1,
             "aggregate": "loss-combination", "false_positive_rate": db.FP_RATE}
            for loss in db.LOSSES3]  # fmt: skip
    if quick:  # one of each kind: NT-Xent, SupCon, an M > 1 aggregation, FNR, FP
        pick = {"contrastive-m1-loss-combination", "supcon-m1-loss-combination",
                f"debiased-pos-m{m}-pos-grouping", "debiased-neg-m1-loss-combination-fnr",
                f"debiased-pos-m1-loss-combination-fp{db.FP_RATE}"}  # fmt: skip
        out = [r for r in out if db.run_name(r) in pick]
    return out


def _fit_flags(spec: dict) -> list:
    flags = ["--loss", spec["loss"], "--positives", spec["positives"],
             "--aggregate", spec["aggregate"]]  # fmt: skip
    if spec.get("remove_false_negatives"):
        flags.append("--remove-false-negatives")
    if spec.get("false_positive_rate"):
        flags += ["--false-positive-rate", spec["false_positive_rate"]]
    return flags


def _knn(cache: Path, out: Path, adapter: Path | None = None) -> dict:
    args = ["knn-eval", "--cache", cache, "--out", out]
    if adapter is not None:
        args += ["--adapter", adapter]
    run = cli(*args)
    m = json.loads(out.read_text())
    return {"weighted": {k: m["weighted"][k] for k in ("top1", "top5")},
            "majority": {k: m["majority"][k] for k in ("top1", "top5")}, "n": m["weighted"]["n"],
            "k": m["k"], "t": m["t"], "bank_rows": m["bank_rows"], "knn_seconds": m["seconds"],
            "knn_wall_seconds": run["seconds"], "_argv": run["argv"]}  # fmt: skip


def _one(cache: Path, work: Path, spec: dict, seed: int, steps: int) -> dict:
    name = f"{db.run_name(spec)}-s{seed}"
    out = work / "fits" / name
    fit = cli("fit-adapter", "--cache", cache, "--out", out, *_fit_flags(spec), "--steps", steps,
              "--seed", seed, "--overwrite", "--no-progress")  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    knn = _knn(cache, work / "knn" / f"{name}.json", out)
    hist = cfg["history"]
    return {"seed": seed, "steps": cfg["train"]["steps"], "fit_seconds": cfg["seconds"],
            "fit_wall_seconds": fit["seconds"], "final_loss": hist[-1]["loss"],
            "tail_loss": db.tail_loss(hist), "_train": cfg["train"], "_fit_argv": fit["argv"],
            **knn}  # fmt: skip


def _summary(per_seed: list[dict], raw: dict) -> dict:
    ms = db._mean_std
    out = {"minutes": ms([r["fit_seconds"] / 60 for r in per_seed]),
           "tail_loss": ms([r["tail_loss"] for r in per_seed])}  # fmt: skip
    for vote in ("weighted", "majority"):
        for metric in ("top1", "top5"):
            out[f"{vote}_{metric}_pct"] = ms([100 * r[vote][metric] for r in per_seed])
    raw1 = 100 * raw["weighted"]["top1"]
    mean = out["weighted_top1_pct"]["mean"]
    out["vs_raw"] = {"delta_top1_pct": mean - raw1, "beats_raw": mean > raw1,
                     "every_seed_beats_raw": all(100 * r["weighted"]["top1"] > raw1
                                                 for r in per_seed)}  # fmt: skip
    return out


def adapter_report(cache: Path, work: Path, seeds=(0, 1, 2), quick: bool = False, *,
                   steps: int | None = None, jobs: int = JOBS) -> dict:  # fmt: skip
    """fit-adapter (defaults but loss / positives / aggregation / variant, --steps, --seed) per
    run of `adapter_runs` x seed, then knn-eval (defaults: k 200, t 0.5, bank train, queries
    test) raw and through each adapter. `steps` defaults to 150 (quick: 5); `jobs` runs at once."""
    cache, work = Path(cache), Path(work)
    info = _cache_info(cache)
    if info["views"] < 2:
        raise ValueError(f"{cache} has {info['views']} views per image; fit-adapter needs >= 2")
    steps = steps or (ADAPTER_QUICK_STEPS if quick else ADAPTER_STEPS)
    seeds = [int(s) for s in seeds]
    specs = adapter_runs(info["views"], quick)
    (work / "knn").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        raw_f = pool.submit(_knn, cache, work / "knn" / "raw.json")
        futs = [[pool.submit(_one, cache, work, s, seed, steps) for seed in seeds] for s in specs]
        raw = raw_f.result()
        results = [[f.result() for f in fs] for fs in futs]
    first = results[0][0] if results and results[0] else {}
    train = first.get("_train", {})
    example = [raw.pop("_argv"), first.get("_fit_argv"), first.get("_argv")]
    rows = []
    for spec, per_seed in zip(specs, results, strict=True):
        per_seed = [{k: v for k, v in r.items() if not k.startswith("_")} for r in per_seed]
        rows.append({**spec, "name": db.run_name(spec), "per_seed": per_seed,
                     "summary": _summary(per_seed, raw)})  # fmt: skip
    raw1 = 100 * raw["weighted"]["top1"]
    n_train = info["splits"].get("train", 0)
    batch = train.get("batch_size", 256)
    per_epoch = max(1, n_train // max(1, min(batch, n_train))) if n_train else 1
    return {
        "cache": {k: v for k, v in info.items() if k not in ("classes", "concepts")}
        | {"classes": len(info["classes"])},
        "settings": {
            "steps": steps, "epochs": steps / per_epoch, "seeds": seeds,
            "batch_size": batch,
            "fit_adapter": {k: train.get(k) for k in ("arch", "dim", "hidden", "lr",
                                                      "weight_decay", "t", "tau_plus")},
            "fit_adapter_flags": "defaults but --loss --positives --aggregate "
            "[--remove-false-negatives | --false-positive-rate 0.3] --steps --seed",
            "knn_eval": "defaults: k 200, t 0.5, bank train, queries test (raw / --adapter)",
            "false_positive_rate": db.FP_RATE, "jobs": jobs, "threads": _threads(),
            "quick": quick, "example_commands": [c for c in example if c],
        },  # fmt: skip
        "baseline_raw": raw,
        "runs": rows,
        "beats_raw": [r["name"] for r in rows if r["summary"]["vs_raw"]["beats_raw"]],
        "every_seed_beats_raw": [r["name"] for r in rows
                                 if r["summary"]["vs_raw"]["every_seed_beats_raw"]],
        "best": max(rows, key=lambda r: r["summary"]["weighted_top1_pct"]["mean"])["name"]
        if rows else None,
        "raw_weighted_top1_pct": raw1,
        "wall_seconds": round(time.perf_counter() - t0, 2),
    }  # fmt: skip


def adapter_markdown(rep: dict) -> str:
    raw = rep["baseline_raw"]
    lines = ["| experiment | loss | M | aggregation | top-1 % (k=200) | std | top-5 % | "
             "Δ vs raw | beats raw | s / fit |", "|---|---|---|---|---|---|---|---|---|---|",
             f"| raw embeddings (no adapter) | – | – | – | {100 * raw['weighted']['top1']:.2f} | "
             f"– | {100 * raw['weighted']['top5']:.2f} | – | – | – |"]  # fmt: skip
    for r in rep["runs"]:
        s = r["summary"]
        agg = r["aggregate"] if r["positives"] > 1 else "–"
        v = s["vs_raw"]
        top1, top5 = s["weighted_top1_pct"], s["weighted_top5_pct"]
        beats, secs = ("yes" if v["beats_raw"] else "no"), 60 * s["minutes"]["mean"]
        lines.append(f"| {r['group']} | {r['loss']} | {r['positives']} | {agg} | "
                     f"{top1['mean']:.2f} | {top1['std']:.2f} | {top5['mean']:.2f} | "
                     f"{v['delta_top1_pct']:+.2f} | {beats} | {secs:.1f} |")  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------- stand-in cache


def standin_cache(path: Path, train: int = 200, test: int = 100, views: int = 4, dim: int = 384,
                  signal: float = 0.12, view_noise: float = 0.5, photos: Path | None = None,
                  seed: int = 0) -> Path:  # fmt: skip
    """A small cache in the testbed's format to try these functions on: 10 classes, unit rows
    signal * class direction + N(0, 1/dim) noise (kNN ~40 % at 200 train rows), views = the row
    + N(0, view_noise^2 / dim), renormalised; ids "test/<class>/NNNN.jpg" (train 0000.., test
    0500..). `photos` (a folder holding test/<class>/NNNN.jpg, e.g. ../shared/data/
    cifar10_test_jpg) is recorded as an imagefolder dataset, so the page shows thumbnails."""
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]  # fmt: skip
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(classes), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def split(n: int, first: int) -> dict:
        y = np.arange(n) % len(classes)
        x = signal * centres[y] + rng.normal(size=(n, dim)) / np.sqrt(dim)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        v = x[:, None] + view_noise * rng.normal(size=(n, views, dim)) / np.sqrt(dim)
        v /= np.linalg.norm(v, axis=2, keepdims=True)
        ids = [f"test/{classes[c]}/{first + i // len(classes):04d}.jpg" for i, c in enumerate(y)]
        return {"image_emb": x.astype(np.float32), "labels": y, "ids": ids,
                "view_emb": v.astype(np.float32)}  # fmt: skip

    concepts = [
        f"{a} {b}"
        for a in (
            "small",
            "striped",
            "metal",
            "furry",
            "winged",
            "wet",
            "red",
            "fast",
            "wild",
            "tall",
            "round",
            "spotted",
        )
        for b in (
            "thing",
            "shape",
            "texture",
            "part",
            "scene",
            "pattern",
            "surface",
            "outline",
            "object",
            "body",
            "form",
            "detail",
        )
    ][:143]
    concept_emb = rng.normal(size=(len(concepts), dim)) + 3 * centres[rng.integers(
        0, len(classes), len(concepts))]  # fmt: skip
    meta = {"model": "testbed-standin"}
    if photos is not None:
        meta["dataset"] = {"name": "imagefolder", "root": str(Path(photos).resolve())}
    return write_cache(path, splits={"train": split(train, 0), "test": split(test, 500)},
                       concepts=concepts, classes=classes, concept_emb=concept_emb,
                       class_emb=centres, metadata=meta, overwrite=True)  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--work", type=Path, default=None, help="outputs (default: a temporary dir)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="adapter seeds (default 0 1 2; --quick: 0)")  # fmt: skip
    ap.add_argument("--png", type=Path, default=None, help="page screenshot (default: in --work)")
    ap.add_argument(
        "--standin",
        type=Path,
        default=None,
        help="write a stand-in cache here (200 / 100 rows) and use it as --cache",
    )
    ap.add_argument("--parts", nargs="+", default=["sae", "page", "adapters"],
                    choices=["sae", "page", "adapters"])  # fmt: skip
    args = ap.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    with tempfile.TemporaryDirectory(prefix="testbed-eval-") as tmp:
        work = args.work or Path(tmp)
        cache = args.cache
        if args.standin is not None:
            photos = ROOT.parent / "shared" / "data" / "cifar10_test_jpg"
            cache = standin_cache(args.standin, photos=photos if photos.is_dir() else None)
        sae = None
        if "sae" in args.parts or "page" in args.parts:
            sae = sae_report(cache, work / "sae", quick=args.quick)
            print(json.dumps(sae, indent=1))
            print(sae_markdown(sae))
        if "page" in args.parts:
            png = args.png or work / "sae" / "page.png"
            print(json.dumps(sae_page(cache, Path(sae["sae_dir"]), work / "sae", png), indent=1))
        if "adapters" in args.parts:
            rep = adapter_report(cache, work / "adapters", seeds=seeds, quick=args.quick)
            print(json.dumps(rep, indent=1))
            print(adapter_markdown(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
