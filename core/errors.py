"""The error root of the project: what the CLI reports as a message instead of a traceback.

Each stage has one root that subclasses `ClipCbmError` (`cache.errors.CacheError`,
`pipeline.errors.PipelineError`, `heads.errors.HeadsError`); every error a user can cause is
one of their subclasses. The CLI catches `ClipCbmError` only: anything else (a bug, a CUDA
out-of-memory) keeps its traceback.
"""

from __future__ import annotations


class ClipCbmError(Exception):
    """An error caused by the input, with a message that says what to do next."""


class ConfigError(ClipCbmError, ValueError):
    """An option value that is not allowed (raised while a config is built, before any work)."""
