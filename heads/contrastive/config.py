"""FitAdapterConfig and KnnEvalConfig: one validated, frozen dataclass per command (no I/O)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from clipcbm.core.config import option, validated
from clipcbm.core.device import DEVICE_HELP, check_device
from clipcbm.core.location import Location, as_location, location_stem, location_str
from clipcbm.heads.errors import HeadsConfigError
from clipcbm.heads.options import KNN_ALLOW_OVERLAP_HELP, VERIFY_HELP

# the names of heads.contrastive.losses.LOSSES / AGGREGATES (kept torch-free for the CLI)
LOSS_NAMES = ("contrastive", "debiased-neg", "debiased-pos", "supcon")
AGGREGATES = ("pos-grouping", "loss-combination")
POSITIVES_FROM = ("views", "class")
ARCHS = ("linear", "mlp")
KNN_BACKENDS = ("auto", "torch", "faiss")  # heads.contrastive.knn.BACKENDS


def _int_at_least(cfg, name: str, low: int) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")


def _finite_positive(name: str, v) -> None:
    if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")


@validated(HeadsConfigError)
@dataclass(frozen=True)
class FitAdapterConfig:
    cache: Location = option(help="Cache (path or URL) with augmented views (`embed --views V "
                             "--augment simclr`).")  # fmt: skip
    out: Path | None = option(None, "Adapter directory (default: runs/adapters/<cache-stem>-"
                              "<loss>).")  # fmt: skip
    loss: str = option("debiased-pos", "contrastive (NT-Xent) | debiased-neg (Chuang et al.) | "
                       "debiased-pos (seed 002) | supcon (uses labels).",
                       choices=LOSS_NAMES)  # fmt: skip
    t: float = option(0.5, "Temperature t of h = exp(sim / t).")
    tau_plus: float = option(0.1, "Class prior tau+ of the debiased losses (tau- = 1 - tau+).")
    positives: int = option(1, "M: positives per anchor; each step uses M + 1 of the cache's "
                            "V views of every image.")  # fmt: skip
    aggregate: str = option("loss-combination", "M > 1: pos-grouping (mean positive h inside "
                            "the estimator) | loss-combination (two-view loss per pair of "
                            "views, averaged).", choices=AGGREGATES)  # fmt: skip
    positives_from: str = option("views", "views: positives are other views of the same image; "
                                 "class: views of another image of the same class (labels).",
                                 choices=POSITIVES_FROM)  # fmt: skip
    remove_false_negatives: bool = option(False, "Oracle: drop same-class samples from the "
                                          "negatives (seed's false-negative removal).")  # fmt: skip
    false_positive_rate: float = option(
        0.0,
        "Fraction of images whose positives are swapped for another class's views (seed's "
        "noise experiment).",
    )
    arch: str = option("mlp", "Projection: linear (E -> dim) or mlp (E -> hidden -> ReLU -> dim).",
                       choices=ARCHS)  # fmt: skip
    dim: int = option(128, "Output features F of the adapter (L2-normalised).")
    hidden: int = option(512, "Hidden width of the mlp projection.")
    batch_size: int = option(256, "Images per step (B; the loss sees B x (M + 1) views).")
    steps: int = option(1000, "Optimizer steps (Adam, cosine-decayed learning rate).")
    lr: float = option(1e-3, "Adam learning rate at the start.")
    weight_decay: float = option(1e-6, "Adam weight decay.")
    seed: int = option(0, "Seeds the init, the batches and the choice of views.")
    split: str = option("train", "Cache split to train on.")
    device: str = option("auto", DEVICE_HELP)
    progress: bool = option(True, "Show a progress bar.")
    verify: bool = option(True, VERIFY_HELP)
    overwrite: bool = option(False, "Replace an existing non-empty adapter directory.")

    def __post_init__(self):
        object.__setattr__(self, "cache", as_location(self.cache))
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))
        check_device(self.device)
        _finite_positive("t", self.t)
        _finite_positive("lr", self.lr)
        if not (isinstance(self.tau_plus, int | float) and 0.0 <= self.tau_plus < 1.0):
            raise ValueError(f"tau_plus must be in [0, 1), got {self.tau_plus!r}")
        if self.loss == "debiased-pos" and self.tau_plus == 0:
            raise ValueError(
                "tau_plus must be > 0 for debiased-pos (at tau+ = 0 the loss is identically 0)"
            )
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        for name, low in (("positives", 1), ("dim", 1), ("hidden", 1), ("batch_size", 2),
                          ("steps", 1)):  # fmt: skip
            _int_at_least(self, name, low)
        if not 0.0 <= self.false_positive_rate < 1.0:
            raise ValueError(
                f"false_positive_rate must be in [0, 1), got {self.false_positive_rate!r}"
            )
        if self.loss == "supcon" and self.remove_false_negatives:
            raise ValueError(
                "remove_false_negatives applies to the unsupervised losses; supcon already "
                "treats every same-class sample as a positive"
            )

    def out_dir(self) -> Path:
        return (
            self.out
            if self.out is not None
            else Path("runs/adapters") / (f"{location_stem(self.cache)}-{self.loss}")
        )

    def to_json(self) -> dict:
        d = asdict(self)
        d["cache"] = location_str(self.cache)
        d["out"] = str(self.out_dir())
        return d


@validated(HeadsConfigError)
@dataclass(frozen=True)
class KnnEvalConfig:
    cache: Location = option(help="Embedding cache: the bank is one split, the queries another.")
    adapter: Path | None = option(None, "Adapter directory from `fit-adapter` (default: none, "
                                  "kNN on the raw cached embeddings, the baseline).")  # fmt: skip
    k: int = option(200, "Neighbours per query (at most the bank size: a larger k is refused).")
    t: float = option(0.5, "Temperature of the weighted vote exp(sim / t).")
    bank_split: str = option("train", "Split whose image embeddings form the bank.")
    query_split: str = option("test", "Split classified against the bank.")
    backend: str = option("auto", "auto (faiss for banks >= 200k rows when installed) | torch | "
                          "faiss.", choices=KNN_BACKENDS)  # fmt: skip
    out: Path | None = option(None, "Also write the metrics as JSON to this file.")
    device: str = option("auto", DEVICE_HELP)
    verify: bool = option(True, VERIFY_HELP)
    allow_overlap: bool = option(False, KNN_ALLOW_OVERLAP_HELP)

    def __post_init__(self):
        object.__setattr__(self, "cache", as_location(self.cache))
        for name in ("adapter", "out"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        check_device(self.device)
        _int_at_least(self, "k", 1)
        _finite_positive("t", self.t)

    def to_json(self) -> dict:
        d = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}
