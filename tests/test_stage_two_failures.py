"""Stage two fails cleanly (issue 17, items 4 and 5): a full disk is one line and leaves nothing
behind, a too-large fit is refused up front with the memory it needs, the zero-shot init solves
its ridge problem in the smaller (dual) form, knn-eval refuses k > bank and leaked splits, and
`attribute --cache` uses the cache's model."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from typer.testing import CliRunner

import clipcbm.core.atomic as atomic
import clipcbm.heads.cbm.train as cbm_train
import clipcbm.heads.io.weights_dir as weights_dir
from clipcbm.cache import write_cache
from clipcbm.cache.layout import DEFAULT_CHUNK_ROWS, DEFAULT_SHARD_ROWS
from clipcbm.cli import app
from clipcbm.core.disk import is_disk_full, os_errno
from tests.test_reliability import _arrays as _reliability_arrays

runner = CliRunner()
CLASSES = ["cat", "dog", "bird"]
GiB = 2**30


def _arrays(**kw):
    """The reliability tests' planted-free arrays, in the writer's default shard layout."""
    return _reliability_arrays(shard_rows=DEFAULT_SHARD_ROWS, chunk_rows=DEFAULT_CHUNK_ROWS, **kw)


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _fit(cache, out, *extra):
    return _cli("fit-head", "--cache", cache, "--out", out, "--loss", "probe", "--no-progress",
                "--device", "cpu", "--probe-max-iter", "5", *extra)  # fmt: skip


def _cms(cache, out, *extra):
    return _cli("cms-eval", "--cache", cache, "--out", out, "--split", "train", "--split", "test",
                "--no-progress", "--device", "cpu", *extra)  # fmt: skip


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _left(root: Path, *keep: str) -> list[str]:
    """Files and hidden entries (staging dirs, lock files) under root, outside `keep`. Empty
    folders above --out that the output lock (core.outputs) created are not counted."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.relative_to(root).parts[0] not in keep and (p.is_file() or p.name.startswith("."))
    )


def _one_clean_error(res, *needles) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, res.output
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def _full_after(n_ok: int, code: int = errno.ENOSPC):
    """A core.atomic.write_bytes that writes n_ok files, then fails like a full disk."""
    real, calls = atomic.write_bytes, {"n": 0}

    def write_bytes(path, data):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Disk "
                          "quota exceeded")  # fmt: skip
        return real(path, data)

    return write_bytes


@pytest.fixture
def cache(tmp_path):
    return write_cache(tmp_path / "c.zarr", **_arrays())


# ------------------------------------------------------------------------- 4a: a full disk


def test_the_errno_of_a_wrapped_os_error_is_recognised():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    rust = SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"
    )
    assert is_disk_full(rust) and os_errno(rust) == 28
    assert os_errno(SafetensorError("IoError(Os { code: 28, kind: StorageFull })")) == 28
    assert os_errno(SafetensorError("invalid tensor")) is None
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_fit_head_on_a_full_disk_is_one_line_and_leaves_nothing(cache, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")  # fmt: skip

    monkeypatch.setattr(weights_dir, "save_file", full)
    out = tmp_path / "head"
    line = _one_clean_error(_fit(cache, out), out, "disk is full", "free")
    assert "needed" in line  # the weights' size is known
    assert not out.exists()
    assert _left(tmp_path, "c.zarr") == []  # no partial dir, no lock


def test_fit_head_overwrite_on_a_full_disk_keeps_the_old_head(cache, tmp_path, monkeypatch):
    out = tmp_path / "head"
    assert _fit(cache, out).exit_code == 0
    before = _snapshot(out)
    monkeypatch.setattr(atomic, "write_bytes", _full_after(0))  # config.json after the weights
    _one_clean_error(_fit(cache, out, "--overwrite", "--seed", "1"), out, "disk")
    assert _snapshot(out) == before
    assert _left(tmp_path, "c.zarr", "head") == []


def test_cms_eval_on_a_full_disk_leaves_no_directory(cache, tmp_path, monkeypatch):
    out = tmp_path / "runs" / "cms"  # neither folder exists yet
    monkeypatch.setattr(atomic, "write_bytes", _full_after(2))  # fails at the third of 6 files
    _one_clean_error(_cms(cache, out), out, "disk is full", "free")
    assert not out.exists()
    assert _left(tmp_path, "c.zarr") == []


def test_cms_eval_rerun_on_a_full_disk_keeps_every_earlier_file(cache, tmp_path, monkeypatch):
    out = tmp_path / "cms"
    assert _cms(cache, out).exit_code == 0
    before = _snapshot(out)
    assert len(before) == 6
    monkeypatch.setattr(atomic, "write_bytes", _full_after(4))  # 4 of 6 written, then full
    _one_clean_error(_cms(cache, out), out, "disk")
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no staging dir left
    monkeypatch.undo()
    res = _cms(cache, out)  # the retry, with space again
    assert res.exit_code == 0 and _snapshot(out).keys() == before.keys()


def test_evaluate_over_quota_is_one_line_and_writes_nothing(cache, tmp_path, monkeypatch):
    head = tmp_path / "head"
    assert _fit(cache, head).exit_code == 0
    out = tmp_path / "ev"
    monkeypatch.setattr(atomic, "write_bytes", _full_after(3, errno.EDQUOT))
    _one_clean_error(_cli("evaluate", "--cache", cache, "--head", head, "--out", out,
                          "--no-progress", "--device", "cpu"), out, "disk quota")  # fmt: skip
    assert not out.exists() and _left(tmp_path, "c.zarr", "head") == []


def test_compare_on_a_full_disk_removes_its_new_directory(cache, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    monkeypatch.setattr(atomic, "write_bytes", _full_after(2))  # the head is saved, the table not
    res = _cli("compare", "--cache", cache, "--out", out, "--method", "zero-shot", "--method",
               "probe", "--no-progress", "--device", "cpu", "--max-steps", "5")  # fmt: skip
    _one_clean_error(res, out, "compare table", "disk")
    assert not out.exists() and _left(tmp_path, "c.zarr") == []


def test_knn_eval_json_on_a_full_disk(cache, tmp_path, monkeypatch):
    out = tmp_path / "knn" / "m.json"
    monkeypatch.setattr(atomic, "write_bytes", _full_after(0))
    res = _cli("knn-eval", "--cache", cache, "--k", "5", "--out", out, "--device", "cpu")
    _one_clean_error(res, out, "disk")
    assert not out.exists() and _left(tmp_path, "c.zarr") == []


def test_explain_on_a_full_disk_keeps_neither_file(cache, tmp_path, monkeypatch):
    png = tmp_path / "ex" / "e.png"
    monkeypatch.setattr(atomic, "write_bytes", _full_after(1))  # the PNG, then the CSV fails
    res = _cli("explain", "--cache", cache, "--split", "test", "--index", "0", "--out", png,
               "--device", "cpu")  # fmt: skip
    _one_clean_error(res, "disk")
    assert not png.exists() and _left(tmp_path, "c.zarr") == []


# ------------------------------------------------------------------- 4b: memory, dual ridge


def _centred(n, d, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    z = torch.randn(n, c, generator=g, dtype=torch.float64)
    return a - a.mean(0), z - z.mean(0)


@pytest.mark.parametrize(("n", "d"), [(30, 200), (200, 30), (50, 50)])
def test_dual_and_primal_ridge_give_the_same_weights(n, d):
    from clipcbm.heads.cbm.init import ridge_weights

    ac, zc = _centred(n, d, 7)
    wp, rp = ridge_weights(ac.clone(), zc, dual=False)
    wd, rd = ridge_weights(ac.clone(), zc, dual=True)
    assert wp.shape == wd.shape == (7, d)
    assert rp == pytest.approx(rd, rel=1e-12)
    assert torch.allclose(wp, wd, atol=1e-4, rtol=0)
    assert float((wp - wd).abs().max() / wp.abs().max()) < 1e-8


def test_primal_ridge_is_bit_identical_to_the_previous_solver():
    from clipcbm.heads.cbm.init import RIDGE, ridge_weights

    ac, zc = _centred(300, 40, 5)
    gram = ac.T @ ac
    rho = RIDGE * float(gram.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    old = torch.linalg.solve(gram + rho * eye, ac.T @ zc).T
    new, _ = ridge_weights(ac, zc, dual=False)
    assert torch.equal(old, new)


def test_the_zero_shot_init_adds_pseudo_rows_when_there_are_few_fit_rows(tmp_path):
    """36 fit rows, 120 concepts: the ridge on the fit rows alone would interpolate them; the
    seeded pseudo-rows make it a system of 36 + 1,024 rows (primal form), and the start still
    predicts what zero-shot predicts on the fit rows and on rows it never saw."""
    from clipcbm.cache import open_cache
    from clipcbm.heads.cbm.config import FitHeadConfig
    from clipcbm.heads.cbm.init import init_final_layer
    from clipcbm.heads.cbm.model import ConceptBottleneck
    from clipcbm.heads.features import FEATURES
    from clipcbm.heads.io.data import load_data
    from clipcbm.heads.psi import class_logits

    path = write_cache(tmp_path / "wide.zarr", **_arrays(n_train=40, n_concepts=120))
    with open_cache(path) as c:
        data = load_data(c, FitHeadConfig(cache=path, loss="l1"), "cpu")
        model = ConceptBottleneck(120, 3)
        info = init_final_layer(model, data, "zero-shot")
        again = init_final_layer(ConceptBottleneck(120, 3), data, "zero-shot")
    assert info["form"] == "primal" and info["rows"] == 36 and info["pseudo_rows"] == 1024
    assert info["agreement"] == 1.0 and info == again  # seeded: the same start twice
    x = data.test.x
    with torch.no_grad():
        head = model(FEATURES["cbm"](x, data.text)).argmax(1)
    zs = class_logits(x, data.text.class_emb, data.text.logit_scale).argmax(1)
    assert float((head == zs).double().mean()) >= 0.95


def test_available_memory_is_read_from_the_host():
    from clipcbm.heads.memory import available_bytes, host_available_bytes

    have = host_available_bytes()
    assert isinstance(have, int) and have > 0
    assert available_bytes("cpu") == have


def test_fit_head_too_large_for_memory_is_refused_up_front(tmp_path, monkeypatch):
    path = write_cache(tmp_path / "big.zarr", **_arrays(n_concepts=12_000))
    monkeypatch.setattr(cbm_train, "available_bytes", lambda device: GiB)
    built = []
    monkeypatch.setattr(cbm_train, "ConceptBottleneck", lambda *a, **k: built.append(a))
    out = tmp_path / "head"
    res = _cli("fit-head", "--cache", path, "--out", out, "--no-progress", "--device", "cpu")
    line = _one_clean_error(res, "12,000 concepts", "1.0 GiB is available", "clipcbm concepts")
    need = float(line.split("needs about ")[1].split(" GiB")[0])
    expected = cbm_train.TRAIN_COPIES * 4 * 12_000**2 / GiB
    assert expected <= need < expected * 1.05  # 7 W_CBL-sized arrays of 549 MiB
    assert not built and not out.exists()  # refused before W_CBL was allocated


def test_an_init_that_does_not_fit_names_the_fc_init_that_does(tmp_path, monkeypatch):
    from clipcbm.cache import open_cache
    from clipcbm.heads.cbm.config import FitHeadConfig
    from clipcbm.heads.errors import InsufficientMemoryError
    from clipcbm.heads.io.data import load_data

    path = write_cache(tmp_path / "tall.zarr", **_arrays(n_train=20_000, n_concepts=1_000))
    cfg = FitHeadConfig(cache=path)
    with open_cache(path) as c:
        data = load_data(c, cfg, "cpu")
    parts = cbm_train.fit_cbm_bytes(data, cfg)
    assert parts["init"] > parts["train"]  # 18,000 rows x 1,000 concepts: the ridge dominates
    have = (parts["init"] + parts["train"]) // 2
    monkeypatch.setattr(cbm_train, "available_bytes", lambda device: have)
    with pytest.raises(InsufficientMemoryError) as err:
        cbm_train.check_fit_memory(data, cfg, "cpu")
    msg = str(err.value)
    assert "--fc-init zero-shot start alone needs" in msg and "18,000 fit rows" in msg
    assert "--fc-init zero (about" in msg and "--fc-init prior (about" in msg
    cbm_train.check_fit_memory(data, FitHeadConfig(cache=path, fc_init="zero"), "cpu")  # fits


def test_the_init_checks_its_own_memory_before_allocating(tmp_path, monkeypatch):
    from clipcbm.cache import open_cache
    from clipcbm.heads import memory as heads_memory
    from clipcbm.heads.cbm.config import FitHeadConfig
    from clipcbm.heads.cbm.init import init_final_layer
    from clipcbm.heads.cbm.model import ConceptBottleneck
    from clipcbm.heads.errors import InsufficientMemoryError
    from clipcbm.heads.io.data import load_data

    path = write_cache(tmp_path / "c.zarr", **_arrays(n_train=400, n_concepts=50))
    with open_cache(path) as c:
        data = load_data(c, FitHeadConfig(cache=path), "cpu")
    monkeypatch.setattr(heads_memory, "available_bytes", lambda device: 1000)
    want = r"--fc-init zero-shot .* 360 fit rows \+ 1,024 pseudo-rows x 50"
    with pytest.raises(InsufficientMemoryError, match=want):
        init_final_layer(ConceptBottleneck(50, 3), data, "zero-shot")
    init_final_layer(ConceptBottleneck(50, 3), data, "zero")  # needs nothing


# ---------------------------------------------------------------------------- 5a: knn-eval


def _knn(cache, *extra):
    return _cli("knn-eval", "--cache", cache, "--device", "cpu", *extra)


def test_knn_k_above_the_bank_size_is_refused(cache):
    _one_clean_error(_knn(cache), "--k 200", "64 rows of the bank", "'train'", "--k 64 or less")
    res = _knn(cache, "--k", "64")
    assert res.exit_code == 0, res.output
    assert "k = 64" in res.output


def test_knn_refuses_a_query_split_that_copies_the_bank(tmp_path):
    a = _arrays(n_train=64, n_test=32)
    a["splits"]["test"] = {k: v[:32] for k, v in a["splits"]["train"].items()}
    path = write_cache(tmp_path / "leak.zarr", **a)
    line = _one_clean_error(_knn(path, "--k", "5"), "share 32 of 32 rows", "--allow-overlap")
    assert "in the kNN bank" in line
    res = _knn(path, "--k", "5", "--allow-overlap", "--out", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text())["config"]["allow_overlap"] is True


# ------------------------------------------------------------------------ 5b: attribute --cache


@pytest.fixture(scope="module")
def embedded(tiny_clip_dir, tmp_path_factory):
    from tests._dataset_factories import make_imagefolder
    from tests.test_embed import embed

    tmp = tmp_path_factory.mktemp("attribute_cache")
    root = make_imagefolder(tmp / "data", per_class=1)
    concepts = tmp / "c.txt"
    concepts.write_text("red fur\nwings\n")
    cache = tmp / "c.zarr"
    embed(tiny_clip_dir, "imagefolder", root, cache, concepts)
    return cache


FAST = ["--steps", "1", "--samples", "1", "--device", "cpu", "--no-progress", "--no-pictures",
        "--limit", "1", "--text", "a cat", "--split", "test"]  # fmt: skip


def test_attribute_cache_uses_the_cache_model_without_model(embedded, tiny_clip_dir, tmp_path):
    out = tmp_path / "a"
    res = _cli("attribute", "--cache", embedded, "--out", out, *FAST)
    assert res.exit_code == 0, res.output
    info = json.loads((out / "run.json").read_text())
    assert info["model"]["id"] == str(tiny_clip_dir) == info["config"]["model"]


def test_attribute_cache_refuses_another_model(embedded, tiny_clip_dir, tmp_path):
    other = tmp_path / "other-clip"
    res = _cli("attribute", "--cache", embedded, "--model", other, "--out", tmp_path / "a", *FAST)
    _one_clean_error(res, f"--model {other}", str(tiny_clip_dir), "--allow-model-mismatch")
    assert not (tmp_path / "a").exists()


def test_attribute_model_check_compares_directories_and_honours_the_override(
    embedded, tiny_clip_dir, tmp_path
):
    from clipcbm.pipeline.attribution.config import AttributeConfig
    from clipcbm.pipeline.attribution.pairs import ModelMismatchError, with_cache_model

    def cfg(**kw):
        return AttributeConfig(out=tmp_path / "a", cache=embedded, text="x", **kw)

    spelled = str(tiny_clip_dir.parent / "." / tiny_clip_dir.name)  # the same directory
    assert with_cache_model(cfg(model=spelled)).model == spelled
    assert with_cache_model(cfg()).model == str(tiny_clip_dir)
    with pytest.raises(ModelMismatchError, match="revision v2"):
        with_cache_model(cfg(revision="v2"))
    other = str(tmp_path / "other")
    assert with_cache_model(cfg(model=other, allow_model_mismatch=True)).model == other
    plain = AttributeConfig(out=tmp_path / "a", image=tmp_path / "x.png", text="x")
    assert plain.model == "openai/clip-vit-large-patch14" and with_cache_model(plain) is plain
