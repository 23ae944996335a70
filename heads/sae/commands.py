"""Stage-two SAE commands (`fit-sae`, `sae-eval`, `sae-inspect`); registered in cli.py.

Options come from `heads.sae.config`; the runs (torch) are imported only when a command runs.
`sae-inspect --html` needs a page renderer, which lives in stage one (thumbnails need the
dataset; `heads/` never imports `pipeline/`): the composition root (cli.py) injects it with
`set_html_renderer(pipeline.sae_page.render_page)`. Without one (library use) `--html` is a
clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from clipcbm.core.cli import config_command
from clipcbm.heads.errors import HeadsConfigError
from clipcbm.heads.sae.config import FitSaeConfig, SaeEvalConfig, SaeInspectConfig

app = typer.Typer()

# (inspect directory with inspect.csv + inspect.json, html path) -> the written page
HtmlRenderer = Callable[[Path, Path], Path]
_html_renderer: HtmlRenderer | None = None


def set_html_renderer(fn: HtmlRenderer | None) -> None:
    """Register the function `sae-inspect --html` calls (cli.py: pipeline.sae_page.render_page)."""
    global _html_renderer
    _html_renderer = fn


def _render_fit(cfg, r) -> str:
    m = r.metrics
    return (
        f"wrote {r.out_dir} ({r.n_latents} latents, k={cfg.k}, {r.device}, {r.steps} steps, "
        f"{r.seconds:.1f} s, {r.samples_per_s:,.0f} samples/s)\n"
        f"held-out {m['split']} ({m['n']} rows): FVU {m['fvu']:.4f}  cosine {m['cosine']:.4f}  "
        f"L0 {m['l0']:.1f}  dead {100 * m['dead_fraction']:.2f} %  zero-shot kept "
        f"{m['accuracy_kept']:.4f}; dead in training {r.dead_train}"
    )


def _fit():
    from clipcbm.heads.sae.train import run

    return run, _render_fit


def _eval():
    from clipcbm.heads.sae.evaluation import run_sae_eval

    files = lambda r: " ".join(str(p) for p in r.files.values())  # noqa: E731
    return run_sae_eval, lambda cfg, r: f"{r.summary()}\nwrote {files(r)}"


def _inspect():
    from clipcbm.heads.sae.inspect import run_sae_inspect

    def run(cfg: SaeInspectConfig):
        from clipcbm.heads.io.output import write_errors

        renderer = _html_renderer
        if cfg.html is not None and renderer is None:
            raise HeadsConfigError(
                "--html needs the page renderer of stage one, which only the command line "
                "registers (`clipcbm sae-inspect ... --html`); in a library call use "
                "heads.sae.commands.set_html_renderer(pipeline.sae_page.render_page) first"
            )
        result = run_sae_inspect(cfg)
        if cfg.html is not None:
            with write_errors(cfg.html, "the sae-inspect page"):
                result.files["html"] = renderer(result.out_dir, cfg.html)
        return result

    def render(cfg, r) -> str:
        return f"{r.summary()}\nwrote {' '.join(str(p) for p in r.files.values())}"

    return run, render


config_command(app, "fit-sae", FitSaeConfig, lazy=_fit,
               help="Stage two: train a TopK sparse autoencoder on a cache's image embeddings; "
               "writes an SAE directory (SAELens layout), metrics and latent names.")  # fmt: skip
config_command(app, "sae-eval", SaeEvalConfig, lazy=_eval,
               help="An SAE's FVU / cosine / L0 / dead latents / accuracy kept on a split, and "
               "the k-sweep (CSV + PNG).")  # fmt: skip
config_command(app, "sae-inspect", SaeInspectConfig, lazy=_inspect,
               help="Top images per latent, top latents per image, images of a named concept, "
               "k-means; a table, and with --html a self-contained page.")  # fmt: skip
