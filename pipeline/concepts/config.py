"""`ConceptsConfig`: everything one `cli.py concepts` run needs, validated up front (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.classnames import BUILTIN_LISTS

from .similarity import DEFAULT_CLIP_MODEL, DEFAULT_SIM_MODEL, SIMILARITIES

SOURCES = ("conceptnet", "llm", "file")
CONCEPTNET_QUERIES = ("words", "phrase", "both")
DEFAULT_CONCEPTNET_CACHE = Path("~/.cache/clipcbm/conceptnet")


def _check_unit(name: str, value: float, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int | float) or not -1.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a cosine similarity in [-1, 1]; got {value!r}")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")


@dataclass(frozen=True)
class ConceptsConfig:
    source: str  # "conceptnet" | "llm" | "file"
    out: Path  # <name>.csv; <name>.txt, <name>.dropped.csv, <name>.meta.json are written beside
    # class names: exactly one of the two
    dataset: str | None = None  # built-in list: cifar10, cifar100, cub200, places365, imagenet
    classes_file: Path | None = None  # one class name per line
    # --source file
    input_path: Path | None = None  # .txt (one per line) or .csv (concept[,class] columns)
    # --source llm
    llm: str | None = None  # causal LM: hub id or local directory (never remote code)
    llm_max_new_tokens: int = 256  # tokens generated per answer
    llm_batch_size: int = 8  # prompts per generate() call
    # --source conceptnet
    conceptnet_dump: Path | None = None  # local assertions dump instead of the REST API
    conceptnet_cache: Path = DEFAULT_CONCEPTNET_CACHE  # API responses + dump index ("~" expanded)
    conceptnet_query: str = "words"  # class name -> terms: "words" | "phrase" | "both"
    offline: bool = False  # API: use cached responses only, fail on a miss
    # filter (SPEC §4)
    similarity: str = "sentence"  # "sentence" | "blend" = (sentence + 3 * CLIP-text) / 4
    sim_model: str = DEFAULT_SIM_MODEL  # sentence-transformers hub id or local directory
    clip_model: str = DEFAULT_CLIP_MODEL  # CLIP for --similarity blend
    max_length: int = 30  # characters; longer concepts are dropped (rule 1)
    class_sim: float = 0.85  # cosine to any class >= this is dropped (rule 2)
    concept_sim: float = 0.9  # pairs >= this keep the more general concept (rule 3)
    min_mean_sim: float | None = None  # rule 4, off by default
    device: str = "auto"  # "auto" | "cpu" | "cuda[:k]", resolved at run time and recorded
    batch_size: int = 64  # texts per similarity-model batch
    overwrite: bool = False  # replace existing output files
    progress: bool = True  # tqdm bars

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source {self.source!r} is unknown; allowed: {', '.join(SOURCES)}")
        if (self.dataset is None) == (self.classes_file is None):
            raise ValueError(
                "give exactly one of dataset (a built-in class list) or classes_file; got "
                f"dataset={self.dataset!r}, classes_file={self.classes_file!r}"
            )
        if self.dataset is not None and self.dataset not in BUILTIN_LISTS:
            raise ValueError(
                f"dataset {self.dataset!r} has no built-in class list; allowed: "
                f"{', '.join(BUILTIN_LISTS)} (or give --classes FILE)"
            )
        if Path(self.out).suffix.lower() != ".csv":
            raise ValueError(f"out must end in .csv; got {str(self.out)!r}")
        self._check_source_options()
        if self.similarity not in SIMILARITIES:
            raise ValueError(
                f"similarity {self.similarity!r} is unknown; allowed: {', '.join(SIMILARITIES)}"
            )
        if self.conceptnet_query not in CONCEPTNET_QUERIES:
            raise ValueError(
                f"conceptnet_query {self.conceptnet_query!r} is unknown; allowed: "
                f"{', '.join(CONCEPTNET_QUERIES)}"
            )
        for name in ("max_length", "llm_max_new_tokens", "llm_batch_size", "batch_size"):
            _check_positive(name, getattr(self, name))
        for name in ("class_sim", "concept_sim"):
            _check_unit(name, getattr(self, name))
        _check_unit("min_mean_sim", self.min_mean_sim, allow_none=True)
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"device {self.device!r} is unknown; allowed: auto, cpu, cuda[:k]")

    def _check_source_options(self) -> None:
        needs = {"file": ("input_path", "--input FILE"), "llm": ("llm", "--llm MODEL")}
        for source, (name, option) in needs.items():
            given = getattr(self, name) is not None
            if self.source == source and not given:
                raise ValueError(f"--source {source} needs {option}")
            if self.source != source and given:
                raise ValueError(
                    f"{option} only applies to --source {source}; got --source {self.source}"
                )
        if self.conceptnet_dump is not None and self.source != "conceptnet":
            raise ValueError(
                f"--conceptnet-dump only applies to --source conceptnet; got --source {self.source}"
            )
