"""What each head kind reads: its input features, built per batch from cached tensors.

cbm       psi = alpha * I @ D.T      (B, |D|)   SPEC §1
probe     I                          (B, E)     true linear probe on image embeddings
zs-probe  alpha * I @ C.T            (B, |C|)   the published code's "linear probing"
zero-shot alpha * I @ C.T            (B, |C|)   read by an identity module: zero-shot CLIP
features  T(I)                       (B, F)     a fitted transform: SAE codes or an adapter's
                                                projection (`fit-head --features sae|adapter`)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from clipcbm.heads.psi import as_float_tensor, class_logits, concept_logits


@dataclass(frozen=True)
class TextTensors:
    """A cache's text side on one device: concept_emb (|D|, E), class_emb (|C|, E), fp32."""

    concept_emb: torch.Tensor
    class_emb: torch.Tensor
    logit_scale: float  # alpha = exp(CLIP logit_scale)
    transform: object | None = None  # heads.transforms.FeatureTransform of a "features" head

    @classmethod
    def from_cache(cls, cache, device) -> TextTensors:
        return cls(
            concept_emb=as_float_tensor(cache.concept_emb(), device),
            class_emb=as_float_tensor(cache.class_emb(), device),
            logit_scale=float(cache.logit_scale),
        )


FEATURES: dict[str, Callable[[torch.Tensor, TextTensors], torch.Tensor]] = {
    "cbm": lambda x, t: concept_logits(x, t.concept_emb, t.logit_scale),
    "probe": lambda x, t: x,
    "zs-probe": lambda x, t: class_logits(x, t.class_emb, t.logit_scale),
    "zero-shot": lambda x, t: class_logits(x, t.class_emb, t.logit_scale),  # nn.Identity head
    "features": lambda x, t: t.transform(x),
}
