"""The error root of stage two (`heads/`) and its specific errors.

Every error a user can cause in stage two is a `HeadsError` (a `core.errors.ClipCbmError`): the
CLI prints its message without a traceback. The `ValueError` / `FileExistsError` bases keep
library callers' `except ValueError` working.
"""

from __future__ import annotations

from clipcbm.core.errors import ClipCbmError, ConfigError


class HeadsError(ClipCbmError):
    """Stage two cannot do what was asked."""


class HeadsConfigError(HeadsError, ConfigError):
    """A stage-two option value that is not allowed (raised while the config is built)."""


class HeadDataError(HeadsError, ValueError):
    """The cache cannot be trained on: missing/empty split, NaN embeddings, |D| mismatch, ..."""


class EvalInputError(HeadsError, ValueError):
    """The cache split (or the requested row) cannot be evaluated as asked."""


class HeadCacheMismatchError(HeadsError, ValueError):
    """A head is used with a cache it was not fitted on (fingerprint or |D| / |C| / E differ)."""


class HeadFormatError(HeadsError, ValueError):
    """A head directory is missing files, is damaged, or was written by a newer version."""


class OutputExistsError(HeadsError, FileExistsError):
    """The output directory exists and is not empty (pass --overwrite or another --out)."""


class OutputWriteError(HeadsError, OSError):
    """Writing an output failed (full disk, quota, permissions); nothing of it was left behind."""


class InsufficientMemoryError(HeadsError, MemoryError):
    """A computation would need more memory than the device has free (checked before it runs)."""
