"""The one on-disk form of every stage-two artifact: a directory of `model.safetensors` +
`config.json` (heads, adapters, SAEs), never pickles.

Written atomically (`core.atomic.directory`: built in a temporary sibling, swapped in whole);
config.json records the weights' sha256 and a format version. On load, each kind of damage is
one `HeadFormatError` naming the file and what to do: a missing directory or file, unreadable
or truncated JSON, a config of another kind, missing keys, a newer format, weights whose sha256
differs from the recorded one, a garbage or mis-shaped safetensors file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from clipcbm.core import atomic
from clipcbm.core.outputs import Ownership
from clipcbm.heads.errors import HeadFormatError
from clipcbm.heads.io.output import write_errors

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsDir:
    """The layout rules of one artifact kind."""

    what: str  # "head" | "adapter" | "SAE": the word used in messages
    command: str  # the command that writes it, for "fit it again" hints
    format_version: int
    required: tuple[str, ...]  # keys config.json must hold
    kind: str | None = None  # config.json "kind" must equal this (None: any)

    def save(self, out, module: nn.Module, config: dict, kind: str) -> Path:
        """Write the directory atomically; returns its path."""
        out = Path(out)
        cfg = {**config, "kind": kind, "format_version": self.format_version}
        missing = [k for k in self.required if k not in cfg]
        if missing:
            raise HeadFormatError(
                f"{self.what} config lacks {missing}; required keys: {self.required}"
            )
        state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
        need = sum(t.numel() * t.element_size() for t in state.values())
        with write_errors(out, f"the {self.what}", need), atomic.directory(out) as tmp:
            save_file(state, tmp / WEIGHTS, metadata={"kind": kind})
            cfg["weights_sha256"] = atomic.sha256_file(tmp / WEIGHTS)
            atomic.write_text(tmp / CONFIG, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        return out

    def read_config(self, d) -> dict:
        """config.json of directory `d`, checked (files present, JSON, kind, keys, version,
        weights' sha256). A swap killed between its renames is undone first."""
        d = Path(d)
        if atomic.recover(d):
            log.warning("%s: restored the previous %s (a replacing run was interrupted)", d,
                        self.what)  # fmt: skip
        if not d.is_dir():
            raise HeadFormatError(
                f"{self.what} directory {d} does not exist; pass the --out directory of a "
                f"`{self.command}` run"
            )
        for name in (WEIGHTS, CONFIG):
            if not (d / name).is_file():
                raise HeadFormatError(
                    f"{d} is not {self._a} directory: {name} is missing (expected {WEIGHTS} + "
                    f"{CONFIG}, as written by `clipcbm {self.command}`)"
                )
        try:
            config = json.loads((d / CONFIG).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HeadFormatError(
                f"{d / CONFIG} is not readable JSON ({e}); the {self.what} is damaged — "
                f"run `{self.command}` again"
            ) from e
        if not isinstance(config, dict):
            raise HeadFormatError(f"{d / CONFIG} is not a JSON object; the {self.what} is damaged")
        if self.kind is not None and config.get("kind") != self.kind:
            raise HeadFormatError(
                f"{d} is not {self._a} directory (config.json kind is {config.get('kind')!r}, "
                f"expected {self.kind!r})"
            )
        missing = [k for k in self.required if k not in config]
        if missing:
            raise HeadFormatError(f"{d / CONFIG} lacks {missing}; required keys: {self.required}")
        version = config.get("format_version", 1)
        if not isinstance(version, int) or version > self.format_version:
            raise HeadFormatError(
                f"{d} was written in {self.what} format version {version!r}, newer than this "
                f"toolkit reads ({self.format_version}); upgrade clipcbm to load it"
            )
        want = config.get("weights_sha256")
        if want is not None and atomic.sha256_file(d / WEIGHTS) != want:
            raise HeadFormatError(
                f"{d / WEIGHTS} does not match the sha256 recorded in {CONFIG}: the weights are "
                f"damaged or belong to another run — run `{self.command}` again"
            )
        return config

    def load_into(self, d, module: nn.Module, device, label: str | None = None) -> nn.Module:
        """Load the directory's weights into `module` (shapes checked), on `device`, eval."""
        d = Path(d)
        try:
            module.load_state_dict(load_file(d / WEIGHTS, device=str(torch.device(device))))
        except (SafetensorError, RuntimeError, OSError) as e:
            raise HeadFormatError(
                f"{d / WEIGHTS} cannot be loaded as {label or self._a} ({e}); run "
                f"`{self.command}` again"
            ) from e
        return module.to(device).eval()

    @property
    def ownership(self) -> Ownership:
        """How `--overwrite` recognises a directory this kind wrote (core.outputs)."""

        def recognise(d: Path) -> bool:
            cfg = json.loads((d / CONFIG).read_text()) if (d / CONFIG).is_file() else None
            return (isinstance(cfg, dict) and (d / WEIGHTS).is_file() and "kind" in cfg
                    and (self.kind is None or cfg.get("kind") == self.kind))  # fmt: skip

        return Ownership(f"{self._a} directory", self.command, recognise,
                         frozenset({WEIGHTS, CONFIG}))  # fmt: skip

    @property
    def _a(self) -> str:
        return f"{'an' if self.what[0].lower() in 'aeiou' else 'a'} {self.what}"
