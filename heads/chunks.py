"""The one chunk rule of stage two: every pass over image rows goes CHUNK_ROWS rows at a time.

Memory of a pass is bounded by CHUNK_ROWS x (|D| + |C|) x 4 bytes (8192 rows x 5,751 columns
~ 190 MB at ImageNet size); results never depend on the chunk size (tested equal to unchunked).
"""

from __future__ import annotations

from collections.abc import Iterator

CHUNK_ROWS = 8192


def iter_chunks(n: int, chunk_size: int = CHUNK_ROWS) -> Iterator[slice]:
    """Row slices [0, c), [c, 2c), ... covering n rows (the last one may be shorter)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


# The one row cap of stage two's full-batch solvers (the probe, the anchored and elastic-net
# final layers, Label-free CBM, the scikit-learn reference): a solve holds its (rows, F)
# features and about six (rows, |C|) fp32 logit / probability / gradient buffers at once, so
# at ImageNet size (1.28M rows, |D| = 4,751, |C| = 1,000) a solve over every train row needs
# ~70 GB. Above `solver_gib` GiB of working memory the solve uses a seeded, class-stratified
# subset of the rows that fits; the head records how many rows it saw.
SOLVER_GIB = 4.0


def solver_row_cap(n_features: int, n_classes: int, gib: float = SOLVER_GIB) -> int | None:
    """Rows a full-batch solve over n_features features and n_classes classes may hold within
    `gib` GiB: 4 (3 F + 6 |C|) bytes a row (the features, a fold's copy and the solver's
    transposed / standardised copy; six (rows, |C|) buffers). None (no cap) when gib is 0."""
    if gib < 0:
        raise ValueError(f"solver memory must be >= 0 GiB (0 = no cap), got {gib}")
    if gib == 0:
        return None
    return max(1, int(gib * 2**30) // (4 * (3 * n_features + 6 * n_classes)))


def cap_rows(idx, y, cap: int | None, seed: int):
    """`idx` (int64 tensor of row positions, labels y[idx]) itself when it has at most `cap`
    rows, else a seeded class-stratified subset of about `cap` of them, in their order: each
    class keeps its share (rounded, at least one row, so no class is lost)."""
    import torch

    if cap is None or len(idx) <= cap:
        return idx
    labels = y[idx].cpu()
    counts = torch.bincount(labels)
    keep = torch.clamp((counts.double() * cap / len(idx)).round().long(), min=1)
    keep = torch.minimum(keep, counts)
    g = torch.Generator().manual_seed(seed + 17)
    order = torch.randperm(len(idx), generator=g)
    by_class = order[torch.argsort(labels[order], stable=True)]  # random order within class
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(idx)) - starts[labels[by_class]]
    chosen = by_class[rank < keep[labels[by_class]]].sort().values
    return idx[chosen.to(idx.device)]
