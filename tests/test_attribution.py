"""M2IB attribution: bottleneck math, frozen CLIP, the attribute / attribute-eval CLI, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipcbm import cli
from clipcbm.pipeline.attribution.bottleneck import (
    LayerBottleneck,
    M2IBSettings,
    attribute_images,
    attribute_texts,
    bottleneck,
    encoder_layer,
    kl_standard_normal,
    layer_index,
    pair_generators,
)
from clipcbm.pipeline.attribution.config import AttributeConfig
from clipcbm.pipeline.errors import PipelineConfigError
from tests._dataset_factories import make_imagefolder

runner = CliRunner()
FAST = ["--steps", "2", "--samples", "2", "--device", "cpu", "--no-progress"]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model(tiny_clip_dir):
    from clipcbm.pipeline.attribution.maps import load_model

    return load_model(str(tiny_clip_dir), None, "cpu", "fp32")


def invoke(*args, code=0):
    result = runner.invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def test_kl_matches_hand_computed_value():
    # h = 2, λ = 0.5: μ = 1, σ² = 0.25 -> ½ (1 + 0.25 − 1 − ln 0.25) = 0.8181472
    h, lam = torch.full((1, 1, 3), 2.0), torch.full((1, 1, 3), 0.5)
    z, kl = bottleneck(h, lam, torch.zeros(1, 4, 1, 3))
    assert kl.shape == (1, 1, 3) and z.shape == (1, 4, 1, 3)
    assert torch.allclose(kl, torch.full_like(kl, 0.5 * (0.25 - math.log(0.25))))
    assert torch.allclose(z, torch.ones_like(z))  # μ + σ·0
    assert float(kl_standard_normal(torch.zeros(1), torch.ones(1))) == 0.0


def test_lambda_one_keeps_features_in_both_noise_modes():
    h = torch.randn(2, 5, 4)
    eps = torch.randn(2, 3, 5, 4)
    ones = torch.ones_like(h)
    assert torch.equal(bottleneck(h, ones, eps)[0], h.unsqueeze(1).expand(-1, 3, -1, -1))
    mean, std = h.mean(1, keepdim=True), h.std(1, keepdim=True)
    z = bottleneck(h, ones, eps, mean, std)[0]
    assert torch.allclose(z, h.unsqueeze(1).expand_as(z), atol=1e-6)


def test_layer_index_scales_with_depth():
    assert layer_index(0.75, 12) == 9 and layer_index(0.75, 24) == 18
    assert layer_index(1.0, 12) == 10 and layer_index(0.75, 4) == 2  # never the last layer
    assert layer_index(0.01, 2) == 0 and layer_index(0.9, 1) == 0


def test_lambda_one_leaves_the_embedding_unchanged(model):
    enc, _ = model
    m = enc.model
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = m.get_image_features(pixel_values=px).pooler_output
        hook = LayerBottleneck(encoder_layer(m.vision_model, 0.75), 1, "raw", None)
        hook.alpha = torch.full((2, 17, 32), 100.0)  # sigmoid(100) == 1 in fp32
        with hook.attached():
            out = m.get_image_features(pixel_values=px).pooler_output
    assert torch.equal(out, ref)


@pytest.mark.parametrize("noise", ["raw", "stats"])
def test_no_clip_weight_gets_a_gradient_and_padding_scores_zero(model, noise):
    enc, _ = model
    m = enc.model
    tok = enc.tokenizer(["a red circle", "dog"], padding=True, return_tensors="pt")
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        t_emb = m.get_text_features(**tok).pooler_output
        i_emb = m.get_image_features(pixel_values=px).pooler_output
    s = M2IBSettings(steps=2, samples=3, noise=noise)
    g = torch.Generator().manual_seed(0)
    vis = attribute_images(m, px, t_emb, s, generator=g)
    txt = attribute_texts(m, tok["input_ids"], tok["attention_mask"], i_emb, s, generator=g)
    assert vis.shape == (2, 17) and txt.shape == tok["input_ids"].shape
    assert torch.all(txt[tok["attention_mask"] == 0] == 0) and torch.all(vis >= 0)
    assert all(not p.requires_grad and p.grad is None for p in m.parameters())


def test_settings_and_config_errors_name_the_bad_value(tmp_path):
    with pytest.raises(ValueError, match="noise must be one of"):
        M2IBSettings(noise="uniform")
    with pytest.raises(PipelineConfigError, match="layer fraction must be in"):
        AttributeConfig(out=tmp_path, image=tmp_path, text="x", vision_layer=1.5)
    with pytest.raises(
        PipelineConfigError, match="exactly one of --image and --cache, got --image=None"
    ):
        AttributeConfig(out=tmp_path, text="x")
    with pytest.raises(PipelineConfigError, match="exactly one of --text and --text-from"):
        AttributeConfig(out=tmp_path, image=tmp_path)
    with pytest.raises(PipelineConfigError, match="needs --cache"):
        AttributeConfig(out=tmp_path, image=tmp_path, text_from="class")


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "dog.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 45, 3), dtype=np.uint8)).save(path)
    return path


def test_attribute_one_pair_writes_maps_at_the_input_resolution(tiny_clip_dir, photo, tmp_path):
    out = tmp_path / "run"
    invoke("attribute", "--model", tiny_clip_dir, "--image", photo, "--text", "a dog", "--out",
           out, *FAST)  # fmt: skip
    with np.load(out / "maps.npz") as z:
        image, text = z["image"], z["text"]
    tokens = json.loads((out / "tokens.json").read_text())
    assert image.shape == (30, 45) and text.shape == (len(tokens),)
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>"
    # the 30 px high image is resized to 32 x 48 and centre-cropped: 8 px each side are unseen
    assert np.all(image[:, :5] == 0) and np.all(image[:, -5:] == 0) and image[:, 10:35].min() > 0
    for name in ("overlay.png", "text.png", "input.png", "pairs.csv", "run.json"):
        assert (out / name).is_file()
    assert Image.open(out / "overlay.png").size == (45, 30)
    invoke("attribute", "--model", tiny_clip_dir, "--image", photo, "--text", "a dog", "--out",
           out, *FAST, code=2)  # fmt: skip


def test_attribute_csv_texts_then_eval_against_baselines(tiny_clip_dir, photo, tmp_path):
    texts = tmp_path / "explain.csv"
    texts.write_text("rank,concept,contribution\n1,red fur,0.5\n2,four legs,0.2\n3,wings,0.1\n")
    out = tmp_path / "csv"
    invoke("attribute", "--model", tiny_clip_dir, "--image", photo, "--text-from", texts,
           "--out", out, "--batch-size", "2", *FAST)  # fmt: skip
    assert sorted(p.name for p in (out / "pairs").iterdir()) == ["00000", "00001", "00002"]
    res = invoke("attribute-eval", "--in", out, "--device", "cpu", "--ig-steps", "4",
                 "--curve-steps", "4")  # fmt: skip
    assert "| m2ib |" in res.output and "| rollout |" in res.output
    import pandas as pd

    table = pd.read_csv(out / "eval.csv")
    assert len(table) == 3 * 5 and set(table["method"]) >= {"m2ib", "occlusion", "saliency"}
    assert table["vincr"].isin([0.0, 100.0]).all() and (table["vdrop"] >= 0).all()
    summary = json.loads((out / "eval.json").read_text())
    assert summary["pairs"] == 3 and "integrated-gradients" in summary["methods"]


def test_attribute_over_a_cache_split(tiny_clip_dir, tmp_path):
    from tests.test_embed import embed

    root = make_imagefolder(tmp_path / "data", per_class=2)
    concepts = tmp_path / "c.txt"
    concepts.write_text("red fur\nwings\n")
    cache = tmp_path / "c.zarr"
    embed(tiny_clip_dir, "imagefolder", root, cache, concepts)
    out = tmp_path / "cache-run"
    invoke("attribute", "--model", tiny_clip_dir, "--cache", cache, "--split", "test", "--limit",
           "3", "--text-from", "class", "--out", out, "--no-pictures", *FAST)  # fmt: skip
    import pandas as pd

    rows = pd.read_csv(out / "pairs.csv")
    assert len(rows) == 3 and rows["text"].str.contains("cat|dog").all()
    assert not (out / "pairs" / "00000" / "overlay.png").exists()


@pytest.mark.parametrize(
    ("text", "extra", "message"),
    [
        ("   ", [], "empty text"),
        ("x" * 100, [], "more than the model's context of 77; shorten it or pass --truncate"),
    ],
)
def test_bad_text_is_a_clear_error(tiny_clip_dir, photo, tmp_path, text, extra, message):
    res = invoke("attribute", "--model", tiny_clip_dir, "--image", photo, "--text", text,
                 "--out", tmp_path / "o", *extra, *FAST, code=2)  # fmt: skip
    assert message in res.output.replace("\n", " ")


def test_too_long_text_is_truncated_when_asked(tiny_clip_dir, photo, tmp_path):
    out = tmp_path / "o"
    invoke("attribute", "--model", tiny_clip_dir, "--image", photo, "--text", "x" * 100,
           "--truncate", "--out", out, *FAST)  # fmt: skip
    tokens = json.loads((out / "tokens.json").read_text())
    assert len(tokens) == 77 and tokens[-1] == "<|endoftext|>"


def test_unreadable_image_and_bad_csv_are_clear_errors(tiny_clip_dir, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    res = invoke("attribute", "--model", tiny_clip_dir, "--image", bad, "--text", "a dog",
                 "--out", tmp_path / "o", *FAST, code=2)  # fmt: skip
    assert "bad.jpg" in res.output and not (tmp_path / "o").exists()
    table = tmp_path / "t.csv"
    table.write_text("a,b\n1,2\n")
    photo = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(photo)
    res = invoke("attribute", "--model", tiny_clip_dir, "--image", photo, "--text-from", table,
                 "--out", tmp_path / "o", *FAST, code=2)  # fmt: skip
    assert "need one of ['concept', 'text']" in res.output
    res = invoke("attribute-eval", "--in", tmp_path, "--device", "cpu", code=2)
    assert "is not an `attribute` output" in res.output
    res = invoke("attribute", "--model", tmp_path / "nope", "--image", photo, "--text", "a",
                 "--out", tmp_path / "o", *FAST, code=2)  # fmt: skip
    assert "nope does not exist" in res.output.replace("\n", "")


def test_render_shapes_and_constant_map():
    from clipcbm.pipeline.attribution.render import normalized, overlay, shaded_text

    assert np.all(normalized(np.ones((3, 3))) == 0)
    img = overlay(np.zeros((5, 7, 3), np.uint8), np.arange(35.0).reshape(5, 7))
    assert img.size == (7, 5)
    assert shaded_text(["a", "dog"], np.array([0.0, 1.0])).mode == "RGB"
    with pytest.raises(ValueError, match="differ in size"):
        overlay(np.zeros((5, 7, 3), np.uint8), np.zeros((4, 4)))


def test_a_pair_fitted_in_a_batch_equals_the_pair_fitted_alone(model):
    enc, _ = model
    m = enc.model
    px = torch.randn(3, 3, 32, 32)
    emb = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    s = M2IBSettings(steps=3, samples=2)
    gens = pair_generators(0, 0, 3, 0, "cpu")
    together = attribute_images(m, px, emb, s, generator=gens)
    alone = attribute_images(m, px[1:2], emb[1:2], s, generator=pair_generators(0, 1, 1, 0, "cpu"))
    assert torch.allclose(together[1:2], alone, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="2 generators for 3 pairs"):
        attribute_images(m, px, emb, s, generator=gens[:2])


def test_confidence_metrics_by_hand(model):
    from clipcbm.pipeline.attribution.evaluate import confidence, make_batch

    enc, spec = model
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    ids = [enc.tokenizer(t)["input_ids"] for t in ("abcd", "xy")]
    b = make_batch(enc.model, spec, "cpu", torch.float32, crops, ids)
    img_ones = torch.ones(2, 32, 32)  # constant map -> all zeros after min-max: a blank image
    txt = torch.zeros(b.ids.shape)
    txt[0, 1:3] = 1.0  # "a", "b" above the median of a, b, c, d: c and d are removed
    from clipcbm.pipeline.attribution.baselines import image_cos, text_cos

    with torch.no_grad():
        out = confidence(enc.model, b, img_ones, txt)
        blank = torch.zeros_like(b.pixels)
        before = image_cos(enc.model, b.pixels, b.text_emb)
        after = image_cos(enc.model, blank, b.text_emb)
        keep = b.mask.clone()
        keep[0, 3:5] = 0
        t_after = text_cos(enc.model, b.ids, keep, b.image_emb)
        t_before = text_cos(enc.model, b.ids, b.mask, b.image_emb)
    assert torch.allclose(out["vdrop"], (before - after).clamp_min(0) * 100, atol=1e-4)
    assert torch.equal(out["vincr"], (after > before).float() * 100)
    assert torch.allclose(out["tdrop"][0], (t_before - t_after).clamp_min(0)[0] * 100, atol=1e-4)
