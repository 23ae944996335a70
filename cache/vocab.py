"""A user vocabulary on disk: texts, their text embeddings and the model that embedded them.

Stage one writes it once (`clipcbm embed-text --model M --texts words.txt --out vocab.zarr`);
stage two names SAE latents with it (`fit-sae --vocab`, `sae-inspect --vocab`). It is only
usable with artifacts of the same embedding space, so it records the model identity exactly
as `embed` records it in a cache, and `model_fingerprint` compares the two.

Layout (a Zarr v3 directory, readable without this project)::

    /            attrs: format "clipcbm-vocab", format_version, model {id, revision, commit,
                 embed_dim}, embed_dim, model_fingerprint, texts_sha256, template, n, created
    /texts       (T,)   str, in file order
    /text_emb    (T, E) float32, L2-normalised rows

Written atomically (built in a temporary sibling directory and renamed into place).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipcbm.core import atomic

from .errors import CacheError, CacheExistsError
from .layout import model_fingerprint, sha256_lines

VOCAB_FORMAT = "clipcbm-vocab"
VOCAB_VERSION = 1


class VocabError(CacheError, ValueError):
    """A vocabulary that is missing, malformed, or does not fit the arrays given."""


@dataclass(frozen=True)
class Vocab:
    """texts (T,), emb (T, E) fp32 unit rows, model (the identity `embed` records)."""

    path: Path
    texts: list[str]
    emb: np.ndarray
    model: dict
    metadata: dict

    @property
    def model_fingerprint(self) -> str:
        return self.metadata["model_fingerprint"]

    @property
    def embed_dim(self) -> int:
        return int(self.emb.shape[1])


def _check(texts: list[str], emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(texts) or len(texts) == 0:
        raise VocabError(
            f"a vocabulary needs T >= 1 texts and a (T, E) embedding array; got {len(texts)} "
            f"texts and shape {emb.shape}"
        )
    if len(set(texts)) != len(texts):
        raise VocabError("vocabulary texts must be distinct")
    if not np.isfinite(emb).all():
        raise VocabError("vocabulary embeddings contain NaN or inf")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if (norms == 0).any():
        raise VocabError("vocabulary embeddings contain an all-zero row")
    return emb / norms


def write_vocab(path, texts, emb, model: dict, *, template: str = "{}",
                overwrite: bool = False) -> Path:  # fmt: skip
    """Write texts (T,) and emb (T, E) (normalised here) with the embedding `model`'s identity."""
    import zarr

    path = Path(path)
    texts = [str(t) for t in texts]
    emb = _check(texts, emb)
    if path.exists():
        if not _is_vocab(path):
            raise CacheExistsError(
                f"{path} exists and is not a vocabulary; choose another --out (nothing deleted)"
            )
        if not overwrite:
            raise CacheExistsError(f"{path} holds a vocabulary already; pass --overwrite")
    model = {k: model.get(k) for k in ("id", "revision", "commit", "embed_dim")}
    attrs = {
        "format": VOCAB_FORMAT,
        "format_version": VOCAB_VERSION,
        "model": model,
        "embed_dim": int(emb.shape[1]),
        "model_fingerprint": model_fingerprint({"model": model, "embed_dim": emb.shape[1]}),
        "texts_sha256": sha256_lines(texts),
        "template": template,
        "n": len(texts),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with atomic.directory(path) as tmp:
        g = zarr.open_group(str(tmp), mode="w")
        g.attrs.update(attrs)
        arr = g.create_array("texts", shape=(len(texts),), chunks=(len(texts),), dtype=str,
                             fill_value="")  # fmt: skip
        arr[:] = np.asarray(texts, dtype=str)
        g.create_array("text_emb", data=emb, chunks=emb.shape)
    return path


def _is_vocab(path: Path) -> bool:
    import zarr

    try:
        return zarr.open_group(str(path), mode="r").attrs.get("format") == VOCAB_FORMAT
    except Exception:  # zarr raises its own types for "not a group"
        return False


def open_vocab(path) -> Vocab:
    """Read a vocabulary written by `write_vocab` (`embed-text`)."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise VocabError(
            f"no vocabulary at {path}: write one with `clipcbm embed-text --model M "
            f"--texts words.txt --out {path}`"
        )
    if not _is_vocab(path):
        raise VocabError(f"{path} is not a vocabulary written by `embed-text`")
    g = zarr.open_group(str(path), mode="r")
    attrs = dict(g.attrs)
    if int(attrs.get("format_version", 0)) > VOCAB_VERSION:
        raise VocabError(f"{path} has vocabulary format {attrs['format_version']}, newer than "
                         f"this version reads ({VOCAB_VERSION}); upgrade clipcbm")  # fmt: skip
    texts = g["texts"][:]
    if texts.dtype.kind == "T":
        texts = texts.astype(object)
    emb = np.asarray(g["text_emb"][:], dtype=np.float32)
    if len(texts) != len(emb):
        raise VocabError(f"{path} is damaged: {len(texts)} texts, {len(emb)} embeddings")
    return Vocab(path, [str(t) for t in texts], emb, dict(attrs["model"]), attrs)
