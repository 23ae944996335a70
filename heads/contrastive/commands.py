"""Stage-two contrastive-adapter commands (fit-adapter, knn-eval); registered in cli.py.

Options come from `heads.contrastive.config`; torch is imported only when a command runs.
"""

from __future__ import annotations

import typer

from clipcbm.core.cli import config_command
from clipcbm.heads.contrastive.config import FitAdapterConfig, KnnEvalConfig

app = typer.Typer()


def _render_fit(cfg, result) -> str:
    last = result.history[-1]["loss"] if result.history else float("nan")
    return (
        f"wrote {result.out_dir} ({cfg.loss}, M = {cfg.positives}, {cfg.aggregate}, "
        f"{cfg.arch} {result.module.in_dim} -> {result.module.out_dim}, {cfg.steps} steps, "
        f"{result.device}, {result.seconds:.1f} s, final loss {last:.4f})"
    )


def _fit_adapter():
    from clipcbm.heads.contrastive.adapter import run

    return run, _render_fit


def _knn_eval():
    from clipcbm.heads.contrastive.knn import run

    return run, lambda cfg, r: r.summary() + (f"\nwrote {cfg.out}" if cfg.out else "")


config_command(
    app,
    "fit-adapter",
    FitAdapterConfig,
    lazy=_fit_adapter,
    help="Train a contrastive projection (NT-Xent / DebiasedNeg / DebiasedPos / SupCon) on a "
    "cache's augmented views; writes an adapter dir.",
)
config_command(
    app,
    "knn-eval",
    KnnEvalConfig,
    lazy=_knn_eval,
    help="Weighted and majority kNN top-1/top-5 of a split against a bank, on raw embeddings or "
    "through --adapter.",
)
