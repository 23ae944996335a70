"""EmbedConfig: the single source of truth for one `embed` run (validated, no I/O, torch-free).

Also the stage-one constants every command shares: the default CLIP model and the compute
dtype names (`pipeline.encoder.DTYPES` is built from them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipcbm.cache.backend import format_of
from clipcbm.core.config import option, validated
from clipcbm.core.device import DEVICE_HELP, check_device
from clipcbm.core.location import Location, as_location
from clipcbm.pipeline.augment import AUGMENTS
from clipcbm.pipeline.concept_sets import builtin_concepts
from clipcbm.pipeline.datasets import DATASETS
from clipcbm.pipeline.errors import PipelineConfigError

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
DTYPE_TORCH_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
FORMATS = ("zarr", "hdf5")


@validated(PipelineConfigError)
@dataclass(frozen=True)
class EmbedConfig:
    dataset: str = option(help="Dataset reader.", choices=lambda: sorted(DATASETS))
    root: Path = option(help="Dataset root (for csv: the path,label manifest).")
    out: Location = option(help="Cache path: a directory (zarr) or a .h5 file (hdf5); or a URL "
                           "(s3://, gs://, hf://) for a zarr cache written there shard by "
                           "shard.")  # fmt: skip
    concepts: Path | None = option(None, "Concept list: .txt (one per line) or the CSV of "
                                   "`concepts`; default: the built-in set of cifar10, "
                                   "cifar100, cub200, places365, imagenet (SparseCBM's "
                                   "ConceptNet sets).")  # fmt: skip
    model: str = option(DEFAULT_CLIP_MODEL, "Hugging Face CLIP id or local directory.")
    revision: str | None = option(None, "Hub branch, tag or commit.")
    splits: tuple[str, ...] | None = option(None, "Split(s) to embed (repeatable); default "
                                            "train and test. csv: required, one manifest "
                                            "split per run or the manifest's split column.",
                                            flag="--split")  # fmt: skip
    format: str | None = option(None, "Storage; default from --out's suffix (.h5 -> hdf5, "
                                "else zarr).", choices=FORMATS)  # fmt: skip
    device: str = option("auto", DEVICE_HELP)
    dtype: str = option("auto", "Compute dtype; auto = fp16 on GPU, fp32 on CPU.",
                        choices=("auto", *DTYPE_TORCH_NAMES))  # fmt: skip
    batch_size: int = option(256, "Images per forward pass.")
    workers: int = option(-1, "Decode processes; -1 = all cores but one (at most 32).")
    compile: bool = option(False, "torch.compile the vision tower.")
    templates: str = option("default", "Class prompt templates: default | bare | imagenet80 | "
                            "path to a file.")  # fmt: skip
    truncate: bool = option(False, "Cut concepts and class prompts longer than the model's "
                            "context (77 tokens for CLIP) instead of failing.")  # fmt: skip
    shard_rows: int = option(65536, "Rows per shard (unit of work, resume and rank ownership).")
    chunk_rows: int = option(4096, "Rows per chunk (unit a reader decodes).")
    jpeg_draft: bool = option(False, "Decode big JPEGs at reduced DCT scale (faster, not "
                              "bit-exact with the reference processor).")  # fmt: skip
    download: bool = option(False, "Download the dataset where supported (CIFAR).")
    classes_file: Path | None = option(None, "Class names, one per line (csv manifests).")
    overwrite: bool = option(False, "Replace an existing different cache at --out.")
    seed: int = option(0, "Seeds the augmented views (--views); otherwise only recorded.")
    views: int = option(0, "Augmented views per image, stored as /{split}/view_emb (N, V, E) "
                        "for contrastive adapters; 0 = none.")  # fmt: skip
    augment: str = option("simclr", "Augmentation of the views: simclr (random resized crop, "
                          "flip, colour jitter, grayscale) | none.",
                          choices=lambda: sorted(AUGMENTS))  # fmt: skip
    progress: bool = option(True, "Show progress bars.")
    extra: dict = option(default_factory=dict, compare=False, cli=False)  # notes kept in metadata

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", as_location(self.out))
        if self.format and self.format != format_of(self.out):
            hint = (
                "a path ending in .h5" if self.format == "hdf5" else "a directory path (e.g. .zarr)"
            )
            raise ValueError(f"--format {self.format} needs --out {hint}; got {self.out}")
        check_device(self.device)
        if self.concepts is None:
            object.__setattr__(self, "concepts", builtin_concepts(self.dataset))
        if self.splits is None:
            if self.dataset == "csv":
                raise ValueError(
                    "--dataset csv needs --split NAME: a manifest without a split column is one "
                    "split, and embedding it as both train and test would leak test rows into "
                    "training. Give --split train for a train manifest (and embed the test "
                    "manifest with --split test), or add a `split` column to the manifest."
                )
            object.__setattr__(self, "splits", ("train", "test"))
        object.__setattr__(self, "splits", tuple(self.splits))
        for name in ("batch_size", "shard_rows", "chunk_rows"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if isinstance(self.views, bool) or self.views < 0:
            raise ValueError(f"views must be an integer >= 0 (0 = no views), got {self.views!r}")
        if self.workers < -1:
            raise ValueError(
                f"workers must be -1 (all cores but one), 0 (decode in the main process) or a "
                f"positive count, got {self.workers}"
            )
        if self.chunk_rows > self.shard_rows:
            raise ValueError(
                f"chunk_rows ({self.chunk_rows}) must be <= shard_rows ({self.shard_rows}): a "
                "chunk is the part of a shard a reader decodes"
            )
        if self.shard_rows % self.chunk_rows:
            raise ValueError(
                f"shard_rows ({self.shard_rows}) must be a multiple of chunk_rows "
                f"({self.chunk_rows})"
            )
        if not self.splits or len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits must be distinct and non-empty, got {self.splits}")
