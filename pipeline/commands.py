"""Stage-one commands: `embed` and `concepts`, built from their config dataclasses.

Options come from `pipeline.config.EmbedConfig` and `pipeline.concepts.config.ConceptsConfig`
(`core.cli.config_command`); the runs (torch, transformers) are imported only when a command
runs, so `--help` stays fast.
"""

from __future__ import annotations

import typer

from clipcbm.core.cli import config_command
from clipcbm.pipeline.concepts.config import ConceptsConfig
from clipcbm.pipeline.config import EmbedConfig

app = typer.Typer()


def _render_embed(cfg, result) -> str:
    if result.status == "complete":
        return f"{result.path} is already complete for these inputs; nothing to do."
    bad = sum(result.unreadable.values())
    rows = ", ".join(f"{s} {n}" for s, n in result.rows.items())
    return (
        f"wrote {result.path}: {rows} rows, {bad} unreadable, "
        f"{result.seconds:.1f} s ({result.images_per_s:.1f} img/s)"
    )


def _render_concepts(cfg, result) -> str:
    dropped = ", ".join(f"{rule} {n}" for rule, n in result.counts.items())
    return (
        f"kept {result.n_kept} of {result.n_raw} candidates -> {result.paths['csv']} "
        f"(sha256 {result.sha256[:12]}); dropped: {dropped}"
    )


def _embed():
    from clipcbm.pipeline.embed import run

    return run, _render_embed


def _concepts():
    from clipcbm.pipeline.concepts.run import run

    return run, _render_concepts


config_command(
    app,
    "embed",
    EmbedConfig,
    lazy=_embed,
    help="Stage one: run frozen CLIP once over a dataset into a resumable embedding cache.",
)
config_command(
    app,
    "concepts",
    ConceptsConfig,
    lazy=_concepts,
    help="Generate, filter (SPEC §4) and record the concept set a cache is built on.",
)
