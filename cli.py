"""Command line: stage one (`embed`, `cache`), concept sets, stage two (heads, CMS, evaluation).

Thin by design: each command parses options, builds one frozen config and calls one `run`.
Heavy imports (torch, transformers) happen inside the commands so `--help` is instant.
"""

from __future__ import annotations

import json
import logging
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Interpretable image classification on frozen CLIP.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and check embedding caches.")
app.add_typer(cache_app, name="cache")

Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, code: int = 2) -> None:
    """Print a user-facing error (no traceback) and exit non-zero."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


# --- embed commands ---
# --- cache commands ---
# --- concepts commands ---
# --- fit-head commands ---
# --- evaluation commands ---

if __name__ == "__main__":
    app()
