"""psi: the image -> concept CLIP logits that feed the concept bottleneck (SPEC §1).

Also the zero-shot image -> class logits (same matmul against class embeddings).

psi(x) = alpha * (<i, d_1>, ..., <i, d_|D|>) -- exactly CLIP's image->concept
`logits_per_image`, rebuilt from cached unit embeddings by one fp32 matmul per batch and never
stored per image (N x |D| is large and cheap to recompute).
"""

from __future__ import annotations

import numpy as np
import torch


def as_float_tensor(x, device=None) -> torch.Tensor:
    """numpy array or tensor -> fp32 tensor on `device` (no copy when already there)."""
    t = torch.from_numpy(np.asarray(x)) if not torch.is_tensor(x) else x
    return t.to(device=device if device is not None else t.device, dtype=torch.float32)


def concept_logits(image_emb, concept_emb, logit_scale: float) -> torch.Tensor:
    """psi = logit_scale * I @ D.T in fp32.

    image_emb: (N, E) unit rows (tensor or array; fp16 is upcast); concept_emb: (|D|, E) unit
    rows; logit_scale: alpha = exp(CLIP logit_scale), 100.0 for OpenAI CLIP.
    Returns (N, |D|) fp32 on image_emb's device.
    """
    img = as_float_tensor(image_emb)
    con = as_float_tensor(concept_emb, img.device)
    if img.ndim != 2 or con.ndim != 2:
        raise ValueError(
            f"concept_logits expects image_emb (N, E) and concept_emb (|D|, E); got shapes "
            f"{tuple(img.shape)} and {tuple(con.shape)}"
        )
    if img.shape[1] != con.shape[1]:
        raise ValueError(
            f"embedding width mismatch: image_emb has E={img.shape[1]}, concept_emb has "
            f"E={con.shape[1]}; both must come from the same CLIP model (same cache)"
        )
    return float(logit_scale) * (img @ con.T)


def class_logits(image_emb, class_emb, logit_scale: float) -> torch.Tensor:
    """Zero-shot CLIP logits alpha * I @ C.T in fp32: (N, E), (|C|, E) -> (N, |C|)."""
    return concept_logits(image_emb, class_emb, logit_scale)
