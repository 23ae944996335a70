"""`cms-eval` and `evaluate` end to end on planted caches (heads/evaluate.py, heads/headeval.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from clipcbm.cache import open_cache
from clipcbm.cache.planted import make_planted_cache, planted_arrays, planted_from_cache
from clipcbm.heads.eval.commands import (
    CmsEvalConfig,
    EvaluateConfig,
    run_cms_eval,
    run_evaluate,
)
from clipcbm.heads.eval.metrics import NEC_GRID
from clipcbm.heads.io.artifact import HeadCacheMismatchError, load_head
from clipcbm.heads.io.evaldata import EvalInputError
from tests._heads_eval_fixtures import (
    cache_arrays_with,
    nan_rows,
    oracle_head,
    probe_head,
    write_arrays,
)

N_CLASSES = 5


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    path = make_planted_cache(root / "planted.zarr", noise=1.0, seed=0)
    with open_cache(path) as c:
        head = oracle_head(c, root / "oracle", planted_from_cache(c))
        mapping = planted_from_cache(c)
    return {"root": root, "cache": path, "head": head, "planted": mapping}


# ------------------------------------------------------------------ cms-eval


def test_cms_eval_writes_side_by_side_metrics_and_predictions(planted, tmp_path):
    cfg = CmsEvalConfig(
        cache=planted["cache"], normalize="zscore", splits=("test", "train"), out=tmp_path / "o"
    )
    res = run_cms_eval(cfg)
    t = res.table
    assert list(t["method"]) == ["zero-shot", "cms (zscore)"] * 2
    assert list(t["split"]) == ["test", "test", "train", "train"]
    assert (t["top1"] > 0.8).all(), t  # planted: both far above chance (0.2)
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["normalize"] == "zscore" and m["metrics"]["test/cms/n"] == 200
    assert m["metrics"]["test/zero_shot/top1"] == t["top1"].iloc[0]
    assert 0.0 <= m["metrics"]["train/agreement"] <= 1.0
    with open_cache(planted["cache"]) as c:
        assert m["cache_fingerprint"] == c.fingerprint
    preds = pd.read_csv(tmp_path / "o" / "predictions_test.csv")
    assert len(preds) == 200
    cols = {"id", "label", "cms_pred", "zs_pred", "cms_score", "concept_1", "term_5"}
    assert cols <= set(preds.columns)
    assert (preds["cms_pred"] == preds["label"]).mean() == pytest.approx(t["top1"].iloc[1])
    # CMS explanations: the top concept of a correct prediction is one of its class's planted
    # concepts for the large majority of images
    ok = preds[preds["cms_pred"] == preds["label"]]
    names = {m: {f"concept_{j:03d}" for j in idx} for m, idx in planted["planted"].items()}
    hit = [row.concept_1 in names[row.label] for row in ok.itertuples()]
    assert np.mean(hit) > 0.8
    pc = pd.read_csv(tmp_path / "o" / "per_class_test.csv")
    assert list(pc.columns) == ["class_index", "class", "n", "zs_acc", "cms_acc"]
    assert pc["n"].sum() == 200
    assert "zero-shot" in res.summary() and "cms (zscore)" in res.summary()


def test_cms_eval_default_out_dir_and_sum_alias(planted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run_cms_eval(CmsEvalConfig(cache=planted["cache"], normalize="sum", progress=False))
    # one folder per normalisation, so comparing settings never overwrites earlier results
    assert (tmp_path / "runs/cms/planted-sum/metrics.json").is_file()
    assert res.metrics["normalize"] == "none"
    assert res.metrics["config"]["normalize"] == "sum"


def test_cms_eval_errors(planted, tmp_path):
    msg = r"split 'val' is not in cache .*; it has \['test', 'train'\]"
    with pytest.raises(EvalInputError, match=msg):
        run_cms_eval(CmsEvalConfig(cache=planted["cache"], splits=("val",), out=tmp_path))
    with pytest.raises(ValueError, match="normalize must be one of .* got 'l1'"):
        CmsEvalConfig(cache=planted["cache"], normalize="l1")
    with pytest.raises(ValueError, match="--chunk-size must be an integer >= 1, got 0"):
        CmsEvalConfig(cache=planted["cache"], chunk_size=0)
    with pytest.raises(ValueError, match="device must be one of .* got 'tpu'"):
        CmsEvalConfig(cache=planted["cache"], device="tpu")
    with pytest.raises(ValueError, match="--split must be non-empty and distinct"):
        CmsEvalConfig(cache=planted["cache"], splits=("test", "test"))


@pytest.fixture(scope="module")
def broken_caches(tmp_path_factory):
    """Caches whose test split is empty, all unreadable, or has NaN embeddings."""
    root = tmp_path_factory.mktemp("broken")
    arr = planted_arrays(n_train=20, n_test=10)
    e = arr["splits"]["test"]["image_emb"].shape[1]
    variants = {
        "empty": {"image_emb": np.zeros((0, e), np.float32), "labels": np.zeros(0, np.int64),
                  "ids": np.array([], dtype=str), "ok": np.zeros(0, bool)},
        "unreadable": {"ok": np.zeros(10, bool)},
        "nan": {"image_emb": nan_rows(arr["splits"]["test"]["image_emb"], [3, 7])},
    }  # fmt: skip
    return {
        k: write_arrays(root / f"{k}.zarr", cache_arrays_with(arr, "test", **v))
        for k, v in variants.items()
    }


@pytest.mark.parametrize(
    ("which", "match"),
    [
        ("empty", r"split 'test' of cache .* has no valid rows \(0 rows, 0 unreadable\)"),
        ("unreadable", r"has no valid rows \(10 rows, 10 unreadable\)"),
        ("nan", r"has 2 row\(s\) with non-finite \(NaN/inf\) embeddings, e.g. ids test/000003"),
    ],
)
def test_unusable_splits_are_refused(broken_caches, tmp_path, which, match):
    with pytest.raises(EvalInputError, match=match):
        run_cms_eval(CmsEvalConfig(cache=broken_caches[which], out=tmp_path, progress=False))


# ------------------------------------------------------------------ evaluate


def test_evaluate_oracle_head(planted, tmp_path):
    res = run_evaluate(EvaluateConfig(cache=planted["cache"], head=planted["head"], out=tmp_path))
    m = res.metrics
    assert m["n"] == 200 and m["top1"] > 0.9 and m["top5"] == 1.0
    # dense final layer: every class reads all 24 concepts; truncation keeps the planted 3
    assert m["nec_mean"] == 24 and m["concepts_used"] == 24
    assert set(f"acc_nec{k}" for k in NEC_GRID) <= set(m)
    assert m["acc_nec5"] >= m["top1"] - 0.05
    assert m["acc_nec_avg"] == pytest.approx(np.mean([m[f"acc_nec{k}"] for k in NEC_GRID]))
    assert 0.0 <= m["act_sparsity"] < 0.5 and m["act_l0"] == 24
    assert 0 < m["zero_shot_top1"] <= 1
    for key in ("metrics", "per_class", "predictions", "confusion_csv", "confusion_png"):
        assert res.files[key].is_file()
    rec = json.loads(res.files["metrics"].read_text())
    assert (
        rec["head_kind"] == "cbm" and rec["split"] == "test" and rec["metrics"]["top1"] == m["top1"]
    )
    assert res.per_class["n"].sum() == 200
    cm = pd.read_csv(res.files["confusion_csv"])
    assert cm.shape == (N_CLASSES, N_CLASSES + 1) and cm.iloc[:, 1:].to_numpy().sum() == 200
    assert "acc_nec5" in res.summary()


def test_evaluate_predictions_match_the_heads_own_logits(planted, tmp_path):
    """The one-pass evaluation (W_F a + b from the activations) equals Head.logits."""
    res = run_evaluate(
        EvaluateConfig(cache=planted["cache"], head=planted["head"], out=tmp_path, chunk_size=37)
    )
    preds = pd.read_csv(res.files["predictions"])
    with open_cache(planted["cache"]) as c:
        head = load_head(planted["head"], c)
        logits = head.logits(c.split("test").image_emb, c)
    np.testing.assert_array_equal(preds["pred"].to_numpy(), logits.argmax(1).numpy())
    assert res.metrics["top1"] == pytest.approx(float((preds["pred"] == preds["label"]).mean()))


def test_evaluate_a_head_without_concepts(planted, tmp_path):
    with open_cache(planted["cache"]) as c:
        probe = probe_head(c, tmp_path / "probe")
    res = run_evaluate(EvaluateConfig(cache=planted["cache"], head=probe, out=tmp_path / "o"))
    assert {"n", "top1", "top5", "mean_per_class_acc", "zero_shot_top1"} <= set(res.metrics)
    assert not any(k.startswith(("nec", "acc_nec", "act_")) for k in res.metrics)
    assert "act_sparsity" not in pd.read_csv(res.files["predictions"]).columns


def test_evaluate_refuses_a_head_fitted_on_another_cache(planted, tmp_path):
    other = make_planted_cache(tmp_path / "other.zarr", seed=5)  # same shapes, other data
    with pytest.raises(HeadCacheMismatchError, match="fingerprint"):
        run_evaluate(EvaluateConfig(cache=other, head=planted["head"], out=tmp_path / "o"))


def test_evaluate_refuses_a_head_with_another_concept_count(planted, tmp_path):
    other = make_planted_cache(tmp_path / "wide.zarr", n_concepts=30)
    with pytest.raises(HeadCacheMismatchError, match=r"\|D\| \(concepts\) = 24, cache .* has 30"):
        run_evaluate(EvaluateConfig(cache=other, head=planted["head"], out=tmp_path / "o"))


def test_evaluate_config_errors(planted):
    with pytest.raises(ValueError, match="--chunk-size must be an integer >= 1, got -1"):
        EvaluateConfig(cache=planted["cache"], head=planted["head"], chunk_size=-1)
    with pytest.raises(EvalInputError, match="split 'dev' is not in cache"):
        run_evaluate(EvaluateConfig(cache=planted["cache"], head=planted["head"], split="dev"))


# ------------------------------------------------------------------ CLI


def test_cli_cms_eval(planted, tmp_path):
    from clipcbm.cli import app

    out = tmp_path / "cms"
    r = CliRunner().invoke(
        app,
        ["cms-eval", "--cache", str(planted["cache"]), "--normalize", "column", "--out", str(out),
         "--no-progress", "--split", "test"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "zero-shot" in r.output and "cms (column)" in r.output
    assert (out / "predictions_test.csv").is_file() and (out / "metrics.json").is_file()
    bad = CliRunner().invoke(app, ["cms-eval", "--cache", str(planted["cache"]), "--split", "x"])
    assert bad.exit_code == 2 and "split 'x' is not in cache" in bad.output


def test_cli_evaluate(planted, tmp_path):
    from clipcbm.cli import app

    r = CliRunner().invoke(
        app,
        ["evaluate", "--cache", str(planted["cache"]), "--head", str(planted["head"]),
         "--out", str(tmp_path), "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "acc_nec_avg" in r.output and "top1" in r.output
    assert (tmp_path / "confusion_test.png").stat().st_size > 1000
