"""fit-adapter and knn-eval end to end on a tiny views cache; the adapter artifact and its
feature transform; every user-facing error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clipcbm.cache import open_cache, write_cache
from clipcbm.cache.layout import model_fingerprint
from clipcbm.cli import app
from clipcbm.heads.contrastive.adapter import sample_views, train_projection
from clipcbm.heads.contrastive.artifact import check_model, load_adapter, load_feature_transform
from clipcbm.heads.contrastive.config import FitAdapterConfig, KnnEvalConfig
from clipcbm.heads.errors import HeadCacheMismatchError, HeadFormatError, HeadsConfigError
from clipcbm.heads.transforms import load_transform

torch.set_num_threads(1)
runner = CliRunner()
C, E, V = 4, 16, 3


def make_cache(path, views: int = V, model: str = "toy", seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(C, E))

    def split(n):
        y = np.arange(n) % C
        base = centers[y] + 0.8 * rng.normal(size=(n, E))
        d = {"image_emb": base, "labels": y}
        if views:
            d["view_emb"] = base[:, None] + 0.3 * rng.normal(size=(n, views, E))
        return d

    return write_cache(
        path, splits={"train": split(96), "test": split(40)}, concepts=["k0", "k1"],
        classes=[f"c{i}" for i in range(C)], concept_emb=rng.normal(size=(2, E)),
        class_emb=centers, metadata={"model": model},
    )  # fmt: skip


@pytest.fixture(scope="module")
def views_cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("views") / "c.zarr")


def fit_args(cache, out, *extra):
    return ["fit-adapter", "--cache", str(cache), "--out", str(out), "--steps", "20",
            "--batch-size", "32", "--dim", "8", "--hidden", "32", "--no-progress",
            "--device", "cpu", *extra]  # fmt: skip


def test_fit_adapter_then_knn_eval_cli(views_cache, tmp_path):
    out = tmp_path / "ad"
    res = runner.invoke(app, fit_args(views_cache, out, "--positives", "2", "--aggregate",
                                      "pos-grouping"))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and (out / "model.safetensors").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "adapter" and cfg["train"]["positives"] == 2 and cfg["out_dim"] == 8
    with open_cache(views_cache) as c:
        assert cfg["model_fingerprint"] == model_fingerprint(c.metadata)
    knn_json = tmp_path / "knn.json"
    res = runner.invoke(app, ["knn-eval", "--cache", str(views_cache), "--adapter", str(out),
                              "--k", "10", "--out", str(knn_json), "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "weighted" in res.output and "majority" in res.output
    m = json.loads(knn_json.read_text())
    assert m["weighted"]["n"] == 40 and 0 <= m["weighted"]["top1"] <= 1 and m["k"] == 10
    res = runner.invoke(app, ["knn-eval", "--cache", str(views_cache), "--k", "10"])
    assert res.exit_code == 0 and "raw embeddings" in res.output, res.output
    again = runner.invoke(app, fit_args(views_cache, out))  # never overwritten silently
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_same_seed_same_adapter(views_cache, tmp_path):
    shas = []
    for name in ("a", "b"):
        res = runner.invoke(app, fit_args(views_cache, tmp_path / name, "--seed", "3"))
        assert res.exit_code == 0, res.output
        shas.append(json.loads((tmp_path / name / "config.json").read_text())["weights_sha256"])
    assert shas[0] == shas[1]


def test_feature_transform_contract(views_cache, tmp_path):
    out = tmp_path / "ad"
    assert runner.invoke(app, fit_args(views_cache, out, "--arch", "linear")).exit_code == 0
    ft = load_transform("adapter", out)
    assert ft is not None and ft.kind == "adapter" and ft.names[:2] == ["a0", "a1"]
    assert ft.out_dim == 8 and ft.in_dim == E
    assert ft.sha256 == json.loads((out / "config.json").read_text())["weights_sha256"]
    with open_cache(views_cache) as c:
        assert ft.model_fingerprint == model_fingerprint(c.metadata)
        x = torch.from_numpy(c.split("test").image_emb[:5]).half()  # any float dtype
    f = ft(x)
    assert f.shape == (5, 8) and f.dtype == torch.float32
    torch.testing.assert_close(f.norm(dim=1), torch.ones(5))
    assert load_feature_transform(out, "cpu").sha256 == ft.sha256


def _train(cache_path, **kw):
    cfg = FitAdapterConfig(cache=cache_path, steps=5, batch_size=16, dim=4, hidden=8,
                           progress=False, **kw)  # fmt: skip
    with open_cache(cache_path) as c:
        views, labels = c.view_emb("train"), c.split("train").labels
    return train_projection(views, labels, cfg, "cpu")


@pytest.mark.parametrize(
    "kw",
    [
        dict(loss="supcon"),
        dict(loss="contrastive", remove_false_negatives=True),
        dict(loss="debiased-neg", positives_from="class", positives=2),
        dict(loss="debiased-pos", false_positive_rate=0.3, aggregate="pos-grouping"),
    ],
)
def test_training_options_run(views_cache, kw):
    model, history = _train(views_cache, **kw)
    assert len(history) >= 2 and all(np.isfinite(h["loss"]) for h in history)


def test_sample_views_positives_from_class_and_false_positives():
    n = 12
    labels = torch.arange(n) % 3
    # view j of image i holds (i, j) so the source of every sampled view can be read back
    view_emb = torch.stack(
        [torch.stack([torch.tensor([float(i), float(j)]) for j in range(3)]) for i in range(n)]
    )
    rows = torch.arange(n)
    g = torch.Generator().manual_seed(0)
    cfg = FitAdapterConfig(cache="x", positives=2, positives_from="class")
    x = sample_views(view_emb, labels, rows, 2, cfg, g)
    src = x[..., 0].long()
    assert (src[:, 0] == rows).all() and (labels[src[:, 1:]] == labels[:, None]).all()
    cfg = FitAdapterConfig(cache="x", positives=1, false_positive_rate=0.5)
    src = sample_views(view_emb, labels, rows, 1, cfg, torch.Generator().manual_seed(1))[..., 0]
    swapped = src[:, 1].long() != rows
    assert swapped.any() and (labels[src[swapped, 1].long()] != labels[swapped]).all()
    x = sample_views(view_emb, labels, rows, 2, FitAdapterConfig(cache="x", positives=2), g)
    assert (x[..., 0].long() == rows[:, None]).all()
    assert all(len(set(x[i, :, 1].tolist())) == 3 for i in range(n))  # distinct views


def test_too_many_positives_for_the_cache_views(views_cache, tmp_path):
    res = runner.invoke(app, fit_args(views_cache, tmp_path / "a", "--positives", "3"))
    assert res.exit_code == 2 and "needs M + 1 = 4 views" in res.output, res.output


def test_cache_without_views(tmp_path):
    path = make_cache(tmp_path / "plain.zarr", views=0)
    res = runner.invoke(app, fit_args(path, tmp_path / "a"))
    assert res.exit_code == 2 and "has no augmented views" in res.output, res.output


def test_adapter_on_a_cache_of_another_model(views_cache, tmp_path):
    out = tmp_path / "ad"
    assert runner.invoke(app, fit_args(views_cache, out)).exit_code == 0
    other = make_cache(tmp_path / "other.zarr", model="another-clip", seed=1)
    res = runner.invoke(app, ["knn-eval", "--cache", str(other), "--adapter", str(out)])
    assert res.exit_code == 2 and "another model" in res.output, res.output
    with open_cache(other) as c, pytest.raises(HeadCacheMismatchError, match="another model"):
        check_model(load_adapter(out), c)


def test_damaged_or_missing_adapter(views_cache, tmp_path):
    out = tmp_path / "ad"
    assert runner.invoke(app, fit_args(views_cache, out)).exit_code == 0
    with pytest.raises(HeadFormatError, match="nothing does not exist"):
        load_adapter(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HeadFormatError, match="model.safetensors is missing"):
        load_adapter(tmp_path / "empty")
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "kind": "cbm"}))
    with pytest.raises(HeadFormatError, match="not an adapter directory"):
        load_adapter(out)
    (out / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(HeadFormatError, match="newer than this toolkit"):
        load_adapter(out)
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(HeadFormatError, match="does not match the sha256"):
        load_adapter(out)
    (out / "config.json").write_text("{")
    with pytest.raises(HeadFormatError, match="not readable JSON"):
        load_adapter(out)


def test_knn_eval_unknown_split(views_cache):
    res = runner.invoke(app, ["knn-eval", "--cache", str(views_cache), "--query-split", "val"])
    assert res.exit_code == 2 and "--query-split" in res.output, res.output


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(loss="debiased-pos", tau_plus=0.0), "identically 0"),
        (dict(tau_plus=1.0), r"--tau-plus must be in \[0, 1\)"),
        (dict(t=0.0), "--t must be a finite number > 0"),
        (dict(batch_size=1), "--batch-size must be an integer >= 2"),
        (dict(positives=0), "--positives must be an integer >= 1"),
        (dict(false_positive_rate=1.0), "--false-positive-rate must be in"),
        (dict(loss="supcon", remove_false_negatives=True), "supcon already"),
        (dict(loss="triplet"), "--loss must be one of"),
        (dict(weight_decay=-1.0), "--weight-decay must be >= 0"),
    ],
)
def test_fit_adapter_config_errors(kw, match):
    with pytest.raises(HeadsConfigError, match=match):
        FitAdapterConfig(cache="c.zarr", **kw)


def test_knn_eval_config_errors():
    with pytest.raises(HeadsConfigError, match="--k must be an integer >= 1"):
        KnnEvalConfig(cache="c.zarr", k=0)
    with pytest.raises(HeadsConfigError, match="--t must be a finite number > 0"):
        KnnEvalConfig(cache="c.zarr", t=-1.0)


def test_fit_head_reads_adapter_features(views_cache, tmp_path):
    out = tmp_path / "ad"
    assert runner.invoke(app, fit_args(views_cache, out)).exit_code == 0
    head = tmp_path / "head"
    res = runner.invoke(app, ["fit-head", "--cache", str(views_cache), "--features", "adapter",
                              "--adapter", str(out), "--loss", "probe", "--out", str(head),
                              "--no-progress", "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output


def test_commands_on_a_cache_from_embed(tiny_clip_dir, tmp_path):
    """The user's path: embed --views -> fit-adapter -> knn-eval (tiny CLIP, tiny CIFAR-10)."""
    import tests._dataset_factories as fx

    root = fx.make_cifar10(tmp_path / "data", n_train=12, n_test=4)
    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nwings\n")
    cache = tmp_path / "views.zarr"
    res = runner.invoke(app, [str(a) for a in [
        "embed", "--dataset", "cifar10", "--root", root, "--out", cache, "--concepts", concepts,
        "--model", tiny_clip_dir, "--device", "cpu", "--workers", "0", "--batch-size", "4",
        "--no-progress", "--views", "3", "--augment", "simclr"]])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = tmp_path / "ad"
    res = runner.invoke(app, fit_args(cache, out, "--positives", "2", "--batch-size", "6"))
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["knn-eval", "--cache", str(cache), "--adapter", str(out), "--k", "5"])
    assert res.exit_code == 0 and "weighted" in res.output, res.output
