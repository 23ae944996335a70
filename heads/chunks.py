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
