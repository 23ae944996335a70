"""CLIP image preprocessing with Pillow + numpy, identical to the model's own image processor.

Same steps as transformers' `CLIPImageProcessor` (PIL backend): convert to RGB, resize the
shortest side to `resize` with bicubic resampling (long side `int(resize * long / short)`),
centre crop `crop` x `crop` (top = (h - crop) // 2), scale to [0, 1], normalise by mean/std.
Workers return the uint8 crop (4x less to move between processes than float32); the float
normalisation runs batched in the main process, on the GPU when there is one (`normalize_batch`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_PIL_RESAMPLE = {v: k for k, v in _RESAMPLE.items()}


@dataclass(frozen=True)
class PreprocessSpec:
    """What the image processor does; recorded in the cache metadata."""

    resize: int = 224  # px, target of the shortest side
    crop: int = 224  # px, square centre crop
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    decoder: str = "pillow"
    jpeg_draft: bool = False  # decode JPEGs at a reduced DCT scale (faster, not bit-exact)

    def __post_init__(self) -> None:
        if self.resize <= 0 or self.crop <= 0:
            raise ValueError(
                f"resize and crop must be positive pixels, got {self.resize}, {self.crop}"
            )
        if self.crop > self.resize:
            raise ValueError(
                f"crop ({self.crop}px) larger than resize ({self.resize}px) is not "
                "supported: CLIP processors crop inside the resized image"
            )
        if self.interpolation not in _PIL_RESAMPLE:
            raise ValueError(f"interpolation {self.interpolation!r} not in {sorted(_PIL_RESAMPLE)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_image_processor(cls, proc, jpeg_draft: bool = False) -> PreprocessSpec:
        """Read a transformers CLIP image processor's settings (shortest_edge resize + crop)."""
        size = proc.size if isinstance(proc.size, dict) else dict(proc.size.__dict__)
        crop = proc.crop_size if isinstance(proc.crop_size, dict) else dict(proc.crop_size.__dict__)
        if not size.get("shortest_edge"):
            raise ValueError(f"unsupported image processor size {size}: expected shortest_edge")
        return cls(
            resize=int(size["shortest_edge"]),
            crop=int(crop["height"]),
            mean=tuple(float(x) for x in proc.image_mean),
            std=tuple(float(x) for x in proc.image_std),
            interpolation=_interpolation_name(proc.resample),
            jpeg_draft=jpeg_draft,
        )


def _interpolation_name(resample) -> str:
    """PIL int code (PIL backend) or an enum with a string value (torchvision backend)."""
    value = getattr(resample, "value", resample)
    return _RESAMPLE[int(value)] if isinstance(value, int) else str(value).lower()


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) after scaling the shortest side to `short_side` (transformers' rule)."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def crop_uint8(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Decode-side half: RGB, resize, centre crop -> (crop, crop, 3) uint8. (`--jpeg-draft`
    acts at decode time, in `ImageDataset.load(i, draft_short_side)`, before this.)"""
    img = img.convert("RGB")
    w, h = resized_size(*img.size, spec.resize)
    img = img.resize((w, h), resample=_PIL_RESAMPLE[spec.interpolation])
    top, left = (h - spec.crop) // 2, (w - spec.crop) // 2
    return np.array(img.crop((left, top, left + spec.crop, top + spec.crop)), dtype=np.uint8)


def normalize_batch(
    images: torch.Tensor, spec: PreprocessSpec, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) normalised pixel values in `dtype` (math in fp32)."""
    mean = torch.tensor(spec.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=images.device).view(1, 3, 1, 1)
    x = images.permute(0, 3, 1, 2).float().mul_(1.0 / 255.0)
    return x.sub_(mean).div_(std).to(dtype)
