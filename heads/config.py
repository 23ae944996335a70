"""FitHeadConfig: the single source of truth for one `fit-head` run (validated, no I/O)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from heads.device import check_device

LOSSES = ("l1", "contrastive", "sparse", "probe", "zs-probe")
CBM_LOSSES = ("l1", "contrastive", "sparse")
COUPLINGS = ("sequential", "joint")
OPTIMIZERS = ("adam", "adamw")
VARIANTS = ("paper", "reference")
CBL_INITS = ("identity", "random")
DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _positive(name: str, value, *, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass(frozen=True)
class FitHeadConfig:
    cache: Path  # zarr directory or .h5 file written by `embed` (read via cache.open_cache)
    out: Path | None = None  # head directory; None -> runs/heads/<cache-stem>-<loss>
    loss: str = "sparse"  # l1 | contrastive | sparse (CBM heads) | probe | zs-probe (baselines)
    coupling: str = "joint"  # sequential: FC on stopgrad(a); joint: CE also reaches W_CBL
    lr_cbl: float = 1e-3  # learning rate of the optimizer that owns W_CBL (and alpha_c)
    lr_fc: float = 1e-3  # learning rate of the optimizer that owns W_F and its bias
    cbl_init: str = "identity"  # identity (a = psi at init) | random (nn.Linear default)
    topk: int = 0  # > 0: keep each image's topk largest CBL activations (opt-in, not SPEC §2)
    optimizer: str = "adam"  # adam | adamw, for both optimizers
    weight_decay: float = 0.0  # decoupled (adamw) or L2 (adam) weight decay, both optimizers
    lam: float = 1e-3  # l1 strength lambda: loss term (lambda / |D|) * ||W_CBL||_1
    epochs: int = 20  # passes over the training rows (minus validation)
    batch_size: int = 256  # images per optimizer step
    val_fraction: float = 0.1  # fraction of train held out (seeded) for early stopping
    seed: int = 0  # seeds init, shuffling, the validation split and Gumbel noise
    patience: int = 5  # epochs without a val top-1 improvement before stopping
    tau_max: float = 1.0  # Gumbel temperature at the first step (sparse, paper variant)
    tau_min: float = 0.1  # Gumbel temperature at the last step (exponential schedule)
    hard: bool = False  # straight-through one-hot Gumbel samples (sparse, paper variant)
    variant: str = "paper"  # sparse loss form: paper (eq. 9-10) | reference (published code)
    device: str = "auto"  # auto | cpu | cuda | cuda:N; auto is resolved at run time and recorded
    progress: bool = True  # tqdm progress bar per epoch
    train_split: str = "train"  # cache split to train on (validation is carved from it)
    test_split: str | None = "test"  # cache split to report on; skipped when the cache lacks it
    l2_grid: tuple[float, ...] = field(default=DEFAULT_L2_GRID)  # probe L2 strengths tried on val
    probe_max_iter: int = 100  # L-BFGS iterations per L2 value (probe, zs-probe)
    overwrite: bool = False  # replace an existing non-empty head directory

    def __post_init__(self):
        object.__setattr__(self, "cache", Path(self.cache))
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "l2_grid", tuple(float(v) for v in self.l2_grid))
        _choice("loss", self.loss, LOSSES)
        _choice("coupling", self.coupling, COUPLINGS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("variant", self.variant, VARIANTS)
        _choice("cbl_init", self.cbl_init, CBL_INITS)
        check_device(self.device)
        for name in ("lr_cbl", "lr_fc", "tau_max", "tau_min"):
            _positive(name, getattr(self, name))
        for name in ("weight_decay", "lam"):
            _positive(name, getattr(self, name), allow_zero=True)
        for name in ("epochs", "batch_size", "patience", "probe_max_iter"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 0:
            raise ValueError(f"topk must be an integer >= 0 (0 = off), got {self.topk!r}")
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
                "hard=True needs variant='paper': the reference form takes -log of the one-hot "
                "sample, which is inf"
            )
        if not self.l2_grid or any(v < 0 or not math.isfinite(v) for v in self.l2_grid):
            raise ValueError(f"l2_grid must be non-empty values >= 0, got {self.l2_grid!r}")

    @property
    def kind(self) -> str:
        """Head kind written to config.json: cbm | probe | zs-probe."""
        return "cbm" if self.loss in CBM_LOSSES else self.loss

    def out_dir(self) -> Path:
        """The head directory: `out`, or runs/heads/<cache-stem>-<loss> (outside the package)."""
        return (
            self.out
            if self.out is not None
            else Path("runs/heads") / (f"{self.cache.stem}-{self.loss}")
        )

    def to_json(self) -> dict:
        """JSON-able hyper-parameters (paths as strings)."""
        d = asdict(self)
        d["cache"] = str(self.cache)
        d["out"] = str(self.out_dir())
        d["l2_grid"] = list(self.l2_grid)
        return d
