"""Verified downloads of official archives.

The archive is fetched to a temporary name beside its target, its md5 is checked against the
published value, and only then is it renamed and extracted -- nothing unverified is ever
unpacked or unpickled. Extraction refuses links and paths that leave the target folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath

from .base import DatasetError

log = logging.getLogger(__name__)


def fetch(url: str, dest: Path) -> None:
    """Write the bytes at `url` to `dest` (the one network call; tests replace it)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f, length=1 << 20)


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_verified(url: str, folder: Path, md5: str) -> Path:
    """`folder/<archive name>`, downloaded when absent; its md5 must equal `md5`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / PurePosixPath(url).name
    if target.exists():
        got = md5sum(target)
        if got != md5:
            raise DatasetError(
                f"{target} exists but its md5 is {got}, the published md5 is {md5}; "
                "delete the file and run again with --download"
            )
        return target
    tmp = target.with_name(f"{target.name}.part-{os.getpid()}")
    log.info("downloading %s to %s", url, target)
    try:
        fetch(url, tmp)
        got = md5sum(tmp)
    except OSError as e:  # urllib's URLError is an OSError
        tmp.unlink(missing_ok=True)
        raise DatasetError(
            f"downloading {url} failed ({e}); check the connection, or download it by hand "
            f"into {folder}"
        ) from e
    if got != md5:
        tmp.unlink(missing_ok=True)
        raise DatasetError(
            f"md5 mismatch for {url}: got {got}, the published md5 is {md5}; the download was "
            "deleted and not extracted. Retry; if it persists the mirror serves a different file"
        )
    os.replace(tmp, target)
    return target


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    parts = PurePosixPath(member.name).parts
    if member.name.startswith("/") or ".." in parts:
        raise DatasetError(f"{archive}: refusing to extract {member.name!r} (leaves the folder)")
    if not (member.isfile() or member.isdir()):
        raise DatasetError(f"{archive}: refusing to extract {member.name!r} (not a plain file)")


def extract_tar(archive: Path, folder: Path) -> None:
    """Extract a verified .tar.gz into `folder`, all-or-nothing per top-level entry."""
    folder = Path(folder)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".extract-") as tmp:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12
                tar.extractall(tmp, members=members, filter="data")
            else:
                tar.extractall(tmp, members=members)
        for entry in sorted(Path(tmp).iterdir()):
            dest = folder / entry.name
            if dest.exists():
                raise DatasetError(
                    f"{dest} already exists but is incomplete; move it away and run again"
                )
            os.replace(entry, dest)
