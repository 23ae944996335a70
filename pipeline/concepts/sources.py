"""Concept sources: class list -> raw (concept, class, source) candidates, via a registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .conceptnet import ConceptNetAPI, ConceptNetDump, Getter, conceptnet_candidates
from .config import ConceptsConfig
from .io import read_class_file, read_raw_concepts
from .llm import Generate, HFGenerator, llm_candidates


@dataclass
class SourceOutput:
    candidates: list[tuple[str, str, str]]  # (raw concept text, class or '', source tag)
    meta: dict = field(default_factory=dict)  # recorded in <name>.meta.json
    records: list[dict] = field(default_factory=list)  # LLM: one per prompt (jsonl beside)


@dataclass(frozen=True)
class Injected:
    """Test / library hooks replacing the real network or model; None = the real thing."""

    generate: Generate | None = None
    http_get: Getter | None = None
    sleep: Callable[[float], None] | None = None


def load_classes(config: ConceptsConfig) -> list[str]:
    if config.dataset is not None:
        from clipcbm.pipeline.classnames import builtin_classes

        return builtin_classes(config.dataset)
    return read_class_file(config.classes_file)


def _from_file(config: ConceptsConfig, classes: list[str], hooks: Injected) -> SourceOutput:
    pairs = read_raw_concepts(config.input_path)
    return SourceOutput(
        [(text, cls, "file") for text, cls in pairs], {"input": str(config.input_path)}
    )


def _from_conceptnet(config: ConceptsConfig, classes: list[str], hooks: Injected) -> SourceOutput:
    cache = Path(config.conceptnet_cache).expanduser()
    if config.conceptnet_dump is not None:
        backend = ConceptNetDump(config.conceptnet_dump, cache, progress=config.progress)
        meta = {
            "backend": "dump",
            "dump": str(config.conceptnet_dump),
            "index": str(backend.index_path),
        }
    else:
        kwargs = {k: v for k, v in (("get", hooks.http_get), ("sleep", hooks.sleep)) if v}
        backend = ConceptNetAPI(cache, offline=config.offline, **kwargs)
        meta = {"backend": "api", "cache": str(cache)}
    candidates = conceptnet_candidates(classes, backend, config.conceptnet_query, config.progress)
    if isinstance(backend, ConceptNetAPI):
        meta["requests"] = backend.n_requests
    return SourceOutput(candidates, {**meta, "query": config.conceptnet_query})


def _from_llm(config: ConceptsConfig, classes: list[str], hooks: Injected) -> SourceOutput:
    meta: dict = {
        "model": config.llm,
        "decoding": "greedy",
        "max_new_tokens": config.llm_max_new_tokens,
    }
    generate = hooks.generate
    if generate is None:
        generate = HFGenerator.load(
            config.llm, config.device, config.llm_max_new_tokens, config.llm_batch_size
        )
        meta["commit"] = getattr(generate.model.config, "_commit_hash", None)
        meta["chat_template"] = generate.uses_chat_template
        meta["device"] = str(generate.model.device)
    candidates, records = llm_candidates(
        classes, generate, chunk=4 * config.llm_batch_size, progress=config.progress
    )
    return SourceOutput(candidates, meta, records)


# --source -> builder(config, classes, hooks) -> SourceOutput
SOURCE_BUILDERS: dict[str, Callable[[ConceptsConfig, list[str], Injected], SourceOutput]] = {
    "file": _from_file,
    "conceptnet": _from_conceptnet,
    "llm": _from_llm,
}
