"""The CLIP encoder: loading by local path, both feature-output shapes, text/class embeddings."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from clipcbm.core.device import DeviceError, resolve_device
from clipcbm.pipeline.encoder import ClipEncoder, EncoderError, projected, resolve_dtype
from clipcbm.pipeline.hub import ModelUnavailableError


def test_projected_accepts_tensor_and_output_object():
    t = torch.randn(2, 4)
    assert projected(t) is t  # transformers 4.x
    assert projected(SimpleNamespace(pooler_output=t)) is t  # transformers 5.x
    with pytest.raises(EncoderError, match="no pooler_output"):
        projected(SimpleNamespace(last_hidden_state=t))


def test_load_by_path_and_embed(tiny_clip_dir):
    enc = ClipEncoder.load(str(tiny_clip_dir), device="cpu")
    assert enc.embed_dim == 16 and enc.dtype == torch.float32
    assert enc.logit_scale == pytest.approx(float(torch.tensor(2.6592).exp()), rel=1e-3)
    # The feature call really goes through the model (5.x returns an output object here).
    out = enc.model.get_text_features(**enc.tokenizer(["a cat"], return_tensors="pt"))
    manual = projected(out)[0]
    text = enc.encode_text(["a cat", "a much longer description of a dog"])
    assert text.shape == (2, 16)
    torch.testing.assert_close(text.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(text[0], manual / manual.norm(), atol=1e-5, rtol=1e-5)
    # Batching must not change results (padding is masked).
    torch.testing.assert_close(enc.encode_text(["a cat"])[0], text[0], atol=1e-5, rtol=1e-5)


def test_class_embedding_is_normalised_template_mean(tiny_clip_dir):
    enc = ClipEncoder.load(str(tiny_clip_dir), device="cpu")
    templates = ["a photo of a {}.", "{}"]
    got = enc.encode_class_names(["cat", "dog"], templates)
    per = enc.encode_text(["a photo of a cat.", "cat"])
    want = per.mean(0) / per.mean(0).norm()
    torch.testing.assert_close(got[0], want, atol=1e-6, rtol=1e-5)


def test_image_features_unit_rows(tiny_clip_dir):
    enc = ClipEncoder.load(str(tiny_clip_dir), device="cpu")
    emb, norms = enc.encode_images(torch.randn(3, 3, 32, 32))
    assert emb.shape == (3, 16) and norms.shape == (3,) and bool((norms > 0).all())
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))


def test_errors(tmp_path):
    with pytest.raises(ModelUnavailableError, match="nothing-here does not exist"):
        ClipEncoder.load(str(tmp_path / "nothing-here"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="could not load CLIP model"):
        ClipEncoder.load(str(tmp_path / "empty"), device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="sees 0 CUDA device"):
            resolve_device("cuda")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
