"""Configs of `fit-sae`, `sae-eval` and `sae-inspect` (validated, no I/O, torch-free).

The CLI builds its options from these fields (`core.cli.config_command`); every default is
explained in docs/sae.md with the benchmark behind it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from clipcbm.core.config import option, validated
from clipcbm.core.device import DEVICE_HELP, check_device
from clipcbm.core.location import Location, location_stem, location_str
from clipcbm.heads.chunks import CHUNK_ROWS
from clipcbm.heads.errors import HeadsConfigError
from clipcbm.heads.options import VERIFY_HELP

SELECTIONS = ("topk", "batchtopk")  # heads.sae.model.PATTERNS
SELECT_DTYPES = ("auto", "fp32", "bf16")
STREAM_MODES = ("auto", "on", "off")
K_SWEEP = (8, 16, 32, 64, 128, 256, 512)
AUX_COEF = 1.0 / 32.0  # Gao et al. §A.2
CACHE_HELP = "Embedding cache (zarr directory or .h5 file written by `embed`)."
CHUNK_HELP = "Rows per pass when scoring (bounds memory: chunk x latents x 4 bytes)."


def _int_at_least(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _fraction(name: str, value, *, open_low: bool = True) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value)
    ok = ok and (0.0 < value < 1.0 if open_low else 0.0 <= value < 1.0)
    if not ok:
        raise ValueError(f"{name} must be a fraction in {'(0' if open_low else '[0'}, 1), "
                         f"got {value!r}")  # fmt: skip


def _paths(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None:
            object.__setattr__(cfg, name, Path(value))


@validated(HeadsConfigError)
@dataclass(frozen=True)
class FitSaeConfig:
    cache: Location = option(help=CACHE_HELP)
    out: Path | None = option(None, "SAE directory (default: runs/sae/<cache-stem>-x<expansion>"
                              "-k<k>).")  # fmt: skip
    expansion: int = option(8, "Latents per embedding dimension: F = expansion x E.")
    k: int = option(32, "Active latents per image (TopK; BatchTopK: the batch average).")
    selection: str = option("topk", "topk: each row keeps its k largest pre-activations; "
                            "batchtopk: the batch keeps its B*k largest (a learned threshold "
                            "at inference).", choices=SELECTIONS)  # fmt: skip
    k_aux: int | None = option(None, "AuxK: dead latents that reconstruct the residual per row; "
                               "0 = no AuxK; default E/2.")  # fmt: skip
    aux_coef: float = option(AUX_COEF, "Weight of the AuxK loss (Gao et al.: 1/32).")
    dead_steps: int | None = option(None, "A latent that has not fired for this many steps is "
                                    "dead (AuxK trains it); default: one epoch, 10..1000 "
                                    "steps.")  # fmt: skip
    center: bool = option(True, "Centre the input by the training split's mean (b_dec starts "
                          "there); --no-center starts b_dec at 0.")  # fmt: skip
    lr: float = option(3e-3, "Adam learning rate (warm-up, then cosine decay to 0).")
    batch_size: int = option(4096, "Rows per step (at most a tenth of the training rows).")
    max_steps: int = option(2000, "Budget in optimizer steps.")
    epochs: float | None = option(None, "Cap on passes over the training rows (default: none).")
    warmup: float = option(0.05, "Fraction of the budget spent warming the learning rate up.")
    seed: int = option(0, "Seeds the init, the shuffling and a carved held-out split.")
    train_split: str = option("train", "Cache split to train on.")
    eval_split: str | None = option("test", "Held-out split for the metrics; when the cache "
                                    "lacks it (or it is the training split), --val-fraction "
                                    "of the training rows is held out instead.")  # fmt: skip
    val_fraction: float = option(0.05, "Held-out fraction of the training rows (seeded) when "
                                 "there is no --eval-split.")  # fmt: skip
    select_dtype: str = option("auto", "Precision of the pre-activations that pick the k "
                               "latents (the kept values are fp32): auto = bf16 on GPUs and "
                               "AMX CPUs, else fp32.", choices=SELECT_DTYPES)  # fmt: skip
    stream: str = option("auto", "Read the training split in blocks instead of whole: auto = "
                         "when it would take over half the memory.",
                         choices=STREAM_MODES)  # fmt: skip
    stream_rows: int = option(65536, "Rows per block when streaming (one shard of `embed`).")
    stream_buffer: int = option(4, "Blocks shuffled together when streaming.")
    vocab: Path | None = option(None, "Vocabulary from `embed-text` to name latents with "
                                "(default: the cache's concepts and classes).")  # fmt: skip
    chunk_size: int = option(CHUNK_ROWS, CHUNK_HELP)
    device: str = option("auto", DEVICE_HELP)
    verify: bool = option(True, VERIFY_HELP)
    progress: bool = option(True, "Show the progress bar (loss, FVU, dead latents).")
    overwrite: bool = option(False, "Replace an existing non-empty SAE directory.")

    def __post_init__(self):
        _paths(self, "cache", "out", "vocab")
        check_device(self.device)
        for name in ("expansion", "k", "batch_size", "max_steps", "stream_rows",
                     "stream_buffer", "chunk_size"):  # fmt: skip
            _int_at_least(name, getattr(self, name), 1)
        if self.k_aux is not None:
            _int_at_least("k_aux", self.k_aux, 0)
        if self.dead_steps is not None:
            _int_at_least("dead_steps", self.dead_steps, 1)
        for name in ("lr", "aux_coef"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if self.lr == 0:
            raise ValueError("lr must be > 0, got 0")
        if self.epochs is not None and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise ValueError(f"epochs must be > 0 (or unset), got {self.epochs!r}")
        _fraction("warmup", self.warmup, open_low=False)
        _fraction("val_fraction", self.val_fraction)

    def out_dir(self) -> Path:
        default = Path("runs/sae") / f"{location_stem(self.cache)}-x{self.expansion}-k{self.k}"
        return self.out if self.out is not None else default

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(cache=location_str(self.cache), out=str(self.out_dir()),
                 vocab=str(self.vocab) if self.vocab else None)  # fmt: skip
        return d


@validated(HeadsConfigError)
@dataclass(frozen=True)
class SaeEvalConfig:
    sae: Path = option(help="SAE directory written by fit-sae.")
    cache: Location = option(help="A cache of the SAE's model (model fingerprint checked).")
    split: str = option("test", "Split to evaluate.")
    head: Path | None = option(None, "Also report this head's accuracy with x̂ in place of x.")
    ks: tuple[int, ...] = option(K_SWEEP, "k values of the sweep (TopK re-applied to the full "
                                 "pre-activations; repeat the option).", flag="--k")  # fmt: skip
    out: Path | None = option(None, "Output directory (default: runs/sae-eval/<sae-name>).")
    chunk_size: int = option(CHUNK_ROWS, CHUNK_HELP)
    device: str = option("auto", DEVICE_HELP)
    verify: bool = option(True, VERIFY_HELP)
    progress: bool = option(True, "Show progress bars.")

    def __post_init__(self):
        _paths(self, "sae", "cache", "head", "out")
        check_device(self.device)
        _int_at_least("chunk_size", self.chunk_size, 1)
        object.__setattr__(self, "ks", tuple(sorted(set(self.ks))))
        if not self.ks:
            raise ValueError("ks must list at least one k")
        for k in self.ks:
            _int_at_least("every --k", k, 1)

    def out_dir(self) -> Path:
        return self.out if self.out is not None else Path("runs/sae-eval") / self.sae.name


@validated(HeadsConfigError)
@dataclass(frozen=True)
class SaeInspectConfig:
    sae: Path = option(help="SAE directory written by fit-sae.")
    cache: Location = option(help="A cache of the SAE's model (model fingerprint checked).")
    split: str = option("test", "Split whose images are searched.")
    latents: tuple[int, ...] = option((), "Latent(s) to show top-activating images for "
                                      "(repeatable).", flag="--latent")  # fmt: skip
    concepts: tuple[str, ...] = option((), "Images where the latent(s) named so fire "
                                       "(repeatable).", flag="--concept")  # fmt: skip
    images: tuple[int, ...] = option((), "Row(s) of the split: their top named latents "
                                     "(repeatable).", flag="--image")  # fmt: skip
    kmeans: int = option(0, "Also cluster the split's latent codes into this many groups.")
    n_latents: int = option(8, "With no --latent/--concept/--image: show this many of the most "
                            "often firing latents.")  # fmt: skip
    top: int = option(12, "Images per latent or cluster.")
    top_latents: int = option(10, "Latents per image.")
    vocab: Path | None = option(None, "Name latents with this `embed-text` vocabulary instead "
                                "of the SAE's saved names.")  # fmt: skip
    html: Path | None = option(None, "Also write a self-contained HTML page (thumbnails).")
    out: Path | None = option(None, "Table directory (default: runs/sae-inspect/<sae-name>).")
    overwrite: bool = option(False, "Replace an existing inspect.csv / inspect.json in --out "
                             "(and the --html page).")  # fmt: skip
    seed: int = option(0, "k-means seed.")
    chunk_size: int = option(CHUNK_ROWS, CHUNK_HELP)
    device: str = option("auto", DEVICE_HELP)
    verify: bool = option(True, VERIFY_HELP)

    def __post_init__(self):
        _paths(self, "sae", "cache", "vocab", "html", "out")
        check_device(self.device)
        for name in ("top", "top_latents", "chunk_size", "n_latents"):
            _int_at_least(name, getattr(self, name), 1)
        _int_at_least("kmeans", self.kmeans, 0)
        for v in (*self.latents, *self.images):
            _int_at_least("every --latent / --image", v, 0)
        if any(not str(c).strip() for c in self.concepts):
            raise ValueError(f"--concept must be non-empty text, got {list(self.concepts)}")
        if self.html is not None and self.html.suffix.lower() not in (".html", ".htm"):
            raise ValueError(f"html must be a .html path, got {str(self.html)!r}")

    def out_dir(self) -> Path:
        return self.out if self.out is not None else Path("runs/sae-inspect") / self.sae.name
