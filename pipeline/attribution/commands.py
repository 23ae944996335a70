"""Stage-one attribution commands (attribute, attribute-eval); registered in cli.py."""

from __future__ import annotations

import typer

app = typer.Typer()
