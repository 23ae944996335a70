"""The one reader API every stage-two command uses: `open_cache(path)` (SPEC §5).

Whole arrays are loaded in one call per split (single-row reads from Zarr cost milliseconds).
An incomplete cache is refused unless `allow_incomplete=True`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .backend import Backend
from .errors import CacheError, IncompleteCacheError
from .layout import CLASS_SEP, FORMAT_NAME, TEXT_GROUP


@dataclass(frozen=True)
class SplitData:
    """One split, whole arrays in memory. image_emb: (N, E) float32 unit rows (0 where not ok)."""

    name: str
    image_emb: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    ok: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def valid(self) -> SplitData:
        """The rows whose image was readable (ok == True)."""
        m = self.ok
        return SplitData(self.name, self.image_emb[m], self.labels[m], self.ids[m], self.ok[m])


class Cache:
    """Read-only handle on an embedding cache (Zarr directory or HDF5 file)."""

    def __init__(self, path: Path, allow_incomplete: bool = False):
        self.path = Path(path)
        if not self.path.exists():
            raise CacheError(
                f"no cache at {self.path}: run `python cli.py embed --out {self.path}` first"
            )
        self._b = Backend(self.path)
        self.format = self._b.format
        self.metadata = self._b.attrs()
        if self.metadata.get("format") != FORMAT_NAME:
            raise CacheError(
                f"{self.path} is not an embedding cache (no '{FORMAT_NAME}' format tag)"
            )
        if not self.metadata.get("complete") and not allow_incomplete:
            raise IncompleteCacheError(
                f"{self.path} is incomplete (a run was interrupted or is still writing). Re-run "
                "the same `cli.py embed` command to resume it (allow_incomplete=True to inspect)."
            )

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._b.close()

    @property
    def fingerprint(self) -> str:
        return self.metadata["fingerprint"]

    @property
    def splits(self) -> list[str]:
        return list(self.metadata["splits"])

    @property
    def embed_dim(self) -> int:
        return int(self.metadata["embed_dim"])

    @property
    def logit_scale(self) -> float:
        return float(self.metadata["logit_scale"])

    def _text(self, name: str) -> list[str]:
        return [str(s) for s in self._b.read(f"{TEXT_GROUP}/{name}")]

    @cached_property
    def concepts(self) -> list[str]:
        return self._text("concepts")

    @cached_property
    def classes(self) -> list[str]:
        return self._text("classes")

    @cached_property
    def templates(self) -> list[str]:
        return self._text("templates")

    @cached_property
    def concept_classes(self) -> list[list[str]]:
        return [s.split(CLASS_SEP) if s else [] for s in self._text("concept_classes")]

    def concept_emb(self) -> np.ndarray:
        return self._b.read(f"{TEXT_GROUP}/concept_emb").astype(np.float32)

    def class_emb(self) -> np.ndarray:
        return self._b.read(f"{TEXT_GROUP}/class_emb").astype(np.float32)

    def split_attrs(self, name: str) -> dict:
        self._check_split(name)
        return self._b.attrs(name)

    def _check_split(self, name: str) -> None:
        if name not in self.splits:
            raise CacheError(f"split '{name}' is not in {self.path}; it has {self.splits}")

    def split(self, name: str) -> SplitData:
        self._check_split(name)
        return SplitData(
            name=name,
            image_emb=self._b.read(f"{name}/image_emb").astype(np.float32),
            labels=self._b.read(f"{name}/labels").astype(np.int64),
            ids=self._b.read(f"{name}/ids").astype(str),
            ok=self._b.read(f"{name}/ok").astype(bool),
        )


def open_cache(path: str | Path, allow_incomplete: bool = False) -> Cache:
    """Open a cache written by `cli.py embed` (or `write_cache`)."""
    return Cache(Path(path), allow_incomplete=allow_incomplete)
