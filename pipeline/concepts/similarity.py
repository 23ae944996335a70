"""Text-similarity models for the concept filter (SPEC §4, thesis §4.3 footnote 3).

- `sentence` (default): cosine of sentence-transformers embeddings, `all-mpnet-base-v2`.
- `blend`: the published Label-free CBM weighting `(mpnet + 3 * CLIP-text) / 4`.

The blend is itself an embedding: for unit rows a (sentence model) and b (CLIP text), the row
[a / 2, (sqrt(3) / 2) * b] is a unit vector whose inner product with another such row is
(a.a' + 3 b.b') / 4. So the filter only ever sees one `Embed` callable and stays model-agnostic.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from clipcbm.core.progress import is_terminal
from clipcbm.pipeline.errors import PipelineError

from .filter import Embed

log = logging.getLogger(__name__)

DEFAULT_SIM_MODEL = "sentence-transformers/all-mpnet-base-v2"
CLIP_WEIGHT = 0.75  # the published blend: (mpnet + 3 * clip) / 4


class SimilarityModelError(PipelineError, RuntimeError):
    """The similarity model could not be loaded."""


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def blend(first: Embed, second: Embed, weight_second: float = CLIP_WEIGHT) -> Embed:
    """Embed whose cosine is (1 - w) * cos_first + w * cos_second (w = 3/4: the published blend)."""
    if not 0.0 <= weight_second <= 1.0:
        raise ValueError(f"weight_second must be in [0, 1]; got {weight_second}")
    wa, wb = math.sqrt(1.0 - weight_second), math.sqrt(weight_second)

    def embed(texts: list[str]) -> np.ndarray:
        return np.concatenate([wa * _unit(first(texts)), wb * _unit(second(texts))], axis=1)

    return embed


def sentence_embedder(
    model_id: str, device: str = "cpu", batch_size: int = 64, progress: bool = False
) -> Embed:
    """`SentenceTransformer(model_id)` (hub id or local directory, no remote code) as an Embed."""
    from clipcbm.pipeline.hub import pretrained_kwargs

    # offline: decided before sentence-transformers (and transformers) is even imported
    kw = pretrained_kwargs(model_id, flag="--sim-model /path/to/model")
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(model_id, device=device, trust_remote_code=False, **kw)
    except (OSError, ValueError) as e:
        raise SimilarityModelError(
            f"could not load sentence-transformers model {model_id!r}: {e}. Give a hub id "
            "(network needed the first time) or a local model directory with --sim-model."
        ) from e
    log.info("similarity model %s on %s", model_id, device)

    def embed(texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, model.get_sentence_embedding_dimension() or 1), np.float32)
        return model.encode(
            texts,
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=progress and is_terminal(),  # its bar: '\r' frames in a log
        )

    return embed


def clip_text_embedder(model_id: str, device: str = "cpu", batch_size: int = 256) -> Embed:
    """Projected, unit-norm CLIP text embeddings from `pipeline.encoder.ClipEncoder`."""
    from clipcbm.pipeline.encoder import ClipEncoder

    encoder = ClipEncoder.load(model_id, device=device, dtype="fp32")

    def embed(texts: list[str]) -> np.ndarray:
        return encoder.encode_text(list(texts), batch_size=batch_size).numpy()

    return embed


def _build_sentence(
    sim_model: str, clip_model: str, device: str, batch_size: int, progress: bool
) -> Embed:
    return sentence_embedder(sim_model, device, batch_size, progress)


def _build_blend(
    sim_model: str, clip_model: str, device: str, batch_size: int, progress: bool
) -> Embed:
    return blend(
        sentence_embedder(sim_model, device, batch_size, progress),
        clip_text_embedder(clip_model, device, batch_size),
    )


# --similarity choice -> builder(sim_model, clip_model, device, batch_size, progress) -> Embed
SIMILARITIES: dict[str, Callable[..., Embed]] = {
    "sentence": _build_sentence,
    "blend": _build_blend,
}
