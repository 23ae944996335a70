"""k-shot curves: test top-1 of every head and baseline against training rows per class.

For each cache, each k of a shot list and each seed, k train rows per class are drawn from the
cache's train split (seeded, balanced; a class with fewer than k rows keeps all of them; the
draws of one seed are nested: its k-shot rows hold its j-shot rows for every j < k) and written
as a small cache with `cache.write_cache` (same concepts, classes, class embeddings, templates,
logit scale and concept->class links; metadata["shots"] names the parent cache's fingerprint, k
and seed). The test split is copied whole and unchanged; after writing, the k-shot cache's test
split is read back and checked bit for bit against the parent's (embeddings, labels, ids, ok),
and a mismatch is an error. "all" is the parent cache itself; a k at or above the largest
class's train rows draws the whole train split, is reported as capped (`same_as_all`) and takes
the "all" numbers without refitting.

Measured, as a user runs it: one `python cli.py compare --cache K --out D --overwrite
--no-progress --seed S --method ...` subprocess per (k, seed) with default flags (never
--allow-overlap), read back from its results.csv; each fitted method is compare's row, i.e.
`fit-head --loss probe|l1|contrastive|sparse` at its defaults with `--seed S`. zero-shot runs in
every compare (it uses no train row, so it must equal the parent's: a second check that the
test split is untouched); CMS is training-free too and is measured once per cache (the first
compare). Beside them the scikit-learn LogisticRegression probe (compare's sklearn-probe
row, `SKLEARN_PROTOCOL`).

    python benchmarks/shots.py [--cache [NAME=]PATH ...] [--shots 1 2 4 8 16 all] [--seeds 3]
        [--methods ...] [--max-steps N] [--work-dir DIR] [--out PATH] [--quick]

Default caches: the leak-free CIFAR-10 description cache of benchmarks/description_proxy.py
(`build_proxy_cache("cifar10")`, built or reused; needs ../shared/data) and the real-photo
testbed cache runs/testbed/cifar10-photos.zarr (benchmarks/testbed.py) when it exists (else
skipped with a note). Writes benchmarks/results/shots.json and shots.png (one panel per cache:
x = shots per class, log; y = test top-1 %; one line per method with a +-std band over seeds;
zero-shot dashed). k-shot caches and compare outputs go to runs/shots/<name>/.

`--quick`: a tiny planted cache in a temporary directory, k in {1, 2}, one seed, 20 steps;
written to shots.quick.json / shots.quick.png unless --out is given (not a result).

Other scripts: `shot_curve(cache_path, work_dir, shots, seeds, methods, quick=False)` returns
the per-method, per-k summary of one cache (the JSON's `caches[NAME]`).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _provenance import Run, add_common_args, parse_args  # noqa: E402

from clipcbm.cache import open_cache, write_cache  # noqa: E402
from clipcbm.heads.baselines.sklearn_probe import SKLEARN_PROTOCOL  # noqa: E402

CLI = ROOT / "cli.py"
DEFAULT_OUT = ROOT / "benchmarks/results/shots.json"
WORK_DIR = ROOT / "runs" / "shots"
TESTBED_CACHE = ROOT / "runs" / "testbed" / "cifar10-photos.zarr"
ALL = "all"
DEFAULT_SHOTS = ("1", "2", "4", "8", "16", ALL)
METHODS = (
    "zero-shot",
    "cms",
    "sklearn-probe",
    "probe",
    "l1",
    "contrastive",
    "sparse",
    "l1-elastic-net",
    "sparse-elastic-net",
    "lf-cbm-scores",
)
COMPARE_METHODS = METHODS  # every row is compare's (sklearn-probe: its reference row)
TRAINING_FREE = ("zero-shot", "cms")  # the same at every k: the test split never changes
QUICK_MAX_STEPS = 20
QUICK_PLANTED = {
    "n_train": 96,
    "n_test": 48,
    "n_classes": 8,
    "n_concepts": 24,
    "noise": 1.0,
    "seed": 0,
}  # 8 classes: 1 shot leaves a val row
DRAW = (
    "per seed: for each class (class order) a default_rng(seed) permutation of its valid train "
    "rows; the k-shot rows are the first min(k, n_class) of each (nested in k), kept in the "
    "parent's row order"
)
_WRITER_KEYS = {
    "format",
    "format_version",
    "fingerprint",
    "identity",
    "created",
    "splits",
    "views",
    "complete",
    "overlap",
    "embed_dim",
    "logit_scale",
    "concepts_sha256",
    "classes_sha256",
}  # written by the cache writer itself


class ShotsError(RuntimeError):
    """A one-line, user-facing failure (missing cache, bad shot list)."""


# --------------------------------------------------------------------------- k-shot caches


def parse_shots(shots) -> list[str]:
    """["1", "2", "all"] from ints / strings; refuses k < 1 and unknown words."""
    out = []
    for s in shots:
        s = str(s).strip().lower()
        if s != ALL:
            try:
                k = int(s)
            except ValueError:
                msg = f"a shot count must be a positive integer or 'all', got {s!r}"
                raise ShotsError(msg) from None
            if k < 1:
                raise ShotsError(f"a shot count must be >= 1, got {k}")
            s = str(k)
        if s not in out:
            out.append(s)
    return sorted(out, key=lambda s: math.inf if s == ALL else int(s))


def draw_rows(labels: np.ndarray, n_classes: int, k: int, seed: int) -> np.ndarray:
    """Indices (sorted) of min(k, n_class) rows per class: DRAW."""
    rng = np.random.default_rng(seed)
    picked = []
    for m in range(n_classes):
        rows = np.flatnonzero(labels == m)
        picked.append(rows[rng.permutation(len(rows))[:k]])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def _same_split(a, b) -> bool:
    return (
        np.array_equal(a.image_emb, b.image_emb)
        and np.array_equal(a.labels, b.labels)
        and np.array_equal(a.ids, b.ids)
        and np.array_equal(a.ok, b.ok)
    )


def write_shot_cache(
    parent: Path, out: Path, k: int, seed: int, train_split="train", test_split="test"
) -> dict:
    """Write (or reuse) the k-shot cache of `parent` at `out`; returns its record."""
    with open_cache(parent) as c:
        train, test = c.split(train_split), c.split(test_split)
        valid = np.flatnonzero(train.ok)
        n_classes = len(c.classes)
        pick = valid[draw_rows(train.labels[valid], n_classes, k, seed)]
        record = {
            "parent_fingerprint": c.fingerprint,
            "parent_path": str(parent),
            "k": k,
            "seed": seed,
            "rows": int(len(pick)),
            "draw": DRAW,
            "test_split": f"{test_split!r} copied whole, unchanged",
        }
        reused = False
        if out.exists():
            try:
                with open_cache(out) as old:
                    reused = old.metadata.get("shots") == record
            except Exception:  # incomplete or not a cache: rewritten below
                reused = False
        if not reused:
            _write_subset(c, out, train, test, pick, record)
    with open_cache(out) as new:  # written now or earlier: the test split must be the parent's
        if not _same_split(new.split(test_split), test):
            raise RuntimeError(f"{out}: the test split differs from {parent}'s (a bug here)")
    return {**record, "path": str(out), "reused": reused}


def _write_subset(c, out: Path, train, test, pick, record: dict) -> None:
    """The parent `c`'s text side and its whole `test` split, with only the `pick` train rows."""
    splits = {}
    for s, sel in ((train, pick), (test, slice(None))):
        splits[s.name] = {
            "image_emb": s.image_emb[sel],
            "labels": s.labels[sel],
            "ids": s.ids[sel],
            "ok": s.ok[sel],
        }
        if c.views:
            splits[s.name]["view_emb"] = c.view_emb(s.name)[sel]
    links = c.concept_classes
    write_cache(
        out,
        splits=splits,
        concepts=c.concepts,
        classes=c.classes,
        concept_emb=c.concept_emb(),
        class_emb=c.class_emb(),
        templates=c.templates,
        logit_scale=c.logit_scale,
        concept_classes=links if any(links) else None,
        metadata={
            **{k: v for k, v in c.metadata.items() if k not in _WRITER_KEYS},
            "shots": record,
        },
        overwrite=True,
    )


# --------------------------------------------------------------------------- measurement


def run_compare(cache: Path, out: Path, methods, seed: int, max_steps: int | None) -> dict:
    """`cli.py compare` on `cache`: method -> its results.csv row (+ "_run": argv, seconds)."""
    cmd = [
        sys.executable,
        str(CLI),
        "compare",
        "--cache",
        str(cache),
        "--out",
        str(out),
        "--overwrite",
        "--no-progress",
        "--seed",
        str(seed),
    ]
    for m in methods:
        cmd += ["--method", m]
    if max_steps is not None:
        cmd += ["--max-steps", str(max_steps)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    run = {"argv": ["cli.py", *cmd[2:]], "seconds": round(time.perf_counter() - t0, 2)}
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
        return {"_run": {**run, "error": f"rc {p.returncode}: " + " | ".join(tail)}}
    rows = {"_run": run}
    with open(out / "results.csv", newline="") as f:
        for r in csv.DictReader(f):
            name = r.pop("method")
            rows[name] = {k: (float(v) if v not in ("", None) else None) for k, v in r.items()}
    return rows


def _std(v: list[float]) -> float | None:
    return float(np.std(v, ddof=1)) if len(v) > 1 else None


def _summary(vals: list[float | None], secs: list[float | None], rows: list[int]) -> dict:
    ok = [v for v in vals if v is not None]
    timed = [t for t in secs if t is not None]
    return {
        "mean": float(np.mean(ok)) if ok else None,
        "std": _std(ok),
        "per_seed": vals,
        "rows": rows,
        "seconds_mean": float(np.mean(timed)) if timed else None,
        "seconds_per_seed": secs,
    }


def _cache_info(path: Path) -> dict:
    with open_cache(path) as c:
        train = c.split("train")
        per = np.bincount(train.labels[train.ok], minlength=len(c.classes))
        return {
            "path": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            "fingerprint": c.fingerprint,
            "classes": len(c.classes),
            "concepts": len(c.concepts),
            "embed_dim": int(c.embed_dim),
            "train_rows": int(per.sum()),
            "test_rows": int(c.split("test").ok.sum()),
            "train_rows_per_class": {
                "min": int(per.min()),
                "max": int(per.max()),
                "mean": float(per.mean()),
            },
            "_per_class": per,
        }


def zero_shot_ceiling(cache_path: Path) -> dict:
    """How well ANY linear final layer over this cache's concepts can reproduce zero-shot: the
    ridge map from the test rows' concept logits psi (dense, and TopK'd as the default sparse
    head's bottleneck) to their zero-shot logits, fitted on the test rows themselves, scored as
    test top-1. A ceiling for a CBM that keeps its zero-shot start, not a result (it sees test).
    """
    import torch

    from clipcbm.heads.cbm.config import FitHeadConfig, resolve_topk
    from clipcbm.heads.cbm.init import ridge_weights
    from clipcbm.heads.cbm.model import ConceptBottleneck

    with open_cache(cache_path) as c:
        test = c.split("test").valid()
        x = torch.from_numpy(test.image_emb).double()
        d = torch.from_numpy(np.asarray(c.concept_emb())).double()
        cl = torch.from_numpy(np.asarray(c.class_emb())).double()
        scale = float(c.logit_scale)
    y = torch.from_numpy(test.labels)
    z = scale * x @ cl.T
    k = resolve_topk(FitHeadConfig(cache=cache_path), len(d))
    out = {"rows": len(y), "topk": k, "zero_shot": float((z.argmax(1) == y).double().mean())}
    for name, topk in (("dense", 0), ("sparse_topk", k)):
        a = ConceptBottleneck(len(d), len(cl), topk=topk).bottleneck(scale * x @ d.T)
        ac, zc = a - a.mean(0), z - z.mean(0)
        w, _ = ridge_weights(ac, zc, dual=len(a) < len(d))
        out[name] = float(((ac @ w.T).argmax(1) == y).double().mean())
    return out


def shot_curve(
    cache_path,
    work_dir,
    shots=DEFAULT_SHOTS,
    seeds=3,
    methods=METHODS,
    quick=False,
    *,
    max_steps: int | None = None,
    name: str | None = None,
) -> dict:
    """The k-shot curve of one cache: {"cache", "shots", "seeds", "k", "methods", "runs", ...}.

    `shots`: ints and/or "all"; `seeds`: a count (seeds 0..n-1) or a list of ints; `methods`:
    names from METHODS; `quick`: compare at --max-steps 20 (`max_steps` overrides; None: the
    product's default). k-shot caches and compare outputs go under `work_dir`.
    methods[m]["by_k"][k] = {"mean", "std" (over seeds, ddof 1; None for one seed),
    "per_seed", "rows" (k-shot train rows per seed), "seconds_mean", "seconds_per_seed"}."""
    cache_path, work_dir = Path(cache_path), Path(work_dir)
    if not cache_path.exists():
        raise ShotsError(
            f"no cache at {cache_path}: pass --cache PATH to a cache written by "
            "`python cli.py embed` (or benchmarks/testbed.py, description_proxy.py)"
        )
    name = name or cache_path.name.removesuffix(".zarr").removesuffix(".h5")
    shots = parse_shots(shots)
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or not seeds:
        raise ShotsError(
            f"methods must be a non-empty subset of {list(METHODS)} (got "
            f"{unknown or 'none'}) and seeds non-empty"
        )
    methods = [m for m in METHODS if m in methods]
    max_steps = QUICK_MAX_STEPS if quick and max_steps is None else max_steps
    info = _cache_info(cache_path)
    per = info.pop("_per_class")
    info["zero_shot_ceiling"] = zero_shot_ceiling(cache_path)
    k_info = {}
    for s in shots:
        if s == ALL:
            k_info[s] = {
                "k": ALL,
                "per_class_rows": {"min": int(per.min()), "max": int(per.max())},
                "rows": int(per.sum()),
                "cache": "the parent cache",
            }
            continue
        k = int(s)
        used = np.minimum(per, k)
        same = bool(k >= per.max())
        k_info[s] = {
            "k": k,
            "per_class_rows": {"min": int(used.min()), "max": int(used.max())},
            "rows": int(used.sum()),
            "capped": bool(k > per.min()),
            "classes_with_fewer_than_k": int((per < k).sum()),
            "same_as_all": same,
        }
        if k_info[s]["capped"]:
            note = (
                f"k={k} > the smallest class's {int(per.min())} train rows: "
                f"{k_info[s]['classes_with_fewer_than_k']} classes keep all their rows"
            )
            if same:
                note += "; every class keeps all: the whole train split (= 'all', not refitted)"
            k_info[s]["note"] = note
            print(f"[{name}] {note}", flush=True)
    measured = [s for s in shots if s == ALL or not k_info[s]["same_as_all"]]
    if any(k_info[s].get("same_as_all") for s in shots) and ALL not in measured:
        measured.append(ALL)  # a capped k takes the "all" numbers
    compare_methods = [m for m in methods if m in COMPARE_METHODS and m != "cms"]
    if "zero-shot" not in compare_methods:
        compare_methods.insert(0, "zero-shot")  # every run: the test-split check
    runs, raw = [], {m: {} for m in methods}  # raw[m][k] = list of (value, seconds, rows)
    zero_shot_values = set()
    cms_done = "cms" not in methods
    for s in measured:
        for seed in seeds:
            t0 = time.perf_counter()
            tag = f"k{s}-s{seed}"
            if s == ALL:
                path, rec = cache_path, {"rows": info["train_rows"], "reused": True}
            else:
                path = work_dir / f"{tag}.zarr"
                rec = write_shot_cache(cache_path, path, int(s), seed)
            ms = [*compare_methods, *([] if cms_done else ["cms"])]
            res = run_compare(path, work_dir / "compare" / tag, ms, seed, max_steps)
            run = {
                "k": s,
                "seed": seed,
                "cache": str(path),
                "rows": rec["rows"],
                "cache_reused": rec["reused"],
                **res.pop("_run"),
            }
            if "error" not in run:
                cms_done = cms_done or "cms" in ms
                zero_shot_values.add(res["zero-shot"]["top1"])
            for m in methods:
                if m in res:
                    raw[m].setdefault(s, []).append(
                        (res[m]["top1"], res[m]["seconds"], rec["rows"], res[m].get("faithfulness"))
                    )
            run["total_seconds"] = round(time.perf_counter() - t0, 2)
            runs.append(run)
            shown = " ".join(f"{m} {res[m]['top1']:.3f}" for m in methods if m in res)
            err = f" ERROR {run['error']}" if "error" in run else ""
            print(
                f"[{name}] k={s} seed {seed}: {rec['rows']} train rows -> {shown} "
                f"({run['total_seconds']:.1f} s){err}",
                flush=True,
            )
    if len(zero_shot_values) > 1:
        raise RuntimeError(
            f"{name}: zero-shot differs across k-shot caches "
            f"({sorted(zero_shot_values)}): the test split changed (a bug here)"
        )
    out_methods = {}
    for m in methods:
        by_k = {}
        for s in shots:
            src = ALL if s != ALL and k_info[s]["same_as_all"] else s
            if m in TRAINING_FREE:  # measured once or per run: the same number at every k
                got = [v for vals in raw[m].values() for v in vals][:1] * len(seeds)
            else:
                got = raw[m].get(src, [])
            rows = [0 if m in TRAINING_FREE else g[2] for g in got]  # train rows it read
            entry = _summary([g[0] for g in got], [g[1] for g in got], rows)
            faith = [g[3] for g in got if g[3] is not None and not math.isnan(g[3])]
            entry["faithfulness_mean"] = float(np.mean(faith)) if faith else None
            if src != s:
                entry["same_as"] = ALL
            by_k[s] = entry
        out_methods[m] = {"training_free": m in TRAINING_FREE, "by_k": by_k}
    return {
        "name": name,
        "cache": info,
        "shots": shots,
        "seeds": seeds,
        "max_steps": max_steps,
        "k": k_info,
        "methods": out_methods,
        "runs": runs,
        "errors": [f"k={r['k']} seed {r['seed']}: {r['error']}" for r in runs if "error" in r],
        "test_split_check": "k-shot caches' test split read back bit-identical to the parent's; "
        f"zero-shot top-1 over every run: {sorted(zero_shot_values)}",
    }


# --------------------------------------------------------------------------- report


STYLE = {"zero-shot": ("0.3", "--"), "cms": ("0.55", ":")}


def plot(curves: dict[str, dict], path: Path) -> Path | None:
    """One panel per cache: x = shots per class (log; 'all' right of the largest k), y = test
    top-1 %, a line per fitted method with a +-std band, training-free methods horizontal."""
    from clipcbm.heads.eval.plots import new_figure, save_figure

    if not curves:
        return None
    fig, axes = new_figure((5.2 * len(curves), 4.0), ncols=len(curves))
    axes = [axes] if len(curves) == 1 else list(axes)
    for ax, (name, cur) in zip(axes, curves.items(), strict=True):
        ks = [s for s in cur["shots"] if s == ALL or not cur["k"][s]["same_as_all"]]
        finite = [int(s) for s in ks if s != ALL]
        all_x = 2.0 * max([*finite, cur["cache"]["train_rows_per_class"]["max"] // 2, 1])
        xs = {s: (all_x if s == ALL else int(s)) for s in ks}
        for m, mv in cur["methods"].items():
            if mv["training_free"]:
                v = next((e["mean"] for e in mv["by_k"].values() if e["mean"] is not None), None)
                if v is not None:
                    color, ls = STYLE.get(m, ("0.5", "-."))
                    ax.axhline(
                        100 * v,
                        color=color,
                        linestyle=ls,
                        linewidth=1.0,
                        label=f"{m} ({100 * v:.1f})",
                    )
                continue
            pts = [(xs[s], mv["by_k"][s]) for s in ks if mv["by_k"][s]["mean"] is not None]
            if not pts:
                continue
            x = np.array([p[0] for p in pts], dtype=float)
            y = 100 * np.array([p[1]["mean"] for p in pts])
            sd = 100 * np.array([p[1]["std"] or 0.0 for p in pts])
            (line,) = ax.plot(x, y, "o-", markersize=3, linewidth=1.2, label=m)
            ax.fill_between(x, y - sd, y + sd, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        labels = [
            ("all" if s == ALL else s + ("*" if cur["k"][s].get("capped") else "")) for s in ks
        ]
        ax.set_xticks([xs[s] for s in ks], labels)
        ax.minorticks_off()
        ax.set_xlabel("shots per class (* capped: some classes have fewer rows)", fontsize=8)
        ax.set_ylabel("test top-1 %")
        c = cur["cache"]
        ax.set_title(
            f"{name}: {c['classes']} classes, {c['train_rows']} train / "
            f"{c['test_rows']} test, {len(cur['seeds'])} seed(s)",
            fontsize=9,
        )
        ax.grid(color="0.92", linewidth=0.6)
        ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def table(cur: dict) -> str:
    """Markdown: method x k, test top-1 % mean +- std."""
    ks = cur["shots"]
    lines = ["| method | " + " | ".join(f"k={s}" for s in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for m, mv in cur["methods"].items():
        cells = []
        for s in ks:
            e = mv["by_k"][s]
            if e["mean"] is None:
                cells.append("–")
            else:
                sd = "" if e["std"] is None or mv["training_free"] else f" ± {100 * e['std']:.1f}"
                cells.append(f"{100 * e['mean']:.1f}{sd}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    rows = " | ".join(str(cur["k"][s]["rows"]) for s in ks)
    lines.append(f"| (train rows) | {rows} |")
    return "\n".join(lines)


def _parse_cache(spec: str) -> tuple[str | None, Path]:
    head, sep, tail = spec.partition("=")
    if sep and head and "/" not in head and not head.endswith((".zarr", ".h5")):
        return head, Path(tail)
    return None, Path(spec)


def default_caches(quick: bool, tmp: Path | None) -> tuple[dict[str, Path], dict[str, str]]:
    """name -> path of the default caches, and name -> why one was skipped."""
    if quick:
        from clipcbm.cache.planted import make_planted_cache

        return {"planted-tiny": make_planted_cache(tmp / "planted.zarr", **QUICK_PLANTED)}, {}
    import description_proxy as dp

    caches = {"cifar10-desc": dp.build_proxy_cache("cifar10")}
    skipped = {}
    if TESTBED_CACHE.exists():
        caches["cifar10-photos"] = TESTBED_CACHE
    else:
        skipped["cifar10-photos"] = (
            f"{TESTBED_CACHE.relative_to(ROOT)} absent (build it with benchmarks/testbed.py)"
        )
    return caches, skipped


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cache",
        action="append",
        default=None,
        metavar="[NAME=]PATH",
        help="a cache to measure (repeat); default: the CIFAR-10 description cache "
        "and runs/testbed/cifar10-photos.zarr when present",
    )
    p.add_argument(
        "--shots",
        nargs="+",
        default=list(DEFAULT_SHOTS),
        help="shots per class (integers and/or 'all')",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (draw and fit)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="compare --max-steps (default: the product's; --quick: 20)",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="k-shot caches and compare outputs (default runs/shots/<name>/; "
        "--quick: a temporary directory)",
    )
    add_common_args(p, DEFAULT_OUT, quick={"shots": ["1", "2"], "seeds": 1})
    args = parse_args(p, argv)
    run = Run(args.quick)
    tmp = tempfile.TemporaryDirectory(prefix="shots_quick_") if args.quick else None
    tmp_path = Path(tmp.name) if tmp else None
    try:
        shots = parse_shots(args.shots)
        if args.cache:
            caches, skipped = {}, {}
            for spec in args.cache:
                name, path = _parse_cache(spec)
                name = name or path.name.removesuffix(".zarr").removesuffix(".h5")
                if not path.exists():
                    raise ShotsError(
                        f"no cache at {path} (--cache {spec}): pass the path of a "
                        "cache written by `python cli.py embed` or write_cache"
                    )
                caches[name] = path
        else:
            caches, skipped = default_caches(args.quick, tmp_path)
        for name, why in skipped.items():
            print(f"note: skipping {name}: {why}", flush=True)
        curves = {}
        t0 = time.perf_counter()
        for name, path in caches.items():
            work = (tmp_path or WORK_DIR) / name if args.work_dir is None else args.work_dir / name
            curves[name] = shot_curve(
                path,
                work,
                shots,
                args.seeds,
                args.methods,
                quick=args.quick,
                max_steps=args.max_steps,
                name=name,
            )
        png = plot(curves, args.out.with_suffix(".png"))
    except ShotsError as e:
        sys.exit(f"shots: {e}")
    finally:
        if tmp:
            tmp.cleanup()
    import sklearn

    result = {
        "benchmark": "shots",
        "settings": {
            "shots": shots,
            "seeds": list(range(args.seeds)),
            "methods": [m for m in METHODS if m in args.methods],
            "max_steps": args.max_steps
            if args.max_steps is not None
            else (QUICK_MAX_STEPS if args.quick else "product default"),
            "command": "python cli.py compare --cache K --out D --overwrite --no-progress "
            "--seed S --method zero-shot [--method cms] --method probe --method l1 --method "
            "contrastive --method sparse"
            + (
                f" --max-steps {args.max_steps}"
                if args.max_steps
                else " --max-steps 20"
                if args.quick
                else ""
            ),
            "entry": "subprocess `python cli.py compare` per (cache, k, seed), default flags, "
            "never --allow-overlap; each fitted method = fit-head --loss <m> at its defaults with "
            "--seed S (compare's row, read from results.csv), sklearn-probe included",
            "draw": DRAW,
            "all": "the parent cache itself; a k >= the largest class's train rows is the same "
            "draw (same_as_all: its numbers are the 'all' ones, not refitted)",
            "training_free": "zero-shot (in every compare) and cms (once per cache) use no train "
            "row: the same value at every k",
            "sklearn_protocol": SKLEARN_PROTOCOL,
            "std": "over seeds, ddof 1 (None for one seed)",
            "note": "k-shot caches are written by cache.write_cache: their stored norms are 1 "
            "(no head reads norms); the test split is checked bit-identical to the parent's",
            "sklearn": sklearn.__version__,
        },
        "skipped": skipped,
        "caches": curves,
        "tables_markdown": {n: table(c) for n, c in curves.items()},
        "png": str(png) if png else None,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    run.write(args.out, result)
    for n, c in curves.items():
        print(f"\n{n} (test top-1 %, mean ± std over {len(c['seeds'])} seed(s))\n{table(c)}")
    print(f"\nwrote {args.out} and {png}")
    errors = [f"{n}: {e}" for n, c in curves.items() for e in c["errors"]]
    if errors:
        sys.exit(f"{len(errors)} run(s) failed (in the JSON):\n  " + "\n  ".join(errors))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
