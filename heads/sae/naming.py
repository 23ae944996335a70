"""Names of SAE latents: the nearest text embedding to each decoder direction (cosine).

Latent j is named after argmax_t cos(W_dec[j], t) over a set of text embeddings in the same
CLIP space: the cache's concepts and class names, or a user vocabulary that stage one embedded
once (`embed-text`, checked by model fingerprint). The runner-up and both cosines are kept, so
a weak or ambiguous name is visible (Discover-then-Name names latents the same way). Ties go to
the lower text index, as `argmax` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from clipcbm.heads.chunks import iter_chunks
from clipcbm.heads.eval.metrics import ranked

NAME_COLUMNS = ("latent", "name", "cosine", "runner_up", "runner_up_cosine", "source")


@dataclass(frozen=True)
class Candidates:
    """Texts a latent can be named after: texts (T,), emb (T, E) fp32, source (T,) per text."""

    texts: list[str]
    emb: np.ndarray
    source: list[str]

    def __post_init__(self):
        if len(self.texts) != len(self.emb) or len(self.texts) != len(self.source):
            raise ValueError(
                f"candidates need one embedding and source per text: {len(self.texts)} texts, "
                f"{len(self.emb)} embeddings, {len(self.source)} sources"
            )


def cache_candidates(cache) -> Candidates:
    """The cache's concepts, then its class names not already among them."""
    texts, emb, source, seen = [], [], [], set()
    for kind, names, vectors in (("concept", cache.concepts, cache.concept_emb()),
                                 ("class", cache.classes, cache.class_emb())):  # fmt: skip
        for name, v in zip(names, vectors, strict=True):
            if name not in seen:
                seen.add(name)
                texts.append(name)
                emb.append(v)
                source.append(kind)
    e = int(cache.embed_dim)
    return Candidates(texts, np.asarray(emb, np.float32).reshape(-1, e), source)


def vocab_candidates(vocab) -> Candidates:
    return Candidates(list(vocab.texts), np.asarray(vocab.emb, np.float32),
                      ["vocab"] * len(vocab.texts))  # fmt: skip


def cosines(w_dec: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """(F, E), (T, E) -> (F, T) cos(W_dec[j], t) in fp32."""
    w = w_dec.float() / w_dec.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    t = text_emb.float() / text_emb.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return w @ t.T


def name_latents(w_dec: torch.Tensor, cand: Candidates, chunk_rows: int = 4096) -> pd.DataFrame:
    """One row per latent: latent, name, cosine, runner_up, runner_up_cosine, source."""
    if not cand.texts:
        raise ValueError("no candidate texts to name latents with")
    t = torch.from_numpy(cand.emb).to(w_dec.device)
    best, second, c1, c2 = [], [], [], []
    for sl in iter_chunks(len(w_dec), chunk_rows):
        cos = cosines(w_dec[sl], t)
        top = ranked(cos, 2)  # (chunk, min(2, T)), ties -> lower text index
        best.append(top[:, 0].cpu())
        c1.append(cos.gather(1, top[:, :1])[:, 0].cpu())
        if top.shape[1] > 1:
            second.append(top[:, 1].cpu())
            c2.append(cos.gather(1, top[:, 1:2])[:, 0].cpu())
    best = torch.cat(best).numpy()
    frame = {
        "latent": np.arange(len(w_dec)),
        "name": [cand.texts[i] for i in best],
        "cosine": torch.cat(c1).numpy().astype(np.float64),
        "runner_up": [cand.texts[i] for i in torch.cat(second).numpy()] if second else "",
        "runner_up_cosine": torch.cat(c2).numpy().astype(np.float64) if c2 else np.nan,
        "source": [cand.source[i] for i in best],
    }
    return pd.DataFrame(frame, columns=list(NAME_COLUMNS))


def display_names(names: pd.DataFrame | None, n_latents: int, alive=None) -> list[str]:
    """One label per latent for explanations: its name ("cat"), "latent 17" when it has none
    (no naming table, or dead: it never fired on held-out rows), and "cat (latent 17)" when
    several live latents share a name."""
    if names is None:
        return [f"latent {j}" for j in range(n_latents)]
    alive = np.ones(n_latents, bool) if alive is None else np.asarray(alive, bool)
    base = [str(n) if a else "" for n, a in zip(names["name"], alive, strict=True)]
    counts = pd.Series([b for b in base if b]).value_counts()
    out = []
    for j, b in enumerate(base):
        if not b:
            out.append(f"latent {j}")
        else:
            out.append(f"{b} (latent {j})" if counts[b] > 1 else b)
    return out
