"""Atomic writes: a reader sees the old file (or directory) or the new one, never half of one.

Every artifact of the project is written through these helpers: files are written to a
temporary sibling, flushed to disk and renamed (`os.replace` is atomic on POSIX); directories
(a head) are built in a temporary sibling and swapped in with two renames, so a crash at any
point leaves either the complete old directory or the complete new one (the old one is only
deleted after the new one is in place).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary sibling + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recover(final) -> bool:
    """Undo a swap that was killed between its two renames: `final` is missing and the old
    directory sits aside as `.<name>.<tag>.old` -> move it back. True if something was restored.
    Readers call it before loading, so the old artifact still loads."""
    final = Path(final)
    if final.exists() or not final.parent.is_dir():
        return False
    aside = sorted(final.parent.glob(f".{final.name}.*.old"), key=lambda p: p.stat().st_mtime)
    if not aside:
        return False
    os.replace(aside[-1], final)
    for extra in aside[:-1]:
        shutil.rmtree(extra, ignore_errors=True)
    return True


@contextlib.contextmanager
def directory(final) -> Iterator[Path]:
    """Build a directory in a temporary sibling; on success swap it in for `final`.

    `final` may exist (the caller decided to replace it): it is renamed aside, the new one is
    renamed into place, then the old one is deleted. On an exception the temporary directory
    is removed and `final` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover(final)
    tag = uuid.uuid4().hex[:8]
    tmp = final.with_name(f".{final.name}.{tag}.partial")
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.{tag}.old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
