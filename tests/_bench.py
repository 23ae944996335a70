"""Load a benchmarks/ script as a module by path (benchmarks/ is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/{name}.py, executed afresh as module `_bench_{name}`. It is registered in
    sys.modules (dataclasses look their module up while it loads), and benchmarks/ is put on
    sys.path, as running the script would (the scripts import their sibling _provenance)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
