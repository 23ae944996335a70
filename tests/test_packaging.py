"""The installed distribution claims one top-level import name, `clipcbm`, and works from a
fresh virtualenv outside the checkout (the console script included)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("cache", "core", "heads", "pipeline")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_directory_is_installed_under_clipcbm():
    tool = _pyproject()["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = {"clipcbm"} | {
        "clipcbm." + ".".join(p.parent.relative_to(ROOT).parts)
        for stage in STAGES
        for p in (ROOT / stage).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert listed == found, (sorted(found - listed), sorted(listed - found))
    assert {k: v for k, v in tool["package-dir"].items() if k != "clipcbm"} == {
        f"clipcbm.{s}": s for s in STAGES
    }


def test_no_module_imports_a_stage_by_its_bare_name():
    """`import cache` would work from the checkout (its root is on sys.path) and fail once
    installed; it would also load a second copy of the module next to clipcbm.cache."""
    import ast

    offenders = []
    for path in [*ROOT.glob("*.py"), *ROOT.glob("clipcbm/*.py"),
                 *(p for s in (*STAGES, "tests", "benchmarks", "docs")
                   for p in (ROOT / s).rglob("*.py"))]:  # fmt: skip
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            if any(n.split(".")[0] in (*STAGES, "cli") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True, cwd=out,
    )  # fmt: skip
    (whl,) = out.glob("clipcbm-*.whl")
    return whl


def test_the_wheel_has_one_top_level_name_and_the_package_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"clipcbm", next(t for t in tops if t.endswith(".dist-info"))}
    assert "clipcbm/pipeline/classnames/cifar10.txt" in names
    assert "clipcbm/pipeline/imagenet_templates.txt" in names
    assert "clipcbm/heads/cbm/train.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "clipcbm = clipcbm.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_a_fresh_virtualenv_outside_the_checkout_runs_it(wheel, tmp_path):
    """The wheel alone in a new virtualenv (its dependencies reached through a .pth to this
    interpreter's site-packages, so no download): the console script runs, the stages import
    as clipcbm.*, and none of the generic names (core, cli, cache, ...) is importable."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    deps = sysconfig.get_paths()["purelib"]
    with zipfile.ZipFile(wheel) as z:  # install = unpack a pure wheel + its console script
        z.extractall(site)
    (Path(site) / "deps.pth").write_text(deps + "\n", encoding="utf-8")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = (
        "import importlib.util as u, clipcbm, clipcbm.heads.cbm.train, clipcbm.cli\n"
        "print(clipcbm.__file__)\n"
        "print([n for n in ('cache', 'core', 'heads', 'pipeline', 'cli') if u.find_spec(n)])\n"
    )
    out = subprocess.run([py, "-c", probe], cwd=work, env=env, check=True, capture_output=True,
                         text=True).stdout.splitlines()  # fmt: skip
    assert out[0].startswith(site) and out[1] == "[]", out
    res = subprocess.run([py, "-m", "clipcbm", "--help"], cwd=work, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0 and "fit-head" in res.stdout, res.stderr


def test_the_console_script_has_exactly_the_commands_of_cli_py():
    script = Path(sys.executable).parent / "clipcbm"
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable} (not pip-installed)")
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}

    def commands(*argv) -> str:
        res = subprocess.run([*argv, "--help"], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True)  # fmt: skip
        return res.stdout

    via_script = commands(str(script))
    via_checkout = commands(sys.executable, "cli.py")
    assert "fit-head" in via_script and "cache" in via_script
    assert via_script.replace("cli.py", "clipcbm") == via_checkout.replace("cli.py", "clipcbm")
