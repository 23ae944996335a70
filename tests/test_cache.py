"""Cache writer/reader/verify: round trips, resume, refusal, corruption, plain zarr/h5py reads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from clipcbm.cache import (
    CacheExistsError,
    CacheWriter,
    IncompleteCacheError,
    ShardPlan,
    open_cache,
    verify_cache,
    write_cache,
)
from clipcbm.cache.errors import CacheError


def _arrays(seed=0, n_train=11, n_test=5, e=8, d=4, c=3):
    rng = np.random.default_rng(seed)
    return dict(
        splits={
            "train": {"image_emb": rng.normal(size=(n_train, e)), "labels": np.arange(n_train) % c},
            "test": {
                "image_emb": rng.normal(size=(n_test, e)),
                "labels": np.arange(n_test) % c,
                "ok": np.array([True, False, True, True, True][:n_test]),
                "ids": [f"img/{i}.jpg" for i in range(n_test)],
            },
        },
        concepts=[f"concept {i}" for i in range(d)],
        classes=[f"class {i}" for i in range(c)],
        concept_emb=rng.normal(size=(d, e)),
        class_emb=rng.normal(size=(c, e)),
        concept_classes=[["class 0"], ["class 0", "class 1"], [], ["class 2"]],
    )


@pytest.mark.parametrize("fmt,name", [("zarr", "c.zarr"), ("hdf5", "c.h5")])
def test_round_trip(tmp_path, fmt, name):
    a = _arrays()
    path = write_cache(tmp_path / name, format=fmt, chunk_rows=2, shard_rows=4, **a)
    with open_cache(path) as c:
        assert c.format == fmt and c.splits == ["test", "train"]
        assert c.concepts == a["concepts"] and c.classes == a["classes"]
        assert c.concept_classes == a["concept_classes"]
        assert c.embed_dim == 8 and c.logit_scale == 100.0
        test = c.split("test")
        assert test.ids.tolist() == a["splits"]["test"]["ids"]
        assert test.ok.tolist() == [True, False, True, True, True]
        assert np.all(test.image_emb[1] == 0)
        x = a["splits"]["test"]["image_emb"]
        want = x / np.linalg.norm(x, axis=1, keepdims=True)
        np.testing.assert_allclose(test.image_emb[test.ok], want[test.ok], atol=2e-3)  # fp16
        assert len(test.valid()) == 4
        assert c.split_attrs("train")["num_shards"] == 3
        np.testing.assert_allclose(np.linalg.norm(c.concept_emb(), axis=1), 1, atol=1e-6)
    assert verify_cache(path) == []


def test_shard_plan_and_ownership():
    plan = ShardPlan(10, 4)
    assert plan.num_shards == 3 and list(plan.rows(2)) == [8, 9]
    owned = [plan.owned_by(r, 2) for r in range(2)]
    assert owned == [[0, 2], [1]]
    assert sorted(sum(owned, [])) == list(range(3))
    with pytest.raises(ValueError, match="bad rank"):
        plan.owned_by(2, 2)


def _writer(path, identity=None):
    return CacheWriter(
        path,
        identity=identity or {"x": 1},
        metadata={"embed_dim": 2, "logit_scale": 1.0},
        split_sizes={"train": 5},
        embed_dim=2,
        chunk_rows=2,
        shard_rows=2,
    )


def _fill(w, shards):
    for s in shards:
        r = w.plans["train"].rows(s)
        n = len(r)
        w.write_shard(
            "train",
            s,
            image_emb=np.tile([1.0, 0.0], (n, 1)),
            norms=np.ones(n),
            labels=np.zeros(n),
            ids=[str(i) for i in r],
            ok=np.ones(n, bool),
        )


def _text(w):
    w.write_text(
        concept_emb=np.eye(2),
        class_emb=np.eye(2)[:1],
        concepts=["a", "b"],
        classes=["k"],
        templates=["{}"],
    )


def test_resume_after_interruption_is_identical(tmp_path):
    ref = _writer(tmp_path / "ref.zarr")
    assert ref.prepare() == "new"
    _fill(ref, range(3))
    _text(ref)
    ref.finalize()

    w = _writer(tmp_path / "run.zarr")
    w.prepare()
    _fill(w, [0])
    # A run killed mid-write of shard 1: garbage rows, no marker.
    w._group["train/image_emb"][2:4] = 7.0
    with pytest.raises(IncompleteCacheError, match="Re-run"):
        open_cache(tmp_path / "run.zarr")
    w2 = _writer(tmp_path / "run.zarr")
    assert w2.prepare() == "resume"
    assert w2.pending_shards("train") == [1, 2]
    _fill(w2, w2.pending_shards("train"))
    _text(w2)
    w2.finalize()
    a, b = open_cache(tmp_path / "ref.zarr"), open_cache(tmp_path / "run.zarr")
    np.testing.assert_array_equal(a.split("train").image_emb, b.split("train").image_emb)
    assert a.split_attrs("train")["shard_sha256"] == b.split_attrs("train")["shard_sha256"]
    assert not (tmp_path / "run.zarr" / ".progress").exists()
    assert _writer(tmp_path / "run.zarr").prepare() == "complete"


def test_refuses_different_cache_and_non_cache(tmp_path):
    path = tmp_path / "c.zarr"
    w = _writer(path)
    w.prepare()
    with pytest.raises(CacheExistsError, match="differs in: x.*--overwrite"):
        _writer(path, identity={"x": 2}).prepare()
    assert _writer(path, identity={"x": 2}).prepare(overwrite=True) == "new"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(CacheExistsError, match="not an embedding cache"):
        _writer(other).prepare(overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"


def test_finalize_refuses_missing_shards(tmp_path):
    w = _writer(tmp_path / "c.zarr")
    w.prepare()
    _fill(w, [0, 2])
    _text(w)
    with pytest.raises(CacheError, match="unfinished shards"):
        w.finalize()


def test_hdf5_is_staged_then_renamed(tmp_path):
    path = tmp_path / "c.h5"
    w = _writer(path)
    w.prepare()
    _fill(w, [0, 1])
    assert not path.exists() and (tmp_path / "c.h5.partial.zarr").is_dir()
    assert _writer(path).prepare() == "resume"
    w2 = _writer(path)
    w2.prepare()
    _fill(w2, w2.pending_shards("train"))
    _text(w2)
    w2.finalize()
    assert path.is_file() and not (tmp_path / "c.h5.partial.zarr").exists()
    assert verify_cache(path) == []


def test_verify_detects_corruption(tmp_path):
    path = write_cache(tmp_path / "c.zarr", chunk_rows=2, shard_rows=4, **_arrays())
    copy = tmp_path / "bad.zarr"
    shutil.copytree(path, copy)
    import zarr

    g = zarr.open_group(str(copy), mode="r+")
    row = g["train/image_emb"][5]
    g["train/image_emb"][5] = -row  # still unit norm, still finite: only the checksum sees it
    g["train/labels"][0] = 99
    problems = verify_cache(copy)
    assert any("shard 1" in p and "checksum" in p for p in problems)
    assert any("labels outside" in p for p in problems)
    g["train/image_emb"][0] = np.nan
    assert any("non-finite" in p for p in verify_cache(copy))


def test_open_errors(tmp_path):
    with pytest.raises(CacheError, match="no cache at"):
        open_cache(tmp_path / "missing.zarr")
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(CacheError, match="cannot open"):
        open_cache(tmp_path / "x.h5")
    path = write_cache(tmp_path / "c.zarr", **_arrays())
    with pytest.raises(CacheError, match="split 'val' is not in"):
        open_cache(path).split("val")


def test_teammate_reads_with_plain_zarr_and_h5py(tmp_path):
    """What the README tells a teammate to do, without this project's reader."""
    import h5py
    import zarr

    a = _arrays()
    zpath = write_cache(tmp_path / "c.zarr", **a)
    hpath = write_cache(tmp_path / "c.h5", **a)
    g = zarr.open_group(str(zpath), mode="r")
    z_emb = g["test/image_emb"][:].astype(np.float32)
    z_concepts = [str(s) for s in g["text/concepts"][:]]
    assert g.attrs["complete"] is True and g.attrs["embed_dim"] == 8
    with h5py.File(hpath, "r") as f:
        h_emb = f["test/image_emb"][:].astype(np.float32)
        h_concepts = [s.decode() for s in f["text/concepts"][:]]
        assert bool(f.attrs["complete"]) and json.loads(f.attrs["identity"])["splits"]["test"] == 5
        assert f["test/ok"][:].tolist() == a["splits"]["test"]["ok"].tolist()
    np.testing.assert_array_equal(z_emb, h_emb)
    assert z_concepts == h_concepts == a["concepts"]


def test_write_cache_twice_with_the_same_inputs_is_a_no_op(tmp_path):
    from clipcbm.cache.planted import make_planted_cache

    first = make_planted_cache(tmp_path / "p.zarr", n_train=20, n_test=10, seed=3)
    fp = open_cache(first).fingerprint
    again = make_planted_cache(tmp_path / "p.zarr", n_train=20, n_test=10, seed=3)
    assert again == first and open_cache(again).fingerprint == fp
