"""`fit-head --features sae|adapter` plumbing, with a stand-in transform registered in
`heads.transforms.LOADERS` (the SAE and adapter loaders have their own tests)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import clipcbm.heads.transforms as transforms
from clipcbm.cache import open_cache
from clipcbm.cache.layout import model_fingerprint
from clipcbm.cache.planted import make_planted_cache
from clipcbm.cli import app
from clipcbm.heads.io.artifact import load_head
from clipcbm.heads.transforms import FeatureTransform

runner = CliRunner()


def _loader(fingerprint_of):
    """A 'sae' loader: a fixed random ReLU projection of E -> 24 named features."""

    def load(path, device):
        w = torch.from_numpy(np.load(path / "w.npy")).to(device)
        return FeatureTransform(
            kind="sae", path=path, sha256=hashlib.sha256((path / "w.npy").read_bytes()).hexdigest(),
            model_fingerprint=fingerprint_of(path), names=[f"latent {j}" for j in range(24)],
            fn=lambda x: torch.relu(x.to(w) @ w), in_dim=w.shape[0],
        )  # fmt: skip

    return load


@pytest.fixture
def setup(tmp_path, monkeypatch):
    path = make_planted_cache(tmp_path / "c.zarr", n_classes=4, n_concepts=12, n_train=200,
                         n_test=80, seed=0)  # fmt: skip
    with open_cache(path) as c:
        fp, e = model_fingerprint(c.metadata), c.embed_dim
    sae = tmp_path / "sae"
    sae.mkdir()
    np.save(sae / "w.npy", np.random.default_rng(0).normal(size=(e, 24)).astype(np.float32))
    monkeypatch.setitem(transforms.LOADERS, "sae", "tests.test_features_heads:LOAD")
    globals()["LOAD"] = _loader(lambda p: (p / "fp.txt").read_text())
    (sae / "fp.txt").write_text(fp)
    return path, sae, tmp_path


@pytest.mark.parametrize("final_layer", ["dense", "elastic-net"])
def test_fit_evaluate_explain_a_head_on_transform_features(setup, final_layer):
    path, sae, tmp = setup
    head = tmp / f"h-{final_layer}"
    res = runner.invoke(app, [str(a) for a in [
        "fit-head", "--cache", path, "--features", "sae", "--sae", sae, "--final-layer",
        final_layer, "--out", head, "--no-progress", "--device", "cpu", "--nec", "3"]])  # fmt: skip
    assert res.exit_code == 0, res.output
    cfg = json.loads((head / "config.json").read_text())
    assert cfg["kind"] == "features" and cfg["transform"]["n_features"] == 24
    with open_cache(path) as c:
        h = load_head(head, c)
        x = torch.from_numpy(c.split("test").image_emb)
        w = torch.from_numpy(np.load(sae / "w.npy"))
        want = torch.relu(x @ w) @ h.module.weight.T + h.module.bias  # final layer on codes
        torch.testing.assert_close(h.logits(x, c), want, rtol=1e-4, atol=1e-4)
    if final_layer == "elastic-net":
        nnz = (h.module.weight != 0).sum(1).float().mean().item()
        assert nnz <= 3.5  # NEC stop at 3 non-zero weights per class
    out = runner.invoke(app, ["evaluate", "--cache", str(path), "--head", str(head), "--out",
                              str(tmp / "ev"), "--no-progress", "--overwrite"])  # fmt: skip
    assert out.exit_code == 0, out.output
    ex = runner.invoke(app, ["explain", "--cache", str(path), "--head", str(head), "--index",
                             "0", "--top-k", "3", "--out", str(tmp / "ex.png")])  # fmt: skip
    assert ex.exit_code == 0, ex.output
    assert "latent" in ex.output  # the explanation names the transform's features


def test_a_changed_transform_or_another_model_is_refused(setup):
    path, sae, tmp = setup
    head = tmp / "h"
    args = ["fit-head", "--cache", str(path), "--features", "sae", "--sae", str(sae), "--out",
            str(head), "--no-progress", "--device", "cpu"]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    np.save(sae / "w.npy", np.ones((32, 24), np.float32))  # refitted since
    res = runner.invoke(app, ["evaluate", "--cache", str(path), "--head", str(head),
                              "--no-progress", "--out", str(tmp / "ev")])  # fmt: skip
    assert res.exit_code == 2 and "not the one this head was fitted on" in res.output
    (sae / "fp.txt").write_text("another model")
    other = [a if a != str(head) else str(tmp / "h2") for a in args]
    res = runner.invoke(app, other)
    assert res.exit_code == 2 and "another model" in res.output
    res = runner.invoke(app, ["fit-head", "--cache", str(path), "--features", "sae"])
    assert res.exit_code == 2 and "--features 'sae' needs --sae DIR" in res.output


def test_compare_adds_the_transform_rows(setup):
    path, sae, tmp = setup
    res = runner.invoke(app, ["compare", "--cache", str(path), "--method", "zero-shot", "--sae",
                              str(sae), "--out", str(tmp / "cmp"), "--no-progress",
                              "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output
    table = (tmp / "cmp" / "results.csv").read_text()
    assert "sae-dense" in table and "sae-elastic-net" in table and "zero-shot" in table
    assert (tmp / "cmp" / "heads" / "sae-elastic-net" / "config.json").is_file()


def test_fit_head_on_a_real_sae_names_its_latents(tmp_path):
    """Discover-then-Name end to end: fit-sae, then a sparse final layer over its latents."""
    path = make_planted_cache(tmp_path / "c.zarr", n_classes=4, n_concepts=12, n_train=200,
                              n_test=80, seed=1)  # fmt: skip
    sae = tmp_path / "sae"
    res = runner.invoke(app, [str(a) for a in [
        "fit-sae", "--cache", path, "--expansion", "2", "--k", "4", "--max-steps", "60",
        "--out", sae, "--no-progress", "--device", "cpu"]])  # fmt: skip
    assert res.exit_code == 0, res.output
    head = tmp_path / "head"
    res = runner.invoke(app, [str(a) for a in [
        "fit-head", "--cache", path, "--features", "sae", "--sae", sae, "--final-layer",
        "elastic-net", "--nec", "3", "--out", head, "--no-progress", "--device",
        "cpu"]])  # fmt: skip
    assert res.exit_code == 0, res.output
    with open_cache(path) as c:
        h = load_head(head, c)
        assert h.config["transform"]["kind"] == "sae"
        assert h.config["transform"]["n_features"] == 2 * c.embed_dim
        h.scorer(c)
        names = h.feature_names  # the SAE's latent names (nearest text embedding)
    ex = runner.invoke(app, ["explain", "--cache", str(path), "--head", str(head), "--index",
                             "0", "--top-k", "3", "--out", str(tmp_path / "ex.png")])  # fmt: skip
    assert ex.exit_code == 0, ex.output
    assert names and any(n in ex.output for n in names)  # rows are named latents
