"""Pictures of attribution maps: an image overlay PNG and the text with tokens shaded by score.

Both min-max normalise the map for display only (the data files keep the raw nats); `</w>`
(the BPE end-of-word mark) is not drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def normalized(x: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant map becomes all zeros."""
    x = np.asarray(x, dtype=np.float32)
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    return np.zeros_like(x) if hi <= lo else (x - lo) / (hi - lo)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """(H, W, 3) uint8 image and (H, W) map -> RGB picture (jet colour map blended in)."""
    from matplotlib import colormaps

    if image.shape[:2] != heat.shape:
        raise ValueError(f"image {image.shape[:2]} and map {heat.shape} differ in size")
    colours = colormaps["jet"](normalized(heat))[..., :3] * 255.0
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colours
    return Image.fromarray(mixed.clip(0, 255).astype(np.uint8))


def shaded_text(tokens: list[str], scores: np.ndarray, width: int = 640) -> Image.Image:
    """Tokens laid out left to right, each on a red background whose opacity is its score."""
    font = ImageFont.load_default()
    shade = normalized(scores)
    pad, line_h = 6, 18
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes, x, y = [], pad, pad
    for tok in tokens:
        w = int(probe.textlength(tok, font=font)) + 4
        if x + w > width - pad and x > pad:
            x, y = pad, y + line_h
        boxes.append((x, y, w))
        x += w + 3
    img = Image.new("RGB", (width, y + line_h + pad), "white")
    draw = ImageDraw.Draw(img)
    for (x, y, w), tok, s in zip(boxes, tokens, shade, strict=True):
        c = int(255 * (1 - 0.8 * float(s)))
        draw.rectangle((x, y, x + w, y + line_h - 3), fill=(255, c, c))
        draw.text((x + 2, y + 2), tok, fill="black", font=font)
    return img


def save_pictures(folder: Path, image: np.ndarray, heat: np.ndarray, tokens, scores) -> None:
    """overlay.png and text.png; the text picture leaves BOS/EOS out (as the published
    visualisation: EOS carries most of the KL and would wash the other tokens out)."""
    overlay(image, heat).save(folder / "overlay.png")
    tokens, scores = list(tokens), np.asarray(scores)
    if len(tokens) > 2:
        tokens, scores = tokens[1:-1], scores[1:-1]
    words = [t.replace("</w>", "") for t in tokens]
    shaded_text(words, scores).save(folder / "text.png")
