"""Where `attribute`'s (image, text) pairs come from: an image file or a cache's dataset split,
texts from --text, a CSV column (`explain`'s `concept`, or `text`) or the cache row's class.

A cache records its dataset (metadata `dataset.name`, `dataset.root`) and each row's id, so the
dataset is rebuilt with `pipeline.datasets.build_dataset` and the images opened by id.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.attribution.config import AttributeConfig
from pipeline.attribution.maps import DEFAULT_TEMPLATE, AttributionInputError, Pair
from pipeline.datasets.base import open_rgb

TEXT_COLUMNS = ("concept", "text")


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
    from cache import open_cache
    from pipeline.datasets import build_dataset

    cache = open_cache(cfg.cache)
    meta = cache.metadata.get("dataset") or {}
    if "name" not in meta or "root" not in meta:
        raise AttributionInputError(
            f"{cfg.cache} does not record its dataset (metadata dataset.name / dataset.root); "
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
        pairs.append(Pair(ds.load(k), f"{cfg.cache}:{cfg.split}:{row_id}", text))
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
