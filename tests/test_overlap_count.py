"""cache.layout.count_overlap (the split-overlap refusal's count) against a brute-force count."""

from __future__ import annotations

import numpy as np
import pytest

from clipcbm.cache import layout


def _split(rng, n, e, shared=None, dup=0):
    emb = rng.normal(size=(n, e)).astype(np.float16)
    if shared is not None:
        emb[: len(shared)] = shared
    if dup:
        emb[-dup:] = emb[:dup]  # rows repeated inside the split
    ok = rng.random(n) > 0.1
    emb[~ok] = 0
    return {"image_emb": emb, "ids": [f"r{i}" for i in range(n)], "ok": ok}


def _brute(a, b) -> int:
    rows_a = {r.tobytes() for r, k in zip(a["image_emb"], a["ok"], strict=True) if k}
    return sum(r.tobytes() in rows_a for r, k in zip(b["image_emb"], b["ok"], strict=True) if k)


@pytest.mark.parametrize(("coarse_keys", "block"), [(False, 65536), (True, 65536), (True, 16)])
def test_count_overlap_equals_a_brute_force_count(monkeypatch, coarse_keys, block):
    """Whole, with colliding keys, and read in 16-row blocks (as finalising a cache does)."""
    monkeypatch.setattr(layout, "KEY_BLOCK_ROWS", block)
    rng = np.random.default_rng(0)
    a = _split(rng, 300, 16, dup=20)
    b = _split(rng, 200, 16, shared=a["image_emb"][:70])
    if coarse_keys:  # every key collides with many others: the exact check must decide
        real = layout.row_keys
        monkeypatch.setattr(layout, "row_keys", lambda x: real(x) % 7)
    got = layout.count_overlap(a, b)
    assert got["embeddings"] == _brute(a, b) and 40 < got["embeddings"] <= 70
    assert got["ids"] == 200


def test_a_finished_cache_records_the_overlap_it_was_written_with(tmp_path, monkeypatch):
    from clipcbm.cache import open_cache, write_cache

    rng = np.random.default_rng(3)
    train = rng.normal(size=(90, 8))
    test = np.concatenate([train[:7], rng.normal(size=(23, 8))])
    monkeypatch.setattr(layout, "KEY_BLOCK_ROWS", 16)  # several blocks per split
    path = write_cache(tmp_path / "c.zarr", splits={
        "train": {"image_emb": train, "labels": np.zeros(90, int)},
        "test": {"image_emb": test, "labels": np.zeros(30, int)}},
        concepts=["a"], classes=["x"], concept_emb=train[:1], class_emb=train[:1],
        shard_rows=32, chunk_rows=16)  # fmt: skip
    with open_cache(path) as c:
        assert c.metadata["overlap"]["test|train"]["embeddings"] == 7


def test_finalising_reads_the_splits_in_blocks_only(tmp_path, monkeypatch):
    """The overlap count at finalize never asks the store for more than one block of rows."""
    from clipcbm.cache import write_cache
    from clipcbm.cache import writer as cache_writer

    asked, real = [], cache_writer.count_overlap_streamed

    def spy(read_a, n_a, read_b, n_b, ids_a, ids_b):
        def wrap(read):
            def counted(name, start, stop):
                asked.append(stop - start)
                return read(name, start, stop)

            return counted

        return real(wrap(read_a), n_a, wrap(read_b), n_b, ids_a, ids_b)

    monkeypatch.setattr(cache_writer, "count_overlap_streamed", spy)
    monkeypatch.setattr(layout, "KEY_BLOCK_ROWS", 16)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 8))
    write_cache(tmp_path / "c.zarr", splits={
        "train": {"image_emb": x[:80], "labels": np.zeros(80, int)},
        "test": {"image_emb": np.concatenate([x[:5], x[80:]]), "labels": np.zeros(25, int)}},
        concepts=["a"], classes=["x"], concept_emb=x[:1], class_emb=x[:1], shard_rows=32,
        chunk_rows=16)  # fmt: skip
    assert asked and max(asked) <= 16  # blocks, never a split (80 rows) whole


def test_row_keys_are_computed_in_blocks_with_the_same_result(monkeypatch):
    x = np.random.default_rng(1).normal(size=(1000, 8)).astype(np.float16)
    whole = layout.row_keys(x)
    monkeypatch.setattr(layout, "KEY_BLOCK_ROWS", 64)
    assert np.array_equal(layout.row_keys(x), whole)
