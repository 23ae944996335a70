"""Multi-Modal Information Bottleneck (M2IB; Wang, Rudner & Wilson, NeurIPS 2023), frozen CLIP.

One encoder layer ℓ of one tower gets a per-token, per-channel mask λ = sigmoid(α) (α₀ = 5):

    z = λ·h + (1 − λ)·ε,   ε ~ N(0, I)                    (seed 004 §3.3, eq. of Z_m)
    KL(z ‖ N(0, I)) = ½ (μ² + σ² − 1 − log σ²),  μ = λ·h, σ = 1 − λ  (per element)

and α is fitted per pair to maximise cos(embedding with the bottleneck, other modality's
embedding) − β · mean KL (seed 004 §3.4, final objective). The attribution of a token is its
KL summed over channels (nats). Choices the published code (YingWANGG/M2IB) leaves implicit,
made explicit here:

- noise "raw": h in the layer's own units, as the published code does; "stats": h is first
  standardised per channel with the pair's own token statistics, as the original IBA does
  (Schulz et al. 2020), and z is mapped back (z·std + mean).
- the loss is β·mean over (valid tokens × channels) of the KL − mean over noise samples of the
  cosine, per pair; pairs in a batch are independent (their losses are summed, Adam is
  per-element). Padding tokens (text) are left out of the mean.
- the map is the KL of the last optimisation step's forward pass (as published).
- CLIP is frozen: every weight has requires_grad=False; only α gets a gradient. The other
  modality's embedding is computed once per pair, not once per step.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from clipcbm.pipeline.attribution.config import M2IBSettings

_STD_FLOOR = 1e-5  # dead channels ("stats" noise) must not divide by zero


def layer_index(fraction: float, depth: int) -> int:
    """0-based index of the layer whose output is bottlenecked: round(fraction · depth).

    The published code hooks `layers[9]` of ViT-B/32 (the 10th of 12 layers, its output is
    hidden_states[10]); round(0.75 · 12) = 9 keeps that, and scales to 18 of 24 for ViT-L/14.
    Capped at depth − 2: after the last layer only CLS (EOS) reaches the embedding, so a mask
    there could not tell the other tokens apart.
    """
    return min(max(0, depth - 2), max(0, round(fraction * depth)))


def kl_standard_normal(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mu, var) ‖ N(0, 1)) in nats (same shapes)."""
    return 0.5 * (mu.square() + var - 1.0 - torch.log(var))


def channel_stats(h: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair, per-channel mean and std over valid tokens: h (B, T, D), valid (B, T) bool."""
    w = valid.unsqueeze(-1).to(h.dtype)
    n = w.sum(1, keepdim=True).clamp_min(1.0)
    mean = (h * w).sum(1, keepdim=True) / n
    var = ((h - mean).square() * w).sum(1, keepdim=True) / n
    return mean, var.sqrt().clamp_min(_STD_FLOOR)  # (B, 1, D) each


def bottleneck(
    h: torch.Tensor,
    lam: torch.Tensor,
    eps: torch.Tensor,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """z and the elementwise KL for features h (B, T, D), mask λ (B, T, D), noise eps (B, S, T, D).

    With mean/std (B, 1, D) ("stats" noise) h is standardised first and z mapped back.
    Returns z (B, S, T, D) and KL (B, T, D).
    """
    x = h if mean is None else (h - mean) / std
    mu, sd = lam * x, 1.0 - lam
    kl = kl_standard_normal(mu, sd.square())
    z = mu.unsqueeze(1) + sd.unsqueeze(1) * eps
    if mean is not None:
        z = z * std.unsqueeze(1) + mean.unsqueeze(1)
    return z, kl


def _noise(shape, generator, like: torch.Tensor) -> torch.Tensor:
    if isinstance(generator, list | tuple):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for {shape[0]} pairs")
        one = (1, *shape[1:])
        return torch.cat([
            torch.randn(one, generator=g, device=like.device, dtype=like.dtype)
            for g in generator
        ])  # fmt: skip
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def pair_generators(seed: int, first: int, n: int, tower: int, device) -> list[torch.Generator]:
    """One generator per pair, seeded by (run seed, pair index, tower 0 = image / 1 = text)."""
    return [
        torch.Generator(device).manual_seed(seed * 1_000_003 + 2 * (first + i) + tower)
        for i in range(n)
    ]


class LayerBottleneck:
    """A forward hook on one encoder layer that replaces its output h by z (while active).

    `alpha` (B, T, D) fp32 is the only tensor with a gradient; the layer sees B·S rows (each
    pair repeated S times, pair-major) and the hook draws the noise from `generator`: one
    generator for the batch, or one per pair (then a pair's map does not depend on the pairs
    that share its batch; see `pair_generators`).
    """

    def __init__(self, layer: torch.nn.Module, samples: int, noise: str, generator):
        self.layer, self.samples, self.noise, self.generator = layer, samples, noise, generator
        self.alpha: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None  # (B, T) bool
        self.kl: torch.Tensor | None = None  # (B, T, D) of the last forward
        self._stats = None

    def _hook(self, module, args, out):
        h_all = out[0] if isinstance(out, tuple) else out
        bs, t, d = h_all.shape
        b = bs // self.samples
        h = h_all.view(b, self.samples, t, d)[:, 0].float()  # the S copies are identical
        if self.valid is None:
            self.valid = torch.ones(b, t, dtype=torch.bool, device=h.device)
        if self._stats is None and self.noise == "stats":
            self._stats = channel_stats(h, self.valid)
        mean, std = self._stats if self._stats is not None else (None, None)
        eps = _noise((b, self.samples, t, d), self.generator, h)
        z, self.kl = bottleneck(h, torch.sigmoid(self.alpha), eps, mean, std)
        z = z.reshape(bs, t, d).to(h_all.dtype)
        return (z, *out[1:]) if isinstance(out, tuple) else z

    @contextlib.contextmanager
    def attached(self):
        handle = self.layer.register_forward_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()

    def mean_kl(self) -> torch.Tensor:
        """(B,) mean KL over valid tokens and channels of the last forward."""
        w = self.valid.unsqueeze(-1).float()
        return (self.kl * w).sum((1, 2)) / (w.sum((1, 2)) * self.kl.shape[-1])


def fit(
    tower_layer: torch.nn.Module,
    embed,
    target: torch.Tensor,
    settings: M2IBSettings,
    *,
    n_tokens: int,
    dim: int,
    valid: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    loss_scale: float = 1.0,
) -> torch.Tensor:
    """Fit α for B pairs; returns the per-token KL summed over channels (B, T) fp32, nats.

    embed(): runs the tower on the B·S repeated inputs and returns (B·S, E) projected
    embeddings; target (B, E): the other modality's embedding (computed once, no grad).
    """
    b = target.shape[0]
    s = settings.samples
    hook = LayerBottleneck(tower_layer, s, settings.noise, generator)
    hook.valid = valid
    target = F.normalize(target.float(), dim=-1).repeat_interleave(s, 0)  # (B·S, E)
    hook.alpha = torch.full(
        (b, n_tokens, dim), settings.alpha0, device=target.device, requires_grad=True
    )
    opt = torch.optim.Adam([hook.alpha], lr=settings.lr)
    with hook.attached(), torch.enable_grad():
        for _ in range(settings.steps):
            opt.zero_grad(set_to_none=True)
            emb = F.normalize(embed().float(), dim=-1)
            cos = (emb * target).sum(-1).view(b, s).mean(1)  # (B,)
            loss = (settings.beta * hook.mean_kl() - cos).sum()
            (loss * loss_scale).backward()
            kl = hook.kl.detach()
            opt.step()
    w = hook.valid.unsqueeze(-1).float()
    return (kl * w).sum(-1)  # (B, T)


def encoder_layer(tower: torch.nn.Module, fraction: float) -> torch.nn.Module:
    """The encoder layer of a CLIP tower (vision_model / text_model) at `fraction` of depth."""
    layers = tower.encoder.layers
    return layers[layer_index(fraction, len(layers))]


def attribute_images(
    model, pixel_values: torch.Tensor, text_emb: torch.Tensor, settings: M2IBSettings, **kw
) -> torch.Tensor:
    """(B, 3, H, W) pixels, (B, E) text embeddings -> (B, 1 + gh·gw) KL per token (CLS first)."""
    from clipcbm.pipeline.encoder import projected

    vcfg = model.config.vision_config
    patch = int(vcfg.patch_size)
    h, w = pixel_values.shape[-2:]
    x = pixel_values.repeat_interleave(settings.samples, 0)
    interp = (h, w) != (vcfg.image_size, vcfg.image_size)

    def embed():
        return projected(model.get_image_features(pixel_values=x, interpolate_pos_encoding=interp))

    layer = encoder_layer(model.vision_model, settings.layer_fraction)
    n = 1 + (h // patch) * (w // patch)
    return fit(layer, embed, text_emb, settings, n_tokens=n, dim=int(vcfg.hidden_size), **kw)


def attribute_texts(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_emb: torch.Tensor,
    settings: M2IBSettings,
    **kw,
) -> torch.Tensor:
    """(B, T) ids + mask, (B, E) image embeddings -> (B, T) KL per token (0 at padding)."""
    from clipcbm.pipeline.encoder import projected

    s = settings.samples
    ids, mask = input_ids.repeat_interleave(s, 0), attention_mask.repeat_interleave(s, 0)

    def embed():
        return projected(model.get_text_features(input_ids=ids, attention_mask=mask))

    layer = encoder_layer(model.text_model, settings.layer_fraction)
    dim = int(model.config.text_config.hidden_size)
    valid = attention_mask.bool()
    return fit(layer, embed, image_emb, settings, n_tokens=ids.shape[1], dim=dim, valid=valid, **kw)
