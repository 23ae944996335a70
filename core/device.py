"""The one device rule of every stage: auto | cpu | cuda | cuda:N, checked early, resolved late.

`check_device` validates a name when a config is built (no probing: a typo fails before any
work); `resolve_device` turns it into a torch.device when the run starts: auto -> cuda when a
GPU is visible, else cpu; asking for a GPU that is not there is a clear error, not a silent
CPU run. Every artifact records the resolved device (cache metadata, head config, run JSON).
torch is imported inside `resolve_device` only, so config modules (and `cache/`) stay torch-free.
"""

from __future__ import annotations

import re

from clipcbm.core.errors import ConfigError

DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N")
DEVICE_HELP = "auto | cpu | cuda | cuda:N (auto = cuda when one is visible, else cpu)."
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceError(ConfigError):
    """A device name that is malformed, or asks for a GPU that is not there."""


def check_device(name) -> None:
    if not isinstance(name, str) or not _DEVICE_RE.fullmatch(name):
        raise DeviceError(f"device must be one of {list(DEVICE_NAMES)}, got {name!r}")


def resolve_device(name: str):
    """'auto' -> cuda when available else cpu; 'cuda' / 'cuda:N' without that GPU is an error."""
    import torch

    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= n:
            raise DeviceError(
                f"device {name!r} was asked for but torch sees {n} CUDA device(s); "
                "use --device cpu (or auto)"
            )
    return dev
