"""Disk space: what a failed write was (a full disk, a quota, anything else) and what is free.

Shared by the stages that write (stage two's `heads.io.output`; `cache.writer` has the same rule
for the cache): a write that fails for lack of space names the path and the free space instead
of showing a traceback. No torch: errors of libraries that wrap the OS error in their own type
(safetensors: `SafetensorError("... No space left on device (os error 28)")`) are recognised by
the errno in their text.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

DISK_FULL = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded"}
# how a Rust library (safetensors) reports the OS error inside its own message
_OS_ERROR = re.compile(r"\(os error (\d+)\)|\bOs \{ code: (\d+)")


def os_errno(exc: BaseException) -> int | None:
    """The OS error number of `exc`: an OSError's errno, or the `(os error N)` a wrapping
    library put in its message; None when there is none (not an I/O failure)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    m = _OS_ERROR.search(str(exc))
    return int(m.group(1) or m.group(2)) if m else None


def is_disk_full(exc: BaseException) -> bool:
    """True for no space left on the device (ENOSPC) or an exceeded quota (EDQUOT)."""
    return os_errno(exc) in DISK_FULL


def free_bytes(path) -> int | None:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def human_bytes(n: float) -> str:
    """1.5 GiB / 12.3 MiB / 512 bytes."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{int(n)} bytes"


def describe_failure(exc: BaseException, path, need_bytes: int | None = None) -> str:
    """Why a write under `path` failed, for a message: 'the disk is full (... free on ...)' or the
    OS's reason with its errno."""
    code = os_errno(exc)
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = os.strerror(code) if code is not None else str(exc)
    if code in DISK_FULL:
        free = free_bytes(path)
        need = f"about {human_bytes(need_bytes)} needed, " if need_bytes else ""
        have = f"{human_bytes(free)} free" if free is not None else "free space unknown"
        return f"{DISK_FULL[code]} ({reason}; {need}{have} on the filesystem of {path})"
    return f"{reason} (errno {code})" if code is not None else reason
