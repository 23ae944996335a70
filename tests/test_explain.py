"""`explain` (heads/explain.py, heads/plots.py, heads/evaluate.run_explain) on planted caches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from clipcbm.cache import open_cache
from clipcbm.cache.planted import make_planted_cache, planted_arrays, planted_from_cache
from clipcbm.heads.eval.commands import ExplainConfig, run_explain
from clipcbm.heads.eval.explain import TABLE_COLUMNS, contribution_table, explain_cbm
from clipcbm.heads.eval.plots import plot_confusion
from clipcbm.heads.io.artifact import load_head
from clipcbm.heads.io.evaldata import EvalInputError
from tests._heads_eval_fixtures import cache_arrays_with, oracle_head, probe_head, write_arrays


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    path = make_planted_cache(root / "planted.zarr", noise=1.0, seed=0)
    with open_cache(path) as c:
        mapping = planted_from_cache(c)
        head = oracle_head(c, root / "oracle", mapping)
        probe = probe_head(c, root / "probe")
        labels = c.split("test").labels
    return {"cache": path, "head": head, "probe": probe, "planted": mapping, "labels": labels}


# ------------------------------------------------------------------ pure functions


def test_explain_cbm_by_hand():
    a = torch.tensor([2.0, -1.0, 0.5, 0.0])
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, -3.0, 4.0, 9.0]])
    b = torch.tensor([0.0, 0.25])
    ex = explain_cbm(a, w, b, ["a", "b", "c", "d"], k=3)
    # logits: class 0 -> 1.5, class 1 -> 3 + 2 + 0 + 0.25 = 5.25
    assert ex.pred == 1 and ex.score == pytest.approx(5.25) and ex.offset == pytest.approx(0.25)
    assert list(ex.table.columns) == list(TABLE_COLUMNS)
    assert ex.table["concept"].tolist() == ["b", "c", "a"]  # 3.0, 2.0, then the 0.0 tie -> a
    np.testing.assert_allclose(ex.table["contribution"], [3.0, 2.0, 0.0])
    np.testing.assert_allclose(ex.table["activation"], [-1.0, 0.5, 2.0])
    assert ex.contributions.sum() + ex.offset == pytest.approx(ex.score)


def test_explanation_errors():
    with pytest.raises(ValueError, match=r"activations have \|D\| = 3, W_F has 4 columns"):
        explain_cbm(torch.ones(3), torch.ones(2, 4), None, ["a", "b", "c"])
    with pytest.raises(ValueError, match="top-k must be >= 1, got 0"):
        contribution_table(["a"], [1.0], [1.0], [1.0], 0)


def test_confusion_png(tmp_path):
    cm = np.array([[3, 1], [0, 0]])  # class 1 has no samples: row of zeros, no division error
    p = plot_confusion(cm, ["x", "y"], tmp_path / "cm.png", title="t")
    assert p.stat().st_size > 1000


# ------------------------------------------------------------------ run_explain


def test_explain_head_names_the_planted_concepts(planted, tmp_path):
    for index in (0, 17, 123):
        res = run_explain(
            ExplainConfig(cache=planted["cache"], head=planted["head"], index=index, top_k=5,
                          out=tmp_path / f"e{index}.png")
        )  # fmt: skip
        ex = res.explanation
        y = int(planted["labels"][index])
        if ex.pred == y:  # a correct prediction is explained by its class's planted concepts
            assert set(ex.table["concept_index"][:3]) == set(planted["planted"][y])
        assert ex.contributions.sum() + ex.offset == pytest.approx(ex.score, rel=1e-5)
        assert res.files["png"].stat().st_size > 1000
        table = pd.read_csv(res.files["csv"])
        assert list(table.columns) == list(TABLE_COLUMNS) and len(table) == 5
        assert res.id == f"test/{index:06d}"
    # the explained logit is the head's own logit for that image
    with open_cache(planted["cache"]) as c:
        logits = load_head(planted["head"], c).logits(c.split("test").image_emb[123:124], c)[0]
    assert ex.pred == int(logits.argmax()) and ex.score == pytest.approx(float(logits.max()))


def test_explain_cms_without_head(planted, tmp_path):
    res = run_explain(
        ExplainConfig(cache=planted["cache"], index=5, normalize="zscore", out=tmp_path / "c.png")
    )
    ex = res.explanation
    assert ex.method == "cms" and ex.offset == 0.0
    assert ex.contributions.sum() == pytest.approx(ex.score, abs=1e-5)
    assert -1.0 <= ex.score <= 1.0
    assert "cos(V, T)" in res.summary()


def test_explain_default_out_path(planted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run_explain(ExplainConfig(cache=planted["cache"], head=planted["head"], index=2))
    assert (tmp_path / "runs/explain/oracle/test-2.png").is_file()
    assert (tmp_path / "runs/explain/oracle/test-2.csv").is_file()
    assert res.files["png"].name == "test-2.png"


def test_explain_user_errors(planted, tmp_path):
    cfg = {"cache": planted["cache"], "out": tmp_path / "x.png"}
    with pytest.raises(
        EvalInputError, match=r"--index 200 is out of range .* index must be in 0..199"
    ):
        run_explain(ExplainConfig(**cfg, head=planted["head"], index=200))
    with pytest.raises(EvalInputError, match="explain needs a concept-bottleneck head .* 'probe'"):
        run_explain(ExplainConfig(**cfg, head=planted["probe"], index=0))
    with pytest.raises(EvalInputError, match="split 'val' is not in cache"):
        run_explain(ExplainConfig(**cfg, index=0, split="val"))
    with pytest.raises(ValueError, match="index must be an integer >= 0, got -1"):
        ExplainConfig(**cfg, index=-1)
    with pytest.raises(ValueError, match="out must be a .png path, got 'x.jpg'"):
        ExplainConfig(cache=planted["cache"], index=0, out="x.jpg")
    with pytest.raises(ValueError, match="--top-k must be an integer >= 1, got 0"):
        ExplainConfig(**cfg, index=0, top_k=0)


def test_explain_refuses_an_unreadable_row(tmp_path):
    arr = planted_arrays(n_train=20, n_test=10)
    ok = np.ones(10, bool)
    ok[4] = False
    path = write_arrays(tmp_path / "c.zarr", cache_arrays_with(arr, "test", ok=ok))
    with pytest.raises(EvalInputError, match="row 4 of split 'test' is an image that could not"):
        run_explain(ExplainConfig(cache=path, index=4, out=tmp_path / "x.png"))
    res = run_explain(ExplainConfig(cache=path, index=5, out=tmp_path / "y.png"))
    assert res.id == "test/000005"  # positions count every row, readable or not


def test_cli_explain(planted, tmp_path):
    from clipcbm.cli import app

    png = tmp_path / "expl.png"
    r = CliRunner().invoke(
        app,
        ["explain", "--cache", str(planted["cache"]), "--head", str(planted["head"]),
         "--index", "123", "--out", str(png), "--top-k", "4"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "contribution" in r.output and "image test/000123" in r.output
    assert png.is_file() and png.with_suffix(".csv").is_file()
    bad = CliRunner().invoke(
        app, ["explain", "--cache", str(planted["cache"]), "--index", "999", "--out", str(png)]
    )
    assert bad.exit_code == 2 and "out of range" in bad.output
