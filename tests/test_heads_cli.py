"""`cli.py fit-head` through typer's CliRunner on a tiny planted cache."""

import json

from typer.testing import CliRunner

from clipcbm.cache.planted import make_planted_cache
from clipcbm.cli import app

runner = CliRunner()


def test_fit_head_cli_writes_a_head_and_prints_the_table(tmp_path, monkeypatch):
    cache = make_planted_cache(tmp_path / "tiny.zarr", n_train=200, n_test=50, noise=1.0)
    monkeypatch.chdir(tmp_path)  # the default --out is relative: runs/heads/<cache>-<loss>
    args = ["fit-head", "--cache", str(cache), "--loss", "l1", "--lambda", "1e-2", "--coupling",
            "sequential", "--epochs", "3", "--batch-size", "32", "--no-progress"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = tmp_path / "runs" / "heads" / "tiny-l1"
    cfg = json.loads((out / "config.json").read_text())
    hyper = cfg["hyperparameters"]
    assert hyper["lam"] == 1e-2 and hyper["coupling"] == "sequential"
    assert "head top-1" in res.output and "zero-shot top-1" in res.output
    assert "test" in res.output and (out / "model.safetensors").is_file()

    again = runner.invoke(app, args)  # same --out, not empty: a clean error, no traceback
    assert again.exit_code == 2 and "--overwrite" in again.output

    bad = runner.invoke(app, ["fit-head", "--cache", str(cache), "--loss", "sparse", "--hard",
                              "--variant", "reference", "--no-progress"])  # fmt: skip
    assert bad.exit_code == 2 and "--hard needs --variant paper" in bad.output

    top = runner.invoke(app, ["fit-head", "--cache", str(cache), "--topk", "3", "--epochs", "2",
                              "--out", "topk", "--no-progress"])  # fmt: skip
    assert top.exit_code == 0, top.output
    assert "act. sparsity" in top.output and "active concepts" in top.output
    assert json.loads((tmp_path / "topk" / "config.json").read_text())["topk"] == 3
    too_big = runner.invoke(app, ["fit-head", "--cache", str(cache), "--topk", "24",
                                  "--out", "big", "--no-progress"])  # fmt: skip
    assert too_big.exit_code == 2 and "topk must be an integer in [0, |D|) = [0, 24)" in (
        too_big.output
    )
