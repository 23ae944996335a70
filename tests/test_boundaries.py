"""Stage boundaries by the import graph (STYLE 1), not by a text search.

Each check runs in a fresh interpreter that imports every module of a package, recursively,
and then looks at `sys.modules`: stage two (`heads/`) never loads `pipeline` or
`transformers`; `cache/` and `core/` never load `torch` (a teammate reads a cache with numpy).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib, json, pkgutil, sys
pkg = importlib.import_module({pkg!r})
names = [pkg.__name__]
for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    importlib.import_module(m.name)
    names.append(m.name)
parts = [k.split(".") for k in sys.modules]
roots = sorted({{p[1] if p[0] == "clipcbm" and len(p) > 1 else p[0] for p in parts}})
print(json.dumps({{"modules": names, "roots": roots}}))
"""


def imported(pkg: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(pkg="clipcbm." + pkg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("pkg", "forbidden", "min_modules"),
    [
        ("heads", {"pipeline", "transformers"}, 20),
        ("cache", {"torch", "pipeline", "heads", "transformers"}, 8),
        ("core", {"torch", "pipeline", "heads", "cache", "transformers"}, 5),
    ],
)
def test_package_never_loads_a_forbidden_stage(pkg, forbidden, min_modules):
    got = imported(pkg)
    # the walk really reached the subpackages (a probe that imported nothing proves nothing)
    assert len(got["modules"]) >= min_modules, got["modules"]
    assert not forbidden & set(got["roots"]), (forbidden & set(got["roots"]), got["modules"])


def test_the_probe_sees_a_forbidden_import():
    # the same probe on `pipeline` does load torch (its encoder): the check can fail
    got = imported("pipeline")
    assert "torch" in got["roots"]


def test_no_module_reads_a_cache_through_its_private_store():
    """Every read goes through the checked public reader (Cache.read / read_rows / iter_blocks /
    split): nothing outside a class touches its store (`._b`, `._root`) directly."""
    import ast

    offenders = []
    for stage in ("cache", "core", "heads", "pipeline"):
        for path in (ROOT / stage).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr in ("_b", "_root")
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self")
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")  # fmt: skip
    assert offenders == []
