"""fit-sae -> sae-eval -> sae-inspect --html through the CLI on a cache that `embed` wrote with
the tiny CLIP; embed-text's vocabulary matches that cache's model and names latents; an SAE or
a vocabulary of another model is refused."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import tests._dataset_factories as fx
from clipcbm.cache import open_cache, write_cache
from clipcbm.cache.layout import model_fingerprint
from clipcbm.cache.vocab import open_vocab
from clipcbm.cli import app
from clipcbm.heads.sae import commands as sae_commands
from clipcbm.heads.sae.artifact import load_feature_transform, load_sae

runner = CliRunner()
CONCEPTS = ["red fur", "four legs", "wings", "wheels", "stripes", "a tail"]


def _run(args):
    return runner.invoke(app, [str(a) for a in args])


def _ok(args):
    res = _run(args)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def embedded(tiny_clip_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sae_cli")
    root = fx.make_imagefolder(tmp / "data", classes=("cat", "dog", "bird"), per_class=8)
    concepts = tmp / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    out = tmp / "cache.zarr"
    _ok(["embed", "--dataset", "imagefolder", "--root", root, "--out", out, "--concepts",
         concepts, "--model", tiny_clip_dir, "--device", "cpu", "--workers", "0",
         "--no-progress"])  # fmt: skip
    sae = tmp / "sae"
    text = _ok(["fit-sae", "--cache", out, "--out", sae, "--expansion", "4", "--k", "4",
                "--max-steps", "30", "--no-progress", "--device", "cpu"])  # fmt: skip
    assert "held-out test (24 rows)" in text and "FVU" in text
    return tmp, out, sae


def test_fit_eval_inspect_html_on_an_embedded_cache(embedded):
    tmp, cache, sae = embedded
    m = json.loads((sae / "metrics.json").read_text())
    assert {"fvu", "cosine", "l0", "dead_fraction", "accuracy_kept"} <= set(m)
    ev = tmp / "eval"
    out = _ok(["sae-eval", "--sae", sae, "--cache", cache, "--out", ev, "--no-progress",
               "--k", "2", "--k", "4", "--k", "8"])  # fmt: skip
    assert "FVU" in out and "zero-shot kept" in out
    got = json.loads((ev / "metrics.json").read_text())
    assert got["fvu"] == pytest.approx(m["fvu"], rel=1e-6) and got["split"] == "test"
    sweep = (ev / "ksweep.csv").read_text().splitlines()
    assert sweep[0].startswith("k,") and len(sweep) == 4 and (ev / "ksweep.png").is_file()

    page = tmp / "page.html"
    ins = tmp / "inspect"
    out = _ok(["sae-inspect", "--sae", sae, "--cache", cache, "--out", ins, "--html", page,
               "--image", "0", "--kmeans", "2", "--top", "3"])  # fmt: skip
    assert "wrote" in out and page.is_file()
    table = pd.read_csv(ins / "inspect.csv")
    assert set(table["view"]) == {"image", "cluster"}
    assert (table[table["view"] == "image"]["row"] == 0).all()
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "data:image/jpeg;base64," in html
    assert "cluster 0" in html and "image test/" in html

    name = next(r.split(",")[1] for r in (sae / "names.csv").read_text().splitlines()[1:]
                if r.endswith("True"))  # fmt: skip
    out = _ok(["sae-inspect", "--sae", sae, "--cache", cache, "--out", tmp / "i2",
               "--concept", name])  # fmt: skip
    assert name in out
    res = _run(["sae-inspect", "--sae", sae, "--cache", cache, "--out", tmp / "i3",
                "--concept", "no such concept"])  # fmt: skip
    assert res.exit_code == 2 and "no live latent is named" in res.output


def test_feature_transform_of_the_cli_sae_belongs_to_the_cache_model(embedded):
    _, cache, sae = embedded
    t = load_feature_transform(sae, "cpu")
    with open_cache(cache) as c:
        assert t.model_fingerprint == model_fingerprint(c.metadata)
        x = c.split("test").valid().image_emb[:3]
    import torch

    assert tuple(t(torch.from_numpy(x)).shape) == (3, 64)


def test_embed_text_vocab_matches_the_cache_model_and_names_latents(embedded, tiny_clip_dir):
    tmp, cache, sae = embedded
    words = tmp / "words.txt"
    words.write_text("cat\ndog\nbird\nsky\n")
    vocab = tmp / "vocab.zarr"
    out = _ok(["embed-text", "--model", tiny_clip_dir, "--texts", words, "--out", vocab,
               "--device", "cpu"])  # fmt: skip
    assert "4 texts" in out
    v = open_vocab(vocab)
    with open_cache(cache) as c:
        assert v.model_fingerprint == model_fingerprint(c.metadata)
    out = _ok(["sae-inspect", "--sae", sae, "--cache", cache, "--out", tmp / "iv",
               "--vocab", vocab, "--n-latents", "3"])  # fmt: skip
    table = (tmp / "iv" / "inspect.csv").read_text()
    assert any(w in table for w in ("cat", "dog", "bird", "sky"))
    sae2 = tmp / "sae-vocab"
    _ok(["fit-sae", "--cache", cache, "--out", sae2, "--expansion", "2", "--k", "2",
         "--max-steps", "5", "--no-progress", "--vocab", vocab])  # fmt: skip
    names = (sae2 / "names.csv").read_text()
    assert ",vocab," in names


def test_other_models_are_refused(embedded, tmp_path):
    _, cache, sae = embedded
    _, cfg = load_sae(sae)
    e = cfg["d_in"]
    other = write_cache(tmp_path / "other.zarr", splits={"test": {
        "image_emb": np.ones((3, e)), "labels": np.zeros(3, np.int64)}}, concepts=["a"],
        classes=["a"], concept_emb=np.ones((1, e)), class_emb=np.ones((1, e)),
        metadata={"model": {"id": "another/clip"}})  # fmt: skip
    res = _run(["sae-eval", "--sae", sae, "--cache", other, "--no-progress",
                "--out", tmp_path / "ev"])  # fmt: skip
    assert res.exit_code == 2 and "another model" in res.output
    from clipcbm.cache.vocab import write_vocab

    vocab = write_vocab(tmp_path / "v.zarr", ["a"], np.ones((1, e)), {"id": "another/clip"})
    res = _run(["fit-sae", "--cache", cache, "--out", tmp_path / "s", "--max-steps", "2",
                "--no-progress", "--vocab", vocab])  # fmt: skip
    assert res.exit_code == 2 and "vocabulary" in res.output


def test_html_without_a_renderer_is_a_clear_error(embedded, tmp_path, monkeypatch):
    _, cache, sae = embedded
    monkeypatch.setattr(sae_commands, "_html_renderer", None)
    res = _run(["sae-inspect", "--sae", sae, "--cache", cache, "--out", tmp_path / "i",
                "--html", tmp_path / "p.html"])  # fmt: skip
    assert res.exit_code == 2 and "page renderer" in res.output
    assert not (tmp_path / "i").exists()


def test_page_without_images_shows_ids_escaped_and_says_why(tmp_path):
    from clipcbm.pipeline.sae_page import render_page

    d = tmp_path / "ins"
    d.mkdir()
    meta = {"sae": "runs/sae/x", "cache": str(tmp_path / "gone.zarr"), "split": "test",
            "n_rows": 2, "dataset": {"name": "imagefolder", "root": str(tmp_path / "moved")},
            "names": "names.csv of the SAE", "model_fingerprint": "ab" * 32, "k": 4,
            "n_latents": 16}  # fmt: skip
    (d / "inspect.json").write_text(json.dumps(meta))
    pd.DataFrame([
        {"view": "latent", "group": 3, "title": "latent 3: <b>cat</b>", "detail": "cos 0.3",
         "query": "latent 3", "rank": 0, "row": 1, "id": "a/<script>.png", "label": 0,
         "class": "cat", "latent": 3, "name": "cat", "activation": 0.5},
        {"view": "latent", "group": 4, "title": "latent 4: dog", "detail": "", "query": "",
         "rank": -1, "row": -1, "id": "", "label": -1, "class": "", "latent": 4, "name": "dog",
         "activation": 0.0},
    ]).to_csv(d / "inspect.csv", index=False)  # fmt: skip
    html = render_page(d, tmp_path / "p.html").read_text()
    assert "cannot open dataset imagefolder" in html and "ids shown" in html
    assert "<script>" not in html and "&lt;script&gt;.png" in html and "&lt;b&gt;cat" in html
    assert "No image of this split activates it." in html
