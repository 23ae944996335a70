"""The Python API (clipcbm.api): the CLI's commands as functions, same configs, same files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

import clipcbm
from clipcbm.cache.planted import make_planted_cache
from clipcbm.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api")
    return make_planted_cache(root / "p.zarr", n_train=300, n_test=120, n_classes=6,
                              n_concepts=24, noise=2.5, seed=3)  # fmt: skip


def test_fit_head_is_the_command_fit_head(planted, tmp_path):
    """The same options through the API and the CLI write the same weights."""
    fit = clipcbm.fit_head(planted, loss="l1", max_steps=60, out=tmp_path / "api",
                           progress=False, device="cpu")  # fmt: skip
    res = CliRunner().invoke(app, ["fit-head", "--cache", str(planted), "--loss", "l1",
                                   "--max-steps", "60", "--out", str(tmp_path / "cli"),
                                   "--no-progress", "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output
    a = load_file(tmp_path / "api" / "model.safetensors")
    b = load_file(tmp_path / "cli" / "model.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    assert isinstance(fit.table, pd.DataFrame) and list(fit.table["split"][:2]) == ["val", "test"]
    assert fit.table["top1"][1] == fit.metrics["test"]["top1"]
    head = fit.load(planted)
    assert head.kind == "cbm" and head.config["n_concepts"] == 24


def test_an_open_cache_and_a_fit_head_are_accepted_where_paths_are(planted, tmp_path):
    with clipcbm.open_cache(planted) as cache:
        fit = clipcbm.fit_head(cache, loss="probe", out=tmp_path / "probe", progress=False)
        ev = clipcbm.evaluate(cache, fit, out=tmp_path / "ev", progress=False)
    assert ev.metrics["top1"] == pytest.approx(fit.metrics["test"]["top1"])
    assert set(ev.per_class.columns) >= {"class", "n", "accuracy"}
    assert (tmp_path / "ev" / "metrics_test.json").exists()


def test_a_wrong_keyword_names_the_options(planted):
    with pytest.raises(TypeError, match=r"'losss': not an option of FitHeadConfig.*\bloss\b"):
        clipcbm.fit_head(planted, losss="l1")
    with pytest.raises(ValueError, match="loss"):  # values are checked as the CLI checks them
        clipcbm.fit_head(planted, loss="nope")


def test_the_docs_example_runs_end_to_end(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "docs" / "notebook_example.py"),
                          str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                         timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "test top-1" in out and "zero-shot" in out and "ConceptBottleneck" in out
    assert "of which planted for its class: ['concept_" in out  # an explanation names them
    assert (tmp_path / "compare").is_dir() and (tmp_path / "explain" / "row0.png").exists()


def test_importing_clipcbm_stays_light():
    """`import clipcbm` (and clipcbm.cache) must not pull torch: the API loads on first use."""
    probe = "import sys, clipcbm, clipcbm.cache; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=ROOT)  # fmt: skip
    assert out.stdout.strip() == "False"


def test_a_repeatable_option_takes_a_list_or_one_string(planted, tmp_path):
    one = clipcbm.compare(planted, methods="zero-shot", out=tmp_path / "one", progress=False)
    two = clipcbm.compare(planted, methods=["zero-shot", "probe"], out=tmp_path / "two",
                          progress=False)  # fmt: skip
    assert list(one.table["method"]) == ["zero-shot"]
    assert list(two.table["method"]) == ["zero-shot", "probe"]
