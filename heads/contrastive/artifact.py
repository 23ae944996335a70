"""Adapters on disk: a directory with `model.safetensors` + `config.json`, no pickles.

config.json holds kind "adapter", the projection's shape (arch, in_dim, out_dim, hidden), the
training options and seed, the loss history, the sha256 of the weights (checked on load) and
the `cache.layout.model_fingerprint` of the cache it was trained on: an adapter is refused on a
cache of another embedding model (`check_model`). Written atomically (core.atomic.directory).
`load_feature_transform` is the `heads.transforms.LOADERS["adapter"]` entry (`fit-head
--features adapter`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core import atomic
from heads.contrastive.adapter import Projection
from heads.errors import HeadCacheMismatchError, HeadFormatError
from heads.transforms import FeatureTransform

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
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


def save_adapter(out_dir, module: Projection, config: dict) -> Path:
    """Write the adapter directory atomically; records the weights' sha256."""
    out = Path(out_dir)
    cfg = {**config, "kind": KIND, "format_version": FORMAT_VERSION}
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise HeadFormatError(f"adapter config lacks {missing}; required keys: {REQUIRED_KEYS}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    with atomic.directory(out) as tmp:
        save_file(state, tmp / WEIGHTS, metadata={"kind": KIND})
        cfg["weights_sha256"] = atomic.sha256_file(tmp / WEIGHTS)
        atomic.write_text(tmp / CONFIG, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out


def _read_config(d: Path) -> dict:
    try:
        config = json.loads((d / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeadFormatError(
            f"{d / CONFIG} is not readable JSON ({e}); fit the adapter again"
        ) from e
    if not isinstance(config, dict) or config.get("kind") != KIND:
        raise HeadFormatError(
            f"{d} is not an adapter directory (config.json kind is "
            f"{config.get('kind') if isinstance(config, dict) else None!r}, expected {KIND!r})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise HeadFormatError(f"{d / CONFIG} lacks {missing}; required keys: {REQUIRED_KEYS}")
    version = config.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise HeadFormatError(
            f"{d} was written in adapter format version {version!r}, newer than this toolkit "
            f"reads ({FORMAT_VERSION}); upgrade clipcbm to load it"
        )
    return config


def load_adapter(path, device="cpu") -> Adapter:
    """Read an adapter directory; damage (missing file, other sha256, bad shapes) is an error."""
    d = Path(path)
    for name in (WEIGHTS, CONFIG):
        if not (d / name).is_file():
            raise HeadFormatError(
                f"{d} is not an adapter directory: {name} is missing (expected {WEIGHTS} + "
                f"{CONFIG}, as written by `cli.py fit-adapter --out {d}`)"
            )
    config = _read_config(d)
    if atomic.sha256_file(d / WEIGHTS) != config.get("weights_sha256"):
        raise HeadFormatError(
            f"{d / WEIGHTS} does not match the sha256 recorded in {CONFIG}: the weights are "
            "damaged or belong to another run — fit the adapter again"
        )
    module = Projection(
        int(config["in_dim"]), int(config["out_dim"]), config["arch"], int(config["hidden"])
    )
    try:
        module.load_state_dict(load_file(d / WEIGHTS, device="cpu"))
    except (SafetensorError, RuntimeError, OSError) as e:
        raise HeadFormatError(
            f"{d / WEIGHTS} cannot be loaded as an adapter ({e}); fit it again"
        ) from e
    module.to(device).eval()
    return Adapter(module, config, d)


def check_model(adapter: Adapter, cache) -> None:
    """Refuse a cache of another embedding model (or width) than the adapter was fitted on."""
    from cache.layout import model_fingerprint

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
