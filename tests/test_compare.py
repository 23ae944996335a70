"""`cli.py compare`: every method on one cache through the CLI, one table (heads issue §6)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from clipcbm.cache.planted import make_planted_cache
from clipcbm.cli import app
from clipcbm.heads.compare import markdown
from clipcbm.heads.eval.config import METHODS, CompareConfig

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    return make_planted_cache(root / "p.zarr", n_train=200, n_test=60, n_classes=4,
                              n_concepts=20, seed=1)  # fmt: skip


def test_compare_writes_its_table_through_the_cli(tiny, tmp_path):
    out = tmp_path / "cmp"
    args = [
        "compare",
        "--cache",
        str(tiny),
        "--out",
        str(out),
        "--no-progress",
        "--max-steps",
        "60",
    ]
    for m in (
        "zero-shot",
        "cms",
        "l1",
        "sparse",
        "sparse-elastic-net",
        "random-concepts",
        "sklearn-probe",
    ):
        args += ["--method", m]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "results.csv")
    assert list(table.columns[:8]) == ["method", "top1", "top5", "acc_nec5", "act_sparsity",
                                       "nec", "faithfulness", "seconds"]  # fmt: skip
    assert table["method"].tolist() == ["zero-shot", "cms", "l1", "sparse",
                                        "sparse-elastic-net", "random-concepts",
                                        "sklearn-probe"]  # fmt: skip
    assert (out / "results.md").read_text().startswith("| method | top-1 %")
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = table.set_index("method")
    assert rows.loc["sparse-elastic-net", "nec"] <= 5.0 + 1e-9
    assert rows.loc["sparse", "act_sparsity"] >= 0.9 - 1e-6  # fp32 mean of exact 0.9 rows
    assert rows.loc["zero-shot", "top1"] > 0.5  # planted caches are easy for zero-shot
    assert rows.loc["sklearn-probe", "top1"] > 0.5  # the reference row is a real probe
    assert rows.loc["l1", "faithfulness"] > 0.9  # an identity CBL ranks as CLIP's scores do
    assert np.isnan(rows.loc["zero-shot", "faithfulness"])  # no concept layer
    assert (out / "heads" / "l1" / "config.json").is_file()
    again = runner.invoke(app, args)  # results are never overwritten silently
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_compare_errors():
    with pytest.raises(ValueError, match="--method must be one of"):
        CompareConfig(cache="c.zarr", methods=("zero-shot", "nope"))
    assert "random-concepts" in METHODS and "probe" in METHODS


def test_markdown_shows_fractions_as_percent_and_missing_as_dash():
    t = pd.DataFrame([{"method": "zero-shot", "top1": 0.5, "top5": 0.9, "acc_nec5": float("nan"),
                       "act_sparsity": float("nan"), "nec": float("nan"),
                       "faithfulness": float("nan"), "seconds": 0.01,
                       "val_top1": None}])  # fmt: skip
    assert "| zero-shot | 50.0 | 90.0 | – | – | – | – | 0.0 | – |" in markdown(t)
