"""Stage-two commands: `fit-head`, `cms-eval`, `evaluate`, `explain`, from their configs.

Options come from the config dataclasses (`heads.cbm.config`, `heads.eval.config`) through
`core.cli.config_command`; the runs (torch) are imported only when a command runs.
"""

from __future__ import annotations

import typer

from clipcbm.core.cli import config_command
from clipcbm.heads.cbm.config import FitHeadConfig
from clipcbm.heads.eval.config import CmsEvalConfig, CompareConfig, EvaluateConfig, ExplainConfig

app = typer.Typer()


def fit_head_table(result) -> str:
    """The per-split table `fit-head` prints: head and zero-shot on the same rows."""
    m = result.metrics
    cbm = result.kind == "cbm"
    head = ["split", "rows", "head top-1", "head top-5", "zero-shot top-1"]
    head += ["act. sparsity", "active concepts"] if cbm else []
    rows = [
        "{:<6} {:>8} {:>10} {:>10} {:>15}".format(*head[:5])
        + (" {:>13} {:>15}".format(*head[5:]) if cbm else "")
    ]
    for split in ("val", "test"):
        if split in m:
            h, z = m[split], m["zero_shot"][split]
            line = (
                f"{split:<6} {h['n']:>8} {h['top1']:>10.4f} {h['top5']:>10.4f} {z['top1']:>15.4f}"
            )
            if cbm:
                line += f" {h['act_sparsity']:>13.4f} {h['active_concepts']:>15.2f}"
            rows.append(line)
    held = m.get("heldout")
    if held and held.get("val_in_fit"):
        est = "n/a" if held["top1"] is None else f"{held['top1']:.4f}"
        rows.append(f"(the validation rows are in the final layer's fit, so its val row is "
                    f"in-sample; held-out estimate: {est} by {held['how']})")  # fmt: skip
    return "\n".join(rows)


def _steps(result) -> str:
    if not result.history:
        return ""
    return f", {result.history[-1]['step']} steps, kept step {result.best_step}"


def _render_fit(cfg, result) -> str:
    lines = [
        f"wrote {result.out_dir} ({result.loss}, kind {result.kind}, {result.device}, "
        f"{result.seconds:.1f} s{_steps(result)})"
    ]
    if "note" in result.metrics:
        lines.append(f"note: {result.metrics['note']}")
    return "\n".join([*lines, fit_head_table(result)])


def _fit_head():
    from clipcbm.heads.cbm.train import run

    return run, _render_fit


def _cms_eval():
    from clipcbm.heads.eval.commands import run_cms_eval

    return run_cms_eval, lambda cfg, r: f"{r.summary()}\nwrote {cfg.out_dir()}"


def _evaluate():
    from clipcbm.heads.eval.commands import run_evaluate

    return run_evaluate, lambda cfg, r: f"{r.summary()}\nwrote {cfg.out_dir()}"


def _explain():
    from clipcbm.heads.eval.commands import run_explain

    return run_explain, lambda cfg, r: f"{r.summary()}\nwrote {r.files['png']} and {r.files['csv']}"


config_command(
    app,
    "fit-head",
    FitHeadConfig,
    lazy=_fit_head,
    help="Stage two: fit a concept-bottleneck head (or a baseline) on a cache; writes a head dir.",
)
config_command(
    app,
    "cms-eval",
    CmsEvalConfig,
    lazy=_cms_eval,
    help="Concept Matrix Search beside zero-shot CLIP on the same split(s); CSVs + metrics JSON.",
)
config_command(
    app,
    "evaluate",
    EvaluateConfig,
    lazy=_evaluate,
    help="Metrics of a head (top-1/5, per class, confusion, NEC, sparsity); CSV/JSON/PNG.",
)
config_command(
    app,
    "explain",
    ExplainConfig,
    lazy=_explain,
    help="Top concepts of one prediction (cbm head, or CMS) as a table, CSV and bar chart PNG.",
)


def _compare():
    from clipcbm.heads.compare import describe, run_compare

    return run_compare, describe


config_command(
    app,
    "compare",
    CompareConfig,
    lazy=_compare,
    help="Every head at its defaults and every baseline on one cache: results.csv/.md/.png.",
)
