"""FitHeadConfig: the single source of truth for one `fit-head` run (validated, no I/O)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from clipcbm.core.config import option, validated
from clipcbm.core.device import DEVICE_HELP, check_device
from clipcbm.core.location import Location, as_location, location_stem, location_str
from clipcbm.heads.chunks import SOLVER_GIB
from clipcbm.heads.errors import HeadsConfigError
from clipcbm.heads.options import ALLOW_OVERLAP_HELP, VERIFY_HELP

LOSSES = ("l1", "contrastive", "sparse", "probe", "zs-probe")
CBM_LOSSES = ("l1", "contrastive", "sparse")
COUPLINGS = ("sequential", "joint")
OPTIMIZERS = ("adam", "adamw")
VARIANTS = ("paper", "reference")
CBL_INITS = ("identity", "random")
FC_INITS = ("zero-shot", "prior", "zero")  # heads.cbm.init.FC_INITS
POSITIVES = ("class", "diagonal")
AGGREGATES = ("mean-in-log", "mean-of-losses")  # heads.cbm.positives
FINAL_LAYERS = ("dense", "elastic-net")
FEATURE_SOURCES = ("clip", "sae", "adapter")  # clip: the cache's embeddings; else a transform
AUTO_TOPK_FRACTION = 0.1  # sparse default: 10% of |D| active (>= 90% inactive)
AUTO_TOPK_MAX = 64
DEFAULT_C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # probe: scikit-learn's C
ANCHOR_C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
FINAL_FITS = ("anchored", "sgd")


def _positive(name: str, value, *, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@validated(HeadsConfigError)
@dataclass(frozen=True)
class FitHeadConfig:
    cache: Location = option(help="Embedding cache written by `embed`: a zarr directory, a .h5 "
                             "file, or a URL (s3://, gs://, https://, hf://).")  # fmt: skip
    out: Path | None = option(None, "Head directory (default: runs/heads/<cache-stem>-<loss>).")
    loss: str = option("sparse", "CBL loss (l1 | contrastive | sparse), or a baseline.",
                       choices=LOSSES)  # fmt: skip
    coupling: str = option("joint", "sequential: FC trains on stopgrad(a); joint: CE also "
                           "reaches W_CBL.", choices=COUPLINGS)  # fmt: skip
    lr_cbl: float = option(1e-3, "Learning rate of the optimizer that owns W_CBL (and alpha_c).")
    lr_fc: float = option(1e-3, "Learning rate of the optimizer that owns W_F and its bias.")
    cbl_init: str = option("identity", "identity: a = psi at step 0; random: nn.Linear's default.",
                           choices=CBL_INITS)  # fmt: skip
    topk: int | None = option(None, "Keep each image's k largest CBL activations, zero the "
                              "rest; 0 = off (SPEC §2); default: 10% of |D| (at most 64) for "
                              "sparse, off for l1/contrastive.")  # fmt: skip
    fc_init: str = option("zero-shot", "Final-layer start: zero-shot (step 0 = the zero-shot "
                          "classifier), prior (class-concept cosines), zero.",
                          choices=FC_INITS)  # fmt: skip
    positives: str = option("class", "CBL positives (contrastive, sparse): class = the concepts "
                            "linked to / nearest the image's class; diagonal = image k <-> "
                            "concept k (thesis).", choices=POSITIVES)  # fmt: skip
    positives_per_class: int = option(
        0,
        "--positives class: m nearest concepts per class; 0 = the cache's concept->class "
        "links, else |D|/|C| (<= 32).",
    )
    aggregate: str = option("mean-in-log", "Several positives: -log mean of their probabilities "
                            "(mean-in-log) or mean of per-positive losses.",
                            choices=AGGREGATES)  # fmt: skip
    final_layer: str = option("dense", "dense: W_F trained with the CBL; elastic-net: W_F refitted "
                              "along an elastic-net path, stopped at --nec.",
                              choices=FINAL_LAYERS)  # fmt: skip
    nec: float = option(5.0, "--final-layer elastic-net: target non-zero weights per class.")
    optimizer: str = option("adam", "Optimizer of both layers.", choices=OPTIMIZERS)
    weight_decay: float = option(0.0, "Weight decay of both optimizers (decoupled for adamw).")
    lam: float = option(1e-3, "l1 strength lambda: loss term (lambda / |D|) * ||W_CBL||_1.",
                        flag="--lambda")  # fmt: skip
    max_steps: int = option(2000, "Budget in optimizer steps (warm-up, then cosine decay).")
    epochs: int | None = option(None, "Cap on passes over the fit rows (default: none).")
    warmup: float = option(0.05, "Fraction of the budget spent warming the learning rate up.")
    batch_size: int = option(256, "Images per optimizer step (at most a tenth of the fit rows).")
    val_fraction: float = option(0.1, "Fraction of train held out (seeded) for early stopping.")
    seed: int = option(0, "Seeds init, shuffling, the validation split and Gumbel noise.")
    patience: int = option(10, "Validation checks (40 per run) without a gain before stopping; "
                           "never in the first quarter of the budget.")  # fmt: skip
    tau_max: float = option(1.0, "Gumbel temperature at the first step (sparse, paper variant).")
    tau_min: float = option(0.1, "Gumbel temperature at the last step (exponential schedule).")
    hard: bool = option(False, "Straight-through one-hot Gumbel samples (sparse, paper variant).")
    variant: str = option("paper", "Sparse loss form: paper (eq. 9-10) | reference (published "
                          "code).", choices=VARIANTS)  # fmt: skip
    features: str = option("clip", "What the head reads: clip (the cache's image embeddings: "
                           "concept similarities for a CBM), sae (the named latent codes of "
                           "--sae DIR, Discover-then-Name: a final layer over them), adapter "
                           "(the projection of --adapter DIR: a linear probe over it).",
                           choices=FEATURE_SOURCES)  # fmt: skip
    sae: Path | None = option(None, "--features sae: an SAE directory written by fit-sae.")
    adapter: Path | None = option(None, "--features adapter: a directory written by fit-adapter.")
    device: str = option("auto", DEVICE_HELP)
    progress: bool = option(True, "Show progress bars.")
    train_split: str = option("train", "Cache split to train on (validation is carved from it).")
    test_split: str | None = option("test", "Cache split to report on; skipped when the cache "
                                    "lacks it.")  # fmt: skip
    c_grid: tuple[float, ...] = option(DEFAULT_C_GRID, "Probe inverse L2 strengths C tried "
                                       "(scikit-learn's C for unit-norm rows: L2 = mean "
                                       "||x||^2 / (C N)); repeat the option.")  # fmt: skip
    final_fit: str = option("anchored", "CBM final layer: anchored = after the CBL is trained, "
                            "W_F, b are refitted as a convex logistic regression pulled toward "
                            "their start (--fc-init; penalty L2 ||[W_F|b] - [W0|b0]||^2, C "
                            "chosen by cross-validation, then refitted on all of train); sgd "
                            "= W_F as SGD left it.", choices=FINAL_FITS)  # fmt: skip
    anchor_c_grid: tuple[float, ...] = option(ANCHOR_C_GRID, "--final-fit anchored: inverse "
                                              "strengths C of the pull toward the start "
                                              "(small C: stay at the start).")  # fmt: skip
    cv_folds: int = option(5, "Folds of the cross-validation that chooses C (probe, anchored "
                           "final layer) on up to 20,000 train rows; above, the validation "
                           "rows are one hold-out.")  # fmt: skip
    probe_max_iter: int = option(300, "L-BFGS iterations per C value (probe, zs-probe, the "
                                 "anchored final layer).")  # fmt: skip
    path_max_iter: int = option(2000, "--final-layer elastic-net: FISTA iterations per lambda "
                                "of the path (each stops earlier at its tolerance).")  # fmt: skip
    solver_gib: float = option(SOLVER_GIB, "Working memory (GiB) of one full-batch solve "
                               "(probe, anchored and elastic-net final layers): above it the "
                               "solve uses a seeded class-stratified subset of the train rows "
                               "that fits (recorded in the head); 0 = every row.")  # fmt: skip
    overwrite: bool = option(False, "Replace an existing non-empty head directory.")
    verify: bool = option(True, VERIFY_HELP)
    allow_overlap: bool = option(False, ALLOW_OVERLAP_HELP)

    def __post_init__(self):
        object.__setattr__(self, "cache", as_location(self.cache))
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))
        for name in ("c_grid", "anchor_c_grid"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        for name in ("sae", "adapter"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.features != "clip" and getattr(self, self.features) is None:
            raise ValueError(f"--features {self.features!r} needs --{self.features} DIR (the "
                             f"directory `fit-{self.features}` wrote)")  # fmt: skip
        for name in ("sae", "adapter"):
            if getattr(self, name) is not None and self.features != name:
                raise ValueError(f"--{name} is given but --features is {self.features!r}; "
                                 f"pass --features {name} to train on it")  # fmt: skip
        if self.features != "clip" and self.topk:
            raise ValueError("topk applies to a CBL; features sae/adapter heads have none")
        check_device(self.device)
        for name in ("lr_cbl", "lr_fc", "tau_max", "tau_min"):
            _positive(name, getattr(self, name))
        for name in ("weight_decay", "lam"):
            _positive(name, getattr(self, name), allow_zero=True)
        if self.epochs is not None and (isinstance(self.epochs, bool) or self.epochs < 1):
            raise ValueError(f"epochs must be an integer >= 1 (or unset), got {self.epochs!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {self.warmup!r}")
        if not math.isfinite(self.nec) or self.nec <= 0:
            raise ValueError(f"nec must be > 0 (non-zero weights per class), got {self.nec!r}")
        if self.positives_per_class < 0:
            raise ValueError(f"positives_per_class must be >= 0, got {self.positives_per_class}")
        if not math.isfinite(self.solver_gib) or self.solver_gib < 0:
            raise ValueError(f"solver_gib must be >= 0 (0 = no cap), got {self.solver_gib!r}")
        for name in ("max_steps", "batch_size", "patience", "probe_max_iter", "path_max_iter"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.topk is not None and (
            isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 0
        ):
            raise ValueError(f"topk must be an integer >= 0 (0 = off), got {self.topk!r}")
        if self.final_layer != "dense" and self.loss not in CBM_LOSSES and self.features == "clip":
            raise ValueError(
                f"final_layer {self.final_layer!r} applies to a concept-bottleneck head "
                f"({', '.join(CBM_LOSSES)}); loss {self.loss!r} has none"
            )
        if self.topk and self.loss not in CBM_LOSSES:
            raise ValueError(
                f"topk applies to the CBL of a concept-bottleneck head ({', '.join(CBM_LOSSES)}); "
                f"loss {self.loss!r} has no CBL"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.tau_min > self.tau_max:
            raise ValueError(
                f"tau_min ({self.tau_min}) must be <= tau_max ({self.tau_max}): tau is annealed "
                "from tau_max down to tau_min"
            )
        if self.hard and self.variant == "reference":
            raise ValueError(
                "--hard needs --variant paper: the reference form takes -log of the one-hot "
                "sample, which is inf"
            )
        for name in ("c_grid", "anchor_c_grid"):
            grid = getattr(self, name)
            if not grid or any(v <= 0 or not math.isfinite(v) for v in grid):
                raise ValueError(f"{name} must be non-empty values > 0, got {grid!r}")
            if len(set(grid)) != len(grid):
                raise ValueError(f"{name} has duplicate values: {grid!r}")
        folds = self.cv_folds
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ValueError(f"cv_folds must be an integer >= 2, got {self.cv_folds!r}")

    @property
    def kind(self) -> str:
        """Head kind written to config.json: cbm | probe | zs-probe | features."""
        if self.features != "clip":
            return "features"
        return "cbm" if self.loss in CBM_LOSSES else self.loss

    @property
    def transform_dir(self) -> Path | None:
        """The transform directory of a features head (--sae / --adapter), else None."""
        return getattr(self, self.features) if self.features != "clip" else None

    def out_dir(self) -> Path:
        """The head directory: `out`, or runs/heads/<cache-stem>-<loss> (outside the package)."""
        return (
            self.out
            if self.out is not None
            else Path("runs/heads") / (f"{location_stem(self.cache)}-{self._run_name()}")
        )

    def _run_name(self) -> str:
        if self.features != "clip":
            return f"{self.features}-{self.transform_dir.name}-{self.final_layer}"
        return self.loss

    def to_json(self) -> dict:
        """JSON-able hyper-parameters (paths as strings)."""
        d = asdict(self)
        d["cache"] = location_str(self.cache)
        d["out"] = str(self.out_dir())
        d["c_grid"], d["anchor_c_grid"] = list(self.c_grid), list(self.anchor_c_grid)
        for name in ("sae", "adapter"):
            d[name] = None if d[name] is None else str(d[name])
        return d


def resolve_topk(config: FitHeadConfig, n_concepts: int) -> int:
    """The TopK of the bottleneck: the given value, or the default of the loss (0 = off)."""
    if config.topk is not None:
        return config.topk
    if config.loss != "sparse":
        return 0
    k = max(1, round(AUTO_TOPK_FRACTION * n_concepts))
    return min(k, AUTO_TOPK_MAX, n_concepts - 1) if n_concepts > 1 else 0
