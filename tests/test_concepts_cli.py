"""`cli.py concepts` through typer's CliRunner: --source file with a real offline sentence
model, --source conceptnet from a recorded response cache, and user-facing errors."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from clipcbm.cli import app
from clipcbm.pipeline.concepts.conceptnet import ConceptNetAPI, conceptnet_candidates
from clipcbm.pipeline.concepts.io import read_concept_file
from clipcbm.pipeline.concepts.similarity import SIMILARITIES

from .test_concepts_conceptnet import RecordedGetter
from .test_concepts_filter import minilm_dir

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["concepts", *args, "--no-progress"])


def test_file_source_with_real_sentence_model(tmp_path):
    model = minilm_dir()
    (tmp_path / "classes.txt").write_text("dog\ncar\n")
    (tmp_path / "raw.txt").write_text(
        "A dog\nfur\nthe fur\nengine\nengines\nwheel\na very long description of a dog's tail\n"
    )
    out = tmp_path / "concepts" / "mine.csv"
    res = invoke(
        "--classes",
        str(tmp_path / "classes.txt"),
        "--source",
        "file",
        "--input",
        str(tmp_path / "raw.txt"),
        "--out",
        str(out),
        "--sim-model",
        str(model),
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    assert "kept 3 of 7 candidates" in res.output
    kept = read_concept_file(out)
    assert set(kept.concepts) in ({"fur", "engine", "wheel"}, {"fur", "engines", "wheel"})
    assert read_concept_file(out.with_suffix(".txt")).sha256 == kept.sha256
    dropped = {r["concept"]: r for r in csv.DictReader(out.with_name("mine.dropped.csv").open())}
    assert {r["rule"] for r in dropped.values()} == {
        "duplicate",
        "length",
        "class_sim",
        "concept_sim",
    }
    assert dropped["dog"]["detail"] == "dog" and float(dropped["dog"]["value"]) > 0.99
    meta = json.loads(out.with_name("mine.meta.json").read_text())
    assert meta["sha256"] == kept.sha256 and meta["similarity"]["sim_model"] == str(model)
    assert meta["dropped"] == {
        "empty": 0,
        "duplicate": 1,
        "length": 1,
        "class_sim": 1,
        "concept_sim": 1,
        "low_mean_sim": 0,
    }
    again = invoke(
        "--classes",
        str(tmp_path / "classes.txt"),
        "--source",
        "file",
        "--input",
        str(tmp_path / "raw.txt"),
        "--out",
        str(out),
    )
    assert (
        again.exit_code == 2 and "already exist" in again.output and "--overwrite" in again.output
    )


def fake_sentence_model(*args, **kwargs):
    """Stands in for the sentence model: orthogonal one-hot rows (no two texts similar)."""
    vocab: dict[str, int] = {}

    def embed(texts):
        x = np.zeros((len(texts), 64), np.float32)
        for i, t in enumerate(texts):
            x[i, vocab.setdefault(t, len(vocab))] = 1.0
        return x

    return embed


def test_conceptnet_source_from_recorded_cache(tmp_path, monkeypatch):
    cache = tmp_path / "conceptnet-cache"
    conceptnet_candidates(
        ["dog", "cat"], ConceptNetAPI(cache, get=RecordedGetter(), sleep=lambda s: None)
    )
    monkeypatch.setitem(SIMILARITIES, "sentence", fake_sentence_model)
    (tmp_path / "classes.txt").write_text("dog\ncat\n")
    out = tmp_path / "cn.csv"
    res = invoke(
        "--classes",
        str(tmp_path / "classes.txt"),
        "--source",
        "conceptnet",
        "--conceptnet-cache",
        str(cache),
        "--offline",
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    rows = {r["concept"]: r for r in csv.DictReader(out.open())}
    assert rows["tail"] == {"concept": "tail", "class": "dog|cat", "source": "conceptnet:HasA"}
    assert rows["flea"]["source"] == "conceptnet:AtLocation"
    assert set(rows) == {
        "four legs",
        "tail",
        "animal",
        "domestic animal",
        "pet",
        "loyal",
        "flea",
        "kennel",
        "whiskers",
        "feline",
        "paw",
    }
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["source"]["backend"] == "api" and meta["source"]["requests"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "cifar10", "--source", "file", "--out", "x.csv"], "--source file needs"),
        (
            ["--dataset", "mnist", "--source", "conceptnet", "--out", "x.csv"],
            r"Invalid value for '--dataset'",  # choices come from the built-in lists
        ),
        (["--source", "conceptnet", "--out", "x.csv"], "exactly one of --dataset"),
        (
            ["--dataset", "cifar10", "--source", "conceptnet", "--out", "x.txt"],
            "out must end in .csv",
        ),
        (
            [
                "--dataset",
                "cifar10",
                "--source",
                "llm",
                "--llm",
                "m",
                "--input",
                "r.txt",
                "--out",
                "x.csv",
            ],
            "--input FILE only applies to --source file",
        ),
        (
            [
                "--dataset",
                "cifar10",
                "--source",
                "conceptnet",
                "--out",
                "x.csv",
                "--class-sim",
                "1.5",
            ],
            r"(--)?class.sim must be a cosine similarity in \[-1, 1\]",
        ),
    ],
)
def test_cli_errors(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    res = invoke(*args)
    assert res.exit_code == 2
    assert ("error:" in res.output or "Invalid value" in res.output) and re.search(
        message, res.output
    )
