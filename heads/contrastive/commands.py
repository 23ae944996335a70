"""Stage-two contrastive-adapter commands (fit-adapter, knn-eval); registered in cli.py."""

from __future__ import annotations

import typer

app = typer.Typer()
