"""Exception types raised by the cache package (one place, so callers can catch precisely).

`CacheError` is the stage's error root (a `core.errors.ClipCbmError`): the CLI prints its
message without a traceback.
"""

from clipcbm.core.errors import ClipCbmError, ConfigError


class CacheError(ClipCbmError):
    """Anything wrong with an embedding cache: missing, malformed, mismatched."""


class CacheConfigError(CacheError, ConfigError):
    """A cache-writing option that is not allowed (shard/chunk sizes, format)."""


class IncompleteCacheError(CacheError):
    """The cache exists but a writer has not finished it (killed run, still running)."""


class CacheExistsError(CacheError):
    """The output path already holds something that is not this exact cache."""


class CacheCorruptError(CacheError):
    """`verify` found a problem: wrong shapes, non-finite values, checksum mismatch."""


class CacheWriteError(CacheError):
    """Writing failed (disk full, permissions, I/O error); finished shards are kept."""


class RemoteCacheError(CacheError):
    """A cache at a URL cannot be reached: network, permission, missing bucket or object."""
