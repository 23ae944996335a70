"""AttributeConfig, AttributeEvalConfig (one frozen, validated dataclass per command, no I/O)
and M2IBSettings, the numbers of one M2IB fit. torch-free, so `--help` stays fast."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from clipcbm.core.config import option, validated
from clipcbm.core.device import DEVICE_HELP, check_device
from clipcbm.core.location import Location, as_location, location_str
from clipcbm.pipeline.config import DEFAULT_CLIP_MODEL, DTYPE_TORCH_NAMES
from clipcbm.pipeline.errors import PipelineConfigError

BASELINES = ("saliency", "integrated-gradients", "occlusion", "rollout")
NOISES = ("raw", "stats")


@dataclass(frozen=True)
class M2IBSettings:
    """Hyper-parameters of one M2IB fit (defaults: the published code's)."""

    layer_fraction: float = 0.75  # bottleneck on layers[round(f · depth)]: 9 of 0..11 (B/32)
    beta: float = 0.1  # weight of the compression (KL) term
    steps: int = 10  # Adam steps per pair
    lr: float = 1.0  # Adam learning rate on α
    alpha0: float = 5.0  # initial α (λ = sigmoid(5) ≈ 0.993: almost no noise at the start)
    samples: int = 10  # noise samples per step, run as one batch
    noise: str = "raw"  # "raw" | "stats"

    def __post_init__(self) -> None:
        if not 0.0 < self.layer_fraction <= 1.0:
            raise ValueError(f"layer fraction must be in (0, 1], got {self.layer_fraction}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.steps < 1 or self.samples < 1:
            raise ValueError(f"steps and samples must be >= 1, got {self.steps}, {self.samples}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {list(NOISES)}, got {self.noise!r}")


@validated(PipelineConfigError)
@dataclass(frozen=True)
class AttributeConfig:
    out: Path = option(help="Output directory (one pair: D/maps.npz, D/tokens.json, pictures; "
                       "several: D/pairs.csv and D/pairs/<i>/...).")  # fmt: skip
    model: str | None = option(None, "Hugging Face CLIP id or local directory (default: with "
                               "--cache the model the cache was embedded with, else "
                               f"{DEFAULT_CLIP_MODEL}).")  # fmt: skip
    revision: str | None = option(None, "Hub branch, tag or commit (default: with --cache the "
                                  "cache's).")  # fmt: skip
    image: Path | None = option(None, "One image file (any size; the map comes back at its size).")
    text: str | None = option(None, "The caption / concept to explain (with --image or --cache).")
    text_from: str | None = option(None, "'class' (the cache row's class in the cache's first "
                                   "template) or a CSV with a 'concept' or 'text' column "
                                   "(e.g. explain's CSV): one pair per row.")  # fmt: skip
    cache: Location | None = option(None, "Embedding cache (path or URL) whose dataset images "
                                    "to explain.")  # fmt: skip
    split: str = option("test", "--cache: the split to read.")
    limit: int = option(200, "--cache: first N readable rows of the split.")
    allow_model_mismatch: bool = option(False, "--cache: explain its images with a --model (or "
                                        "--revision) other than the one that embedded the "
                                        "cache; refused by default.")  # fmt: skip
    vision_layer: float = option(0.75, "Vision bottleneck on the output of layers[round(f * "
                                 "depth)], at most depth-2 (ViT-B/32: 9 of 0..11).")  # fmt: skip
    text_layer: float = option(0.75, "Text bottleneck, same rule (CLIP text: 9 of 0..11).")
    beta: float = option(0.1, "Weight of the KL (compression) term, both towers.")
    steps: int = option(10, "Adam steps per pair.")
    lr: float = option(1.0, "Adam learning rate on alpha.")
    alpha0: float = option(5.0, "Initial alpha (lambda = sigmoid(alpha)).")
    samples: int = option(10, "Noise samples per step (one batch).")
    noise: str = option("raw", "raw: eps in the layer's units (published code); stats: "
                        "standardised per channel first (original IBA).",
                        choices=NOISES)  # fmt: skip
    batch_size: int = option(8, "Pairs fitted together (each x --samples rows per forward).")
    truncate: bool = option(False, "Cut texts longer than the model's context instead of failing.")
    pictures: bool = option(True, "Write overlay.png and text.png per pair.")
    device: str = option("auto", DEVICE_HELP)
    dtype: str = option("auto", "Compute dtype; auto = fp16 on GPU, fp32 on CPU.",
                        choices=("auto", *DTYPE_TORCH_NAMES))  # fmt: skip
    seed: int = option(0, "Seeds the bottleneck noise.")
    overwrite: bool = option(False, "Replace an existing --out directory.")
    progress: bool = option(True, "Show a progress bar.")

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.cache is not None:
            object.__setattr__(self, "cache", as_location(self.cache))
        if (self.image is None) == (self.cache is None):
            raise ValueError(
                f"give exactly one of --image and --cache, got image={self.image}, "
                f"cache={location_str(self.cache) if self.cache is not None else None}"
            )
        if (self.text is None) == (self.text_from is None):
            raise ValueError(
                f"give exactly one of --text and --text-from, got text={self.text!r}, "
                f"text_from={self.text_from!r}"
            )
        if self.text_from == "class" and self.cache is None:
            raise ValueError("--text-from class needs --cache (it names the class of each row)")
        if self.limit < 1 or self.batch_size < 1:
            raise ValueError(f"--limit and --batch-size must be >= 1, got {self.limit}, "
                             f"{self.batch_size}")  # fmt: skip
        self.settings("vision")  # validates the M2IB numbers with the bad value in the message
        if self.model is None and self.cache is None:  # --cache: the cache's model, at run time
            object.__setattr__(self, "model", DEFAULT_CLIP_MODEL)

    def settings(self, tower: str) -> M2IBSettings:
        frac = self.vision_layer if tower == "vision" else self.text_layer
        return M2IBSettings(
            frac, self.beta, self.steps, self.lr, self.alpha0, self.samples, self.noise
        )


@validated(PipelineConfigError)
@dataclass(frozen=True)
class AttributeEvalConfig:
    input: Path = option(help="A directory written by `attribute`.", flag="--in")
    baselines: tuple[str, ...] = option(BASELINES, "Baselines run on the same pairs "
                                        "(repeatable).", flag="--baseline",
                                        choices=BASELINES)  # fmt: skip
    ig_steps: int = option(20, "Integrated-gradients steps (Riemann, from a zero baseline).")
    curve_steps: int = option(16, "Points on the deletion / insertion curves.")
    batch_size: int = option(8, "Pairs per baseline batch.")
    device: str = option("auto", DEVICE_HELP)
    out: Path | None = option(None, "Where eval.csv / eval.md / eval.json go (default: --in).")

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.ig_steps < 1 or self.curve_steps < 2 or self.batch_size < 1:
            raise ValueError(
                f"--ig-steps >= 1, --curve-steps >= 2 and --batch-size >= 1 needed, got "
                f"{self.ig_steps}, {self.curve_steps}, {self.batch_size}"
            )
