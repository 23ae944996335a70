"""Stage one: frozen CLIP over a dataset into a resumable, sharded embedding cache (SPEC §1, §5).

Decode + resize + crop run in DataLoader worker processes (Pillow, uint8 out); normalisation and
the forward pass run batched on the device; whole shards go to `cache.CacheWriter`. zarr stays in
the main process (its event-loop thread must not be forked into workers).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from clipcbm.cache import CacheWriter, sha256_lines
from clipcbm.core.device import resolve_device
from clipcbm.core.location import Location, is_remote, location_str
from clipcbm.core.outputs import check_output_path, lock_target, locked
from clipcbm.core.progress import bar as progress_bar

from .concepts.io import read_concept_file
from .config import EmbedConfig
from .datasets import UnreadableImageError, build_dataset
from .distributed import DistContext
from .encoder import DTYPES, ClipEncoder, check_texts, load_tokenizer, resolve_dtype
from .preprocess import PreprocessSpec, crop_uint8, normalize_batch
from .prompts import load_templates

log = logging.getLogger(__name__)


@dataclass
class EmbedResult:
    path: Location  # a Path, or the --out URL
    status: str  # "complete" (nothing to do) | "new" | "resume"
    rows: dict[str, int]
    unreadable: dict[str, int]
    seconds: float
    images_per_s: float


class _Decoded(Dataset):
    """Worker side: image i -> (i, uint8 crop, ok, reason, views). Never raises on a bad image.

    views: (V, crop, crop, 3) uint8 augmented views (`embed --views V`), each a pure function
    of (image, seed, split, i, v) (`pipeline.augment.view_seed`), so resumed runs are identical.
    """

    def __init__(self, ds, spec: PreprocessSpec, views: int = 0, augment: str = "simclr",
                 seed: int = 0, split: str = ""):  # fmt: skip
        self.ds, self.spec = ds, spec
        self.views, self.augment, self.seed, self.split = views, augment, seed, split

    def __len__(self) -> int:
        return len(self.ds)

    def _views(self, img, i: int) -> np.ndarray:
        from .augment import augment_image, view_seed

        return np.stack([
            crop_uint8(augment_image(img, view_seed(self.seed, self.split, i, v), self.augment),
                       self.spec)
            for v in range(self.views)
        ])  # fmt: skip

    def __getitem__(self, i: int):
        c = self.spec.crop
        try:
            draft = self.spec.resize if self.spec.jpeg_draft else None
            img = self.ds.load(i, draft)
            views = self._views(img, i) if self.views else np.zeros((0, c, c, 3), np.uint8)
            return i, crop_uint8(img, self.spec), True, "", views
        except UnreadableImageError as e:
            reason = e.reason
        except Exception as e:  # a decoder bug must not kill a multi-hour run; record it
            reason = f"{type(e).__name__}: {e}"
        blank = np.zeros((c, c, 3), np.uint8)
        return i, blank, False, reason, np.zeros((self.views, c, c, 3), np.uint8)


def _collate(items):
    idx, imgs, ok, reasons, views = zip(*items, strict=True)
    return (torch.tensor(idx), torch.from_numpy(np.stack(imgs)), torch.tensor(ok), list(reasons),
            torch.from_numpy(np.stack(views)))  # fmt: skip


def _workers(requested: int) -> int:
    return max(0, min(32, (os.cpu_count() or 1) - 1)) if requested < 0 else requested


def _library_versions() -> dict:
    import h5py
    import PIL
    import transformers
    import zarr

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "zarr": zarr.__version__,
        "h5py": h5py.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def _model_info(cfg: EmbedConfig) -> tuple[dict, PreprocessSpec]:
    """Config-only look at the model (no weights): identity fields and preprocessing."""
    import transformers

    from .encoder import EncoderError
    from .hub import pretrained_kwargs

    kw = pretrained_kwargs(cfg.model, cfg.revision)  # offline: fail fast, or load from cache
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the "torchvision missing, using PIL" notice
    try:
        from transformers import CLIPConfig, CLIPImageProcessor

        config = CLIPConfig.from_pretrained(cfg.model, revision=cfg.revision, **kw)
        proc = CLIPImageProcessor.from_pretrained(cfg.model, revision=cfg.revision, **kw)
    except (OSError, ValueError) as e:
        raise EncoderError(
            f"could not read CLIP config / image processor of {cfg.model!r}: {e}. Give a "
            "Hugging Face CLIP model id (network needed the first time) or a local "
            "save_pretrained directory."
        ) from e
    finally:
        transformers.logging.set_verbosity(verbosity)
    info = {
        "id": cfg.model,
        "revision": cfg.revision,
        "commit": getattr(config, "_commit_hash", None),
        "embed_dim": int(config.projection_dim),
    }
    return info, PreprocessSpec.from_image_processor(proc, jpeg_draft=cfg.jpeg_draft)


def _build_datasets(cfg: EmbedConfig, dist: DistContext) -> dict:
    def build(download: bool) -> dict:
        return {
            s: build_dataset(
                cfg.dataset, Path(cfg.root), s, download=download, classes_file=cfg.classes_file
            )
            for s in cfg.splits
        }

    # Only rank 0 may download; the others wait and read what it fetched.
    datasets = build(cfg.download) if dist.is_main else None
    dist.barrier()
    datasets = datasets or build(False)
    first = datasets[cfg.splits[0]].classes
    for s, d in datasets.items():
        if d.classes != first:
            raise ValueError(f"split {s!r} has different classes than {cfg.splits[0]!r}")
    return datasets


def _describe(cfg, datasets, concepts, templates, model, spec, dtype) -> tuple[dict, dict]:
    """(identity: what makes two caches the same, metadata: everything recorded)."""
    classes = datasets[cfg.splits[0]].classes
    identity = {
        "model": model,
        "preprocess": spec.to_dict(),
        "compute_dtype": next(k for k, v in DTYPES.items() if v == dtype),
        "dataset": {s: d.fingerprint() for s, d in datasets.items()},
        "concepts_sha256": concepts.sha256,
        "classes_sha256": sha256_lines(classes),
        "templates": templates,
    }
    if cfg.views:  # only then: caches without views keep their fingerprint
        identity["views"] = {"n": cfg.views, "augment": cfg.augment, "seed": cfg.seed}
    if cfg.truncate:  # cut texts embed differently; caches without it keep their fingerprint
        identity["truncate"] = True
    metadata = {
        "model": model,
        "embed_dim": model["embed_dim"],
        "preprocess": spec.to_dict(),
        "compute_dtype": identity["compute_dtype"],
        "versions": _library_versions(),
        "dataset": {
            "name": cfg.dataset,
            "root": str(cfg.root),
            "splits": {s: d.describe() for s, d in datasets.items()},
        },
        "concepts_sha256": concepts.sha256,
        "classes_sha256": identity["classes_sha256"],
        "concepts_file": str(cfg.concepts),
        "templates": templates,
        "seed": cfg.seed,
        "augment": cfg.augment if cfg.views else None,
        **({"notes": cfg.extra} if cfg.extra else {}),
    }
    return identity, metadata


def _write_shard(writer, split, shard, ds, parts) -> None:
    idx = torch.cat([p[0] for p in parts]).numpy()
    ok = torch.cat([p[3] for p in parts]).numpy()
    reasons = [r for p in parts for r in p[4]]
    rows = writer.plans[split].rows(shard)
    if not np.array_equal(idx, np.arange(rows.start, rows.stop)):
        raise RuntimeError(f"internal: shard {shard} received rows out of order")
    ids = [ds.ids[i] for i in idx]
    failures = [
        {"index": int(i), "id": ids[k], "reason": reasons[k]}
        for k, i in enumerate(idx)
        if not ok[k]
    ]
    for f in failures:
        log.warning("unreadable image in split %s: %s (%s)", split, f["id"], f["reason"])
    writer.write_shard(
        split,
        shard,
        image_emb=torch.cat([p[1] for p in parts]).numpy(),
        view_emb=torch.cat([p[5] for p in parts]).numpy() if writer.views else None,
        norms=torch.cat([p[2] for p in parts]).numpy(),
        labels=ds.labels[idx],
        ids=ids,
        ok=ok,
        failures=failures,
    )


def _embed_views(views: torch.Tensor, enc, spec, keep: torch.Tensor) -> torch.Tensor:
    """(B, V, c, c, 3) uint8 views -> (B, V, E) fp16 unit embeddings (zeros where not ok)."""
    b, v = views.shape[:2]
    pixels = normalize_batch(views.flatten(0, 1).to(enc.device, non_blocking=True), spec, enc.dtype)
    emb, _ = enc.encode_images(pixels)
    emb = emb.reshape(b, v, -1) * keep[:, None, None]
    return emb.half().cpu()


def _embed_split(writer, split, ds, enc, spec, cfg, dist, bar) -> int:
    """Embed this rank's unfinished shards of one split; returns rows embedded."""
    plan = writer.plans[split]
    shards = writer.pending_shards(split, dist.rank, dist.world)
    # Batches never straddle shards, so a shard is written as soon as its last batch is back.
    batches = [
        list(plan.rows(s))[i : i + cfg.batch_size]
        for s in shards
        for i in range(0, len(plan.rows(s)), cfg.batch_size)
    ]
    if not batches:
        return 0
    workers = _workers(cfg.workers)
    loader = DataLoader(
        _Decoded(ds, spec, cfg.views, cfg.augment, cfg.seed, split),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=enc.device.type == "cuda",
        prefetch_factor=4 if workers else None,
        multiprocessing_context=("fork" if platform.system() == "Linux" else "spawn")
        if workers
        else None,
    )
    todo, parts, have, done = iter(shards), [], 0, 0
    shard = next(todo)
    for idx, imgs, ok, reasons, views in loader:
        pixels = normalize_batch(imgs.to(enc.device, non_blocking=True), spec, enc.dtype)
        emb, norms = enc.encode_images(pixels)
        keep = ok.to(emb.device)
        emb, norms = emb * keep[:, None], norms * keep  # unreadable rows are stored as zeros
        view_emb = _embed_views(views, enc, spec, keep) if cfg.views else None
        parts.append((idx, emb.half().cpu(), norms.cpu(), ok, reasons, view_emb))
        have += len(idx)
        bar.update(len(idx))
        if have == len(plan.rows(shard)):
            _write_shard(writer, split, shard, ds, parts)
            done += have
            parts, have, shard = [], 0, next(todo, None)
    return done


def run(cfg: EmbedConfig) -> EmbedResult:
    """Embed every split of `cfg.dataset` into `cfg.out`; resumes an interrupted run. One run
    per output: the output is locked for the run (core.outputs; under torchrun rank 0 holds the
    lock for the job), so a second run on the same --out exits 2 naming the holder."""
    target = lock_target(cfg.out)  # a URL: a local stand-in (core.outputs)
    with locked(target if is_remote(cfg.out) else check_output_path(cfg.out)):
        dist = DistContext.from_env()
        device = dist.device_for(resolve_device(cfg.device))
        dist.init(device)
        try:
            return _run(cfg, dist, device)
        finally:
            dist.close()


def _run(cfg: EmbedConfig, dist: DistContext, device: torch.device) -> EmbedResult:
    t0 = time.perf_counter()
    datasets = _build_datasets(cfg, dist)
    concepts = read_concept_file(cfg.concepts)
    templates = load_templates(cfg.templates)
    model, spec = _model_info(cfg)
    dtype = resolve_dtype(cfg.dtype, device)
    if dist.is_main:  # too-long texts: refused before the cache is created or an image embedded
        tokenizer, context = load_tokenizer(cfg.model, cfg.revision)
        check_texts(tokenizer, context, concepts.concepts, datasets[cfg.splits[0]].classes,
                    templates, cfg.truncate)  # fmt: skip
    identity, metadata = _describe(cfg, datasets, concepts, templates, model, spec, dtype)
    metadata["device"] = {"requested": cfg.device, "resolved": str(device), "world": dist.world}
    writer = CacheWriter(
        cfg.out,
        identity=identity,
        metadata=metadata,
        split_sizes={s: len(d) for s, d in datasets.items()},
        embed_dim=model["embed_dim"],
        chunk_rows=cfg.chunk_rows,
        shard_rows=cfg.shard_rows,
        views=cfg.views,
    )
    status = dist.broadcast(writer.prepare(cfg.overwrite) if dist.is_main else None)
    rows = {s: len(d) for s, d in datasets.items()}
    if status == "complete":
        log.info("%s is already complete with the same inputs: nothing to do",
                 location_str(cfg.out))  # fmt: skip
        return EmbedResult(cfg.out, status, rows, {}, time.perf_counter() - t0, 0.0)
    if not dist.is_main:
        writer.attach()
    log.info(
        "%s cache at %s (device %s, %s, rank %d/%d)",
        "resuming" if status == "resume" else "writing",
        location_str(cfg.out),
        device,
        str(dtype).split(".")[-1],
        dist.rank,
        dist.world,
    )
    dtype_name = next(k for k, v in DTYPES.items() if v == dtype)
    enc = ClipEncoder.load(
        cfg.model, device=str(device), dtype=dtype_name, revision=cfg.revision, compile=cfg.compile
    )
    if dist.is_main and not writer.text_done():
        classes = datasets[cfg.splits[0]].classes
        writer.write_text(
            concept_emb=enc.encode_text(concepts.concepts).numpy(),
            class_emb=enc.encode_class_names(classes, templates).numpy(),
            concepts=concepts.concepts,
            classes=classes,
            templates=templates,
            concept_classes=concepts.classes_of,
        )
    todo = sum(
        len(writer.plans[s].rows(k))
        for s in datasets
        for k in writer.pending_shards(s, dist.rank, dist.world)
    )
    t1 = time.perf_counter()
    with progress_bar(
        total=todo,
        unit="img",
        desc=f"embed rank {dist.rank}",
        enabled=cfg.progress,
        dynamic_ncols=True,
    ) as bar:
        done = sum(
            _embed_split(writer, s, d, enc, spec, cfg, dist, bar) for s, d in datasets.items()
        )
    rate = done / max(time.perf_counter() - t1, 1e-9)
    log.info("rank %d embedded %d images at %.1f img/s", dist.rank, done, rate)
    dist.barrier()
    unreadable = {}
    if dist.is_main:
        writer.finalize({"logit_scale": enc.logit_scale})
        from clipcbm.cache import open_cache

        with open_cache(cfg.out) as c:
            unreadable = {s: len(c.split_attrs(s).get("failures", [])) for s in c.splits}
    return EmbedResult(cfg.out, status, rows, unreadable, time.perf_counter() - t0, rate)
