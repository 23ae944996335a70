"""Baseline attributions on the same pairs as M2IB: Captum's Saliency, IntegratedGradients and
Occlusion (PyPI `captum`), and attention rollout (Abnar & Zuidema 2020).

Every method explains the same target as M2IB, the cosine between one tower's embedding and the
other modality's (fixed) embedding. Image maps are (B, c, c) at the model's crop resolution,
text maps (B, T) per token. Gradient methods act on the normalised pixels and on the token
embeddings (the text tower's `token_embedding` output is swapped in by a forward hook), so
Captum sees two float inputs. Registry: name -> fn(model, batch, settings) -> (image, text).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipcbm.pipeline.encoder import projected


@dataclass
class Batch:
    pixels: torch.Tensor  # (B, 3, c, c) normalised
    ids: torch.Tensor  # (B, T) long
    mask: torch.Tensor  # (B, T) long, 1 = token
    image_emb: torch.Tensor  # (B, E) unit rows, no grad
    text_emb: torch.Tensor  # (B, E) unit rows, no grad


def image_cos(model, pixels, text_emb) -> torch.Tensor:
    """(B,) cos(image embedding of pixels, text_emb)."""
    emb = F.normalize(projected(model.get_image_features(pixel_values=pixels)).float(), dim=-1)
    return (emb * text_emb.float()).sum(-1)


@contextlib.contextmanager
def token_embeddings(model, emb: torch.Tensor):
    """Make the text tower use `emb` (B, T, D) as its token embeddings."""
    layer = model.text_model.embeddings.token_embedding
    handle = layer.register_forward_hook(lambda m, a, out: emb.to(out.dtype))
    try:
        yield
    finally:
        handle.remove()


def text_cos(model, ids, mask, image_emb, emb=None) -> torch.Tensor:
    """(B,) cos(text embedding, image_emb); emb replaces the token embeddings when given."""
    ctx = token_embeddings(model, emb) if emb is not None else contextlib.nullcontext()
    with ctx:
        out = projected(model.get_text_features(input_ids=ids, attention_mask=mask))
    return (F.normalize(out.float(), dim=-1) * image_emb.float()).sum(-1)


def _captum_pair(method, model, b: Batch, kw):
    """Run one Captum attribution class on both inputs -> raw (B,3,c,c), (B,T,D)."""
    img = method(lambda px, t: image_cos(model, px, t)).attribute(
        b.pixels.float().requires_grad_(), additional_forward_args=(b.text_emb,), **kw("image")
    )
    base = model.text_model.embeddings.token_embedding(b.ids).detach().float()
    txt = method(lambda e, ids, m, t: text_cos(model, ids, m, t, e)).attribute(
        base.requires_grad_(), additional_forward_args=(b.ids, b.mask, b.image_emb), **kw("text")
    )
    return img.detach(), txt.detach()


def saliency(model, b: Batch, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """|d cos / d input|: max over colour channels; summed over the embedding channels."""
    from captum.attr import Saliency

    img, txt = _captum_pair(Saliency, model, b, kw=lambda _: {"abs": True})
    return img.amax(1), txt.sum(-1)


def integrated_gradients(model, b: Batch, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """IG from a zero baseline (mean colour / zero token embedding), summed over channels."""
    from captum.attr import IntegratedGradients

    img, txt = _captum_pair(
        IntegratedGradients, model, b, kw=lambda _: {"n_steps": cfg.ig_steps, "baselines": 0.0}
    )
    return img.sum(1), txt.sum(-1)


def occlusion(model, b: Batch, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop in cos when one patch (patch-size window) or one token is set to zero."""
    from captum.attr import Occlusion

    p = int(model.config.vision_config.patch_size)
    d = int(model.config.text_config.hidden_size)

    def kw(tower):
        win = (3, p, p) if tower == "image" else (1, d)
        return {"sliding_window_shapes": win, "strides": win, "baselines": 0.0}

    img, txt = _captum_pair(Occlusion, model, b, kw=kw)
    return img.mean(1), txt.mean(-1)


def _rollout(attentions) -> torch.Tensor:
    """Product over layers of 0.5·(head-mean attention) + 0.5·I, rows renormalised: (B, T, T)."""
    out = None
    for a in attentions:
        a = a.float().mean(1)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(-1, keepdim=True)
        out = a if out is None else a @ out
    return out


def rollout(model, b: Batch, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention rollout: the CLS row over patches; the EOS row over tokens."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")  # sdpa returns no attention weights
    try:
        with torch.no_grad():
            va = model.vision_model(pixel_values=b.pixels, output_attentions=True).attentions
            ta = model.text_model(
                input_ids=b.ids, attention_mask=b.mask, output_attentions=True
            ).attentions
    finally:
        model.set_attn_implementation(before)
    p = int(model.config.vision_config.patch_size)
    gh, gw = b.pixels.shape[-2] // p, b.pixels.shape[-1] // p
    grid = _rollout(va)[:, 0, 1:].reshape(-1, 1, gh, gw)
    img = F.interpolate(grid, size=b.pixels.shape[-2:], mode="bilinear", align_corners=False)
    eos = b.mask.sum(1) - 1  # EOS is the last real token
    rows = _rollout(ta)[torch.arange(len(eos)), eos]  # (B, T)
    return img[:, 0], rows * b.mask


BASELINE_FNS = {
    "saliency": saliency,
    "integrated-gradients": integrated_gradients,
    "occlusion": occlusion,
    "rollout": rollout,
}
