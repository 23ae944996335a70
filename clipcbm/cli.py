"""Command line of the toolkit (`clipcbm ...`, or `python cli.py ...` from a checkout):
registration, logging and error mapping only.

Each stage owns its commands (`pipeline/commands.py`: embed, concepts; `cache/commands.py`:
cache info / verify; `heads/commands.py`: fit-head, cms-eval, evaluate, explain). Their options
are built from the config dataclasses (`core.cli.config_command`), and heavy imports (torch,
transformers) happen only when a command runs, so `--help` is fast. A `core.errors.ClipCbmError`
is printed as `error: <message>` with exit code 2; anything else keeps its traceback.
"""

from __future__ import annotations

import typer

from clipcbm.cache.commands import app as cache_app
from clipcbm.heads.commands import app as heads_app
from clipcbm.heads.contrastive.commands import app as contrastive_app
from clipcbm.heads.sae.commands import app as sae_app
from clipcbm.heads.sae.commands import set_html_renderer
from clipcbm.pipeline.attribution.commands import app as attribution_app
from clipcbm.pipeline.commands import app as pipeline_app
from clipcbm.pipeline.sae_page import render_page
from clipcbm.pipeline.text_commands import app as text_app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Interpretable image classification on frozen CLIP.",
)
app.add_typer(pipeline_app)
app.add_typer(text_app)
app.add_typer(attribution_app)
app.add_typer(heads_app)
app.add_typer(sae_app)
app.add_typer(contrastive_app)
app.add_typer(cache_app, name="cache")
set_html_renderer(render_page)  # sae-inspect --html: stage two asks stage one for the page


def main() -> None:
    """The `clipcbm` console script (and `python cli.py` / `python -m clipcbm`)."""
    app(prog_name="clipcbm")


if __name__ == "__main__":
    main()
