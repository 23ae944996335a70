"""Stage-two SAE commands (fit-sae, sae-eval, sae-inspect); registered in cli.py."""

from __future__ import annotations

import typer

app = typer.Typer()
