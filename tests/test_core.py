"""core/: the config -> CLI builder, the error mapping, atomic writes."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from clipcbm.cli import app
from clipcbm.core import atomic
from clipcbm.core.config import flag_of
from clipcbm.heads.cbm.config import FitHeadConfig
from clipcbm.heads.eval.config import CmsEvalConfig, EvaluateConfig, ExplainConfig
from clipcbm.pipeline.concepts.config import ConceptsConfig
from clipcbm.pipeline.config import EmbedConfig

COMMANDS = {
    "embed": EmbedConfig,
    "concepts": ConceptsConfig,
    "fit-head": FitHeadConfig,
    "cms-eval": CmsEvalConfig,
    "evaluate": EvaluateConfig,
    "explain": ExplainConfig,
}
runner = CliRunner()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_config_field_is_an_option_with_help(command):
    cfg = COMMANDS[command]
    res = runner.invoke(app, [command, "--help"], terminal_width=400, env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    for f in dataclasses.fields(cfg):
        if not f.metadata.get("cli", True):
            continue
        assert f.metadata.get("help"), f"{cfg.__name__}.{f.name} has no help text"
        assert flag_of(f) in res.output, f"{flag_of(f)} missing from `{command} --help`"


def test_choices_come_from_the_registries():
    from clipcbm.heads.cbm.config import LOSSES

    res = runner.invoke(app, ["fit-head", "--help"], env={"COLUMNS": "400"})
    assert all(loss in res.output for loss in LOSSES)
    bad = runner.invoke(app, ["fit-head", "--cache", "x.zarr", "--loss", "nope"])
    assert bad.exit_code == 2 and "Invalid value for '--loss'" in bad.output


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    res = runner.invoke(app, ["fit-head", "--cache", str(tmp_path / "none.zarr")])
    assert res.exit_code == 2 and res.output.startswith("error: ")
    import clipcbm.heads.cbm.train as train

    def bug(cfg):
        raise ValueError("internal broadcast error")  # not a ClipCbmError: a bug

    monkeypatch.setattr(train, "run", bug)
    res = runner.invoke(app, ["fit-head", "--cache", str(tmp_path / "none.zarr")])
    assert res.exit_code == 1 and isinstance(res.exception, ValueError)


def test_config_value_errors_are_the_stage_config_error():
    from clipcbm.heads.errors import HeadsConfigError
    from clipcbm.pipeline.errors import PipelineConfigError

    with pytest.raises(HeadsConfigError, match="--batch-size must be an integer >= 1"):
        FitHeadConfig(cache="c.zarr", batch_size=0)
    with pytest.raises(PipelineConfigError, match="--shard-rows .* multiple of --chunk-rows"):
        EmbedConfig(dataset="cifar10", root="r", out="o", concepts="c", shard_rows=6000)


def test_atomic_directory_swaps_in_whole_or_not_at_all(tmp_path):
    final = tmp_path / "d"
    with atomic.directory(final) as tmp:
        (tmp / "a").write_text("1")
    assert (final / "a").read_text() == "1"
    with pytest.raises(RuntimeError), atomic.directory(final) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("crash")
    assert (final / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    with atomic.directory(final) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["b"]
