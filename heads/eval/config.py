"""Configs of the evaluation commands `cms-eval`, `evaluate`, `explain` (validated, no I/O).

torch-free, so the CLI builds its options from these fields without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipcbm.core.config import option, validated
from clipcbm.core.device import DEVICE_HELP, check_device
from clipcbm.core.location import Location, as_location, location_stem
from clipcbm.heads.baselines.normalize import NORMALIZE_CHOICES
from clipcbm.heads.chunks import CHUNK_ROWS
from clipcbm.heads.errors import HeadsConfigError
from clipcbm.heads.options import ALLOW_OVERLAP_HELP, OVERWRITE_RESULTS_HELP, VERIFY_HELP

CACHE_HELP = "Embedding cache (zarr directory or .h5 file)."
CHUNK_HELP = "Image rows per matmul (bounds memory: chunk x (|D| + |C|) x 4 bytes)."
NORMALIZE_HELP = "CMS column normalisation; sum = none (row scaling keeps every cosine)."


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_common(cfg) -> None:
    object.__setattr__(cfg, "cache", as_location(cfg.cache))
    if cfg.out is not None:
        object.__setattr__(cfg, "out", Path(cfg.out))
    check_device(cfg.device)
    _positive_int("chunk_size", cfg.chunk_size)


@validated(HeadsConfigError)
@dataclass(frozen=True)
class CmsEvalConfig:
    cache: Location = option(help=CACHE_HELP)
    normalize: str = option("none", NORMALIZE_HELP, choices=NORMALIZE_CHOICES)
    splits: tuple[str, ...] = option(("test",), "Split to evaluate; repeat for more.",
                                     flag="--split")  # fmt: skip
    out: Path | None = option(None, "Output directory (default: "
                              "runs/cms/<cache-stem>-<normalize>).")  # fmt: skip
    chunk_size: int = option(CHUNK_ROWS, CHUNK_HELP)
    top_concepts: int = option(5, "Contributing concepts per image in the predictions CSV.")
    device: str = option("auto", DEVICE_HELP)
    progress: bool = option(True, "Show progress bars.")
    verify: bool = option(True, VERIFY_HELP)
    overwrite: bool = option(False, OVERWRITE_RESULTS_HELP)

    def __post_init__(self):
        _check_common(self)
        object.__setattr__(self, "splits", tuple(self.splits))
        if not self.splits or len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits must be non-empty and distinct, got {list(self.splits)}")
        _positive_int("top_concepts", self.top_concepts)

    def out_dir(self) -> Path:
        default = Path("runs/cms") / f"{location_stem(self.cache)}-{self.normalize}"
        return self.out if self.out is not None else default


@validated(HeadsConfigError)
@dataclass(frozen=True)
class EvaluateConfig:
    cache: Location = option(help="The cache the head was fitted on (fingerprint checked).")
    head: Path = option(help="Head directory written by fit-head.")
    split: str = option("test", "Split to evaluate (the official test split by default).")
    out: Path | None = option(None, "Output directory (default: runs/eval/<head-name>).")
    chunk_size: int = option(CHUNK_ROWS, CHUNK_HELP)
    device: str = option("auto", DEVICE_HELP)
    progress: bool = option(True, "Show progress bars.")
    verify: bool = option(True, VERIFY_HELP)
    allow_overlap: bool = option(False, ALLOW_OVERLAP_HELP)
    overwrite: bool = option(False, OVERWRITE_RESULTS_HELP)

    def __post_init__(self):
        _check_common(self)
        object.__setattr__(self, "head", Path(self.head))

    def out_dir(self) -> Path:
        return self.out if self.out is not None else Path("runs/eval") / self.head.name


@validated(HeadsConfigError)
@dataclass(frozen=True)
class ExplainConfig:
    cache: Location = option(help=CACHE_HELP)
    index: int = option(help="Row of the split (0-based, counting every row of the split).")
    head: Path | None = option(None, "cbm head directory (default: explain the CMS prediction).")
    split: str = option("test", "Split the row belongs to.")
    out: Path | None = option(None, "Bar chart .png, CSV beside it (default: runs/explain/...).")
    top_k: int | None = option(None, "Concepts in the table and the chart (default: 10, or "
                               "every concept when the cache has fewer).")  # fmt: skip
    normalize: str = option("none", "CMS only: " + NORMALIZE_HELP, choices=NORMALIZE_CHOICES)
    chunk_size: int = option(CHUNK_ROWS, "CMS only: " + CHUNK_HELP)
    device: str = option("auto", DEVICE_HELP)
    verify: bool = option(True, VERIFY_HELP)

    def __post_init__(self):
        _check_common(self)
        if self.head is not None:
            object.__setattr__(self, "head", Path(self.head))
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise ValueError(f"index must be an integer >= 0, got {self.index!r}")
        if self.top_k is not None:
            _positive_int("top_k", self.top_k)
        if self.out is not None and self.out.suffix.lower() != ".png":
            raise ValueError(f"out must be a .png path, got {str(self.out)!r}")

    def out_path(self) -> Path:
        if self.out is not None:
            return self.out
        who = self.head.name if self.head is not None else f"cms-{self.normalize}"
        return Path("runs/explain") / who / f"{self.split}-{self.index}.png"


@dataclass(frozen=True)
class Method:
    """One row of the table: fitted by `fit-head` overrides, or scored directly by `score`."""

    doc: str
    head: dict | None = None  # FitHeadConfig overrides (None: a training-free method)
    random_concepts: bool = False  # replace the concept embeddings by random unit vectors


RENAMED = {"label-free-cbm": "lf-cbm-scores"}  # old --method names still accepted

METHODS: dict[str, Method] = {
    "zero-shot": Method("zero-shot CLIP"),
    "cms": Method("Concept Matrix Search"),
    "description": Method("DescriptionCLS-style, mean cosine to the class's linked concepts"),
    "probe": Method("true linear probe", {"loss": "probe"}),
    "l1": Method("l1-CBM", {"loss": "l1"}),
    "contrastive": Method("Contrastive-CBM", {"loss": "contrastive"}),
    "sparse": Method("Sparse-CBM (default head)", {"loss": "sparse"}),
    "sparse-elastic-net": Method(
        "Sparse-CBM, elastic-net final layer at NEC=5",
        {"loss": "sparse", "final_layer": "elastic-net", "nec": 5.0},
    ),
    "l1-elastic-net": Method(
        "l1-CBM, elastic-net final layer at NEC=5",
        {"loss": "l1", "final_layer": "elastic-net", "nec": 5.0},
    ),
    "lf-cbm-scores": Method(
        "Label-free CBM's procedure (cos^3 projection, cut-off, elastic-net "
        "at NEC=5); on a CLIP backbone its target is linear in the image "
        "embedding, so the projection reaches W_c = D: an elastic-net layer "
        "on the concept scores"
    ),  # fmt: skip
    "sklearn-probe": Method(
        "reference: scikit-learn LogisticRegression probe (C on a fifth of "
        "train, refitted on all; needs scikit-learn)"
    ),  # fmt: skip
    "random-concepts": Method(
        "control: Sparse-CBM on random concept vectors", {"loss": "sparse"}, random_concepts=True
    ),
}


@validated(HeadsConfigError)
@dataclass(frozen=True)
class CompareConfig:
    cache: Location = option(help="Embedding cache (zarr directory or .h5 file).")
    out: Path | None = option(None, "Output directory (default: runs/compare/<cache-stem>).")
    methods: tuple[str, ...] = option(tuple(METHODS), "Methods to run (repeat the option).",
                                      choices=lambda: [*METHODS, *RENAMED],
                                      flag="--method")  # fmt: skip
    seed: int = option(0, "Seed of every fit (validation split, init, shuffling).")
    max_steps: int = option(2000, "Step budget of every fitted head (fit-head --max-steps; "
                            "Label-free CBM's projection: at most its own 1,000).")  # fmt: skip
    val_fraction: float = option(0.1, "Fraction of train held out (seeded) for early stopping "
                                 "and the final layers' choice of C, the same rows for every "
                                 "method (fit-head --val-fraction).")  # fmt: skip
    probe_max_iter: int | None = option(None, "L-BFGS iterations per C of every logistic "
                                        "regression (fit-head --probe-max-iter; the "
                                        "scikit-learn reference's max_iter); default: each "
                                        "one's own (300; scikit-learn 1,000).")  # fmt: skip
    path_max_iter: int | None = option(None, "FISTA iterations per lambda of every "
                                       "elastic-net path (fit-head --path-max-iter, Label-free "
                                       "CBM's final layer); default: 2,000.")  # fmt: skip
    device: str = option("auto", DEVICE_HELP)
    progress: bool = option(True, "Show progress bars.")
    overwrite: bool = option(False, "Replace a non-empty --out.")
    verify: bool = option(True, VERIFY_HELP)
    allow_overlap: bool = option(False, ALLOW_OVERLAP_HELP)
    sae: Path | None = option(None, "Add rows for this SAE (fit-sae): dense and elastic-net "
                              "final layers over its named latents.")  # fmt: skip
    adapter: Path | None = option(None, "Add a row for this adapter (fit-adapter): a linear "
                                  "probe on its projection.")  # fmt: skip

    def __post_init__(self):
        object.__setattr__(self, "cache", as_location(self.cache))
        for name in ("sae", "adapter"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "methods", tuple(RENAMED.get(m, m) for m in self.methods))
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {list(METHODS)}: {unknown}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        for name in ("probe_max_iter", "path_max_iter"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an integer >= 1 (or unset), got {v!r}")

    def out_dir(self) -> Path:
        stem = location_stem(self.cache)
        return self.out if self.out is not None else Path("runs/compare") / stem
