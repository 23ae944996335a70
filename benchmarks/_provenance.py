"""Where a benchmark JSON came from, and the one way every benchmark writes its JSON.

Every JSON under `benchmarks/results/` is written whole by one run, through `write_result`,
which adds a `provenance` block:

    commit        the HEAD commit the script ran at ("unknown" outside a git checkout)
    clean         true when the working tree had no uncommitted change to tracked files
                  (a number from a dirty tree cannot be traced to a commit)
    dirty_files   the changed tracked files when not clean (at most 20)
    command       the exact command line (argv, with the interpreter)
    quick         true for a `--quick` smoke run (tiny sizes: not a result)
    threads       torch's intra-op threads (when torch is imported), OMP/MKL/OPENBLAS settings
    load_average  os.getloadavg() at the start and at the end of the run
    started, finished, seconds, python, platform, cpu_count

A run never merges into an older JSON: the file is replaced atomically (temporary sibling +
rename), so the numbers and their provenance always come from the same run.

    from _provenance import Run
    run = Run(args.quick)              # at the start of main(): records start time and load
    ...
    run.write(args.out, result)        # adds result["provenance"], writes atomically
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                             timeout=30, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> dict:
    """{"commit", "clean", "dirty_files"} of the repository the benchmarks live in."""
    commit = _git("rev-parse", "HEAD") or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no")
    dirty = [] if status is None else [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": commit, "clean": status is not None and not dirty,
            "dirty_files": dirty[:20]}  # fmt: skip


def threads() -> dict:
    out = {v: os.environ.get(v) for v in THREAD_VARS}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
    return out


class Run:
    """One benchmark run: call at the start, `write` at the end."""

    def __init__(self, quick: bool = False):
        self.quick = bool(quick)
        self.t0 = time.time()
        self.load_start = list(os.getloadavg())

    def provenance(self) -> dict:
        return {
            **git_state(),
            "command": [sys.executable, *sys.argv],
            "quick": self.quick,
            "threads": threads(),
            "load_average": {"start": self.load_start, "end": list(os.getloadavg())},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.t0)),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.time() - self.t0, 2),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
        }

    def write(self, path, result: dict) -> Path:
        """Write `result` + its provenance to `path` whole and atomically; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {**result, "provenance": self.provenance()}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        os.replace(tmp, path)
        return path


def quick_out(path, quick: bool) -> Path:
    """A `--quick` run writes beside the real JSON (`name.quick.json`), never over it."""
    path = Path(path)
    return path.with_name(path.stem + ".quick.json") if quick else path
