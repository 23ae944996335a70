"""Never lose a user's file or a run (issue 17, items 1 and 2): `--overwrite` replaces only an
artifact of the command's own kind; one writer per output (the second run exits 2 naming the
holder, a kill -9 never blocks the retry)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clipcbm.cache import write_cache
from clipcbm.cli import app
from clipcbm.core.outputs import (
    OutputBusyError,
    OutputLock,
    OutputNotOursError,
    OutputPathError,
    Ownership,
    check_output_path,
    check_replaceable,
    lock_path,
)
from tests import _dataset_factories as fx

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def small_cache(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    e, classes, concepts = 8, ["cat", "dog", "bird"], [f"concept {i}" for i in range(6)]
    splits = {s: {"image_emb": rng.normal(size=(n, e)), "labels": rng.integers(0, 3, n)}
              for s, n in (("train", 60), ("test", 30))}  # fmt: skip
    out = tmp_path / "c.zarr"
    write_cache(out, splits=splits, concepts=concepts, classes=classes,
                concept_emb=rng.normal(size=(6, e)), class_emb=rng.normal(size=(3, e)),
                shard_rows=32, chunk_rows=16)  # fmt: skip
    return out


def _project(tmp_path) -> Path:
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "thesis.tex").write_text("\\documentclass{article}")
    (proj / "data" / "x.csv").write_text("a,b\n1,2\n")
    return proj


def _intact(proj: Path) -> None:
    assert (proj / "thesis.tex").read_text() == "\\documentclass{article}"
    assert (proj / "data" / "x.csv").read_text() == "a,b\n1,2\n"


FIT = ("fit-head", "--loss", "l1", "--device", "cpu", "--max-steps", "5", "--no-progress")


def test_fit_head_overwrite_never_deletes_a_project_folder(small_cache, tmp_path):
    proj = _project(tmp_path)
    r = _cli(*FIT, "--cache", small_cache, "--out", proj, "--overwrite")
    assert r.exit_code == 2, r.output
    assert "is not a head directory" in r.output and "nothing was deleted" in r.output
    assert "thesis.tex" in r.output
    _intact(proj)


def test_fit_head_replaces_its_own_head_only_with_overwrite(small_cache, tmp_path):
    head = tmp_path / "head"
    assert _cli(*FIT, "--cache", small_cache, "--out", head).exit_code == 0
    first = (head / "config.json").read_text()
    r = _cli(*FIT, "--cache", small_cache, "--out", head)
    assert r.exit_code == 2 and "holds a head directory already; pass --overwrite" in r.output
    r = _cli(*FIT, "--cache", small_cache, "--out", head, "--overwrite", "--seed", "1")
    assert r.exit_code == 0, r.output
    assert (head / "config.json").read_text() != first
    # a head the user added a file to is not replaced: the file is not ours to delete
    (head / "notes.txt").write_text("mine")
    r = _cli(*FIT, "--cache", small_cache, "--out", head, "--overwrite")
    assert r.exit_code == 2 and "notes.txt" in r.output and "did not write" in r.output
    assert (head / "notes.txt").read_text() == "mine"
    assert not lock_path(head).exists()  # a finished run removes its lock file


def test_out_dot_is_one_line_not_a_traceback(small_cache, tmp_path, monkeypatch):
    proj = _project(tmp_path)
    monkeypatch.chdir(proj)
    r = _cli(*FIT, "--cache", small_cache, "--out", ".", "--overwrite")
    assert r.exit_code == 2, r.output
    assert "is the current directory" in r.output and "Traceback" not in r.output
    _intact(proj)


def test_out_under_a_file_is_refused(tmp_path):
    (tmp_path / "afile.txt").write_text("x")
    with pytest.raises(OutputPathError, match="is a file, not a directory"):
        check_output_path(tmp_path / "afile.txt" / "sub.zarr")


def test_fit_sae_and_fit_adapter_never_delete_a_project_folder(small_cache, tmp_path):
    proj = _project(tmp_path)
    r = _cli("fit-sae", "--cache", small_cache, "--out", proj, "--overwrite", "--device", "cpu",
             "--no-progress")  # fmt: skip
    assert r.exit_code == 2 and "is not an SAE directory" in r.output, r.output
    _intact(proj)
    r = _cli("fit-adapter", "--cache", small_cache, "--out", proj, "--overwrite", "--device",
             "cpu", "--no-progress")  # fmt: skip
    assert r.exit_code == 2 and "is not an adapter directory" in r.output, r.output
    _intact(proj)


def test_attribute_never_deletes_a_project_folder(tiny_clip_dir, tmp_path):
    proj = _project(tmp_path)
    img = fx.write_image(tmp_path / "img.png", 1, size=(32, 32))
    r = _cli("attribute", "--model", tiny_clip_dir, "--image", img, "--text", "a red square",
             "--out", proj, "--overwrite", "--device", "cpu", "--no-progress")  # fmt: skip
    assert r.exit_code == 2 and "is not an attribution directory" in r.output, r.output
    _intact(proj)


def test_ownership_rules(tmp_path):
    own = Ownership("a thing", "make-thing", lambda d: (d / "thing.json").is_file(),
                    frozenset({"thing.json", "data"}))  # fmt: skip
    d = tmp_path / "t"
    assert check_replaceable(d, own, overwrite=False, exists_error=FileExistsError) == "new"
    d.mkdir()
    assert check_replaceable(d, own, overwrite=False, exists_error=FileExistsError) == "new"
    (d / "thing.json").write_text("{}")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        check_replaceable(d, own, overwrite=False, exists_error=FileExistsError)
    assert check_replaceable(d, own, overwrite=True, exists_error=FileExistsError) == "replace"
    (d / "mine.txt").write_text("x")
    with pytest.raises(OutputNotOursError, match="mine.txt"):
        check_replaceable(d, own, overwrite=True, exists_error=FileExistsError)
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(OutputNotOursError, match="is a file"):
        check_replaceable(f, own, overwrite=True, exists_error=FileExistsError)


def test_lock_names_the_holder_and_is_released(tmp_path):
    out = tmp_path / "o"
    busy = pytest.raises(OutputBusyError, match=rf"pid {os.getpid()} .*fit-head --out o")
    with OutputLock(out, "fit-head --out o"), busy:
        OutputLock(out).acquire()
    with OutputLock(out):  # released: taken again at once
        pass
    assert not lock_path(out).exists()


def test_a_stale_lock_file_does_not_block(tmp_path):
    """What a kill -9 leaves: the file with its holder, but no lock on it."""
    out = tmp_path / "o"
    lock_path(out).write_text(json.dumps({"pid": 999999, "host": "h", "command": "x"}))
    with OutputLock(out):
        pass


# ---- real concurrent processes --------------------------------------------------------------


def _wait_for_lock(out: Path, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the first run ended before taking its lock"
        try:
            info = json.loads(lock_path(out).read_text())
            if info.get("pid") == proc.pid:
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError("the first run never took its lock")


def _race(base: list[str], out: Path) -> tuple[subprocess.CompletedProcess, subprocess.Popen]:
    """Start run 1, freeze it (SIGSTOP) while it holds the lock, run 2 to the end, thaw run 1."""
    first = subprocess.Popen([*base, "--out", str(out)], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_for_lock(out, first)
        os.kill(first.pid, signal.SIGSTOP)
        second = subprocess.run([*base, "--out", str(out)], env=ENV, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first.communicate(timeout=300)
    return second, first


def _embed_base(model: Path, root: Path, concepts: Path) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "embed", "--dataset", "imagefolder", "--root",
            str(root), "--concepts", str(concepts), "--model", str(model), "--device", "cpu",
            "--workers", "0", "--batch-size", "2", "--split", "test", "--no-progress"]  # fmt: skip


@pytest.fixture
def folder(tmp_path) -> tuple[Path, Path]:
    root = fx.make_imagefolder(tmp_path / "data", splits=("test",), classes=("a", "b"),
                               per_class=3)  # fmt: skip
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("red fur\nwings\n")
    return root, concepts


@pytest.mark.slow
@pytest.mark.parametrize("name", ["run.zarr", "run.h5"])
def test_two_embed_runs_on_one_output(tiny_clip_dir, folder, tmp_path, name):
    base = _embed_base(tiny_clip_dir, *folder)
    out = tmp_path / name
    second, first = _race(base, out)
    assert second.returncode == 2, second.stderr
    assert f"another run is writing {out}" in second.stderr
    assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    assert first.returncode == 0, first.stderr
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "cache", "verify", str(out)],
                          env=ENV, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert not lock_path(out).exists()


@pytest.mark.slow
def test_two_fit_head_runs_on_one_output(small_cache, tmp_path):
    base = [sys.executable, str(ROOT / "cli.py"), *FIT, "--cache", str(small_cache)]
    out = tmp_path / "head"
    second, first = _race(base, out)
    assert second.returncode == 2, second.stderr
    assert f"another run is writing {out}" in second.stderr and f"pid {first.pid}" in second.stderr
    assert first.returncode == 0, first.stderr
    assert json.loads((out / "config.json").read_text())["kind"]
    assert not lock_path(out).exists()


@pytest.mark.slow
def test_kill_9_while_holding_the_lock_does_not_block_the_retry(tiny_clip_dir, folder, tmp_path):
    base = _embed_base(tiny_clip_dir, *folder)
    out = tmp_path / "run.zarr"
    proc = subprocess.Popen([*base, "--out", str(out)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    _wait_for_lock(out, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock_path(out).exists()  # the file stays behind, the lock does not
    retry = subprocess.run([*base, "--out", str(out)], env=ENV, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert retry.returncode == 0, retry.stderr
    assert not lock_path(out).exists()


@pytest.mark.parametrize("command", ["cms-eval", "compare", "fit-sae", "knn-eval"])
def test_every_writing_command_is_refused_while_another_run_holds_its_output(
    small_cache, tmp_path, command
):
    """The CLI locks each command's output for the run (core.cli): here a held lock stands for a
    concurrent run; the command exits 2 naming the holder and writes nothing."""
    out = tmp_path / "out"
    with OutputLock(out, "cli.py some-run --out out"):
        r = _cli(command, "--cache", small_cache, "--out", out, "--device", "cpu")
    assert r.exit_code == 2, r.output
    assert f"another run is writing {out}" in r.output and "some-run" in r.output
    assert not out.exists()


def test_compare_overwrite_never_touches_a_project_folder(small_cache, tmp_path):
    proj = _project(tmp_path)
    (proj / "results.md").write_text("my own notes")
    r = _cli("compare", "--cache", small_cache, "--out", proj, "--overwrite", "--device", "cpu")
    assert r.exit_code == 2 and "is not a compare directory" in r.output, r.output
    _intact(proj)
    assert (proj / "results.md").read_text() == "my own notes"


def test_a_failed_run_leaves_no_folder_made_for_its_lock(small_cache, tmp_path):
    out = tmp_path / "new" / "deeper" / "head"
    r = _cli(*FIT, "--cache", small_cache, "--out", out, "--topk", "1000")  # refused: |D| = 6
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "new").exists()
