"""Latent names: the nearest text embedding to each decoder direction, with its runner-up
(heads/sae/naming.py), and the vocabulary store they can come from (cache/vocab.py)."""

import numpy as np
import pandas as pd
import pytest
import torch

from clipcbm.cache import open_cache, write_cache
from clipcbm.cache.errors import CacheExistsError
from clipcbm.cache.layout import model_fingerprint
from clipcbm.cache.vocab import VocabError, open_vocab, write_vocab
from clipcbm.heads.sae.naming import Candidates, cache_candidates, display_names, name_latents

MODEL = {"id": "some/clip", "revision": None, "commit": "abc", "embed_dim": 8}


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_names_are_the_literal_argmax_of_the_cosines_with_the_runner_up():
    rng = np.random.default_rng(0)
    texts = [f"t{i}" for i in range(30)]
    emb = _unit(rng.normal(size=(30, 8))).astype(np.float32)
    w = torch.from_numpy(rng.normal(size=(50, 8)).astype(np.float32)) * 3.0  # not unit
    cand = Candidates(texts, emb, ["vocab"] * 30)
    names = name_latents(w, cand, chunk_rows=7)
    cos = (w / w.norm(dim=1, keepdim=True)).numpy() @ emb.T
    order = np.argsort(-cos, axis=1, kind="stable")
    assert list(names["name"]) == [texts[i] for i in cos.argmax(1)]
    assert list(names["runner_up"]) == [texts[i] for i in order[:, 1]]
    np.testing.assert_allclose(names["cosine"], cos.max(1), rtol=1e-5)
    np.testing.assert_allclose(names["runner_up_cosine"], cos[np.arange(50), order[:, 1]],
                               rtol=1e-5)  # fmt: skip
    assert (names["cosine"] >= names["runner_up_cosine"]).all()


def test_ties_go_to_the_lower_text_index_like_argmax():
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    names = name_latents(torch.tensor([[2.0, 0.0]]), Candidates(["a", "b", "c"], emb, ["x"] * 3))
    assert names.loc[0, "name"] == "a" and names.loc[0, "runner_up"] == "b"


def test_cache_candidates_are_concepts_then_new_class_names(tmp_path):
    rng = np.random.default_rng(1)
    path = write_cache(tmp_path / "c.zarr", splits={"train": {
        "image_emb": rng.normal(size=(4, 8)), "labels": np.zeros(4, np.int64)}},
        concepts=["wings", "cat"], classes=["cat", "dog"], concept_emb=rng.normal(size=(2, 8)),
        class_emb=rng.normal(size=(2, 8)))  # fmt: skip
    with open_cache(path) as c:
        cand = cache_candidates(c)
        assert cand.texts == ["wings", "cat", "dog"]
        assert cand.source == ["concept", "concept", "class"]
        np.testing.assert_allclose(cand.emb[2], c.class_emb()[1])


def test_display_names_mark_unnamed_dead_and_duplicate_latents():
    names = pd.DataFrame({"latent": [0, 1, 2, 3], "name": ["cat", "dog", "cat", "sky"]})
    assert display_names(None, 2) == ["latent 0", "latent 1"]
    alive = [True, True, True, False]
    assert display_names(names, 4, alive) == ["cat (latent 0)", "dog", "cat (latent 2)",
                                              "latent 3"]  # fmt: skip


def test_vocab_round_trip_and_its_fingerprint_matches_a_cache_of_the_model(tmp_path):
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(3, 8))
    path = write_vocab(tmp_path / "v.zarr", ["cat", "dog", "sky"], emb, MODEL)
    v = open_vocab(path)
    assert v.texts == ["cat", "dog", "sky"] and v.embed_dim == 8
    np.testing.assert_allclose(np.linalg.norm(v.emb, axis=1), 1.0, rtol=1e-6)
    cache_meta = {"model": {**MODEL, "extra": "ignored"}, "embed_dim": 8}
    assert v.model_fingerprint == model_fingerprint(cache_meta)
    other = {"model": {**MODEL, "id": "another/clip"}, "embed_dim": 8}
    assert v.model_fingerprint != model_fingerprint(other)
    with pytest.raises(CacheExistsError, match="--overwrite"):
        write_vocab(path, ["a"], emb[:1], MODEL)
    write_vocab(path, ["a"], emb[:1], MODEL, overwrite=True)
    assert open_vocab(path).texts == ["a"]


def test_vocab_errors_are_clear(tmp_path):
    with pytest.raises(VocabError, match="distinct"):
        write_vocab(tmp_path / "v.zarr", ["a", "a"], np.ones((2, 3)), MODEL)
    with pytest.raises(VocabError, match="no vocabulary at"):
        open_vocab(tmp_path / "missing.zarr")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.txt").write_text("mine")
    with pytest.raises(CacheExistsError, match="not a vocabulary"):
        write_vocab(tmp_path / "notes", ["a"], np.ones((1, 3)), MODEL, overwrite=True)
    assert (tmp_path / "notes" / "x.txt").read_text() == "mine"
