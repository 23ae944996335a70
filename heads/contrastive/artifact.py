"""Adapters on disk: a directory with `model.safetensors` + `config.json`, no pickles.

config.json holds kind "adapter", the projection's shape (arch, in_dim, out_dim, hidden), the
training options and seed, the loss history, the sha256 of the weights (checked on load) and
the `cache.layout.model_fingerprint` of the cache it was trained on: an adapter is refused on a
cache of another embedding model (`check_model`). Written atomically (core.atomic.directory).
`load_feature_transform` is the `heads.transforms.LOADERS["adapter"]` entry (`fit-head
--features adapter`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from clipcbm.heads.contrastive.adapter import Projection
from clipcbm.heads.errors import HeadCacheMismatchError, HeadFormatError
from clipcbm.heads.io.weights_dir import CONFIG, WeightsDir
from clipcbm.heads.transforms import FeatureTransform

KIND = "adapter"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("arch", "in_dim", "out_dim", "hidden", "model_fingerprint")


@dataclass
class Adapter:
    module: Projection
    config: dict
    path: Path

    @property
    def sha256(self) -> str:
        return self.config["weights_sha256"]

    @torch.no_grad()
    def project(self, x, chunk: int = 8192) -> torch.Tensor:
        """Unit embeddings (N, E) (numpy or tensor, any float dtype) -> unit features (N, F)."""
        device = next(self.module.parameters()).device
        x = torch.as_tensor(x)
        out = [self.module(x[i : i + chunk].to(device).float()) for i in range(0, len(x), chunk)]
        return torch.cat(out) if out else torch.zeros((0, self.module.out_dim), device=device)


ADAPTER_DIR = WeightsDir("adapter", "fit-adapter", FORMAT_VERSION, REQUIRED_KEYS, kind=KIND)


def save_adapter(out_dir, module: Projection, config: dict) -> Path:
    """Write the adapter directory atomically; records the weights' sha256."""
    return ADAPTER_DIR.save(out_dir, module, config, KIND)


def load_adapter(path, device="cpu") -> Adapter:
    """Read an adapter directory; damage (missing file, other sha256, bad shapes) is an error."""
    config = ADAPTER_DIR.read_config(path)
    if config.get("weights_sha256") is None:
        raise HeadFormatError(f"{path}/{CONFIG} records no weights sha256; fit the adapter again")
    module = Projection(
        int(config["in_dim"]), int(config["out_dim"]), config["arch"], int(config["hidden"])
    )
    return Adapter(ADAPTER_DIR.load_into(path, module, device), config, Path(path))


def check_model(adapter: Adapter, cache) -> None:
    """Refuse a cache of another embedding model (or width) than the adapter was fitted on."""
    from clipcbm.cache.layout import model_fingerprint

    if int(adapter.config["in_dim"]) != cache.embed_dim:
        raise HeadCacheMismatchError(
            f"adapter {adapter.path} takes E = {adapter.config['in_dim']} embeddings, cache "
            f"{cache.path} has E = {cache.embed_dim}; fit an adapter on this cache"
        )
    if adapter.config["model_fingerprint"] != model_fingerprint(cache.metadata):
        raise HeadCacheMismatchError(
            f"adapter {adapter.path} was fitted on embeddings of another model (fingerprint "
            f"{adapter.config['model_fingerprint'][:12]}... != cache {cache.path}'s "
            f"{model_fingerprint(cache.metadata)[:12]}...); fit an adapter on this cache"
        )


def load_feature_transform(path: Path, device) -> FeatureTransform:
    """heads.transforms loader: the adapter as a frozen map (B, E) -> unit features (B, F)."""
    adapter = load_adapter(path, device)
    dev = next(adapter.module.parameters()).device

    def fn(x: torch.Tensor) -> torch.Tensor:
        return adapter.module(x.to(dev).float())

    return FeatureTransform(
        kind=KIND,
        path=Path(path),
        sha256=adapter.sha256,
        model_fingerprint=adapter.config["model_fingerprint"],
        names=[f"a{i}" for i in range(int(adapter.config["out_dim"]))],
        fn=fn,
        in_dim=int(adapter.config["in_dim"]),
    )
