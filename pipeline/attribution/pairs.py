"""Where `attribute`'s (image, text) pairs come from: an image file or a cache's dataset split,
texts from --text, a CSV column (`explain`'s `concept`, or `text`) or the cache row's class.

A cache records its dataset (metadata `dataset.name`, `dataset.root`) and each row's id, so the
dataset is rebuilt with `pipeline.datasets.build_dataset` and the images opened by id.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from clipcbm.pipeline.attribution.config import AttributeConfig
from clipcbm.pipeline.attribution.maps import DEFAULT_TEMPLATE, AttributionInputError, Pair
from clipcbm.pipeline.datasets.base import open_rgb
from clipcbm.pipeline.errors import PipelineError

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("concept", "text")


class ModelMismatchError(PipelineError, ValueError):
    """`attribute --cache` with a --model (or --revision) other than the cache's model."""


def _same_model(a: str, b: str) -> bool:
    """The same model: the same id, or two paths of the same local directory."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


def _same_revision(a: str | None, b: str | None) -> bool:
    return (a or "main") == (b or "main")


def with_cache_model(cfg: AttributeConfig) -> AttributeConfig:
    """`--cache`: the config with the model the cache was embedded with (its recorded
    `model.id` / `model.revision`) when --model / --revision are not given; a different one
    is refused unless --allow-model-mismatch (the maps would explain another CLIP than the
    one whose embeddings the cache holds). Without --cache: cfg unchanged."""
    if cfg.cache is None:
        return cfg
    from clipcbm.cache import open_cache

    with open_cache(cfg.cache) as cache:
        rec = cache.metadata.get("model")
        name = cache.path  # a URL without its credentials
    rec = rec if isinstance(rec, dict) else {"id": rec}
    rec_id, rec_rev = rec.get("id"), rec.get("revision")
    if not rec_id:
        if cfg.model is None:
            raise AttributionInputError(
                f"cache {name} does not record the model it was embedded with; pass "
                "--model (the CLIP that embedded it)"
            )
        log.warning("cache %s records no model: cannot check that it is %s", name, cfg.model)
        return cfg
    model = cfg.model if cfg.model is not None else rec_id
    revision = cfg.revision if cfg.revision is not None else rec_rev
    if not (_same_model(model, rec_id) and _same_revision(revision, rec_rev)):
        given = f"--model {model}" + (f" --revision {revision}" if revision else "")
        recorded = str(rec_id) + (f" (revision {rec_rev})" if rec_rev else "")
        if not cfg.allow_model_mismatch:
            raise ModelMismatchError(
                f"{given} is not the model cache {name} was embedded with: {recorded}. "
                "Leave out --model / --revision to use the cache's model, or pass "
                f"--allow-model-mismatch to explain its images with {model} anyway"
            )
        log.warning("explaining the images of cache %s (embedded with %s) with %s, as asked",
                    name, recorded, given)  # fmt: skip
    return dataclasses.replace(cfg, model=model, revision=revision)


def texts_from_csv(path: Path) -> list[str]:
    import pandas as pd

    try:
        table = pd.read_csv(path, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise AttributionInputError(f"could not read texts from {path}: {e}") from e
    col = next((c for c in TEXT_COLUMNS if c in table.columns), None)
    if col is None:
        raise AttributionInputError(
            f"{path} has columns {list(table.columns)}; need one of {list(TEXT_COLUMNS)} "
            "(explain's CSV has 'concept')"
        )
    texts = [str(t) for t in table[col]]
    if not texts:
        raise AttributionInputError(f"{path} has no rows")
    return texts


def _cache_pairs(cfg: AttributeConfig) -> list[Pair]:
    from clipcbm.cache import open_cache
    from clipcbm.pipeline.datasets import build_dataset

    cache = open_cache(cfg.cache)
    meta = cache.metadata.get("dataset") or {}
    if "name" not in meta or "root" not in meta:
        raise AttributionInputError(
            f"{cache.path} does not record its dataset (metadata dataset.name / dataset.root); "
            "explain its images with --image instead"
        )
    split = cache.split(cfg.split).valid()
    ds = build_dataset(meta["name"], Path(meta["root"]), cfg.split)
    where = {str(i): k for k, i in enumerate(ds.ids)}
    templates = cache.metadata.get("templates") or [DEFAULT_TEMPLATE]
    template = templates[0] if "{}" in templates[0] else DEFAULT_TEMPLATE
    classes = cache.classes
    pairs = []
    for row_id, label in zip(split.ids[: cfg.limit], split.labels[: cfg.limit], strict=True):
        k = where.get(str(row_id))
        if k is None:
            raise AttributionInputError(
                f"cache row id {row_id!r} is not in {meta['name']} at {meta['root']} split "
                f"{cfg.split!r}: the dataset changed since the cache was written"
            )
        text = template.format(classes[int(label)]) if cfg.text_from == "class" else cfg.text
        pairs.append(Pair(ds.load(k), f"{cache.path}:{cfg.split}:{row_id}", text))
    return pairs


def collect_pairs(cfg: AttributeConfig) -> list[Pair]:
    """Every pair of the run, images decoded (an unreadable file is a clear error)."""
    if cfg.cache is not None:
        if cfg.text_from not in (None, "class"):
            texts = texts_from_csv(Path(cfg.text_from))
            base = _cache_pairs(AttributeConfig(**{**_fields(cfg), "text": "-", "text_from": None}))
            return [Pair(p.image, p.source, t) for p in base for t in texts]
        return _cache_pairs(cfg)
    image = open_rgb(Path(cfg.image))
    texts = [cfg.text] if cfg.text is not None else texts_from_csv(Path(cfg.text_from))
    return [Pair(image, str(cfg.image), t) for t in texts]


def _fields(cfg) -> dict:
    import dataclasses

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
