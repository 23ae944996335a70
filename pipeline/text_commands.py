"""Stage-one text embedding command (embed-text: a vocabulary store for SAE naming); registered in cli.py."""

from __future__ import annotations

import typer

app = typer.Typer()
