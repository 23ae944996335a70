"""Training rows of an SAE: the training split whole in memory, or streamed block by block.

The split is read in blocks of `stream_rows` rows (one shard of `embed` by default), so even the
whole-array path never holds an fp32 copy of the split: rows are kept in fp16 (the cache's own
precision; 1.28M x 768 is 2 GB) and each batch is upcast to fp32 on the device. When the split
would take more than half the memory (`--stream auto`), the blocks are read again every epoch
instead, in a seeded random order, `stream_buffer` blocks shuffled together.

The statistics every run needs are one pass: the mean μ (fp64 accumulation) that centres the
input, and the total variance E‖x − μ‖² that normalises the loss (so the training loss is the
batch's fraction of variance unexplained).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from clipcbm.heads.errors import HeadDataError

log = logging.getLogger(__name__)


def read_rows(cache, split: str, name: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of `split/name` without reading the whole array, checked per shard
    like every read (`Cache.read_rows`; `--no-verify` skips it)."""
    return cache.read_rows(split, name, start, stop)


def split_rows(cache, split: str) -> int:
    return cache.n_rows(split)


def _nonfinite_error(cache, split: str, bad: np.ndarray) -> HeadDataError:
    """The error naming the readable rows of `split` whose embedding is not finite."""
    first = ", ".join(str(int(r)) for r in bad[:5]) + (", ..." if len(bad) > 5 else "")
    return HeadDataError(
        f"split {split!r} of cache {cache.path} has {len(bad)} row(s) with non-finite (NaN/inf) "
        f"embeddings (rows {first}); the cache is corrupt — check it with `clipcbm cache "
        f"verify {cache.path}` and re-run `embed`"
    )


def _block(
    cache, split: str, start: int, stop: int, check: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image_emb (n, E) float16, ok (n,) bool, rows of the split whose readable embedding is
    not finite) of one block; with `check`, those rows are an error at once."""
    emb = read_rows(cache, split, "image_emb", start, stop)
    ok = read_rows(cache, split, "ok", start, stop).astype(bool)
    bad = start + np.flatnonzero(ok & ~np.isfinite(emb).all(1))
    if check and bad.size:
        raise _nonfinite_error(cache, split, bad)
    return emb.astype(np.float16, copy=False), ok, bad


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def should_stream(mode: str, n_rows: int, embed_dim: int) -> bool:
    """on / off as asked; auto = stream when the fp16 rows would take over half the memory."""
    if mode != "auto":
        return mode == "on"
    total = _memory_bytes()
    return total is not None and n_rows * embed_dim * 2 > total // 2


@dataclass
class TrainRows:
    """The rows an SAE trains on, and their statistics.

    keep: (N,) bool over the whole split, True for rows trained on (valid and not held out);
    mean: (E,) fp32 μ of those rows; total_var: mean ‖x − μ‖² over them (the loss's
    denominator); rows: (n, E) fp16 on `device` when in memory, None when streamed.
    """

    cache: object
    split: str
    keep: np.ndarray
    mean: torch.Tensor
    total_var: float
    block_rows: int
    buffer_blocks: int
    device: torch.device
    rows: torch.Tensor | None

    @property
    def n(self) -> int:
        return int(self.keep.sum())

    @property
    def streamed(self) -> bool:
        return self.rows is None

    def batches(self, batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Endless seeded shuffled passes, `batch` rows at a time, fp32 on the device."""
        epoch = self._memory_epoch if self.rows is not None else self._stream_epoch
        while True:
            yield from epoch(batch, generator)

    def _memory_epoch(self, batch: int, generator: torch.Generator):
        perm = torch.randperm(len(self.rows), generator=generator).to(self.device)
        for s in range(0, max(len(perm) - batch, 0) + 1, batch):  # drops a short last batch
            yield self.rows[perm[s : s + batch]].float()

    def _stream_epoch(self, batch: int, generator: torch.Generator):
        n_total = len(self.keep)
        starts = list(range(0, n_total, self.block_rows))
        order = torch.randperm(len(starts), generator=generator).tolist()
        carry = None
        for g in range(0, len(order), self.buffer_blocks):
            parts = [self._read(starts[i]) for i in order[g : g + self.buffer_blocks]]
            pool = torch.cat([p for p in ([carry] if carry is not None else []) + parts])
            pool = pool[torch.randperm(len(pool), generator=generator).to(pool.device)]
            full = len(pool) - len(pool) % batch
            for s in range(0, full, batch):
                yield pool[s : s + batch].float()
            carry = pool[full:] if full < len(pool) else None
        if carry is not None and self.n < batch:
            yield carry.float()  # a split smaller than one batch still trains

    def _read(self, start: int) -> torch.Tensor:
        stop = min(start + self.block_rows, len(self.keep))
        emb, _, _ = _block(self.cache, self.split, start, stop)
        keep = self.keep[start:stop]
        return torch.from_numpy(np.ascontiguousarray(emb[keep])).to(self.device)


def load_train_rows(cache, split: str, holdout: np.ndarray | None, *, device, stream: str,
                    block_rows: int, buffer_blocks: int) -> TrainRows:  # fmt: skip
    """One pass over `split`: the kept rows' mean and variance; the rows too unless streamed.

    holdout: (N,) bool of rows carved out for the held-out metrics (None: none).
    """
    n_total = split_rows(cache, split)
    e = int(cache.embed_dim)
    streamed = should_stream(stream, n_total, e)
    s1, s2, n, kept, parts, bad = np.zeros(e, np.float64), 0.0, 0, [], [], []
    for start in range(0, n_total, block_rows):
        stop = min(start + block_rows, n_total)
        emb, ok, nonfinite = _block(cache, split, start, stop, check=False)
        if nonfinite.size or bad:
            bad.append(nonfinite)  # named all at once after the pass (count and first rows)
            continue
        keep = ok if holdout is None else ok & ~holdout[start:stop]
        kept.append(keep)
        x = emb[keep].astype(np.float64)
        s1 += x.sum(0)
        s2 += float((x * x).sum())
        n += len(x)
        if not streamed:
            parts.append(torch.from_numpy(np.ascontiguousarray(emb[keep])))
    if bad:
        raise _nonfinite_error(cache, split, np.concatenate(bad))
    if n == 0:
        raise HeadDataError(
            f"split {split!r} of cache {cache.path} has no rows to train on ({n_total} rows, "
            "none readable or all held out); choose another --train-split"
        )
    mean = s1 / n
    total_var = s2 / n - float(mean @ mean)  # E‖x - μ‖² = E‖x‖² - ‖μ‖²
    rows = torch.cat(parts).to(device) if not streamed else None
    log.info("training rows: %d of %d (%s)", n, n_total, "streamed" if streamed else "in memory")
    return TrainRows(cache, split, np.concatenate(kept), torch.from_numpy(mean).float().to(device),
                     max(total_var, 1e-12), block_rows, buffer_blocks, torch.device(device),
                     rows)  # fmt: skip


def carve_holdout(cache, split: str, fraction: float, seed: int) -> np.ndarray:
    """(N,) bool: a seeded `fraction` of the split's readable rows, held out from training."""
    ok = read_rows(cache, split, "ok", 0, split_rows(cache, split)).astype(bool)
    valid = np.flatnonzero(ok)
    n_out = int(round(fraction * len(valid)))
    if n_out < 1 or n_out >= len(valid):
        raise HeadDataError(
            f"cannot hold out a fraction {fraction} of the {len(valid)} readable rows of split "
            f"{split!r} (need >= 1 row on each side); use a cache with an --eval-split"
        )
    mask = np.zeros(len(ok), bool)
    mask[valid[np.random.default_rng(seed).permutation(len(valid))[:n_out]]] = True
    return mask


@dataclass(frozen=True)
class HeldOut:
    """Held-out rows for the metrics: x (n, E) fp32 unit rows, labels (n,), ids (n,), rows (n,)
    = positions in `split`."""

    split: str
    x: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    rows: np.ndarray


def load_heldout(cache, split: str, mask: np.ndarray | None = None) -> HeldOut:
    """The whole split through the checked stage-two reader, or its `mask` rows (carved)."""
    from clipcbm.heads.io.evaldata import load_split

    if mask is None:
        sd = load_split(cache, split, error=HeadDataError,
                        hint="Choose another with --eval-split.")  # fmt: skip
        return HeldOut(split, sd.image_emb, sd.labels, sd.ids, sd.rows)
    rows = np.flatnonzero(mask)
    x = np.concatenate([read_rows(cache, split, "image_emb", s, min(s + 65536, len(mask)))
                        [mask[s : s + 65536]] for s in range(0, len(mask), 65536)])  # fmt: skip
    labels = read_rows(cache, split, "labels", 0, len(mask))[rows].astype(np.int64)
    ids = read_rows(cache, split, "ids", 0, len(mask))[rows].astype(str)
    return HeldOut(split, x.astype(np.float32), labels, ids, rows)
