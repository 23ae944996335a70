"""Trained heads on disk: a directory with `model.safetensors` + `config.json`, no pickles.

config.json holds the kind (cbm | probe | zs-probe), the hyper-parameters, the seed, the
metrics, the validation split (indices into the train split + seed), |D|, |C|, E and the
fingerprint of the cache the head was fitted on. `load_head(dir, cache)` refuses a cache
with another fingerprint (HeadCacheMismatchError).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from heads.cbm.model import ConceptBottleneck
from heads.chunks import iter_chunks
from heads.errors import HeadCacheMismatchError, HeadFormatError
from heads.eval.evaluate import Scorer, predict
from heads.features import TextTensors
from heads.psi import as_float_tensor

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
REQUIRED_KEYS = ("kind", "n_concepts", "n_classes", "embed_dim", "cache_fingerprint")


MODULE_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {
    "cbm": lambda c: ConceptBottleneck(c["n_concepts"], c["n_classes"], topk=int(c.get("topk", 0))),
    "probe": lambda c: nn.Linear(c["embed_dim"], c["n_classes"]),
    "zs-probe": lambda c: nn.Linear(c["n_classes"], c["n_classes"]),
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
            self._text[key] = TextTensors.from_cache(cache, device)
        return Scorer(self.kind, self.module, self._text[key])

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


def save_head(out_dir, head: Head, config: dict) -> Path:
    """Write `model.safetensors` + `config.json` into out_dir (files replaced atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {**config, "kind": head.kind}
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise HeadFormatError(f"head config lacks {missing}; required keys: {REQUIRED_KEYS}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in head.module.state_dict().items()}
    save_file(state, out / (WEIGHTS + ".tmp"), metadata={"kind": head.kind})
    (out / (CONFIG + ".tmp")).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    os.replace(out / (WEIGHTS + ".tmp"), out / WEIGHTS)
    os.replace(out / (CONFIG + ".tmp"), out / CONFIG)
    return out


def load_head(head_dir, cache=None, device="cpu") -> Head:
    """Read a head directory; with `cache`, refuse one of another fingerprint."""
    d = Path(head_dir)
    for name in (WEIGHTS, CONFIG):
        if not (d / name).is_file():
            raise HeadFormatError(
                f"{d} is not a head directory: {name} is missing (expected {WEIGHTS} + {CONFIG}, "
                "as written by `cli.py fit-head`)"
            )
    config = json.loads((d / CONFIG).read_text())
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise HeadFormatError(f"{d / CONFIG} lacks {missing}; required keys: {REQUIRED_KEYS}")
    if cache is not None:
        check_cache(config, cache)
    module = build_module(config)
    module.load_state_dict(load_file(d / WEIGHTS, device=str(device)))
    module.to(device).eval()
    return Head(kind=config["kind"], config=config, module=module)
