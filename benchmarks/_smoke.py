"""What the quick smoke run of every benchmark needs: the one place that knows which scripts
are not benchmarks, which need extra flags on a CPU, and which read the design data in
`../shared/data` (present on the developers' machines and in CI, absent on a machine with only
the project: those are skipped there). `tests/test_benchmarks_quick.py` reads it; the tests
themselves never name a path outside the project.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"  # the repository's sibling, where present

# Not benchmarks: no --quick run, no JSON of their own.
NOT_BENCHMARKS = {
    "_provenance.py": "the JSON writer every benchmark uses (tested below)",
    "_smoke.py": "this list (read by tests/test_benchmarks_quick.py)",
    "check_readme.py": "checks README tables against the JSONs (tests/test_readme_numbers.py)",
    "gpu_suite_summary.py": "markdown tables from a gpu_suite.sh results folder, no JSON "
    "(tests/test_gpu_suite_summary.py)",
    "moved_numbers.py": "lists docs numbers that moved since a commit's JSONs, no JSON of its own "
    "(tests/test_moved_numbers.py)",
    "_testbed_eval.py": "the SAE / page / adapter reports testbed.py imports (testbed.json)",
}
# Benchmarks that cannot run on a CPU-only CI machine at all, with the reason. Empty: the GPU
# scripts have a CPU quick path (FLAGS below); prefer adding one to listing a script here.
CANNOT_RUN_HERE: dict[str, str] = {}
# Extra flags of a CPU quick run (the GPU scripts default to cuda).
FLAGS = {
    "gpu_sae.py": ["--device", "cpu"],
    "gpu_attribution.py": ["--device", "cpu", "--dtype", "fp32"],
    "embed_throughput.py": ["--device", "cpu"],
    "fit_head_speed.py": ["--devices", "cpu"],
    "cms_speed.py": ["--device", "cpu"],
}
# Quick runs that read ../shared/data (concept sets, JPEGs, the CLIP tokenizer): skipped
# where it is absent. A script whose quick run needs it belongs here.
NEEDS_SHARED = {
    "concept_filter.py",  # the published GPT-3 concept lists
    "embed_throughput.py",  # imagenet_sample JPEGs
    "sae.py",  # concept_sets texts
    "description_proxy.py",  # concept_sets (quick: cifar10)
    "attribution.py",  # clip_tokenizer
    "sparsity_tradeoff.py",  # concept_sets (through description_proxy)
    "debiased.py",  # concept_sets (the text suite)
    "reliability.py",  # imagenet_sample / cifar10_test_jpg JPEGs
    "testbed.py",  # cifar10_test_jpg photos, concept_sets (captions, concepts)
}
TIMEOUT_S = 240  # per script: a hung script fails its test instead of hanging CI
WORKERS = 2
# the slowest first, so the pool of two ends together (the rest keep glob order)
SLOW_FIRST = ["testbed.py", "sae.py", "concept_filter.py", "embed_throughput.py", "cms_speed.py"]


def skip_reason(name: str) -> str | None:
    if name in CANNOT_RUN_HERE:
        return CANNOT_RUN_HERE[name]
    if name in NEEDS_SHARED and not SHARED_DATA.is_dir():
        return f"needs the design data, absent here ({SHARED_DATA})"
    return None
