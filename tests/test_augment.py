"""Seeded augmentations (pipeline.augment): pure functions of (image, seed), each transform does
what it says, and view seeds depend only on (base seed, split, index, view)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipcbm.pipeline import augment
from clipcbm.pipeline.augment import AUGMENTS, augment_image, augment_text, view_seed


def make_image(w: int = 40, h: int = 30) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def px(img) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_view_seed_is_a_pure_function_of_its_key():
    a = view_seed(0, "train", 7, 1)
    assert a == view_seed(0, "train", 7, 1)  # same key, same seed (any process, any order)
    others = {view_seed(1, "train", 7, 1), view_seed(0, "test", 7, 1),
              view_seed(0, "train", 8, 1), view_seed(0, "train", 7, 2)}  # fmt: skip
    assert a not in others and len(others) == 4
    assert 0 <= a < 2**64
    with pytest.raises(ValueError, match="must be >= 0"):
        view_seed(0, "train", -1, 0)


@pytest.mark.parametrize("kind", sorted(AUGMENTS))
def test_same_seed_same_view_and_size_kept(kind):
    img = make_image()
    a, b = augment_image(img, 123, kind), augment_image(img, 123, kind)
    assert np.array_equal(px(a), px(b))
    assert a.size == img.size and a.mode == "RGB"


def test_simclr_views_differ_across_seeds_and_none_is_identity():
    img = make_image()
    views = [px(augment_image(img, s, "simclr")) for s in range(4)]
    assert any(not np.array_equal(views[0], v) for v in views[1:])
    assert np.array_equal(px(augment_image(img, 5, "none")), px(img))


def test_resumed_run_draws_the_same_views():
    """Views computed in another order (a resumed run) are the same as in one pass."""
    imgs = [make_image(32 + i, 32) for i in range(4)]
    one_pass = [px(augment_image(im, view_seed(3, "train", i, v), "simclr"))
                for i, im in enumerate(imgs) for v in range(2)]  # fmt: skip
    resumed = {}
    for i in (2, 3, 0, 1):
        for v in (1, 0):
            resumed[i, v] = px(augment_image(imgs[i], view_seed(3, "train", i, v), "simclr"))
    for n, (i, v) in enumerate((i, v) for i in range(4) for v in range(2)):
        assert np.array_equal(one_pass[n], resumed[i, v])


def test_crop_box_within_the_image_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = augment.crop_box(64, 48, rng)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 64 and 0 <= top < bottom <= 48
        assert 0.08 * 64 * 48 * 0.9 <= w * h <= 64 * 48
    # a degenerate strip falls back to the largest central crop within the ratio range
    assert augment.crop_box(1, 100, np.random.default_rng(0))[2] == 1


def test_random_resized_crop_is_the_sampled_region_resized():
    img = make_image(40, 30)
    box = augment.crop_box(40, 30, np.random.default_rng(1))
    assert box != (0, 0, 40, 30)
    out = augment.random_resized_crop(img, np.random.default_rng(1))
    want = img.crop(box).resize((40, 30), Image.Resampling.BILINEAR)
    assert out.size == (40, 30)
    assert np.abs(px(out) - px(want)).mean() < 8  # PIL's box-resize vs crop-then-resize


def test_grayscale_has_equal_channels():
    g = px(augment.grayscale(make_image()))
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()


def test_color_jitter_changes_colours_only():
    img = Image.new("RGB", (8, 8), (200, 50, 50))
    out = augment.color_jitter(img, np.random.default_rng(2))
    assert out.size == img.size and not np.array_equal(px(out), px(img))
    assert len({tuple(c) for c in px(out).reshape(-1, 3)}) == 1  # a flat image stays flat


def test_hue_rotation_by_half_a_turn_moves_red_towards_cyan():
    out = px(augment._hue(Image.new("RGB", (2, 2), (255, 0, 0)), 0.5))[0, 0]
    assert out[0] < 20 and out[1] > 200 and out[2] > 200


def test_flip_is_drawn_half_the_time(monkeypatch):
    flips = []
    monkeypatch.setattr(augment.ImageOps, "mirror", lambda im: flips.append(1) or im)
    for s in range(200):
        augment_image(make_image(8, 8), s, "simclr")
    assert 70 < len(flips) < 130


def test_unknown_kinds_are_clear_errors():
    with pytest.raises(ValueError, match="augment must be one of"):
        augment_image(make_image(), 0, "autoaugment")
    with pytest.raises(ValueError, match="text augment must be one of"):
        augment_text("a b", 0, "backtranslate")


def test_text_views_are_seeded_subsequences_of_words():
    text = "a small bird with a bright red crest and black wings"
    a = augment_text(text, 9, "words")
    assert a == augment_text(text, 9, "words") and a
    assert set(a.split()) <= set(text.split())
    assert len({augment_text(text, s, "words") for s in range(10)}) > 3
    assert augment_text("bird", 0, "words") == "bird"
    assert augment_text(text, 0, "none") == text


def test_crop_flip_is_a_small_translation_maybe_mirrored():
    """crop-flip: every view is the image shifted by at most 1/8 of the shorter side (reflect
    padding) and maybe mirrored; colours are untouched; both flips and several shifts occur."""
    img = make_image(32, 32)
    src = np.pad(px(img), ((4, 4), (4, 4), (0, 0)), mode="reflect")
    seen_shift, seen_flip = set(), set()
    for s in range(40):
        v = px(augment_image(img, s, "crop-flip"))
        hits = [(t, left, f) for t in range(9) for left in range(9) for f in (False, True)
                if np.array_equal(v, (src[t : t + 32, left : left + 32])[:, ::-1] if f
                                  else src[t : t + 32, left : left + 32])]  # fmt: skip
        assert hits, f"seed {s}: not a shifted (and maybe mirrored) copy of the image"
        seen_shift.add(hits[0][:2])
        seen_flip.add(hits[0][2])
    assert seen_flip == {False, True} and len(seen_shift) > 10
