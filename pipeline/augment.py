"""Seeded augmentations for cached views (`embed --views V --augment simclr|crop-flip|none`),
seed 002.

Image views follow SimCLR's CIFAR recipe (Chen et al. 2020, appendix B.9), written with Pillow
and numpy only: random resized crop (scale 0.08-1, aspect 3/4-4/3, back to the input size),
horizontal flip (p = 0.5), colour jitter (p = 0.8; brightness, contrast, saturation 0.4, hue
0.1, in a random order) and grayscale (p = 0.2). Gaussian blur is left out, as SimCLR does on
CIFAR-sized images.

`crop-flip` is the light augmentation of supervised CIFAR training (He et al. 2016, §4.2):
pad each side by 1/8 of the shorter side (4 pixels at 32x32; reflected, not zeros), take a
random crop of the input size, flip horizontally with p = 0.5. No colour change. The real-photo
testbed (`benchmarks/testbed.py`) trains its image tower with it.

Every view is a pure function of (image, seed): `augment_image(img, seed, kind)` draws all its
randomness from `numpy.random.default_rng(seed)`. The seed of a view is derived from the run's
base seed, the split, the image's row index in that split and the view number only
(`view_seed`), never from the order in which images are processed, so a killed and resumed
`embed` run (or one spread over several workers) writes exactly the same views.

Text views (for the sentence-embedding benchmark, `benchmarks/debiased.py`) use the same seed
rule with `augment_text(text, seed, kind)`: word dropout, one adjacent swap and a random span
crop (EDA-style, Wei & Zou 2019).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

CROP_SCALE = (0.08, 1.0)  # fraction of the image area kept by the random resized crop
CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratio range (width / height) of the crop
FLIP_P = 0.5
JITTER_P = 0.8
JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}
GRAY_P = 0.2


def view_seed(base_seed: int, split: str, index: int, view: int) -> int:
    """The seed of view `view` of row `index` of `split`: the first 8 bytes of
    sha256(f"{base_seed}|{split}|{index}|{view}") as an unsigned integer (< 2**64).

    Depends on nothing else (not the batch, the shard or the worker), so resumed and
    distributed runs draw the same augmentations.
    """
    if index < 0 or view < 0:
        raise ValueError(f"index and view must be >= 0, got index={index}, view={view}")
    key = f"{int(base_seed)}|{split}|{int(index)}|{int(view)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random resized crop (torchvision's sampling rule:
    10 tries at a random area and log-uniform aspect ratio, else the largest central crop
    within the ratio range)."""
    area = width * height
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif in_ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def random_resized_crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop (crop_box) resized back to the input size (bilinear)."""
    box = crop_box(img.width, img.height, rng)
    return img.resize(img.size, Image.Resampling.BILINEAR, box=box)


def _hue(img: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue by `shift` of a full turn (in [-0.5, 0.5])."""
    h, s, v = img.convert("HSV").split()
    h = Image.fromarray(((np.asarray(h, np.int16) + round(shift * 255)) % 256).astype(np.uint8))
    return Image.merge("HSV", (h, s, v)).convert("RGB")


_JITTERS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "brightness": lambda im, f: ImageEnhance.Brightness(im).enhance(f),
    "contrast": lambda im, f: ImageEnhance.Contrast(im).enhance(f),
    "saturation": lambda im, f: ImageEnhance.Color(im).enhance(f),
    "hue": _hue,
}


def color_jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast, saturation (factor in [1 - s, 1 + s]) and hue (shift in [-h, h]),
    applied in a random order."""
    order = rng.permutation(len(JITTER))
    names = list(JITTER)
    for i in order:
        name = names[i]
        s = JITTER[name]
        f = rng.uniform(-s, s) if name == "hue" else rng.uniform(max(0.0, 1 - s), 1 + s)
        img = _JITTERS[name](img, f)
    return img


def grayscale(img: Image.Image) -> Image.Image:
    """Grayscale kept as 3 channels (the encoder's input stays RGB)."""
    return ImageOps.grayscale(img).convert("RGB")


def simclr(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    img = random_resized_crop(img.convert("RGB"), rng)
    if rng.random() < FLIP_P:
        img = ImageOps.mirror(img)
    if rng.random() < JITTER_P:
        img = color_jitter(img, rng)
    if rng.random() < GRAY_P:
        img = grayscale(img)
    return img


PAD_FRACTION = 1 / 8  # crop-flip: padding per side, as a fraction of the shorter side


def crop_flip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Reflect-pad by PAD_FRACTION of the shorter side, random crop back to the input size,
    horizontal flip with p = FLIP_P: a translation by at most the padding, maybe mirrored."""
    arr = np.asarray(img.convert("RGB"))
    h, w = arr.shape[:2]
    p = max(1, round(min(h, w) * PAD_FRACTION))
    padded = np.pad(arr, ((p, p), (p, p), (0, 0)), mode="reflect" if min(h, w) > p else "edge")
    top, left = int(rng.integers(0, 2 * p + 1)), int(rng.integers(0, 2 * p + 1))
    out = padded[top : top + h, left : left + w]
    if rng.random() < FLIP_P:
        out = out[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(out))


# kind -> transform(img, rng) -> img
AUGMENTS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "simclr": simclr,
    "crop-flip": crop_flip,
    "none": lambda img, rng: img.convert("RGB").copy(),
}


def augment_image(img: Image.Image, seed: int, kind: str) -> Image.Image:
    """One view of `img`: AUGMENTS[kind] with numpy default_rng(seed) (same inputs, same view)."""
    if kind not in AUGMENTS:
        raise ValueError(f"augment must be one of {sorted(AUGMENTS)}, got {kind!r}")
    return AUGMENTS[kind](img, np.random.default_rng(seed))


WORD_DROP_P = 0.1  # each word dropped with this probability
SPAN_MIN = 0.6  # a random contiguous span of at least this fraction of the words is kept


def words_view(text: str, rng: np.random.Generator) -> str:
    """Word dropout, one random adjacent swap, then a random span crop; never empty."""
    words = text.split()
    if len(words) < 2:
        return text
    keep = [w for w in words if rng.random() >= WORD_DROP_P]
    keep = keep or [words[int(rng.integers(len(words)))]]
    if len(keep) >= 2:
        i = int(rng.integers(len(keep) - 1))
        keep[i], keep[i + 1] = keep[i + 1], keep[i]
    n = max(1, math.ceil(SPAN_MIN * len(keep)))
    length = int(rng.integers(n, len(keep) + 1))
    start = int(rng.integers(0, len(keep) - length + 1))
    return " ".join(keep[start : start + length])


TEXT_AUGMENTS: dict[str, Callable[[str, np.random.Generator], str]] = {
    "words": words_view,
    "none": lambda text, rng: text,
}


def augment_text(text: str, seed: int, kind: str) -> str:
    """One view of `text`: TEXT_AUGMENTS[kind] with numpy default_rng(seed)."""
    if kind not in TEXT_AUGMENTS:
        raise ValueError(f"text augment must be one of {sorted(TEXT_AUGMENTS)}, got {kind!r}")
    return TEXT_AUGMENTS[kind](text, np.random.default_rng(seed))
