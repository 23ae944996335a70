"""Pillow + numpy preprocessing equals transformers' CLIPImageProcessor (PIL backend)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.preprocess import PreprocessSpec, crop_uint8, normalize_batch, resized_size


def _jpeg(w, h, mode="RGB", seed=0) -> Image.Image:
    """A photo-like (smooth + noisy) image round-tripped through JPEG, as real inputs are."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 7 + c) * np.cos(yy / 11 - c) for c in range(3)], -1)
    arr = np.clip(127 + 100 * base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="JPEG", quality=90)
    buf.seek(0)
    return Image.open(buf)


@pytest.fixture(scope="module")
def reference():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil()  # openai/clip-vit-large-patch14 settings (224, bicubic)


@pytest.mark.parametrize(
    "w,h,mode",
    [
        (500, 375, "RGB"),
        (375, 500, "RGB"),
        (32, 32, "RGB"),
        (224, 224, "RGB"),
        (640, 427, "L"),
        (300, 301, "CMYK"),
        (1000, 229, "RGB"),
    ],
)
def test_matches_clip_image_processor(reference, w, h, mode):
    spec = PreprocessSpec.from_image_processor(reference)
    img = _jpeg(w, h, mode, seed=w + h)
    want = reference(images=img.convert("RGB"), return_tensors="np")["pixel_values"][0]
    got = normalize_batch(torch.from_numpy(crop_uint8(img, spec))[None], spec)[0].numpy()
    assert got.shape == want.shape == (3, 224, 224)
    assert np.abs(got - want).max() < 1e-3


def test_spec_reads_processor_and_validates(reference):
    spec = PreprocessSpec.from_image_processor(reference)
    assert (spec.resize, spec.crop, spec.interpolation) == (224, 224, "bicubic")
    assert spec.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    with pytest.raises(ValueError, match="crop .* larger than resize"):
        PreprocessSpec(resize=200, crop=224)
    with pytest.raises(ValueError, match="interpolation"):
        PreprocessSpec(interpolation="cubic-ish")


def test_resized_size_follows_transformers_rule():
    assert resized_size(500, 375, 224) == (298, 224)  # int() truncation, not rounding
    assert resized_size(375, 500, 224) == (224, 298)
    assert resized_size(32, 32, 224) == (224, 224)


def test_jpeg_draft_only_shrinks_big_jpegs_and_stays_close(reference):
    spec = PreprocessSpec.from_image_processor(reference)
    draft = PreprocessSpec.from_image_processor(reference, jpeg_draft=True)
    small = _jpeg(500, 375)
    np.testing.assert_array_equal(crop_uint8(small, spec), crop_uint8(_jpeg(500, 375), draft))
    big_a, big_b = _jpeg(2000, 1500, seed=3), _jpeg(2000, 1500, seed=3)
    exact, fast = crop_uint8(big_a, spec), crop_uint8(big_b, draft)
    assert fast.shape == exact.shape
    assert np.abs(fast.astype(int) - exact.astype(int)).mean() < 4  # grey levels, of 255
