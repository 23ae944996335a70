"""Per-array checksums (cache format 2, xxh3-128): a changed value in any array kind is
refused; caches of format 1 (sha256) still read and are still checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from clipcbm.cache import CacheCorruptError, layout, open_cache, verify_cache, write_cache

E_DIM, N = 8, 40


def _cache(path, views: bool = True):
    rng = np.random.default_rng(0)

    def split(n):
        d = {"image_emb": rng.normal(size=(n, E_DIM)), "labels": rng.integers(0, 3, n),
             "ids": [f"img{i:03d}" for i in range(n)]}  # fmt: skip
        if views:
            d["view_emb"] = rng.normal(size=(n, 2, E_DIM))
        return d

    return write_cache(path, splits={"train": split(N), "test": split(16)},
                       concepts=["red", "round", "furry"], classes=["a", "b", "c"],
                       concept_emb=rng.normal(size=(3, E_DIM)),
                       class_emb=rng.normal(size=(3, E_DIM)),
                       concept_classes=[["a"], ["b"], ["c"]], shard_rows=16,
                       chunk_rows=8)  # fmt: skip


def _change(path, array: str, row: int = 20) -> None:
    """Change one stored value of `array` through zarr (the store stays well-formed: only a
    checksum can tell)."""
    arr = zarr.open_array(str(path / array), mode="r+")
    row = min(row, arr.shape[0] - 1)
    if arr.dtype.kind in "fc":
        if arr.ndim == 1:
            arr[row] = arr[row] + 0.5
        else:
            idx = (row,) + (0,) * (arr.ndim - 1)
            arr[idx] = arr[idx] + 0.5
    elif arr.dtype.kind == "b":
        arr[row] = not arr[row]
    elif arr.dtype.kind in "iu":
        arr[row] = arr[row] + 1
    else:  # strings
        arr[row] = "tampered"


READS = {
    "train/image_emb": lambda c: c.split("train"),
    "train/labels": lambda c: c.split("train"),
    "train/ids": lambda c: c.split("train"),
    "train/ok": lambda c: c.split("train"),
    "train/norms": lambda c: c.read("train", "norms"),
    "train/view_emb": lambda c: c.view_emb("train"),
    "text/concept_emb": lambda c: c.concept_emb(),
    "text/class_emb": lambda c: c.class_emb(),
    "text/concepts": lambda c: c.concepts,
    "text/classes": lambda c: c.classes,
    "text/templates": lambda c: c.templates,
    "text/concept_classes": lambda c: c.concept_classes,
}


def test_new_caches_record_xxh3_per_array_and_shard(tmp_path):
    path = _cache(tmp_path / "c.zarr")
    with open_cache(path) as c:
        sums = c.split_attrs("train")["array_checksums"]
        assert set(sums) == {"image_emb", "norms", "labels", "ids", "ok", "view_emb"}
        assert all(len(v) == 3 and v[0].startswith("xxh3_128:") for v in sums.values())
        assert c.metadata["format_version"] == 2
        c.split("train"), c.view_emb("train"), c.concepts  # noqa: B018 - the clean read passes


@pytest.mark.parametrize("array", list(READS))
def test_a_changed_value_in_any_array_is_refused(tmp_path, array):
    path = _cache(tmp_path / "c.zarr")
    _change(path, array)
    with pytest.raises(CacheCorruptError, match=array), open_cache(path) as c:
        READS[array](c)
    assert any(array in p for p in verify_cache(path)), verify_cache(path)
    with open_cache(path, verify=False) as c:  # the user's explicit choice still reads it
        READS[array](c)


def _as_format_1(path) -> None:
    """Rewrite the checksum attributes the way format 1 recorded them (keys array_sha256 and
    sha256, bare sha256 hex) -- the cache a user wrote before this change."""
    for group in ("train", "test", "text"):
        meta = path / group / "zarr.json"
        doc = json.loads(meta.read_text())
        attrs = doc["attributes"]
        if "array_checksums" in attrs:
            attrs["array_sha256"] = attrs.pop("array_checksums")
        if "checksums" in attrs:
            attrs["sha256"] = attrs.pop("checksums")
        meta.write_text(json.dumps(doc))
    root = path / "zarr.json"
    doc = json.loads(root.read_text())
    doc["attributes"]["format_version"] = 1
    root.write_text(json.dumps(doc))


def test_a_sha256_cache_of_format_1_still_reads_and_is_still_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "CHECKSUM_ALGO", "sha256")
    path = _cache(tmp_path / "old.zarr", views=False)
    monkeypatch.undo()
    _as_format_1(path)
    with open_cache(path) as c:
        sums = c.split_attrs("train")["array_sha256"]
        assert len(sums["image_emb"][0]) == 64 and ":" not in sums["image_emb"][0]
        ref = c.split("train").image_emb.copy()
        assert c.concepts == ["red", "round", "furry"]
    assert verify_cache(path) == []
    _change(path, "train/image_emb")
    _change(path, "text/concepts", row=1)
    with pytest.raises(CacheCorruptError, match="train/image_emb, shard 1"), open_cache(path) as c:
        c.split("train")
    with pytest.raises(CacheCorruptError, match="text/concepts"), open_cache(path) as c:
        c.concepts  # noqa: B018
    assert len(verify_cache(path)) >= 2
    with open_cache(path, verify=False) as c:
        assert not np.array_equal(c.split("train").image_emb, ref)


def test_checksums_tell_their_algorithm():
    x = np.arange(12, dtype=np.float16).reshape(4, 3)
    new, old = (
        layout.array_checksum("image_emb", x),
        layout.array_checksum("image_emb", x, "sha256"),
    )
    assert layout.algo_of(new) == "xxh3_128" and layout.algo_of(old) == "sha256"
    assert layout.checksum_matches("image_emb", x, new) and layout.checksum_matches(
        "image_emb", x, old
    )
    y = x.copy()
    y[2, 1] += 1
    assert not layout.checksum_matches("image_emb", y, new)
    with pytest.raises(ValueError, match="unknown checksum algorithm"):
        layout.array_checksum("image_emb", x, "md5")


# -- the one ranged read: Cache.read_rows / iter_blocks -------------------------------------
def _flip_payload(path, rel: str, at: int = 100, n: int = 16) -> None:
    f = path / rel
    b = bytearray(f.read_bytes())
    b[at : at + n] = bytes(x ^ 0xFF for x in b[at : at + n])  # image_emb is stored raw
    f.write_bytes(bytes(b))


def test_ranged_reads_are_checked_per_shard_and_equal_the_whole_read(tmp_path):
    path = _cache(tmp_path / "c.zarr", views=False)
    with open_cache(path) as c:
        whole = c.read("train", "image_emb")
        assert np.array_equal(c.read_rows("train", "image_emb", 5, 37), whole[5:37])
        blocks = list(c.iter_blocks("train", "image_emb"))
        assert [s for s, _ in blocks] == [0, 16, 32]
        assert np.array_equal(np.concatenate([b for _, b in blocks]), whole)
        with pytest.raises(ValueError, match="outside split 'train' of 40 rows"):
            c.read_rows("train", "image_emb", 30, 41)
    _flip_payload(path, "train/image_emb/c/1/0")  # shard 1: rows 16..31
    with open_cache(path) as c:
        assert c.read_rows("train", "image_emb", 0, 16).shape == (16, E_DIM)  # shard 0 is fine
        with pytest.raises(CacheCorruptError, match="train/image_emb, shard 1"):
            c.read_rows("train", "image_emb", 30, 33)  # touches shard 1: decoded whole, checked
        with pytest.raises(CacheCorruptError, match="shard 1"):
            list(c.iter_blocks("train", "image_emb"))
    with open_cache(path, verify=False) as c:
        assert c.read_rows("train", "image_emb", 30, 33).shape == (3, E_DIM)


@pytest.mark.parametrize("stream", ["off", "on"])
def test_fit_sae_refuses_a_bit_flipped_train_split(tmp_path, stream):
    """The SAE reads its training rows through the checked ranged read, whole or streamed."""
    from clipcbm.heads.sae.config import FitSaeConfig
    from clipcbm.heads.sae.train import run

    path = _cache(tmp_path / "c.zarr", views=False)
    _flip_payload(path, "train/image_emb/c/2/0")  # shard 2: rows 32..39
    cfg = dict(cache=path, expansion=2, k=2, max_steps=5, batch_size=8, stream=stream,
               stream_rows=16, progress=False, device="cpu")  # fmt: skip
    with pytest.raises(CacheCorruptError, match="train/image_emb, shard 2"):
        run(FitSaeConfig(out=tmp_path / "sae", **cfg))
    assert not (tmp_path / "sae").exists()
    res = run(FitSaeConfig(out=tmp_path / "sae-nv", verify=False, **cfg))  # the user's choice
    assert (res.out_dir / "sae_weights.safetensors").exists()
