"""`ConceptsConfig`: everything one `clipcbm concepts` run needs, validated up front (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipcbm.core.config import option, validated
from clipcbm.core.device import DEVICE_HELP, check_device
from clipcbm.pipeline.classnames import BUILTIN_LISTS
from clipcbm.pipeline.config import DEFAULT_CLIP_MODEL
from clipcbm.pipeline.errors import PipelineConfigError

from .similarity import DEFAULT_SIM_MODEL, SIMILARITIES

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


@validated(PipelineConfigError)
@dataclass(frozen=True)
class ConceptsConfig:
    source: str = option(help="Where raw concepts come from.", choices=SOURCES)
    out: Path = option(help="Kept concepts CSV; .txt, .dropped.csv and .meta.json go beside it.")
    # class names: exactly one of the two
    dataset: str | None = option(None, "Built-in class list.", choices=lambda: list(BUILTIN_LISTS))
    classes_file: Path | None = option(None, "Or: class names, one per line.", flag="--classes")
    # --source file
    input_path: Path | None = option(None, "--source file: .txt (one per line) or .csv "
                                     "(concept[,class]).", flag="--input")  # fmt: skip
    # --source llm
    llm: str | None = option(None, "--source llm: causal LM hub id or local directory "
                             "(never remote code).")  # fmt: skip
    llm_max_new_tokens: int = option(256, "Tokens generated per LLM answer.")
    llm_batch_size: int = option(8, "Prompts per generate() call.")
    # --source conceptnet
    conceptnet_dump: Path | None = option(None, "Local conceptnet-assertions-5.7.0.csv.gz "
                                          "instead of the REST API.")  # fmt: skip
    conceptnet_cache: Path = option(DEFAULT_CONCEPTNET_CACHE, "Cache of API responses and of "
                                    "the dump index.")  # fmt: skip
    conceptnet_query: str = option("words", "Terms per class: each word, the whole phrase, or "
                                   "both.", choices=CONCEPTNET_QUERIES)  # fmt: skip
    offline: bool = option(False, "ConceptNet API: cached responses only, fail on a miss.")
    # filter (SPEC §4)
    similarity: str = option("sentence", "sentence = --sim-model cosine; blend = (sentence + "
                             "3*CLIP text)/4.", choices=lambda: list(SIMILARITIES))  # fmt: skip
    sim_model: str = option(DEFAULT_SIM_MODEL, "sentence-transformers hub id or local directory.")
    clip_model: str = option(DEFAULT_CLIP_MODEL, "CLIP for --similarity blend.")
    max_length: int = option(30, "Rule 1: drop concepts longer than this (characters).")
    class_sim: float = option(0.85, "Rule 2: drop when cosine to any class >= this.")
    concept_sim: float = option(0.9, "Rule 3: of pairs >= this keep the more general.")
    min_mean_sim: float | None = option(None, "Rule 4 (off by default): drop mean cosine < this.")
    device: str = option("auto", DEVICE_HELP)
    batch_size: int = option(64, "Texts per similarity-model batch.")
    overwrite: bool = option(False, "Replace existing output files.")
    progress: bool = option(True, "Show progress bars.")

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
        check_device(self.device)

    def _check_source_options(self) -> None:
        needs = {"file": ("input_path", "--input FILE"), "llm": ("llm", "--llm MODEL")}
        for source, (name, flag) in needs.items():
            given = getattr(self, name) is not None
            if self.source == source and not given:
                raise ValueError(f"--source {source} needs {flag}")
            if self.source != source and given:
                raise ValueError(
                    f"{flag} only applies to --source {source}; got --source {self.source}"
                )
        if self.conceptnet_dump is not None and self.source != "conceptnet":
            raise ValueError(
                f"--conceptnet-dump only applies to --source conceptnet; got --source {self.source}"
            )
