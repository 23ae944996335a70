"""Learned feature maps a head can read instead of raw image embeddings (`fit-head --features`).

A transform is fitted on a cache by its own command and saved as a directory (safetensors +
JSON): a TopK sparse autoencoder (`fit-sae`, `heads/sae/`) gives named latent codes
(Discover-then-Name); a contrastive adapter (`fit-adapter`, `heads/contrastive/`) gives a
projection. Each kind registers a loader in `LOADERS`; the loader is imported lazily so that
`heads/features.py` stays light.

Contract of a loader: `load(path, device) -> FeatureTransform`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipcbm.heads.errors import HeadsConfigError


@dataclass
class FeatureTransform:
    """A frozen map from unit image embeddings (B, E) to features (B, F).

    kind: "sae" | "adapter"; path: the artifact directory; sha256: of its weights file (a head
    records it and refuses a changed transform); model_fingerprint: `cache.layout.
    model_fingerprint` of the cache it was fitted on (a head or transform is refused on a cache
    of another model); names: one human name per output feature (SAE latent names; "a0" ... for
    an adapter), used by explanations.
    """

    kind: str
    path: Path
    sha256: str
    model_fingerprint: str
    names: list[str]
    fn: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    in_dim: int = 0

    @property
    def out_dim(self) -> int:
        return len(self.names)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


# kind -> "module:function" of its loader, imported on first use
LOADERS: dict[str, str] = {
    "sae": "clipcbm.heads.sae.artifact:load_feature_transform",
    "adapter": "clipcbm.heads.contrastive.artifact:load_feature_transform",
}


def load_transform(kind: str, path: str | Path, device="cpu") -> FeatureTransform:
    if kind not in LOADERS:
        raise HeadsConfigError(f"unknown feature transform {kind!r}; known: {sorted(LOADERS)}")
    module, fn = LOADERS[kind].split(":")
    return getattr(importlib.import_module(module), fn)(Path(path), device)
