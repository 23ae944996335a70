"""Trained heads on disk: a directory with `model.safetensors` + `config.json`, no pickles.

config.json holds the kind (cbm | probe | zs-probe), the hyper-parameters, the seed, the
metrics, the validation split (indices into the train split + seed), |D|, |C|, E and the
fingerprint of the cache the head was fitted on. `load_head(dir, cache)` refuses a cache
with another fingerprint (HeadCacheMismatchError).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from clipcbm.heads.cbm.model import ConceptBottleneck
from clipcbm.heads.chunks import iter_chunks
from clipcbm.heads.errors import HeadCacheMismatchError, HeadFormatError
from clipcbm.heads.eval.evaluate import Scorer, predict
from clipcbm.heads.features import TextTensors
from clipcbm.heads.io.weights_dir import WeightsDir
from clipcbm.heads.psi import as_float_tensor

FORMAT_VERSION = 2  # 2: atomic directory, weights_sha256 recorded; 1: no checksum
REQUIRED_KEYS = ("kind", "n_concepts", "n_classes", "embed_dim", "cache_fingerprint")


MODULE_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {
    "cbm": lambda c: ConceptBottleneck(c["n_concepts"], c["n_classes"], topk=int(c.get("topk", 0))),
    "probe": lambda c: nn.Linear(c["embed_dim"], c["n_classes"]),
    "zs-probe": lambda c: nn.Linear(c["n_classes"], c["n_classes"]),
    "features": lambda c: nn.Linear(int(c["transform"]["n_features"]), c["n_classes"]),
}


def build_module(config: dict) -> nn.Module:
    """The (untrained) module of a head kind, shaped by config's |D|, |C|, E."""
    kind = config["kind"]
    if kind not in MODULE_BUILDERS:
        raise HeadFormatError(f"unknown head kind {kind!r}; known: {sorted(MODULE_BUILDERS)}")
    return MODULE_BUILDERS[kind](config)


def check_cache(config: dict, cache) -> None:
    """Raise HeadCacheMismatchError unless `cache` is the one the head was fitted on."""
    have = {
        "n_concepts": len(cache.concepts),
        "n_classes": len(cache.classes),
        "embed_dim": int(cache.embed_dim),
    }
    names = {"n_concepts": "|D| (concepts)", "n_classes": "|C| (classes)", "embed_dim": "E"}
    for key, value in have.items():
        if int(config[key]) != value:
            raise HeadCacheMismatchError(
                f"head was fitted with {names[key]} = {config[key]}, cache {cache.path} has "
                f"{value}; use the cache the head was fitted on or fit a new head on this one"
            )
    if config["cache_fingerprint"] != cache.fingerprint:
        raise HeadCacheMismatchError(
            f"head fingerprint {config['cache_fingerprint'][:12]}... != cache {cache.path} "
            f"fingerprint {cache.fingerprint[:12]}...: the head was fitted on another cache "
            "(other model, concepts, classes or images); fit a new head on this cache"
        )


@dataclass
class Head:
    """A trained head (cbm | probe | zs-probe); see the contract in CONTRACT.md."""

    kind: str
    config: dict
    module: nn.Module
    _text: dict = field(default_factory=dict, repr=False)  # fingerprint -> TextTensors

    def scorer(self, cache) -> Scorer:
        """This head on `cache` (checked: the cache it was fitted on), on the module's device."""
        check_cache(self.config, cache)
        device = next(self.module.parameters(), torch.empty(0)).device
        key = (cache.fingerprint, str(device))
        if key not in self._text:
            text = TextTensors.from_cache(cache, device)
            if self.kind == "features":
                text = dataclasses.replace(text, transform=self._transform(cache, device))
            self._text[key] = text
        return Scorer(self.kind, self.module, self._text[key])

    def _transform(self, cache, device):
        """The SAE / adapter a features head reads, refused if it changed since the fit."""
        from clipcbm.heads.io.data import checked_transform

        rec = self.config["transform"]
        tr = checked_transform(rec["kind"], rec["path"], cache, device)
        if tr.sha256 != rec["sha256"]:
            raise HeadFormatError(
                f"{rec['kind']} {rec['path']} is not the one this head was fitted on (its "
                "weights' sha256 differs); fit the head again on the current one"
            )
        return tr

    @property
    def feature_names(self) -> list[str] | None:
        """Names of what a features head's final layer reads (SAE latent names), else None."""
        if self.kind != "features":
            return None
        return next(iter(self._text.values())).transform.names if self._text else None

    def logits(self, image_emb, cache) -> torch.Tensor:
        """image_emb (N, E) -> class logits (N, |C|) fp32 on the module's device."""
        return predict(self.scorer(cache), as_float_tensor(image_emb))

    def activations(self, image_emb, cache) -> torch.Tensor | None:
        """image_emb (N, E) -> CBL activations a (N, |D|) for a cbm head, else None."""
        if self.kind != "cbm":
            return None
        sc = self.scorer(cache)
        x = as_float_tensor(image_emb)
        self.module.eval()
        return torch.cat([sc.activations(x[sl]) for sl in iter_chunks(len(x))])


HEAD_DIR = WeightsDir("head", "fit-head", FORMAT_VERSION, REQUIRED_KEYS)


def save_head(out_dir, head: Head, config: dict) -> Path:
    """Write the head directory atomically: `model.safetensors` + `config.json`.

    The directory is built in a temporary sibling and renamed into place (core.atomic), so a
    crash leaves the old head or the new one, never new weights beside an old config.
    config.json records the weights' sha256 (checked on load) and the format version.
    """
    return HEAD_DIR.save(out_dir, head.module, config, head.kind)


def load_head(head_dir, cache=None, device="cpu") -> Head:
    """Read a head directory; with `cache`, refuse one of another fingerprint.

    Damage is never used silently: a missing file, unreadable config, weights whose sha256
    differs from the one recorded, or a state dict of the wrong shapes is a HeadFormatError.
    """
    config = HEAD_DIR.read_config(head_dir)
    if cache is not None:
        check_cache(config, cache)
    label = f"a {config['kind']!r} head"
    module = HEAD_DIR.load_into(head_dir, build_module(config), device, label)
    return Head(kind=config["kind"], config=config, module=module)
