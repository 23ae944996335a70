"""Frozen CLIP towers (Hugging Face transformers): image, concept and class embeddings.

Any CLIP-family model id or local directory loads through `CLIPModel.from_pretrained` with SDPA
attention and never `trust_remote_code`. All returned embeddings are the projected embeddings,
L2-normalised in fp32 (SPEC §1). Class embeddings are the normalised mean over templates of the
normalised text embeddings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from core.device import resolve_device
from pipeline.config import DTYPE_TORCH_NAMES
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, t) for name, t in DTYPE_TORCH_NAMES.items()}


class EncoderError(PipelineError, RuntimeError):
    """The model could not be loaded or is not a CLIP-family model."""


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' -> fp16 on GPU, fp32 on CPU (half-precision matmuls are slow on CPUs)."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def projected(out) -> torch.Tensor:
    """transformers 4.x returns the projected tensor; 5.x an output object whose
    `.pooler_output` is the projected embedding."""
    if isinstance(out, torch.Tensor):
        return out
    emb = getattr(out, "pooler_output", None)
    if emb is None:
        raise EncoderError(f"unexpected feature output {type(out).__name__}: no pooler_output")
    return emb


def unit_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, E) -> (unit rows in fp32, fp32 norms)."""
    x = x.float()
    norms = x.norm(dim=-1)
    return x / norms.clamp_min(1e-12).unsqueeze(-1), norms


@dataclass
class ClipEncoder:
    model: torch.nn.Module
    tokenizer: object
    model_id: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def load(
        cls,
        model_id: str,
        device: str = "auto",
        dtype: str = "auto",
        revision: str | None = None,
        compile: bool = False,
    ) -> ClipEncoder:  # noqa: A002
        from transformers import AutoTokenizer, CLIPModel

        from .hub import pretrained_kwargs

        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        kw = pretrained_kwargs(model_id, revision)  # offline: fail fast, or load from cache
        try:
            model = CLIPModel.from_pretrained(
                model_id, revision=revision, dtype=dt, attn_implementation="sdpa", **kw
            )
            tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision, **kw)
        except (OSError, ValueError) as e:
            raise EncoderError(
                f"could not load CLIP model {model_id!r}: {e}. Give a Hugging Face CLIP model id "
                "(needs network access the first time) or a local directory written by "
                "save_pretrained."
            ) from e
        model = model.to(dev).eval().requires_grad_(False)
        if compile:
            model.vision_model = torch.compile(model.vision_model)
        return cls(model, tokenizer, model_id, revision, dev, dt)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp().item())

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def commit(self) -> str | None:
        return getattr(self.model.config, "_commit_hash", None)

    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) normalised pixels -> (unit rows (B, E) fp32, norms (B,) fp32)."""
        x = pixel_values.to(self.device, self.dtype, non_blocking=True)
        return unit_rows(projected(self.model.get_image_features(pixel_values=x)))

    @torch.inference_mode()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """list of n strings -> (n, E) fp32 unit rows on CPU."""
        out = []
        max_len = int(self.model.config.text_config.max_position_embeddings)
        for i in range(0, len(texts), batch_size):
            tok = self.tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            ).to(self.device)
            feats = projected(self.model.get_text_features(**tok))
            out.append(unit_rows(feats)[0].cpu())
        if not out:
            return torch.zeros(0, self.embed_dim)
        return torch.cat(out)

    def encode_class_names(self, classes: list[str], templates: list[str]) -> torch.Tensor:
        """(|C|, E): normalised mean over templates of normalised text embeddings (SPEC §1)."""
        texts = [t.format(c) for c in classes for t in templates]
        emb = self.encode_text(texts).view(len(classes), len(templates), -1).mean(dim=1)
        return unit_rows(emb)[0]
