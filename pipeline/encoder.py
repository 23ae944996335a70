"""Frozen CLIP towers (Hugging Face transformers): image, concept and class embeddings.

Any CLIP-family model id or local directory loads through `CLIPModel.from_pretrained` with SDPA
attention and never `trust_remote_code`. All returned embeddings are the projected embeddings,
L2-normalised in fp32 (SPEC §1). Class embeddings are the normalised mean over templates of the
normalised text embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from clipcbm.core.device import resolve_device
from clipcbm.pipeline.config import DTYPE_TORCH_NAMES
from clipcbm.pipeline.errors import PipelineError

log = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, t) for name, t in DTYPE_TORCH_NAMES.items()}


class EncoderError(PipelineError, RuntimeError):
    """The model could not be loaded or is not a CLIP-family model."""


class TextTooLongError(PipelineError, ValueError):
    """A text with more tokens than the text tower's context, and no --truncate."""


def check_context(
    texts: Sequence[str],
    counts: Sequence[int],
    max_len: int,
    *,
    truncate: bool,
    what: Callable[[int], str] = lambda i: "text",
) -> list[int]:
    """The one rule for texts longer than the model's context (`embed`, `attribute`).

    counts[i]: tokens of texts[i] with BOS and EOS, uncut. Returns the indices of the texts over
    `max_len` (the caller cuts them: the first max_len - 1 tokens and EOS); unless `truncate`,
    the first of them is a TextTooLongError naming it (`what(i)`), its token count and the limit.
    """
    long = [i for i, n in enumerate(counts) if n > max_len]
    if long and not truncate:
        i = long[0]
        shown = repr(texts[i][:60]) + ("..." if len(texts[i]) > 60 else "")
        n = len(long) - 1
        more = f"; {n} more text{'s are' if n > 1 else ' is'} too long" if n else ""
        raise TextTooLongError(
            f"{what(i)} {shown} has {counts[i]} tokens, more than the model's context of "
            f"{max_len}; shorten it or pass --truncate (keeps the first {max_len - 1} tokens and "
            f"EOS){more}"
        )
    return long


def class_prompts(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template filled with every class name, class-major (what the class embeddings
    average)."""
    return [t.format(c) for c in classes for t in templates]


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
    def context_length(self) -> int:
        """Most tokens (BOS and EOS included) the text tower reads."""
        return int(self.model.config.text_config.max_position_embeddings)

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
        max_len = self.context_length
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

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text with BOS and EOS, uncut."""
        return token_counts(self.tokenizer, texts)

    def check_texts(
        self, concepts: list[str], classes: list[str], templates: list[str], truncate: bool
    ) -> int:
        """`check_texts` with this encoder's tokenizer and context."""
        return check_texts(self.tokenizer, self.context_length, concepts, classes, templates,
                           truncate)  # fmt: skip

    def encode_class_names(self, classes: list[str], templates: list[str]) -> torch.Tensor:
        """(|C|, E): normalised mean over templates of normalised text embeddings (SPEC §1)."""
        texts = class_prompts(classes, templates)
        emb = self.encode_text(texts).view(len(classes), len(templates), -1).mean(dim=1)
        return unit_rows(emb)[0]


def token_counts(tokenizer, texts: Sequence[str]) -> list[int]:
    """Tokens of each text with BOS and EOS, uncut."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), verbose=False)["input_ids"]]


def load_tokenizer(model_id: str, revision: str | None = None):
    """(tokenizer, context length) of a CLIP model without its weights: `embed` checks its texts
    with them before it creates the cache or embeds any image."""
    from transformers import AutoTokenizer, CLIPConfig

    from .hub import pretrained_kwargs

    kw = pretrained_kwargs(model_id, revision)
    try:
        config = CLIPConfig.from_pretrained(model_id, revision=revision, **kw)
        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision, **kw)
    except (OSError, ValueError) as e:
        raise EncoderError(f"could not load the tokenizer of {model_id!r}: {e}") from e
    return tokenizer, int(config.text_config.max_position_embeddings)


def check_texts(tokenizer, max_len: int, concepts: list[str], classes: list[str],
                templates: list[str], truncate: bool) -> int:  # fmt: skip
    """Refuse (TextTooLongError) a concept or class prompt longer than the context, unless
    `truncate`: then warn how many `encode_text` cuts. Tokenizes only. Returns the number cut."""
    cut = len(check_context(concepts, token_counts(tokenizer, concepts), max_len,
                            truncate=truncate, what=lambda i: f"concept {i}"))  # fmt: skip
    prompts = class_prompts(classes, templates)
    n_t = max(1, len(templates))

    def prompt(k: int) -> str:
        return f"class prompt {k} (class {classes[k // n_t]!r}, template {k % n_t})"

    cut += len(check_context(prompts, token_counts(tokenizer, prompts), max_len,
                             truncate=truncate, what=prompt))  # fmt: skip
    if cut:
        log.warning(
            "--truncate: %d text(s) (concepts, class prompts) are longer than the model's "
            "context of %d tokens and were cut to it (the first %d tokens and EOS)",
            cut, max_len, max_len - 1,
        )  # fmt: skip
    return cut
