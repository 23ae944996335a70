"""Embedding cache: storage only (Zarr v3 sharded directory or one HDF5 file), no models."""

from .errors import CacheCorruptError, CacheError, CacheExistsError, IncompleteCacheError
from .layout import ShardPlan, sha256_json, sha256_lines
from .reader import Cache, SplitData, open_cache, remote_bars
from .synthetic import write_cache
from .verify import cache_info, verify_cache
from .writer import CacheWriter

__all__ = [
    "Cache",
    "CacheCorruptError",
    "CacheError",
    "CacheExistsError",
    "CacheWriter",
    "IncompleteCacheError",
    "ShardPlan",
    "SplitData",
    "open_cache",
    "remote_bars",
    "sha256_json",
    "sha256_lines",
    "cache_info",
    "verify_cache",
    "write_cache",
]
