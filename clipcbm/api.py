"""The Python API, for notebooks: the CLI's commands as functions.

Every function builds the same config dataclass its command builds (so a keyword is the
command's option with `_` for `-`, and is checked the same way), runs the same code, writes
the same files, and returns the result objects with pandas tables:

    import clipcbm

    cache = clipcbm.open_cache("caches/cifar10.zarr")        # or s3://, gs://, http(s)://, hf://
    fit = clipcbm.fit_head(cache, loss="l1", out="runs/heads/c10-l1")
    fit.table                                                # val / test / zero-shot, a DataFrame
    ev = clipcbm.evaluate(cache, fit.out_dir)                # .metrics, .per_class
    ex = clipcbm.explain(cache, 0, head=fit.out_dir)         # .explanation.table
    cmp = clipcbm.compare(cache, methods=["zero-shot", "probe", "l1"])   # .table

`cache` is a path, a URL or an open `Cache`; a head is its directory or the `FitHead` that
`fit_head` returned. Nothing here prints; progress bars follow `progress=` as on the CLI.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from clipcbm.cache import Cache
from clipcbm.cache import open_cache as _open_cache
from clipcbm.heads.cbm.config import FitHeadConfig
from clipcbm.heads.eval.config import CmsEvalConfig, CompareConfig, EvaluateConfig, ExplainConfig

__all__ = [
    "open_cache", "fit_head", "load_head", "evaluate", "explain", "compare", "cms_eval",
    "FitHead", "FitHeadConfig", "EvaluateConfig", "ExplainConfig", "CompareConfig",
    "CmsEvalConfig",
]  # fmt: skip


def open_cache(location, *, verify: bool = True, **options) -> Cache:
    """Open a cache written by `embed` (a local path or a URL; `storage_options=` where the
    backend supports it). Use it as a context manager, or pass it to the functions below."""
    return _open_cache(location, verify=verify, **options)


def _location(cache) -> Any:
    """What a config's `cache` field takes: a path or URL (an open Cache gives its own)."""
    return cache.location if isinstance(cache, Cache) else cache


def _head_dir(head) -> Path | None:
    if head is None:
        return None
    return Path(head.out_dir if isinstance(head, FitHead) else head)


def _config(cls, **fields):
    """cls(**fields), a wrong keyword named with the ones the command has; a repeatable option
    (a tuple field, e.g. `methods`) also takes a list or one string, as the CLI takes one flag."""
    tuples = {f.name for f in dataclasses.fields(cls) if isinstance(f.default, tuple)}
    known = {f.name for f in dataclasses.fields(cls)}
    fields = {k: ((v,) if isinstance(v, str) else tuple(v)) if k in tuples else v
              for k, v in fields.items()}  # fmt: skip
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(
            f"{', '.join(map(repr, unknown))}: not an option of {cls.__name__}; it has "
            f"{', '.join(sorted(known))} (the command's options, with _ for -)"
        )
    return cls(**fields)


@dataclass(frozen=True)
class FitHead:
    """What `fit_head` returns: the written head directory, its metrics and the loaded head."""

    out_dir: Path
    kind: str
    loss: str
    metrics: dict
    history: pd.DataFrame  # one row per validation check (step, val_top1, losses); cbm heads
    best_step: int | None
    seconds: float
    config: FitHeadConfig = field(repr=False)

    @property
    def table(self) -> pd.DataFrame:
        """Head and zero-shot on the same rows, one row per split (as `fit-head` prints), and
        the held-out estimate when the validation rows are in the final layer's fit."""
        rows = []
        for split in ("val", "test"):
            if split in self.metrics:
                h, z = self.metrics[split], self.metrics["zero_shot"][split]
                rows.append({"split": split, "rows": h["n"], "top1": h["top1"],
                             "top5": h["top5"], "zero_shot_top1": z["top1"],
                             "act_sparsity": h.get("act_sparsity"),
                             "faithfulness": h.get("faithfulness")})  # fmt: skip
        held = self.metrics.get("heldout") or {}
        if held.get("val_in_fit") and held.get("top1") is not None:
            rows.append({"split": "held-out estimate", "top1": held["top1"]})
        return pd.DataFrame(rows).astype({"rows": "Int64"})

    def load(self, cache=None, device: str = "cpu"):
        """The head as a module (`clipcbm.heads.io.artifact.Head`), checked against `cache`."""
        return load_head(self.out_dir, cache, device=device)


def fit_head(cache, **options) -> FitHead:
    """`clipcbm fit-head`: fit a head (default `--loss sparse`) and write its directory."""
    from clipcbm.heads.cbm.train import run

    config = _config(FitHeadConfig, cache=_location(cache), **options)
    res = run(config)
    return FitHead(out_dir=res.out_dir, kind=res.kind, loss=res.loss, metrics=res.metrics,
                   history=pd.DataFrame(res.history), best_step=res.best_step,
                   seconds=res.seconds, config=config)  # fmt: skip


def load_head(head, cache=None, device: str = "cpu"):
    """A head directory as a module; with `cache`, refused unless fitted on that cache."""
    from clipcbm.heads.io.artifact import load_head as _load

    if cache is not None and not isinstance(cache, Cache):
        with _open_cache(cache) as c:
            return _load(_head_dir(head), c, device=device)
    return _load(_head_dir(head), cache, device=device)


def evaluate(cache, head, **options):
    """`clipcbm evaluate`: metrics (`.metrics`), per-class table (`.per_class`), files."""
    from clipcbm.heads.eval.commands import run_evaluate

    return run_evaluate(_config(EvaluateConfig, cache=_location(cache), head=_head_dir(head),
                                **options))  # fmt: skip


def explain(cache, index: int, head=None, **options):
    """`clipcbm explain`: the concepts behind row `index`'s prediction (`.explanation.table`);
    without `head`, the CMS prediction."""
    from clipcbm.heads.eval.commands import run_explain

    return run_explain(_config(ExplainConfig, cache=_location(cache), index=index,
                               head=_head_dir(head), **options))  # fmt: skip


def compare(cache, **options):
    """`clipcbm compare`: every method on the same split; `.table` is the DataFrame."""
    from clipcbm.heads.compare import run_compare

    return run_compare(_config(CompareConfig, cache=_location(cache), **options))


def cms_eval(cache, **options):
    """`clipcbm cms-eval`: concept-matching scores on the test split; `.table`."""
    from clipcbm.heads.eval.commands import run_cms_eval

    return run_cms_eval(_config(CmsEvalConfig, cache=_location(cache), **options))
