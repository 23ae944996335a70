"""Every benchmark script runs in its `--quick` mode and writes its JSON with provenance.

Issue 18 (items 2 and 8): a benchmark that no longer runs is caught the day it breaks. Every
`benchmarks/*.py` is a benchmark unless listed in NOT_BENCHMARKS (found by glob, so a new
script is covered without touching this file). Each one runs as

    python benchmarks/X.py --quick --out TMP/X.json [FLAGS[X]]

and must exit 0 and write a JSON whose `provenance` (benchmarks/_provenance.py) says
`quick: true` and records the commit, the clean flag, the command, threads and load average.
The scripts run in a pool of two subprocesses, one torch thread each (2-core CI machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests._bench import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


_provenance = load_benchmark("_provenance")
_smoke = load_benchmark("_smoke")  # the lists: which scripts, their CPU flags, what they need
NOT_BENCHMARKS, CANNOT_RUN_HERE, FLAGS = _smoke.NOT_BENCHMARKS, _smoke.CANNOT_RUN_HERE, _smoke.FLAGS
NEEDS_SHARED, SLOW_FIRST = _smoke.NEEDS_SHARED, _smoke.SLOW_FIRST
TIMEOUT_S, WORKERS, skip_reason = _smoke.TIMEOUT_S, _smoke.WORKERS, _smoke.skip_reason

PROVENANCE_KEYS = ("commit", "clean", "command", "threads", "load_average")

SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name not in NOT_BENCHMARKS)


def _param(name: str):
    reason = skip_reason(name)
    return pytest.param(name, marks=pytest.mark.skip(reason=reason) if reason else ())


def _run(name: str, out_dir: Path) -> dict:
    out = out_dir / f"{Path(name).stem}.json"
    cmd = [sys.executable, str(BENCH / name), "--quick", "--out", str(out), *FLAGS.get(name, [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)  # fmt: skip
        rc, log = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        rc, log = "timeout", f"{e.stdout or ''}{e.stderr or ''}"
    return {"cmd": cmd, "rc": rc, "log": log, "out": out, "seconds": time.perf_counter() - t0}


@pytest.fixture(scope="module")
def quick_runs(request, tmp_path_factory) -> dict:
    """Runs every selected, not skipped script once, two at a time; name -> its run."""
    chosen = {
        item.callspec.params["script"]
        for item in request.session.items
        if getattr(item, "callspec", None) is not None
        and item.originalname == "test_quick_run"
        and skip_reason(item.callspec.params["script"]) is None
    }
    order = [s for s in SLOW_FIRST if s in chosen] + sorted(chosen - set(SLOW_FIRST))
    out_dir = tmp_path_factory.mktemp("benchmarks_quick")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        runs = dict(zip(order, pool.map(lambda s: _run(s, out_dir), order), strict=True))
    times = ", ".join(f"{s} {r['seconds']:.1f} s" for s, r in runs.items())
    print(f"\nquick runs ({time.perf_counter() - t0:.1f} s wall): {times}")
    return runs


@pytest.mark.parametrize("script", [_param(s) for s in SCRIPTS])
def test_quick_run(script, quick_runs):
    r = quick_runs[script]
    tail = r["log"][-3000:]
    assert r["rc"] == 0, f"{' '.join(r['cmd'])} -> rc {r['rc']} in {r['seconds']:.0f} s:\n{tail}"
    assert r["out"].is_file(), f"{script} --quick --out {r['out']} wrote no JSON:\n{tail}"
    body = json.loads(r["out"].read_text())
    prov = body.get("provenance")
    assert isinstance(prov, dict), f"{script}: no provenance block (write through _provenance)"
    assert prov.get("quick") is True, f"{script}: provenance.quick is {prov.get('quick')!r}"
    missing = [k for k in PROVENANCE_KEYS if k not in prov]
    assert not missing, f"{script}: provenance lacks {missing}"
    assert isinstance(prov["clean"], bool) and prov["commit"]
    assert str(BENCH / script) in prov["command"] and "--quick" in prov["command"]
    assert len(prov["load_average"]["start"]) == 3 and len(prov["load_average"]["end"]) == 3


def test_lists_name_existing_scripts():
    """A renamed or removed script must leave the lists above too."""
    here = {p.name for p in BENCH.glob("*.py")}
    for name, listed in [("NOT_BENCHMARKS", set(NOT_BENCHMARKS)), ("FLAGS", set(FLAGS)),
                         ("NEEDS_SHARED", NEEDS_SHARED),
                         ("CANNOT_RUN_HERE", set(CANNOT_RUN_HERE)),
                         ("SLOW_FIRST", set(SLOW_FIRST))]:  # fmt: skip
        assert listed <= here, f"{name} names missing scripts: {sorted(listed - here)}"


# ------------------------------------------------------------------ benchmarks/_provenance.py


def _parser(default_out, **kw):
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--modes", nargs="+", default=["a", "b"])
    return _provenance.add_common_args(p, default_out, **kw)


def test_quick_defaults_and_out(tmp_path):
    real = tmp_path / "x.json"
    quick = {"n": 10, "modes": ["a"]}
    a = _provenance.parse_args(_parser(real, quick=quick), [])
    assert (a.n, a.modes, a.quick, a.out) == (50_000, ["a", "b"], False, real)
    a = _provenance.parse_args(_parser(real, quick=quick), ["--quick"])
    assert (a.n, a.modes, a.out) == (10, ["a"], tmp_path / "x.quick.json")
    a = _provenance.parse_args(_parser(real, quick=quick), ["--n", "7", "--quick"])
    assert (a.n, a.modes) == (7, ["a"])  # a flag given explicitly wins over the quick default
    p = _parser(real, quick=quick, out_aliases=("--json",))
    assert _provenance.parse_args(p, ["--quick", "--json", "y.json"]).out == Path("y.json")
    by_args = _parser(lambda args: tmp_path / f"x-{args.n}.json")
    assert _provenance.parse_args(by_args, ["--n", "3"]).out == tmp_path / "x-3.json"


def test_run_writes_whole_file_atomically(tmp_path):
    out = tmp_path / "r" / "x.json"
    out.parent.mkdir()
    out.write_text(json.dumps({"old": 1, "environment": {"stale": True}}))
    path = _provenance.Run(quick=True).write(out, {"b": 2, "a": 1}, sort_keys=True)
    body = json.loads(path.read_text())
    assert set(body) == {"a", "b", "provenance"}  # nothing merged from the old file
    assert body["provenance"]["quick"] is True
    assert list(out.parent.iterdir()) == [out]  # no temporary left behind


def test_sae_partial_run_never_writes_sae_json():
    import argparse

    sae = load_benchmark("sae")
    ns = argparse.Namespace
    assert sae.default_out(ns(part=list(sae.PARTS))).name == "sae.json"
    assert sae.default_out(ns(part=["tuning", "real"])).name == "sae.part-real-tuning.json"
    assert _provenance.quick_out(sae.default_out(ns(part=["synthetic"])), True).name == (
        "sae.part-synthetic.quick.json"
    )


def test_changed_results_do_not_make_a_run_dirty(monkeypatch):
    """run_all.sh rewrites benchmarks/results/ one JSON after the other: those outputs do not
    make the next benchmark's provenance dirty, but a changed source file does."""
    status = " M benchmarks/results/sae.json\n M benchmarks/results/cms_speed.json\n"
    monkeypatch.setattr(_provenance, "_git", lambda *a, strip=True: "abc" if "rev-parse" in a
                        else status)  # fmt: skip
    state = _provenance.git_state()
    assert state["clean"] is True and state["results_changed"] == 2 and not state["dirty_files"]
    status += " M heads/cbm/train.py\n"
    state = _provenance.git_state()
    assert state["clean"] is False and state["dirty_files"] == ["heads/cbm/train.py"]
