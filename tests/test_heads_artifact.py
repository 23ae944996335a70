"""Head artifacts (safetensors + JSON round trip) and the user-facing errors of fit-head."""

import json

import numpy as np
import pytest
import torch

import clipcbm.heads.io.weights_dir as weights_dir
from clipcbm.cache import open_cache, write_cache
from clipcbm.cache.planted import make_planted_cache, planted_arrays
from clipcbm.heads.cbm.config import FitHeadConfig
from clipcbm.heads.cbm.train import run
from clipcbm.heads.io.artifact import HeadCacheMismatchError, HeadFormatError, load_head
from clipcbm.heads.io.data import HeadDataError

FAST = dict(batch_size=64, epochs=3, progress=False)


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return make_planted_cache(tmp_path_factory.mktemp("art") / "p.zarr", noise=1.0, seed=0)


@pytest.mark.parametrize("loss", ["sparse", "probe", "zs-probe"])
def test_save_load_round_trip_gives_identical_logits(cache_path, tmp_path, loss):
    r = run(FitHeadConfig(cache=cache_path, out=tmp_path / "h", loss=loss, **FAST))
    assert sorted(p.name for p in r.out_dir.iterdir()) == ["config.json", "model.safetensors"]
    with open_cache(cache_path) as c:
        x = c.split("test").valid().image_emb
        head = load_head(r.out_dir, c)
        again = load_head(r.out_dir, c)
        logits = head.logits(x, c)
        assert logits.shape == (len(x), len(c.classes)) and logits.dtype == torch.float32
        assert torch.equal(logits, again.logits(x, c))
        acc = (logits.argmax(1).numpy() == c.split("test").valid().labels).mean()
        assert acc == pytest.approx(r.metrics["test"]["top1"], abs=1e-6)
        acts = head.activations(x, c)
        assert (acts is None) == (loss != "sparse")
    cfg = json.loads((r.out_dir / "config.json").read_text())
    for key in ("kind", "seed", "metrics", "validation", "cache_fingerprint", "n_concepts"):
        assert key in cfg
    assert cfg["hyperparameters"]["loss"] == loss


def test_head_with_another_cache_is_a_clear_error(cache_path, tmp_path):
    r = run(FitHeadConfig(cache=cache_path, out=tmp_path / "h", loss="l1", **FAST))
    other = make_planted_cache(tmp_path / "other.zarr", noise=1.0, seed=1)  # same shapes
    with open_cache(other) as c:
        with pytest.raises(HeadCacheMismatchError, match="fingerprint .* another cache"):
            load_head(r.out_dir, c)
        head = load_head(r.out_dir)  # loading without a cache works; using it does not
        with pytest.raises(HeadCacheMismatchError, match="fingerprint"):
            head.logits(np.zeros((2, c.embed_dim), np.float32), c)
    wider = make_planted_cache(tmp_path / "wide.zarr", n_concepts=30, seed=0)
    with open_cache(wider) as c, pytest.raises(HeadCacheMismatchError, match=r"\|D\|.*= 24.*30"):
        load_head(r.out_dir, c)


def test_not_a_head_directory(tmp_path):
    with pytest.raises(HeadFormatError, match="model.safetensors is missing"):
        load_head(tmp_path)


def test_refuses_a_non_empty_out_dir(cache_path, tmp_path):
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="is not a head directory.*nothing was deleted"):
        run(FitHeadConfig(cache=cache_path, out=tmp_path / "h", loss="l1", **FAST))
    with pytest.raises(FileExistsError, match="is not a head directory"):  # not even then
        run(FitHeadConfig(cache=cache_path, out=tmp_path / "h", loss="l1", overwrite=True,
                          **FAST))  # fmt: skip
    assert (tmp_path / "h" / "keep.txt").read_text() == "x"


def _write(path, **replace):
    arr = planted_arrays(n_train=40, n_test=20)
    arr["splits"]["train"].update(replace)
    kw = {k: arr[k] for k in ("concepts", "classes", "concept_emb", "class_emb")}
    return write_cache(path, splits=arr["splits"], **kw)


def test_empty_train_split(tmp_path):
    n = 40
    path = _write(tmp_path / "e.zarr", ok=np.zeros(n, bool))
    msg = r"split 'train' .* has no valid rows \(40 rows, 40 unreadable\).*--train-split"
    with pytest.raises(HeadDataError, match=msg):
        run(FitHeadConfig(cache=path, out=tmp_path / "h", loss="l1", **FAST))


def test_nan_embeddings(tmp_path):
    emb = planted_arrays(n_train=40, n_test=20)["splits"]["train"]["image_emb"].copy()
    emb[3, 0] = np.nan
    path = _write(tmp_path / "n.zarr", image_emb=emb)
    with pytest.raises(HeadDataError, match=r"1 row\(s\) with non-finite \(NaN/inf\) embeddings"):
        run(FitHeadConfig(cache=path, out=tmp_path / "h", loss="sparse", **FAST))


def test_missing_split_and_missing_test_split(cache_path, tmp_path):
    msg = "split 'nope' is not in cache .* Choose another with --train-split"
    with pytest.raises(HeadDataError, match=msg):
        run(FitHeadConfig(cache=cache_path, out=tmp_path / "a", train_split="nope", **FAST))
    r = run(FitHeadConfig(cache=cache_path, out=tmp_path / "b", test_split="gone", **FAST))
    assert "test" not in r.metrics and "val" in r.metrics  # skipped with a warning


def test_concept_width_mismatch_is_a_clear_error():
    from clipcbm.heads.psi import concept_logits

    with pytest.raises(ValueError, match="E=32, concept_emb has E=16"):
        concept_logits(torch.zeros(2, 32), torch.zeros(5, 16), 100.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "nope"}, "loss must be one of"),
        ({"coupling": "both"}, "coupling must be one of"),
        ({"lr_cbl": 0.0}, "--lr-cbl must be > 0"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"val_fraction": 1.0}, r"--val-fraction must be in \(0, 1\)"),
        ({"tau_min": 2.0}, "--tau-min .* must be <= --tau-max"),
        ({"hard": True, "variant": "reference"}, "--hard needs --variant paper"),
        ({"device": "tpu"}, "device must be one of"),
        ({"device": "cuda:x"}, "device must be one of .*'cuda:N'.* got 'cuda:x'"),
        ({"c_grid": ()}, "--c-grid must be non-empty"),
        ({"topk": -1}, "topk must be an integer >= 0"),
        ({"topk": 3, "loss": "probe"}, "topk applies to the CBL"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FitHeadConfig(cache="c.zarr", **kwargs)


def test_topk_bottleneck_keeps_exactly_k_activations_and_their_gradient():
    from clipcbm.heads.cbm.model import ConceptBottleneck

    torch.manual_seed(0)
    m = ConceptBottleneck(6, 3, cbl_init="random", topk=2)
    psi = torch.randn(5, 6)
    a = m.activations(psi)
    full = m.cbl(psi)
    assert ((a != 0).sum(1) == 2).all()
    kept = full.topk(2, dim=1).indices
    assert torch.equal(a.gather(1, kept), full.gather(1, kept))
    a.sum().backward()  # only the kept entries pass gradient back to W_CBL's rows
    hit = torch.zeros(6, dtype=torch.bool).scatter(0, kept.flatten(), True)
    assert (m.cbl.weight.grad[~hit] == 0).all() and (m.cbl.weight.grad[hit] != 0).any()
    with pytest.raises(ValueError, match=r"topk must be an integer in \[0, \|D\|\) = \[0, 6\)"):
        ConceptBottleneck(6, 3, topk=6)


def test_topk_head_round_trips_and_too_large_topk_is_a_clear_error(cache_path, tmp_path):
    r = run(FitHeadConfig(cache=cache_path, out=tmp_path / "h", loss="sparse", topk=3, **FAST))
    with open_cache(cache_path) as c:
        head = load_head(r.out_dir, c)
        acts = head.activations(c.split("test").valid().image_emb, c)
        assert head.module.topk == 3 and ((acts != 0).sum(1) <= 3).all()
        with pytest.raises(ValueError, match="topk must be an integer in"):
            run(FitHeadConfig(cache=cache_path, out=tmp_path / "g", topk=len(c.concepts), **FAST))


def test_default_out_dir_is_outside_the_package():
    cfg = FitHeadConfig(cache="caches/cub.zarr", loss="sparse")
    assert str(cfg.out_dir()) == "runs/heads/cub-sparse"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda_matches_the_cpu_contract(cache_path, tmp_path):
    r = run(FitHeadConfig(cache=cache_path, out=tmp_path / "g", device="cuda", **FAST))
    assert r.device.startswith("cuda") and r.metrics["test"]["top1"] > 0.5
    with open_cache(cache_path) as c:
        head = load_head(r.out_dir, c)  # loads on CPU by default
        assert head.logits(c.split("test").valid().image_emb, c).device.type == "cpu"


def test_one_device_rule_for_stage_two():
    from clipcbm.core.device import DeviceError, resolve_device

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if n else "cpu")
    with pytest.raises(DeviceError, match=f"'cuda:{n}' was asked for but torch sees {n} CUDA"):
        resolve_device(f"cuda:{n}")
    with pytest.raises(DeviceError, match="device must be one of"):
        resolve_device("gpu")


# ------------------------------------------------------------------ atomic, checked artifacts


@pytest.fixture(scope="module")
def saved_head(cache_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads") / "h"
    run(FitHeadConfig(cache=cache_path, out=out, loss="l1", **FAST))
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_config_records_the_weights_checksum_and_damage_is_refused(saved_head, tmp_path):
    from clipcbm.core.atomic import sha256_file

    cfg = json.loads((saved_head / "config.json").read_text())
    assert cfg["format_version"] == 2
    assert cfg["weights_sha256"] == sha256_file(saved_head / "model.safetensors")
    bad = _copy(saved_head, tmp_path / "flipped")
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-8:] = bytes(8)  # a few flipped bytes in the tensor data
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(HeadFormatError, match="does not match the sha256 recorded"):
        load_head(bad)


def test_garbage_weights_and_config_are_clear_errors(saved_head, tmp_path):
    junk = _copy(saved_head, tmp_path / "junk")
    (junk / "model.safetensors").write_bytes(b"not a safetensors file")
    cfg = json.loads((junk / "config.json").read_text())
    cfg.pop("weights_sha256")  # an old-format head: no checksum, so the loader must catch it
    (junk / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HeadFormatError, match="cannot be loaded as a 'cbm' head"):
        load_head(junk)
    (junk / "config.json").write_text("{ truncated")
    with pytest.raises(HeadFormatError, match="not readable JSON"):
        load_head(junk)
    with pytest.raises(HeadFormatError, match="does not exist"):
        load_head(tmp_path / "nowhere")


def test_a_newer_format_version_is_refused(saved_head, tmp_path):
    newer = _copy(saved_head, tmp_path / "newer")
    cfg = json.loads((newer / "config.json").read_text())
    cfg["format_version"] = 99
    (newer / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HeadFormatError, match="format version 99, newer than"):
        load_head(newer)


def test_a_crash_while_saving_leaves_the_old_head_whole(saved_head, tmp_path, monkeypatch):
    from clipcbm.heads.io import artifact

    old = _copy(saved_head, tmp_path / "old")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    head = load_head(old)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weights_dir.atomic, "write_text", boom)  # dies after the weights
    with pytest.raises(OSError, match="No space left"):
        artifact.save_head(old, head, head.config)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers
