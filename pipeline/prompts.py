"""Prompt templates for class embeddings (SPEC §1): a registry name or a user's file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _imagenet80() -> list[str]:
    # The 80 prompt templates OpenAI used for ImageNet zero-shot (CLIP paper, §3.1.4).
    text = resources.files("pipeline").joinpath("imagenet_templates.txt").read_text("utf-8")
    return [t for t in text.splitlines() if t]


TEMPLATES = {
    "default": lambda: ["a photo of a {}."],  # SPEC §1 default: one template
    "bare": lambda: ["{}"],  # the thesis' zero-shot row used the bare class name
    "imagenet80": _imagenet80,
}


def load_templates(spec: str) -> list[str]:
    """A registry name (default | bare | imagenet80) or a path to a file, one template a line."""
    if spec in TEMPLATES:
        return TEMPLATES[spec]()
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--templates {spec!r} is neither one of {sorted(TEMPLATES)} nor a file")
    templates = [t.strip() for t in path.read_text("utf-8").splitlines() if t.strip()]
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ValueError(
            f"{path}: every template needs exactly one '{{}}' for the class name; "
            f"bad: {bad[:3] or 'file is empty'}"
        )
    return templates
