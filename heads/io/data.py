"""In-memory training data for stage two: whole arrays loaded once from the cache.

The train split's valid rows are loaded with one read, checked (non-empty, finite, labels in
range, |D| consistent), moved to the training device once, and split into train / validation
rows by a seeded permutation (SPEC §6: validation is carved from train, never from test).
Batches are then drawn by indexing these tensors -- no per-row cache reads.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from clipcbm.heads.chunks import cap_rows, solver_row_cap
from clipcbm.heads.errors import HeadCacheMismatchError, HeadDataError
from clipcbm.heads.features import TextTensors
from clipcbm.heads.io.evaldata import check_disjoint
from clipcbm.heads.io.evaldata import load_split as load_split_checked

log = logging.getLogger(__name__)


@dataclass
class SplitTensors:
    """One split's valid rows on the device: x (N, E) fp32, y (N,) int64, rows (N,) np.int64
    = positions of these rows in the cache split (before dropping ok=False rows)."""

    x: torch.Tensor
    y: torch.Tensor
    rows: np.ndarray


@dataclass
class HeadData:
    train: SplitTensors  # all valid train rows; train_idx / val_idx index into them
    train_idx: torch.Tensor  # (n_fit,) int64, rows used for gradient steps
    val_idx: torch.Tensor  # (n_val,) int64, seeded hold-out for early stopping / L2 choice
    test: SplitTensors | None  # None when the cache has no test split
    text: TextTensors
    n_classes: int
    val_seed: int
    classes: list = field(default_factory=list)  # class names (|C|)
    concept_classes: list = field(default_factory=list)  # per concept: linked class names

    def eval_splits(self) -> dict:
        """{"val": (x, y), "test": (x, y)}: the rows every fitted head is reported on."""
        out = {"val": (self.train.x[self.val_idx], self.train.y[self.val_idx])}
        if self.test is not None:
            out["test"] = (self.test.x, self.test.y)
        return out

    def solver_rows(self, n_features: int, gib: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(fit_idx, val_idx) a full-batch solve over n_features features may use within `gib`
        GiB (heads.chunks.solver_row_cap): all of them when they fit, else a seeded
        class-stratified subset of each, in proportion. Logged when rows are left out."""
        cap = solver_row_cap(n_features, self.n_classes, gib)
        n_fit, n_val = len(self.train_idx), len(self.val_idx)
        if cap is None or n_fit + n_val <= cap:
            return self.train_idx, self.val_idx
        fit_cap = max(1, round(cap * n_fit / (n_fit + n_val)))
        fit = cap_rows(self.train_idx, self.train.y, fit_cap, self.val_seed)
        val = cap_rows(self.val_idx, self.train.y, max(1, cap - fit_cap), self.val_seed + 1)
        log.info("full-batch solve over %d features: %d of %d fit rows and %d of %d validation "
                 "rows (a stratified subset within --solver-gib %g)", n_features, len(fit),
                 n_fit, len(val), n_val, gib)  # fmt: skip
        return fit, val

    def solver_rows_info(self, fit_idx, val_idx) -> dict:
        """What a head records of the rows its full-batch solve saw (`solver_rows`)."""
        n = len(self.train_idx) + len(self.val_idx)
        return {"fit": len(fit_idx), "val": len(val_idx), "of": n,
                "subset": len(fit_idx) + len(val_idx) < n}  # fmt: skip

    def val_rows(self) -> list[int]:
        """Validation rows as positions in the cache's train split (recorded in the head)."""
        return self.train.rows[self.val_idx.cpu().numpy()].tolist()


def _check_text(cache) -> None:
    n_d, n_c = len(cache.concepts), len(cache.classes)
    d_rows, c_rows = cache.concept_emb().shape[0], cache.class_emb().shape[0]
    if n_d != d_rows or n_c != c_rows:
        raise HeadDataError(
            f"cache {cache.path} is inconsistent: |D| mismatch ({n_d} concept strings vs "
            f"{d_rows} concept embeddings) or |C| ({n_c} class names vs {c_rows} class "
            "embeddings); re-run `clipcbm embed` to rebuild it"
        )


def load_split(cache, name: str, device) -> SplitTensors:
    """Valid rows of split `name`, checked by the one stage-two reader, as tensors on `device`."""
    sd = load_split_checked(
        cache, name, error=HeadDataError, hint="Choose another with --train-split / --test-split."
    )
    return SplitTensors(
        x=torch.from_numpy(sd.image_emb).to(device),
        y=torch.from_numpy(sd.labels).to(device),
        rows=sd.rows,
    )


def checked_transform(kind: str, path, cache, device):
    """The fitted transform at `path` (heads.transforms), refused unless it was fitted on a
    cache of the same model (same embedding space) as `cache`."""
    from clipcbm.cache.layout import model_fingerprint
    from clipcbm.heads.transforms import load_transform

    tr = load_transform(kind, path, device)
    if tr.model_fingerprint != model_fingerprint(cache.metadata):
        raise HeadCacheMismatchError(
            f"{kind} {path} was fitted on a cache of another model (embedding space) than "
            f"{cache.path}; fit it on a cache of this model"
        )
    if tr.in_dim and tr.in_dim != int(cache.embed_dim):
        raise HeadCacheMismatchError(
            f"{kind} {path} reads E = {tr.in_dim} embeddings, cache {cache.path} has "
            f"E = {cache.embed_dim}"
        )
    return tr


def carve_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded hold-out of train: (fit_idx, val_idx), both sorted, disjoint, covering range(n)."""
    n_val = int(round(fraction * n))
    if n < 2 or n_val < 1 or n_val >= n:
        raise HeadDataError(
            f"cannot carve a validation split of fraction {fraction} from {n} train rows "
            "(need >= 1 row on each side); use a larger split or another --val-fraction"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def load_data(cache, config, device) -> HeadData:
    """Everything a fit needs, on `device`; see the module docstring."""
    _check_text(cache)
    n_classes = len(cache.classes)
    train = load_split(cache, config.train_split, device)
    fit_idx, val_idx = carve_validation(len(train.rows), config.val_fraction, config.seed)
    test = None
    if config.test_split is not None and config.test_split in cache.splits:
        check_disjoint(cache, config.train_split, config.test_split,
                       allow=config.allow_overlap, error=HeadDataError)  # fmt: skip
        test = load_split(cache, config.test_split, device)
    elif config.test_split is not None:
        log.warning("cache has no %r split; test metrics are skipped", config.test_split)
    text = TextTensors.from_cache(cache, device)
    if config.features != "clip":
        text = dataclasses.replace(
            text, transform=checked_transform(config.features, config.transform_dir, cache, device)
        )
    return HeadData(
        train=train,
        train_idx=torch.from_numpy(fit_idx).to(device),
        val_idx=torch.from_numpy(val_idx).to(device),
        test=test,
        text=text,
        n_classes=n_classes,
        val_seed=config.seed,
        classes=list(cache.classes),
        concept_classes=list(cache.concept_classes),
    )
