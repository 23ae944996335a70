"""The one device rule of stage two: auto | cpu | cuda | cuda:N, checked early, resolved late.

`check_device` validates a name when a config is built (so a typo fails before any work);
`resolve_device` turns it into a torch.device when the run starts: auto -> cuda when a GPU is
visible, else cpu; asking for cuda without a GPU is a clear error, not a silent CPU run.
"""

from __future__ import annotations

import re

import torch

DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceError(ValueError):
    """A device name that is malformed, or asks for a GPU that is not there."""


def check_device(name) -> None:
    if not isinstance(name, str) or not _DEVICE_RE.fullmatch(name):
        raise DeviceError(f"device must be one of {list(DEVICE_NAMES)}, got {name!r}")


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' / 'cuda:N' without that GPU is an error."""
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
