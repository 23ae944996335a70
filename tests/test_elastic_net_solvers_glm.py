"""benchmarks/elastic_net_solvers.py without glm-saga: a full run refuses before any work (no
table with an ERROR row for it); a quick smoke run leaves it out and records that it did."""

from __future__ import annotations

import json

import pytest

from tests._bench import load_benchmark

ens = load_benchmark("elastic_net_solvers")


@pytest.fixture
def no_glm(monkeypatch):
    calls = []
    monkeypatch.setattr(ens, "glm_saga_missing", lambda: "ModuleNotFoundError: glm_saga")

    def fake_bench(name, spec, ep, it, tol, skip, ladder=()):
        calls.append(list(skip))
        return {"size": name, "rows": []}

    monkeypatch.setattr(ens, "bench_size", fake_bench)
    monkeypatch.setattr(ens, "print_table", lambda sizes: None)
    return calls


def test_full_run_refuses_before_any_work(no_glm, tmp_path):
    out = tmp_path / "ens.json"
    with pytest.raises(SystemExit) as e:
        ens.main(["--sizes", "quick", "--out", str(out)])
    msg = str(e.value)
    assert "glm-saga cannot run here" in msg and "pip install glm-saga" in msg
    assert "--skip glm-saga" in msg
    assert no_glm == [] and not out.exists()


def test_skip_flag_runs_the_other_solvers(no_glm, tmp_path):
    out = tmp_path / "ens.json"
    ens.main(["--sizes", "quick", "--skip", "glm-saga", "--out", str(out)])
    assert no_glm == [["glm-saga"]]
    assert json.loads(out.read_text())["setup"]["skipped"] == ["glm-saga"]


def test_quick_run_leaves_it_out_and_says_so(no_glm, tmp_path, capsys):
    out = tmp_path / "ens.json"
    ens.main(["--quick", "--out", str(out)])
    assert no_glm == [["glm-saga"]]
    assert json.loads(out.read_text())["setup"]["skipped"] == ["glm-saga"]
    assert "glm-saga left out" in capsys.readouterr().out
