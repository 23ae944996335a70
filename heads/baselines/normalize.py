"""CMS column normalisations (SPEC §3): the registry `--normalize` offers, torch-free.

`column` divides each concept column of V and of T by its mean over the rows of its matrix,
`zscore` standardises each column; `sum` (row-sum scaling, what the published code calls
normalisation) is an alias of `none`: the cosine is invariant to scaling a row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Normalizer:
    """Per-column map x -> (x - mean if center) / scale(mean, std), stats over a matrix's rows."""

    center: bool  # subtract the column mean
    scale: Callable[[Tensor, Tensor | None], Tensor] | None  # None: 1
    doc: str

    @property
    def needs_std(self) -> bool:  # the first pass must accumulate the image covariance
        return self.center


NORMALIZERS: dict[str, Normalizer] = {
    "none": Normalizer(False, None, "raw cosines (Algorithm 1 as written)"),
    "column": Normalizer(False, lambda mean, std: mean, "divide each column by its mean"),
    "zscore": Normalizer(True, lambda mean, std: std, "subtract column mean, divide by std"),
}
# Row-sum scaling cannot change a row-scale-invariant cosine, so it is `none` (SPEC §3).
ALIASES: dict[str, str] = {"sum": "none"}
NORMALIZE_CHOICES: tuple[str, ...] = (*NORMALIZERS, *ALIASES)
_alias_logged: set[str] = set()


def resolve_normalize(name: str) -> str:
    """Canonical normaliser name; logs once per process when an alias is chosen."""
    if name in NORMALIZERS:
        return name
    if name in ALIASES:
        target = ALIASES[name]
        if name not in _alias_logged:
            _alias_logged.add(name)
            log.info(
                "normalize=%r is an alias of %r: scaling a row of V or T by its sum cannot "
                "change the per-row cosine CMS takes, so results are identical",
                name,
                target,
            )
        return target
    raise ValueError(f"normalize={name!r} is not known; allowed: {', '.join(NORMALIZE_CHOICES)}")
