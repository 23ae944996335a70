"""Contrastive adapters over cached views (seed 002): losses, `fit-adapter`, `knn-eval`.

`from heads.contrastive import LOSSES` gives the loss registry (heads.contrastive.losses); it
is imported lazily so that registering the commands in cli.py does not import torch.
"""

from __future__ import annotations

__all__ = ["LOSSES", "AGGREGATES"]


def __getattr__(name: str):
    if name in __all__:
        from clipcbm.heads.contrastive import losses

        return getattr(losses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
