"""Writing stage-two outputs: a failed write is one clear error and leaves nothing behind.

- `write_errors(path, what)`: an OSError raised by the block (a full disk ENOSPC, a quota
  EDQUOT, permissions, ...), or a safetensors error carrying one ("... (os error 28)"), becomes
  one `OutputWriteError` naming `path`, the reason and, for a full disk, the free space (and
  the space needed, when known). Directories the block created on the way to `path` are
  removed again (empty ones only), so a failed run leaves no empty `--out` behind. Used around
  every artifact directory (`WeightsDir.save`, the SAE directory) and every results write.
- `result_files(out_dir, what)`: the files of one run are written into a hidden staging
  directory inside the nearest existing folder and moved into `out_dir` together when the block
  ends. On an error none of them is moved: the files of an earlier run in `out_dir` are left as
  they were, a new `out_dir` is never created, and the staging directory is removed.
- `removed_on_write_error(out_dir)`: a run that writes several artifacts into a new `out_dir`
  (compare: heads, then the table) removes it again when one of the writes fails.

    with result_files(out_dir, "the cms-eval results") as stage:
        write_csv(stage / "summary.csv", table)
    files = stage.final(files)  # the paths in out_dir
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from safetensors import SafetensorError

from clipcbm.core.disk import describe_failure, os_errno
from clipcbm.heads.errors import OutputWriteError


def _absolute(path) -> Path:
    """Absolute, `.` and `..` folded (as messages show it), symlinks kept."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _missing_dirs(path: Path) -> list[Path]:
    """`path` and its parents that do not exist yet, deepest first."""
    missing = []
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            break
        missing.append(p)
    return missing


def _remove_created(created: list[Path]) -> None:
    """Remove the directories of `created` (deepest first) that are still empty."""
    for d in created:
        if d.is_symlink() or not d.is_dir():
            continue  # never created (the write failed before) or not a directory: skip it
        try:
            d.rmdir()
        except OSError:  # not empty (someone else's file): keep it and everything above
            return


@contextlib.contextmanager
def write_errors(path, what: str, need_bytes: int | None = None) -> Iterator[None]:
    """Map a failed write inside the block to one `OutputWriteError` about `path` (see the
    module docstring); `what` names the output ("the head", "the cms-eval results")."""
    path = _absolute(path)
    created = _missing_dirs(path)
    try:
        yield
    except (OSError, SafetensorError) as e:
        if isinstance(e, OutputWriteError) or os_errno(e) is None:
            raise  # already mapped, or not an I/O failure (a bug): keep it as it is
        _remove_created(created)
        raise OutputWriteError(
            f"cannot write {what} to {path}: {describe_failure(e, path, need_bytes)}. Nothing "
            "was written (an earlier output there is unchanged); free some space or choose "
            "another --out, then run the command again"
        ) from e


class Staged:
    """The staging directory of `result_files`: `stage / name` is where a file is written,
    `stage.final(files)` maps the written paths to their place in `out_dir`."""

    def __init__(self, out_dir: Path, tmp: Path):
        self.out_dir, self.tmp = out_dir, tmp

    def __truediv__(self, name: str) -> Path:
        return self.tmp / name

    def final(self, files: dict[str, Path]) -> dict[str, Path]:
        return {k: self.out_dir / Path(p).relative_to(self.tmp) for k, p in files.items()}


def _move_in(tmp: Path, out_dir: Path, tag: str) -> None:
    """Move every file of `tmp` into `out_dir`; on a failure undo the moves already made."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done: list[tuple[Path, Path | None]] = []  # (placed file, the earlier file set aside)
    try:
        for src in sorted(tmp.iterdir(), key=lambda p: (p.suffix == ".json", p.name)):
            dst = out_dir / src.name
            if dst.is_dir() and not dst.is_symlink():
                raise IsADirectoryError(errno.EISDIR, f"{dst} is a directory", str(dst))
            aside = None
            if dst.exists():
                aside = dst.with_name(f".{dst.name}.{tag}.old")
                os.replace(dst, aside)
            done.append((dst, aside))
            os.replace(src, dst)
    except BaseException:
        for dst, aside in reversed(done):
            with contextlib.suppress(OSError):
                if aside is not None:
                    os.replace(aside, dst)
                else:
                    dst.unlink(missing_ok=True)
        raise
    for _, aside in done:
        if aside is not None:
            with contextlib.suppress(OSError):
                aside.unlink()


@contextlib.contextmanager
def result_files(out_dir, what: str) -> Iterator[Staged]:
    """Write a run's result files together into `out_dir` (see the module docstring). JSON
    files are moved last, so a results JSON never describes files that are not in place."""
    out_dir = _absolute(out_dir)
    with write_errors(out_dir, what):
        base = next(p for p in (out_dir, *out_dir.parents) if p.exists())
        tag = uuid.uuid4().hex[:8]
        tmp = base / f".clipcbm-{tag}.partial"
        tmp.mkdir()
        try:
            yield Staged(out_dir, tmp)
            _move_in(tmp, out_dir, tag)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def removed_on_write_error(out_dir) -> Iterator[None]:
    """For a run that writes several artifacts into a new `out_dir` (compare: heads, then the
    table): when a write fails (`OutputWriteError`), remove `out_dir` again if this run created
    it, so the failure leaves nothing behind."""
    out_dir = _absolute(out_dir)
    created = _missing_dirs(out_dir)
    try:
        yield
    except OutputWriteError:
        if created and out_dir.is_dir():
            shutil.rmtree(out_dir, ignore_errors=True)
        _remove_created(created[1:])
        raise
