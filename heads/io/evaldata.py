"""Inputs and outputs of the evaluation commands: a checked split, device choice, table files.

Every evaluation reads a split once, whole (SPEC §5: no per-row cache reads), keeps the rows
whose image was readable (`ok`), and refuses what would give a silently wrong number: an
unknown or empty split, non-finite embeddings, labels outside the class list.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clipcbm.core import atomic
from clipcbm.core.location import is_remote
from clipcbm.heads.errors import EvalInputError, OutputExistsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSplit:
    """The valid rows of one split, whole arrays. `rows` maps back to positions in the split."""

    name: str
    image_emb: np.ndarray  # (N, E) float32 unit rows
    labels: np.ndarray  # (N,) int64 in 0..|C|-1
    ids: np.ndarray  # (N,) str
    rows: np.ndarray  # (N,) int64 row positions in the full split (ok rows only)
    n_total: int  # rows in the full split, including unreadable images

    def __len__(self) -> int:
        return len(self.labels)


def check_split_name(cache, split: str, *, error=EvalInputError, hint: str = "") -> None:
    if split not in cache.splits:
        raise error(
            f"split {split!r} is not in cache {cache.path}; it has {cache.splits}. "
            + (hint or "Pass --split with one of those.")
        )


OVERLAP_TOLERANCE = 0.001  # shared rows above this fraction of the evaluated split: refused


def _id_kind(cache, split: str) -> str:
    info = cache.metadata.get("dataset", {})
    splits = info.get("splits", {}) if isinstance(info, dict) else {}
    return (splits.get(split) or {}).get("id_kind", "index")


def split_overlap(cache, a: str, b: str) -> int:
    """Rows shared by splits a and b: identical embeddings, or (for datasets whose ids are file
    paths) the same id. Recorded by the cache writer; computed here for older caches."""
    from clipcbm.cache.layout import count_overlap

    rec = (cache.metadata.get("overlap") or {}).get("|".join(sorted((a, b))))
    if rec is None:
        raw = {s: {k: cache.read(s, k) for k in ("image_emb", "ids", "ok")} for s in sorted((a, b))}
        rec = count_overlap(*raw.values())
    by_path = _id_kind(cache, a) == _id_kind(cache, b) == "path"
    return max(int(rec["embeddings"]), int(rec["ids"]) if by_path else 0)


def check_disjoint(cache, fit_split: str, eval_split: str, *, allow: bool, error=EvalInputError,
                   fitted_on: str = "the head was fitted on"):  # fmt: skip
    """Refuse to report on `eval_split` what was fitted on `fit_split` when they share rows.

    A handful of exact duplicates (<= 0.1% of the evaluated split, as real datasets have) is a
    warning; more is a leak and an error unless `allow` (--allow-overlap). `fitted_on` says what
    `fit_split` is for, in the messages (knn-eval: "are in the kNN bank")."""
    if fit_split == eval_split:
        log.warning("split %r holds the rows %s: these are training numbers", fit_split,
                    fitted_on)  # fmt: skip
        return
    n_shared = split_overlap(cache, fit_split, eval_split)
    if not n_shared:
        return
    n_eval = int(cache.split_attrs(eval_split)["n"])
    what = (
        f"splits {fit_split!r} and {eval_split!r} of cache {cache.path} share {n_shared} of "
        f"{n_eval} rows (identical embeddings or file ids)"
    )
    if allow or n_shared <= OVERLAP_TOLERANCE * n_eval:
        log.warning("%s; reported numbers include them", what)
        return
    raise error(
        f"{what}: {eval_split} accuracy would be inflated by rows {fitted_on}. "
        "Rebuild the cache from disjoint sources (for csv: one manifest per split, or a split "
        "column), or pass --allow-overlap to report anyway."
    )


def _first_ids(ids: np.ndarray, mask: np.ndarray, k: int = 3) -> str:
    return ", ".join(str(i) for i in ids[mask][:k])


def load_split(cache, split: str, *, error=EvalInputError, hint: str = "") -> EvalSplit:
    """Read a split whole and check it (known, non-empty, finite, labels in range).

    The one checked reader of stage two: evaluation uses it as is, training (heads.io.data) with
    its own error class and a hint naming its options. Rows with ok=False are skipped.
    """
    check_split_name(cache, split, error=error, hint=hint)
    data = cache.split(split)
    rows = np.flatnonzero(data.ok)
    emb, labels, ids = data.image_emb[rows], data.labels[rows], data.ids[rows]
    if len(rows) == 0:
        raise error(
            f"split {split!r} of cache {cache.path} has no valid rows ({len(data.ok)} rows, "
            f"{int((~data.ok).sum())} unreadable); check the `embed` run"
            + (f" or {hint[0].lower()}{hint[1:]}" if hint else "")
        )
    bad = ~np.isfinite(emb).all(1)
    if bad.any():
        raise error(
            f"split {split!r} of cache {cache.path} has {int(bad.sum())} row(s) with non-finite "
            f"(NaN/inf) embeddings, e.g. ids {_first_ids(ids, bad)}; the cache is corrupt — "
            f"check it with `clipcbm cache verify {cache.path}` and re-run `embed`"
        )
    n_classes = len(cache.classes)
    out = (labels < 0) | (labels >= n_classes)
    if out.any():
        raise error(
            f"split {split!r} has labels outside 0..{n_classes - 1} (|C| = {n_classes}), e.g. ids "
            f"{_first_ids(ids, out)}; the class list and the labels do not match"
        )
    if len(rows) < len(data.ok):
        log.info("split %s: skipping %d unreadable image(s)", split, len(data.ok) - len(rows))
    return EvalSplit(split, emb, labels.astype(np.int64), ids, rows, len(data.ok))


def locate_row(split: EvalSplit, index: int) -> int:
    """Position in `split` (valid rows) of row `index` of the full split, or a clear error."""
    if not 0 <= index < split.n_total:
        raise EvalInputError(
            f"--index {index} is out of range for split {split.name!r}: it has {split.n_total} "
            f"rows, so the index must be in 0..{split.n_total - 1}"
        )
    pos = np.searchsorted(split.rows, index)
    if pos >= len(split.rows) or split.rows[pos] != index:
        raise EvalInputError(
            f"row {index} of split {split.name!r} is an image that could not be read (ok=False); "
            "it has no embedding — pick another --index"
        )
    return int(pos)


def _jsonable(x):
    """NaN/inf -> None (JSON has no NaN), numpy scalars -> Python, paths -> str."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def cache_settings(cache) -> dict:
    """The cache a run read, for the settings that claim its results: the fingerprint says what
    it holds, the resolved path and the storage format which copy was read (a zarr cache and its
    .h5 twin share a fingerprint; results of one must not silently become the other's)."""
    where = cache.path if is_remote(cache.path) else str(Path(cache.path).resolve())
    return {"cache": where, "cache_format": cache.format,
            "cache_fingerprint": cache.fingerprint}  # fmt: skip


def claim_results(path: Path, settings: dict, *, overwrite: bool) -> None:
    """Refuse to replace the results JSON at `path` if a run with other settings wrote it.

    `settings` is what makes two runs the same (inputs and options that change numbers); it is
    stored in the JSON under "settings". The same settings refresh the results."""
    if overwrite or not path.exists():
        return
    try:
        old = json.loads(path.read_text()).get("settings")
    except (OSError, ValueError):
        old = None
    new = _jsonable(settings)
    if old == new:
        return
    diff = sorted(k for k in set(old or {}) | set(new) if (old or {}).get(k) != new.get(k))
    raise OutputExistsError(
        f"{path} holds results of a run with other settings (differs in: "
        f"{', '.join(diff) or 'unknown, no settings recorded'}); pass another --out, or "
        "--overwrite to replace them"
    )


def write_json(path: Path, obj: dict) -> Path:
    """JSON (NaN -> null), written atomically."""
    return atomic.write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def write_csv(path: Path, df: pd.DataFrame) -> Path:
    """CSV without the index, written atomically."""
    return atomic.write_text(path, df.to_csv(index=False))


def percent_table(df: pd.DataFrame, columns) -> str:
    """Text table with the given fraction columns shown as percentages (2 decimals)."""
    shown = df.copy()
    for c in columns:
        if c in shown:
            shown[c] = (100 * shown[c]).map(lambda v: f"{v:.2f}")
    return shown.rename(columns={c: f"{c} %" for c in columns}).to_string(index=False)
