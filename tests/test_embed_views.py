"""`embed --views V`: seeded augmented views in /{split}/view_emb, identical after a resume."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import tests._dataset_factories as fx
from clipcbm.cache import CacheWriter, cache_info, open_cache, verify_cache
from clipcbm.cli import app

runner = CliRunner()


def _embed(model, root, out, concepts, *extra):
    res = runner.invoke(app, [str(a) for a in [
        "embed", "--dataset", "cifar10", "--root", root, "--out", out, "--concepts", concepts,
        "--model", model, "--device", "cpu", "--workers", "0", "--batch-size", "4",
        "--no-progress", "--shard-rows", "4", "--chunk-rows", "2", *extra]])  # fmt: skip
    return res


@pytest.fixture
def setup(tiny_clip_dir, tmp_path):
    root = fx.make_cifar10(tmp_path / "data", n_train=10, n_test=3)
    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nwings\nwheels\n")
    return tiny_clip_dir, root, concepts, tmp_path


def test_views_are_stored_seeded_and_survive_a_crash(setup, monkeypatch):
    model, root, concepts, tmp = setup
    ref = tmp / "ref.zarr"
    assert _embed(model, root, ref, concepts, "--views", "3").exit_code == 0
    with open_cache(ref) as c:
        v, x = c.view_emb("train"), c.split("train").image_emb
        assert c.views == 3 and v.shape == (10, 3, x.shape[1])
        np.testing.assert_allclose(np.linalg.norm(v, axis=2), 1.0, atol=2e-3)
        assert not np.allclose(v[:, 0], v[:, 1], atol=1e-3)  # views differ from each other
        assert not np.allclose(v[:, 0], x, atol=1e-3)  # and from the plain embedding
    assert verify_cache(ref) == [] and cache_info(ref)["views"] == 3

    real, calls = CacheWriter.write_shard, []

    def crashing(self, split, shard, **kw):
        if len(calls) == 2:
            raise RuntimeError("simulated kill")
        calls.append(shard)
        return real(self, split, shard, **kw)

    out = tmp / "run.zarr"
    monkeypatch.setattr(CacheWriter, "write_shard", crashing)
    assert _embed(model, root, out, concepts, "--views", "3").exit_code != 0
    monkeypatch.setattr(CacheWriter, "write_shard", real)
    assert _embed(model, root, out, concepts, "--views", "3").exit_code == 0
    with open_cache(out) as a, open_cache(ref) as b:
        for s in ("train", "test"):
            np.testing.assert_array_equal(a.view_emb(s), b.view_emb(s))
        assert a.fingerprint == b.fingerprint


def test_views_change_the_fingerprint_and_plain_caches_have_none(setup):
    model, root, concepts, tmp = setup
    assert _embed(model, root, tmp / "plain.zarr", concepts).exit_code == 0
    with open_cache(tmp / "plain.zarr") as c:
        assert c.views == 0
        with pytest.raises(Exception, match="no augmented views.*--views"):
            c.view_emb("train")
    res = _embed(model, root, tmp / "plain.zarr", concepts, "--views", "2")
    assert res.exit_code == 2 and "differs in: views" in res.output
    res = _embed(model, root, tmp / "x.zarr", concepts, "--views", "-1")
    assert res.exit_code == 2 and "--views must be an integer >= 0" in res.output
