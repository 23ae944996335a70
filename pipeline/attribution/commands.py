"""Stage-one attribution commands (`attribute`, `attribute-eval`); registered in cli.py.

Options come from `pipeline.attribution.config`; torch and transformers are imported only when
a command runs.
"""

from __future__ import annotations

import typer

from clipcbm.core.cli import config_command
from clipcbm.pipeline.attribution.config import AttributeConfig, AttributeEvalConfig

app = typer.Typer()


def _attribute():
    from clipcbm.pipeline.attribution.maps import run

    return run, lambda cfg, r: r.summary()


def _attribute_eval():
    from clipcbm.pipeline.attribution.evaluate import run

    return run, lambda cfg, r: r.summary()


config_command(
    app,
    "attribute",
    AttributeConfig,
    lazy=_attribute,
    help="M2IB attribution maps (image heat-map + per-token text scores) on frozen CLIP.",
)
config_command(
    app,
    "attribute-eval",
    AttributeEvalConfig,
    lazy=_attribute_eval,
    help="Score an `attribute` run against Captum baselines and attention rollout.",
)
