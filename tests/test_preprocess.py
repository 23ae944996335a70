"""Pillow + numpy preprocessing equals transformers' CLIPImageProcessor (PIL backend)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from clipcbm.pipeline.datasets.base import open_rgb
from clipcbm.pipeline.preprocess import PreprocessSpec, crop_uint8, normalize_batch, resized_size


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


def _jpeg_file(tmp_path, w, h, seed=0):
    path = tmp_path / f"{w}x{h}-{seed}.jpg"
    with _jpeg(w, h, seed=seed) as im:
        im.save(path, format="JPEG", quality=90)
    return path


def test_jpeg_draft_decodes_big_jpeg_files_smaller_and_stays_close(reference, tmp_path):
    """The flag acts where the file is decoded (open_rgb), so it really changes the decode."""
    spec = PreprocessSpec.from_image_processor(reference)
    big = _jpeg_file(tmp_path, 2000, 1500, seed=3)
    full, drafted = open_rgb(big), open_rgb(big, draft_short_side=spec.resize)
    assert full.size == (2000, 1500)
    assert drafted.size == (1000, 750)  # DCT scale 1/2: short side 750 >= 2 x 224, 1/4 is not
    exact, fast = crop_uint8(full, spec), crop_uint8(drafted, spec)
    assert fast.shape == exact.shape and not np.array_equal(fast, exact)
    assert np.abs(fast.astype(int) - exact.astype(int)).mean() < 4  # grey levels, of 255
    small = _jpeg_file(tmp_path, 500, 375)  # already < 2x the target: decoded in full
    assert open_rgb(small, draft_short_side=spec.resize).size == (500, 375)
    png = tmp_path / "big.png"
    full.save(png)
    assert open_rgb(png, draft_short_side=spec.resize).size == (2000, 1500)  # not a JPEG
