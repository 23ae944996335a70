"""Outputs a command owns: one writer per output, and `--overwrite` replaces only its own kind.

Two rules every writing command follows (`owned_output` applies both):

1. **One writer per output.** A run takes an advisory lock (`fcntl.flock`) on a hidden sibling
   of its output, `.<name>.lock`, before it looks at the output, and holds it until it is done.
   A second run on the same output is refused at once (`OutputBusyError`, exit 2) naming the
   holder (pid, host, command line, start time). The lock belongs to the open file: the OS
   releases it when the process ends, even on `kill -9`, so a crash never blocks the retry; a
   finished run removes the lock file. Under `torchrun` only rank 0 takes it (the ranks of one
   job share the output legitimately).
2. **`--overwrite` owns only what the command wrote.** An existing output is replaced only if it
   is recognised as an artifact of the command's own kind (its marker / config file) and holds
   nothing the command does not write; anything else — a project folder, a file, the current
   directory — is refused even with `--overwrite` (`OutputNotOursError`), and nothing is deleted.

    with owned_output(out, OWNERSHIP, overwrite=cfg.overwrite, exists_error=OutputExistsError):
        ...  # build and swap in the artifact (core.atomic.directory)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from clipcbm.core.errors import ClipCbmError
from clipcbm.core.location import is_remote, redact


class OutputBusyError(ClipCbmError):
    """Another run holds the output's lock (wait for it, or choose another --out)."""


class OutputNotOursError(ClipCbmError, FileExistsError):
    """The output exists and is not an artifact of this command: never replaced."""


class OutputPathError(ClipCbmError, ValueError):
    """--out cannot be an output at all (the current directory, a path under a file, ...)."""


def lock_path(out) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.lock"


def absolute(out) -> Path:
    """`out` as an absolute path, `.` and `..` folded, symlinks kept (`os.path.abspath`)."""
    return Path(os.path.abspath(os.path.expanduser(str(out))))


def check_output_path(out, flag: str = "--out") -> Path:
    """The absolute output path; refuses what can never be an output directory."""
    path = absolute(out)
    cwd = absolute(Path.cwd())
    if path == Path(path.anchor) or path == absolute(Path.home()):
        raise OutputPathError(f"{flag} {out} is {path}: give a new directory for the output")
    if path == cwd or path in cwd.parents:
        which = "the current directory" if path == cwd else "a parent of the current directory"
        raise OutputPathError(
            f"{flag} {out} is {which} ({path}); give a new directory for the output, e.g. "
            f"{flag} runs/NAME"
        )
    _refuse_under_a_file(path, out, flag)
    return path


def _refuse_under_a_file(path: Path, out, flag: str = "--out") -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(
                    f"{flag} {out}: {parent} is a file, not a directory; choose another {flag}"
                )
            return


@dataclass(frozen=True)
class Ownership:
    """How a command recognises an output it wrote."""

    what: str  # "a head directory": used in messages
    command: str  # "fit-head"
    recognise: Callable[[Path], bool]  # is this existing directory an artifact of this kind?
    names: frozenset[str] | None = None  # the top-level entries the artifact may hold (None: any)
    file: bool = False  # the artifact is a file, not a directory


def _listing(entries: list[str], limit: int = 5) -> str:
    shown = ", ".join(entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def check_replaceable(out: Path, own: Ownership, *, overwrite: bool,
                      exists_error: type[Exception]) -> str:  # fmt: skip
    """'new' (absent or an empty directory) or 'replace' (ours, with --overwrite); otherwise an
    error: `exists_error` for our own artifact without --overwrite, `OutputNotOursError` for
    anything else (even with --overwrite; nothing is deleted)."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return "new"
    if own.file:
        if not out.is_file():
            raise OutputNotOursError(f"{out} exists and is not a file; choose another --out")
    elif not out.is_dir():
        raise OutputNotOursError(
            f"{out} exists and is a file, not {own.what}; choose another --out (nothing deleted)"
        )
    elif not any(out.iterdir()):
        return "new"
    if not _recognised(out, own):
        held = "" if own.file else f" (it holds {_listing(sorted(p.name for p in out.iterdir()))})"
        raise OutputNotOursError(
            f"{out} is not {own.what} written by `{own.command}`{held}; --overwrite replaces only "
            f"{own.what}, so nothing was deleted — choose another --out"
        )
    if own.names is not None and not own.file:
        extra = sorted(p.name for p in out.iterdir() if p.name not in own.names)
        if extra:
            raise OutputNotOursError(
                f"{out} is {own.what} but also holds files `{own.command}` did not write "
                f"({_listing(extra)}); move them out or choose another --out (nothing deleted)"
            )
    if not overwrite:
        raise exists_error(
            f"{out} holds {own.what} already; pass --overwrite to replace it, or choose another "
            "--out"
        )
    return "replace"


def _recognised(out: Path, own: Ownership) -> bool:
    try:
        return bool(own.recognise(out))
    except (OSError, ValueError):  # unreadable marker -> not recognised, never deleted
        return False


def json_marker(name: str, test: Callable[[dict], bool]) -> Callable[[Path], bool]:
    """A recogniser: `<dir>/<name>` is a JSON object for which `test` holds."""

    def recognise(d: Path) -> bool:
        f = d / name
        if not f.is_file():
            return False
        obj = json.loads(f.read_text())
        return isinstance(obj, dict) and bool(test(obj))

    return recognise


class OutputLock:
    """An advisory lock on `out` (the file `.<name>.lock` beside it), taken without waiting."""

    def __init__(self, out, command: str | None = None):
        self.out = Path(out)
        self.path = lock_path(self.out)
        self.command = command or " ".join(os.path.basename(a) if i == 0 else a
                                           for i, a in enumerate(sys.argv))  # fmt: skip
        self.fd: int | None = None
        self.created: list[Path] = []

    def acquire(self) -> OutputLock:
        _refuse_under_a_file(self.out, self.out)
        missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.created = missing  # removed again on release if still empty
        except OSError as e:
            raise OutputPathError(f"cannot create {self.path.parent} for --out: {e}") from e
        for _ in range(100):  # retry only if a finishing holder removed the file under us
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OutputPathError(
                    f"cannot create the lock file {self.path} for --out {self.out}: "
                    f"{e.strerror or e}; is the directory writable?"
                ) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputBusyError(
                        f"another run is writing {self.out}: {_describe(holder)}; wait for it to "
                        f"finish (or stop it), or choose another --out"
                    ) from None
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self.fd = fd
            _write(fd, {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                        "started": time.strftime("%Y-%m-%d %H:%M:%S%z")})  # fmt: skip
            return self
        raise OutputBusyError(f"could not take the lock {self.path}; try again")  # pragma: no cover

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None
        for d in self.created:  # the folders made for the lock file, innermost first
            try:
                d.rmdir()
            except OSError:  # not empty: the run wrote its output there
                break

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 1 << 16)
        obj = json.loads(raw.decode("utf-8")) if raw else None
        return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None


def _write(fd: int, info: dict) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(info).encode("utf-8"))


def _describe(holder: dict | None) -> str:
    if not holder:
        return "a run that has just started (its details are not written yet)"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, `{holder.get('command')}`, "
            f"started {holder.get('started')}")  # fmt: skip


def _is_secondary_rank() -> bool:
    """True under torchrun on every rank but 0 (they share rank 0's lock)."""
    rank = os.environ.get("RANK")
    return rank is not None and rank.strip() not in ("", "0")


_HELD: dict[Path, int] = {}  # outputs this process holds through `locked` (re-entrant)


@contextlib.contextmanager
def locked(out, command: str | None = None) -> Iterator[Path]:
    """Hold `out`'s lock for the block (no-op on torchrun ranks other than 0). Re-entrant in one
    process: the CLI locks every command's output, and the command may lock it again."""
    out = absolute(out)
    if _is_secondary_rank() or out in _HELD:
        _HELD[out] = _HELD.get(out, 0) + 1
        try:
            yield out
        finally:
            _HELD[out] -= 1
            if not _HELD[out]:
                del _HELD[out]
        return
    with OutputLock(out, command):
        _HELD[out] = 1
        try:
            yield out
        finally:
            del _HELD[out]


def output_of(config) -> Path | None:
    """The output a command config writes: `out_dir()` where it has one, else a path `out`."""
    out_dir = getattr(config, "out_dir", None)
    out = out_dir() if callable(out_dir) else getattr(config, "out", None)
    return lock_target(out) if isinstance(out, str | os.PathLike) and str(out) else None


def lock_target(out) -> Path:
    """What `locked` locks for `out`: the path itself, or for a URL (`embed --out s3://...`) a
    stand-in under the temporary directory named by the URL's hash — one writer per URL on
    this machine (an object store has no advisory locks)."""
    if not is_remote(str(out)):
        return Path(out)
    key = hashlib.sha256(redact(str(out)).encode("utf-8")).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "clipcbm-remote-outputs" / key


@contextlib.contextmanager
def owned_output(out, own: Ownership, *, overwrite: bool, exists_error: type[Exception],
                 flag: str = "--out") -> Iterator[Path]:  # fmt: skip
    """Lock `out`, check it may be written (new, or ours with --overwrite), yield its absolute
    path; the lock is held until the block ends."""
    path = check_output_path(out, flag)
    with locked(path):
        check_replaceable(path, own, overwrite=overwrite, exists_error=exists_error)
        yield path
