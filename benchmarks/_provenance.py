"""Where a benchmark JSON came from, and the one way every benchmark writes its JSON.

Every JSON under `benchmarks/results/` is written whole by one run, through `Run.write`,
which adds a `provenance` block:

    commit        the HEAD commit the script ran at ("unknown" outside a git checkout)
    clean         true when the working tree had no uncommitted change to tracked files
                  outside benchmarks/results/ (a number from a dirty tree cannot be traced to
                  a commit; the results are outputs, and `run_all.sh` rewrites them one after
                  the other, so the JSONs written earlier in the same run do not count)
    dirty_files   the changed tracked files when not clean (at most 20)
    results_changed  how many tracked files under benchmarks/results/ had changed
    command       the exact command line (argv, with the interpreter)
    quick         true for a `--quick` smoke run (tiny sizes: not a result)
    threads       torch's intra-op threads (when torch is imported), OMP/MKL/OPENBLAS settings
    load_average  os.getloadavg() at the start and at the end of the run
    started, finished, seconds, python, platform, cpu_count, torch (when imported)

A run never merges into an older JSON: the file is replaced atomically (temporary sibling +
rename), so the numbers and their provenance always come from the same run.

    from _provenance import Run
    run = Run(args.quick)              # at the start of main(): records start time and load
    ...
    run.write(args.out, result)        # adds result["provenance"], writes atomically

Every benchmark has `--quick` (tiny sizes, seconds: what CI runs, tests/test_benchmarks_quick.py)
and `--out PATH`. A quick run writes `name.quick.json` beside the default JSON (git-ignored),
never over a real result. The two flags in one call:

    from _provenance import Run, add_common_args, parse_args
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=50_000)
    add_common_args(p, ROOT / "benchmarks/results/x.json", quick={"n": 500})
    args = parse_args(p, argv)         # --quick switches the defaults to `quick`; a flag given
                                       # explicitly still wins; args.out is resolved
    run = Run(args.quick)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "benchmarks/results/"  # outputs: a changed JSON there does not make a run dirty
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")


def _git(*args: str, strip: bool = True) -> str | None:
    try:
        out = subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), *args],
                             capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if strip else out.stdout


def git_state() -> dict:
    """{"commit", "clean", "dirty_files"} of the repository the benchmarks live in."""
    commit = _git("rev-parse", "HEAD") or "unknown"
    # not stripped: a porcelain line is "XY path", and X may be a space
    status = _git("status", "--porcelain", "--untracked-files=no", strip=False)
    changed = [] if status is None else [ln[3:] for ln in status.splitlines() if ln.strip()]
    outputs = [f for f in changed if f.startswith(RESULTS)]
    dirty = [f for f in changed if not f.startswith(RESULTS)]
    return {"commit": commit, "clean": status is not None and not dirty,
            "dirty_files": dirty[:20], "results_changed": len(outputs)}  # fmt: skip


def threads() -> dict:
    out = {v: os.environ.get(v) for v in THREAD_VARS}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
    return out


def _torch_info() -> dict:
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    out = {"torch": torch.__version__}
    try:
        if torch.cuda.is_initialized():
            out["cuda_device"] = torch.cuda.get_device_name()
    except Exception:  # a broken CUDA setup must not lose the result
        pass
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
            **_torch_info(),
        }

    def write(self, path, result: dict, *, sort_keys: bool = False) -> Path:
        """Write `result` + its provenance to `path` whole and atomically; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {**result, "provenance": self.provenance()}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(body, indent=2, sort_keys=sort_keys) + "\n")
        os.replace(tmp, path)
        return path


def quick_out(path, quick: bool) -> Path:
    """A `--quick` run writes beside the real JSON (`name.quick.json`), never over it."""
    path = Path(path)
    return path.with_name(path.stem + ".quick.json") if quick else path


def add_common_args(
    parser: argparse.ArgumentParser,
    default_out,
    *,
    quick: dict | None = None,
    out_aliases: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    """Add `--quick` and `--out PATH` (with `out_aliases`, e.g. ("--json",)) to `parser`.

    `default_out`: the JSON a run writes without `--out`; a path, or a function of the parsed
    arguments that returns one (a name that depends on them, e.g. the parts run).
    `quick`: argument defaults a `--quick` run switches to (tiny sizes); parse with
    `parse_args(parser, argv)`, which applies them (flags given explicitly still win) and sets
    `args.out` to `quick_out(default_out, args.quick)` when `--out` is not given.
    """
    if callable(default_out):
        shown = (default_out.__doc__ or "depends on the other arguments").strip().splitlines()[0]
        quick_shown = "NAME.quick.json"
    else:
        default_out = Path(default_out)
        shown, quick_shown = _shown(default_out), _shown(quick_out(default_out, True))
    parser.add_argument(
        "--quick", action="store_true",
        help=f"smoke run: tiny sizes, seconds (what CI runs); writes {quick_shown} unless "
             "--out; not a result",
    )  # fmt: skip
    parser.add_argument("--out", *out_aliases, type=Path, default=None, dest="out",
                        help=f"the JSON to write (default: {shown})")  # fmt: skip
    parser._provenance_common = (default_out, dict(quick or {}))
    return parser


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """`parser.parse_args(argv)` for a parser given `add_common_args`: with `--quick` the quick
    defaults apply (explicit flags still win), and `args.out` is resolved."""
    default_out, quick = parser._provenance_common
    if quick:
        pre, _ = parser.parse_known_args(argv)
        if pre.quick:
            parser.set_defaults(**quick)
    args = parser.parse_args(argv)
    if args.out is None:
        path = default_out(args) if callable(default_out) else default_out
        args.out = quick_out(path, args.quick)
    return args


def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)
