"""`run(ConceptsConfig) -> ConceptsResult`: the body of `clipcbm concepts`.

class names -> source candidates -> normalise + filter (SPEC §4) -> files:
<name>.csv (kept: concept,class,source), <name>.txt (one concept per line),
<name>.dropped.csv (concept,rule,value,detail,class,source), <name>.meta.json (settings, counts,
sha256) and, for --source llm, <name>.llm.jsonl (every prompt, answer and parsed concepts).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from clipcbm.pipeline.errors import OutputExistsError, PipelineError

from .config import ConceptsConfig
from .filter import RULES, Embed, FilterResult, FilterRules, filter_concepts
from .io import ConceptSet, output_paths, sha256_concepts, write_concept_set, write_dropped
from .similarity import SIMILARITIES
from .sources import SOURCE_BUILDERS, Injected, SourceOutput, load_classes

log = logging.getLogger(__name__)


class ConceptsError(PipelineError, RuntimeError):
    """The run finished its work but the result cannot be used (e.g. nothing survived)."""


@dataclass(frozen=True)
class ConceptsResult:
    n_raw: int  # candidates the source produced
    n_kept: int  # concepts written
    counts: dict[str, int]  # filter rule -> candidates it dropped, in filter order
    sha256: str  # identity of the kept list (what the cache fingerprints)
    paths: dict[str, Path]  # role (csv, txt, dropped, meta[, llm]) -> file written
    kept: ConceptSet


def _planned_paths(config: ConceptsConfig) -> dict[str, Path]:
    paths = output_paths(Path(config.out))
    if config.source == "llm":
        paths["llm"] = paths["csv"].with_suffix(".llm.jsonl")
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not config.overwrite:
        raise OutputExistsError(
            f"output file(s) already exist: {', '.join(existing)}; pass --overwrite to replace "
            "them or choose another --out"
        )
    return paths


def _resolve_device(device: str) -> str:
    from clipcbm.core.device import resolve_device

    return str(resolve_device(device))


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _meta(
    config: ConceptsConfig,
    classes: list[str],
    source: SourceOutput,
    result: FilterResult,
    device: str | None,
) -> dict:
    settings = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()
    }
    return {
        "sha256": result.kept.sha256,
        "n_concepts": len(result.kept),
        "n_raw": result.n_raw,
        "dropped": result.counts,
        "classes": {
            "n": len(classes),
            "sha256": sha256_concepts(classes),
            "from": config.dataset or str(config.classes_file),
        },
        "source": {"name": config.source, **source.meta},
        "normalisation": "strip, lower-case, collapse whitespace, drop one leading a/an/the",
        "similarity": {
            "kind": config.similarity,
            "sim_model": config.sim_model,
            "clip_model": config.clip_model if config.similarity == "blend" else None,
            "device": device,
        },
        "config": settings,
        "versions": {p: _version(p) for p in ("sentence-transformers", "transformers", "torch")},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _write_outputs(
    paths: dict[str, Path], source: SourceOutput, result: FilterResult, meta: dict
) -> None:
    """Dropped list (and LLM log) first: they explain an empty result."""
    paths["csv"].parent.mkdir(parents=True, exist_ok=True)
    write_dropped(paths["dropped"], [d.row() for d in result.dropped])
    if "llm" in paths:
        paths["llm"].write_text(
            "".join(json.dumps(r) + "\n" for r in source.records), encoding="utf-8"
        )
    if not result.kept.concepts:
        raise ConceptsError(
            f"no concept survived the filter ({result.n_raw} candidates); see "
            f"{paths['dropped']} for why each was dropped, and loosen the thresholds"
        )
    write_concept_set(paths["csv"], result.kept)
    paths["meta"].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def run(
    config: ConceptsConfig, *, embed: Embed | None = None, hooks: Injected = Injected()
) -> ConceptsResult:
    """Generate, filter and write one concept set. `embed` / `hooks` replace the similarity
    model, the LLM or the HTTP getter (tests, notebooks); None means the real ones."""
    paths = _planned_paths(config)
    classes = load_classes(config)
    source = SOURCE_BUILDERS[config.source](config, classes, hooks)
    log.info(
        "%s: %d raw candidates for %d classes", config.source, len(source.candidates), len(classes)
    )
    device = None
    if embed is None:
        device = _resolve_device(config.device)
        embed = SIMILARITIES[config.similarity](
            config.sim_model, config.clip_model, device, config.batch_size, config.progress
        )
    rules = FilterRules(
        config.max_length, config.class_sim, config.concept_sim, config.min_mean_sim
    )
    result = filter_concepts(source.candidates, classes, embed, rules, config.progress)
    _write_outputs(paths, source, result, _meta(config, classes, source, result, device))
    counts = result.counts
    log.info(
        "kept %d of %d candidates (dropped: %s); sha256 %s -> %s",
        len(result.kept),
        result.n_raw,
        ", ".join(f"{r} {counts[r]}" for r in RULES),
        result.kept.sha256[:12],
        paths["csv"],
    )
    return ConceptsResult(
        result.n_raw, len(result.kept), counts, result.kept.sha256, paths, result.kept
    )
