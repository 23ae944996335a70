"""Issue 17, item 6 ("small ones"): each fix with its test.

1 concepts offline fails at once   2 an empty directory --out   3 --out under a file
4 incomplete-cache message names CLI steps   5 an HDF5 run in progress in stage two
6 fit-sae names its NaN rows   7 sae-inspect keeps its tables   8 results keyed to the cache read
9 progress bars in a log file   10 the compare PNG's labels do not overlap
"""

from __future__ import annotations

import ast
import io
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import tests._dataset_factories as fx
from clipcbm.cache import CacheWriter, open_cache, verify_cache, write_cache
from clipcbm.cache.errors import CacheConfigError, IncompleteCacheError
from clipcbm.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
CONCEPTS = [f"concept {i}" for i in range(6)]
CLASSES = ["cat", "dog", "bird"]


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _arrays(n_train=64, n_test=32, seed=0, e=8, **extra):
    rng = np.random.default_rng(seed)
    split = lambda n: {"image_emb": rng.normal(size=(n, e)), "labels": rng.integers(0, 3, n)}  # noqa: E731
    return {"splits": {"train": split(n_train), "test": split(n_test)}, "concepts": CONCEPTS,
            "classes": CLASSES, "concept_emb": rng.normal(size=(len(CONCEPTS), e)),
            "class_emb": rng.normal(size=(len(CLASSES), e)), "shard_rows": 16, "chunk_rows": 8,
            **extra}  # fmt: skip


def _error_line(output: str) -> str:
    (line,) = [ln for ln in output.splitlines() if ln.startswith("error: ")]
    return line


# ------------------------------------------------------------- 1. concepts offline, at once


@pytest.fixture
def concept_inputs(tmp_path):
    (tmp_path / "classes.txt").write_text("dog\ncar\n")
    (tmp_path / "raw.txt").write_text("fur\nwheel\nengine\n")
    return ["concepts", "--classes", tmp_path / "classes.txt", "--source", "file",
            "--input", tmp_path / "raw.txt", "--out", tmp_path / "c.csv", "--device", "cpu",
            "--no-progress"]  # fmt: skip


@pytest.fixture
def no_hub_download(monkeypatch):
    """Loading a sentence model by hub id fails the test: offline must be decided before."""
    import clipcbm.pipeline.hub as hub

    def loader(model, *args, **kwargs):
        pytest.fail(f"SentenceTransformer({model!r}) called offline: it would retry for ~75 s")

    fake = types.ModuleType("sentence_transformers")
    fake.SentenceTransformer = loader
    monkeypatch.setitem(sys.modules, "sentence_transformers", fake)
    monkeypatch.setattr(hub, "_cached", lambda model, revision: False)  # an empty local cache


def _warm_imports() -> None:
    """Import what the run imports anyway (torch for the device), so the clock measures the
    offline decision, not a cold import on a busy machine."""
    import torch  # noqa: F401

    import clipcbm.core.device  # noqa: F401
    import clipcbm.pipeline.concepts.run  # noqa: F401


def test_concepts_without_sim_model_fails_at_once_when_the_hub_is_unresolvable(
    concept_inputs, no_hub_download, monkeypatch
):
    import clipcbm.pipeline.hub as hub

    for k in hub.OFFLINE_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(hub, "host_resolves", lambda host: False)  # no DNS: offline
    _warm_imports()
    t0 = time.perf_counter()
    res = _cli(*concept_inputs)
    assert time.perf_counter() - t0 < 5
    assert res.exit_code == 2, res.output
    line = _error_line(res.output)
    assert "sentence-transformers/all-mpnet-base-v2" in line and "cannot be resolved" in line
    assert "--sim-model /path/to/model" in line and "--model /path/to/clip" not in line


def test_concepts_with_hf_hub_offline_fails_at_once_too(
    concept_inputs, no_hub_download, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _warm_imports()
    t0 = time.perf_counter()
    res = _cli(*concept_inputs)
    assert time.perf_counter() - t0 < 5
    assert res.exit_code == 2 and "HF_HUB_OFFLINE is set" in _error_line(res.output)


def test_the_llm_source_takes_the_same_offline_decision(monkeypatch):
    import clipcbm.pipeline.hub as hub
    from clipcbm.pipeline.concepts.llm import HFGenerator

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_cached", lambda model, revision: False)
    with pytest.raises(hub.ModelUnavailableError, match="--llm /path/to/model"):
        HFGenerator.load("some-org/some-llm", device="cpu")


# --------------------------------------------------- 2 and 3. what embed --out can be


def test_an_empty_directory_is_a_fresh_zarr_cache(tmp_path):
    out = tmp_path / "made-by-hand"
    out.mkdir()
    assert verify_cache(write_cache(out, **_arrays())) == []


def test_an_hdf5_out_that_is_a_directory_is_a_clear_error(tmp_path):
    out = tmp_path / "c.h5"
    out.mkdir()
    with pytest.raises(CacheConfigError, match=r"is an empty directory, but an HDF5 cache is one "
                       r"file: give a file path such as .*c\.h5/cache\.h5"):  # fmt: skip
        write_cache(out, format="hdf5", **_arrays())
    assert out.is_dir() and not any(out.iterdir())  # left as it was


@pytest.mark.parametrize("name", ["sub.zarr", "sub.h5", "deeper/sub.zarr"])
def test_out_under_a_regular_file_is_a_clear_error(tmp_path, name):
    (tmp_path / "afile.txt").write_text("notes\n")
    out = tmp_path / "afile.txt" / name
    w = CacheWriter(out, identity={"x": 1}, metadata={"embed_dim": 4}, split_sizes={"train": 4},
                    embed_dim=4)  # fmt: skip
    which = "the parent" if "/" not in name else "a parent folder"
    with pytest.raises(CacheConfigError, match=f"{which} of --out, .*afile.txt, is a file, not a "
                       "directory") as e:  # fmt: skip
        w.prepare()
    assert "resumes" not in str(e.value) and "File exists" not in str(e.value)


def test_embed_cli_on_an_empty_dir_an_h5_dir_and_a_path_under_a_file(tiny_clip_dir, tmp_path):
    root = fx.make_imagefolder(tmp_path / "data")
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("red fur\nwings\n")

    def embed(out):
        return _cli("embed", "--dataset", "imagefolder", "--root", root, "--out", out,
                    "--concepts", concepts, "--model", tiny_clip_dir, "--device", "cpu",
                    "--workers", "0", "--no-progress")  # fmt: skip

    empty = tmp_path / "empty-dir"
    empty.mkdir()
    res = embed(empty)
    assert res.exit_code == 0, res.output
    assert verify_cache(empty) == [] and "wrote" in res.output
    (tmp_path / "c.h5").mkdir()
    res = embed(tmp_path / "c.h5")
    assert res.exit_code == 2 and "HDF5 cache is one file" in _error_line(res.output)
    (tmp_path / "afile.txt").write_text("notes\n")
    res = embed(tmp_path / "afile.txt" / "sub.zarr")
    line = _error_line(res.output)
    assert res.exit_code == 2 and "afile.txt" in line and "is a file, not a directory" in line
    assert "resumes" not in line


# ------------------------------------------- 4 and 5. unfinished caches, said from the CLI


def _half_written(out: Path) -> Path:
    """A cache whose run stopped after shard 0 of 3 (zarr: at out; hdf5: staged beside it)."""
    w = CacheWriter(out, identity={"x": 1}, metadata={"embed_dim": 4}, split_sizes={"train": 40},
                    embed_dim=4, chunk_rows=8, shard_rows=16)  # fmt: skip
    assert w.prepare() == "new"
    emb = np.random.default_rng(0).normal(size=(16, 4))
    w.write_shard("train", 0, image_emb=emb / np.linalg.norm(emb, axis=1, keepdims=True),
                  norms=np.ones(16), labels=np.zeros(16), ids=range(16),
                  ok=np.ones(16, bool))  # fmt: skip
    return out


def test_an_incomplete_cache_names_the_command_to_finish_it_not_a_python_kwarg(tmp_path):
    out = _half_written(tmp_path / "c.zarr")
    with pytest.raises(IncompleteCacheError) as e:
        open_cache(out)
    msg = str(e.value)
    assert "allow_incomplete" not in msg
    assert "1 / 3 shards done" in msg and "Re-run the same `clipcbm embed` command" in msg
    assert f"clipcbm cache info {out}" in msg
    res = _cli("fit-head", "--cache", out, "--loss", "probe", "--no-progress")
    assert res.exit_code == 2
    line = _error_line(res.output)
    assert "allow_incomplete" not in line and "clipcbm embed" in line
    assert open_cache(out, allow_incomplete=True).metadata["complete"] is False  # Python API


def test_stage_two_says_an_hdf5_cache_is_in_progress_like_cache_info(tmp_path):
    out = _half_written(tmp_path / "c.h5")
    assert not out.exists() and (tmp_path / "c.h5.partial.zarr").is_dir()
    with pytest.raises(IncompleteCacheError, match=r"still in progress \(1 / 3 shards done"):
        open_cache(out)
    res = _cli("fit-head", "--cache", out, "--loss", "probe", "--no-progress")
    line = _error_line(res.output)
    assert res.exit_code == 2 and "in progress" in line and "1 / 3 shards done" in line
    assert "no cache" not in line and f"Re-run the same `clipcbm embed ... --out {out}`" in line
    info = _cli("cache", "info", out)
    assert "shards 1 / 3 done" in info.output and "in progress" in info.output
    res = _cli("fit-head", "--cache", tmp_path / "never.h5", "--no-progress")
    assert "no cache at" in _error_line(res.output)  # nothing staged: run embed first


# -------------------------------------------------------------- 6. fit-sae names NaN rows


NAN_WRITE = pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # unit rows of NaN


@NAN_WRITE
def test_fit_sae_names_the_nan_rows_and_their_count(tmp_path):
    a = _arrays(n_train=64)
    emb = a["splits"]["train"]["image_emb"]
    emb[[5, 9, 40]] = np.nan  # two in shard 0 (rows 0..15), one in shard 2
    cache = write_cache(tmp_path / "c.zarr", **a)
    res = _cli("fit-sae", "--cache", cache, "--out", tmp_path / "sae", "--expansion", "2",
               "--k", "2", "--max-steps", "3", "--no-progress", "--device", "cpu")  # fmt: skip
    assert res.exit_code == 2, res.output
    line = _error_line(res.output)
    assert "3 row(s) with non-finite" in line and "(rows 5, 9, 40)" in line
    assert "0..15" not in line and "cache verify" in line


@NAN_WRITE
def test_more_than_five_nan_rows_are_counted_and_the_first_named(tmp_path):
    from clipcbm.heads.errors import HeadDataError
    from clipcbm.heads.sae.data import load_train_rows

    a = _arrays(n_train=64)
    a["splits"]["train"]["image_emb"][[1, 2, 3, 20, 21, 22, 50]] = np.inf
    want = r"7 row\(s\).*\(rows 1, 2, 3, 20, 21, \.\.\.\)"
    with (
        open_cache(write_cache(tmp_path / "c.zarr", **a)) as c,
        pytest.raises(HeadDataError, match=want),
    ):
        load_train_rows(c, "train", None, device="cpu", stream="off", block_rows=16,
                        buffer_blocks=1)  # fmt: skip


# ------------------------------------------------------- 7. sae-inspect keeps its tables


def test_sae_inspect_refuses_an_existing_table_unless_overwrite(tmp_path):
    cache = write_cache(tmp_path / "c.zarr", **_arrays(n_train=128))
    sae = tmp_path / "sae"
    res = _cli("fit-sae", "--cache", cache, "--out", sae, "--expansion", "2", "--k", "2",
               "--max-steps", "5", "--no-progress", "--device", "cpu")  # fmt: skip
    assert res.exit_code == 0, res.output
    out = tmp_path / "ins"
    args = ["sae-inspect", "--sae", sae, "--cache", cache, "--out", out, "--device", "cpu",
            "--n-latents", "2", "--top", "2"]  # fmt: skip
    assert _cli(*args).exit_code == 0
    (out / "inspect.csv").write_text("kept,by,hand\n")
    res = _cli(*args)
    assert res.exit_code == 2
    line = _error_line(res.output)
    assert "inspect.csv" in line and "--overwrite" in line
    assert (out / "inspect.csv").read_text() == "kept,by,hand\n"  # untouched
    res = _cli(*args, "--overwrite")
    assert res.exit_code == 0, res.output
    assert (out / "inspect.csv").read_text().startswith("view,")


# ------------------------------------------------- 8. results keyed to the cache actually read


def test_evaluating_the_h5_twin_does_not_refresh_the_zarr_results(tmp_path):
    a = _arrays()
    zarr_cache = write_cache(tmp_path / "c.zarr", **a)
    h5_cache = write_cache(tmp_path / "c.h5", format="hdf5", **a)
    with open_cache(zarr_cache) as z, open_cache(h5_cache) as h:
        assert z.fingerprint == h.fingerprint  # twins: the same content, other copies
    head = tmp_path / "head"
    res = _cli("fit-head", "--cache", zarr_cache, "--out", head, "--loss", "probe",
               "--no-progress", "--device", "cpu", "--probe-max-iter", "5")  # fmt: skip
    assert res.exit_code == 0, res.output
    out = tmp_path / "ev"
    args = ["evaluate", "--head", head, "--out", out, "--no-progress", "--device", "cpu"]
    assert _cli(*args, "--cache", zarr_cache).exit_code == 0
    before = (out / "metrics_test.json").read_text()
    assert _cli(*args, "--cache", zarr_cache).exit_code == 0  # the same cache: refreshed
    res = _cli(*args, "--cache", h5_cache)
    assert res.exit_code == 2
    line = _error_line(res.output)
    assert "differs in: cache, cache_format" in line and "--overwrite" in line
    record = json.loads((out / "metrics_test.json").read_text())
    assert record["settings"]["cache"] == str(zarr_cache.resolve())
    assert record["settings"]["cache_format"] == "zarr" and before
    assert _cli(*args, "--cache", h5_cache, "--out", tmp_path / "ev-h5").exit_code == 0
    res = _cli("cms-eval", "--cache", zarr_cache, "--out", tmp_path / "cms", "--no-progress")
    assert res.exit_code == 0, res.output
    res = _cli("cms-eval", "--cache", h5_cache, "--out", tmp_path / "cms", "--no-progress")
    assert res.exit_code == 2 and "differs in: cache, cache_format" in res.output


# --------------------------------------------------------- 9. progress bars in a log file


def test_a_bar_on_a_file_writes_a_few_lines_and_no_carriage_returns():
    from clipcbm.core.progress import bar

    log = io.StringIO()
    for _ in bar(range(5000), desc="work", file=log, mininterval=0):
        pass
    with bar(total=40, desc="imgs", unit="img", file=log, dynamic_ncols=True) as b:
        for _ in range(40):
            b.update(1)
            b.set_postfix(loss="0.1")
    for _ in bar(iter(range(30)), desc="no total", file=log, mininterval=0):
        pass
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert sum(ln.startswith("work:") for ln in lines) == 11  # 0 %, 10 %, ..., 100 %
    assert lines[10].startswith("work: 100%") and "5000/5000" in lines[10]
    assert sum(ln.startswith("imgs:") for ln in lines) <= 11 and "40/40" in lines[-3]
    assert [ln.split()[2] for ln in lines[-2:]] == ["0it", "30it"]
    off = io.StringIO()
    for _ in bar(range(10), enabled=False, file=off):
        pass
    assert off.getvalue() == ""


def test_a_command_with_progress_on_and_stderr_not_a_tty_writes_no_frames(tmp_path):
    cache = write_cache(tmp_path / "c.zarr", **_arrays(n_train=128))
    res = _cli("fit-sae", "--cache", cache, "--out", tmp_path / "sae", "--expansion", "2",
               "--k", "2", "--max-steps", "40", "--device", "cpu", "--progress")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stderr.count("\r") == 0
    bar_lines = [ln for ln in res.stderr.splitlines() if ln.startswith("fit-sae:")]
    assert 2 <= len(bar_lines) <= 12 and "40/40" in bar_lines[-1]


def test_every_progress_bar_is_made_by_core_progress():
    """No module of the stages builds a tqdm itself (it would draw \\r frames into logs)."""
    offenders = []
    for pkg in ("pipeline", "heads", "cache", "core"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path == ROOT / "core" / "progress.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom):
                    modules = [node.module or ""]
                elif isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                else:
                    continue
                if any(m.split(".")[0] == "tqdm" for m in modules):
                    offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


# ----------------------------------------------------- 10. the compare PNG's labels


def _overlaps(boxes) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if boxes[i].overlaps(boxes[j])]  # fmt: skip


@pytest.mark.parametrize("n_rows", [1, 5, 14])
def test_the_compare_figure_labels_do_not_overlap(tmp_path, monkeypatch, n_rows):
    import clipcbm.heads.compare as compare

    names = ["zero-shot", "cms", "description", "probe", "l1", "contrastive", "sparse",
             "sparse-elastic-net", "l1-elastic-net", "label-free-cbm", "random-concepts",
             "sae-dense", "sae-elastic-net-over-a-really-long-method-name",
             "adapter-probe"][:n_rows]  # fmt: skip
    nan = float("nan")
    rng = np.random.default_rng(0)
    rows = []
    for i, m in enumerate(names):
        trained = m not in ("zero-shot", "cms", "description", "probe", "adapter-probe")
        rows.append({"method": m, "top1": 0.93 + 0.002 * rng.normal(), "top5": 0.99,
                     "acc_nec5": nan, "act_sparsity": 0.95 if trained else nan,
                     "nec": 5.0 if trained and i % 2 else (480.0 if trained else nan),
                     "seconds": 1.0, "val_top1": 0.9})  # fmt: skip
    table = pd.DataFrame(rows, columns=list(compare.COLUMNS))
    figures = []
    real = compare.save_figure
    monkeypatch.setattr(compare, "save_figure", lambda fig, path, dpi: figures.append(fig)
                        or real(fig, path, dpi))  # fmt: skip
    path = compare._plot(table, tmp_path / "results.png", "compare on imagenet-vit-l14.zarr")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = figures
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    fig_box = fig.bbox
    first = fig.axes[0]
    labels = sorted((t for t in first.get_yticklabels() if t.get_text()),
                    key=lambda t: -t.get_position()[1])  # top to bottom  # fmt: skip
    assert [t.get_text().replace("\n", "") for t in labels] == names
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert _overlaps(boxes) == []
    for b in boxes:  # inside the figure, not cut off at its left edge
        assert b.x0 >= fig_box.x0 - 1 and b.y0 >= fig_box.y0 - 1 and b.y1 <= fig_box.y1 + 1
    for ax in fig.axes:  # the values written beside the dots do not collide either
        texts = [c for c in ax.texts if c.get_text()]
        assert len(texts) == n_rows
        assert _overlaps([t.get_window_extent(renderer) for t in texts]) == []
        ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        assert _overlaps(ticks) == []
