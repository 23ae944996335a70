"""Exception types raised by the cache package (one place, so callers can catch precisely)."""


class CacheError(Exception):
    """Anything wrong with an embedding cache: missing, malformed, mismatched."""


class IncompleteCacheError(CacheError):
    """The cache exists but a writer has not finished it (killed run, still running)."""


class CacheExistsError(CacheError):
    """The output path already holds something that is not this exact cache."""


class CacheCorruptError(CacheError):
    """`verify` found a problem: wrong shapes, non-finite values, checksum mismatch."""
