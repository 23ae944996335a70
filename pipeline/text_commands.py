"""Stage-one `embed-text`: embed a vocabulary once, for naming SAE latents; registered in cli.py.

    python cli.py embed-text --model M --texts words.txt --out vocab.zarr

The texts (a .txt, one per line, or a concept CSV: the same rules as `embed --concepts`) are
embedded by the CLIP text tower exactly as `embed` embeds concepts (`ClipEncoder.encode_text`,
unit rows, fp32), optionally through a template, and stored with the model identity `embed`
records in a cache (`cache.vocab`), so `model_fingerprint` of the vocabulary equals that of an
image cache of the same model and stage two can refuse a vocabulary of another model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import typer

from clipcbm.core.cli import config_command
from clipcbm.core.config import option, validated
from clipcbm.core.device import DEVICE_HELP, check_device
from clipcbm.pipeline.config import DEFAULT_CLIP_MODEL, DTYPE_TORCH_NAMES
from clipcbm.pipeline.errors import PipelineConfigError

log = logging.getLogger(__name__)
app = typer.Typer()


@validated(PipelineConfigError)
@dataclass(frozen=True)
class EmbedTextConfig:
    texts: Path = option(help="Texts: .txt (one per line) or a concept CSV ('concept' column).")
    out: Path = option(help="Vocabulary store to write (a zarr directory).")
    model: str = option(DEFAULT_CLIP_MODEL, "Hugging Face CLIP id or local directory: the "
                        "model of the image cache it will be used with.")  # fmt: skip
    revision: str | None = option(None, "Hub branch, tag or commit.")
    template: str = option("{}", "Prompt each text goes through ({} = the text); the cache's "
                           "concepts are embedded bare.")  # fmt: skip
    device: str = option("auto", DEVICE_HELP)
    dtype: str = option("auto", "Compute dtype; auto = fp16 on GPU, fp32 on CPU.",
                        choices=("auto", *DTYPE_TORCH_NAMES))  # fmt: skip
    batch_size: int = option(256, "Texts per forward pass.")
    overwrite: bool = option(False, "Replace an existing vocabulary at --out.")

    def __post_init__(self):
        object.__setattr__(self, "texts", Path(self.texts))
        object.__setattr__(self, "out", Path(self.out))
        check_device(self.device)
        if self.template.count("{}") != 1:
            raise ValueError(f"template must contain '{{}}' exactly once, got {self.template!r}")
        if isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")


@dataclass(frozen=True)
class EmbedTextResult:
    path: Path
    n: int
    embed_dim: int
    model_fingerprint: str
    seconds: float


def model_identity(model: str, revision: str | None) -> dict:
    """The model record of a cache, computed by the same code as `embed` (`_model_info`)."""
    from clipcbm.pipeline.embed import _model_info

    info, _ = _model_info(SimpleNamespace(model=model, revision=revision, jpeg_draft=False))
    return info


def run(cfg: EmbedTextConfig) -> EmbedTextResult:
    from clipcbm.cache.vocab import write_vocab
    from clipcbm.pipeline.concepts.io import read_concept_file
    from clipcbm.pipeline.encoder import ClipEncoder

    t0 = time.perf_counter()
    texts = read_concept_file(cfg.texts).concepts
    model = model_identity(cfg.model, cfg.revision)
    enc = ClipEncoder.load(cfg.model, device=cfg.device, dtype=cfg.dtype, revision=cfg.revision)
    emb = enc.encode_text([cfg.template.format(t) for t in texts], batch_size=cfg.batch_size)
    path = write_vocab(cfg.out, texts, emb.numpy(), model, template=cfg.template,
                       overwrite=cfg.overwrite)  # fmt: skip
    from clipcbm.cache.vocab import open_vocab

    vocab = open_vocab(path)
    log.info("embedded %d texts with %s into %s", len(texts), cfg.model, path)
    return EmbedTextResult(path, len(texts), vocab.embed_dim, vocab.model_fingerprint,
                           time.perf_counter() - t0)  # fmt: skip


def _render(cfg, r: EmbedTextResult) -> str:
    return (f"wrote {r.path}: {r.n} texts, E={r.embed_dim}, model fingerprint "
            f"{r.model_fingerprint[:12]} ({r.seconds:.1f} s)")  # fmt: skip


config_command(app, "embed-text", EmbedTextConfig, lazy=lambda: (run, _render),
               help="Stage one: embed a vocabulary (one text per line) with a CLIP text tower, "
               "for naming SAE latents (fit-sae / sae-inspect --vocab).")  # fmt: skip
