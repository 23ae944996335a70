"""End-to-end `cli.py embed` with a tiny CLIP on tiny datasets in every official format."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clipcbm import cli
from clipcbm.cache import CacheWriter, open_cache, verify_cache
from tests import _dataset_factories as fx

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def concepts(tmp_path) -> Path:
    path = tmp_path / "concepts.txt"
    path.write_text("red fur\nfour legs\nwings\nwheels\n")
    return path


def embed(model, dataset, root, out, concepts, *extra, code=0):
    args = [
        "embed",
        "--dataset",
        dataset,
        "--root",
        str(root),
        "--out",
        str(out),
        "--concepts",
        str(concepts),
        "--model",
        str(model),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--batch-size",
        "4",
        "--no-progress",
        *map(str, extra),
    ]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def cache_state(path) -> dict:
    """Everything a reader can see, minus the creation time (two runs start at different times)."""
    with open_cache(path) as c:
        state = {k: v for k, v in c.metadata.items() if k != "created"}
        for s in c.splits:
            d = c.split(s)
            state[s] = (
                d.image_emb.tobytes(),
                d.labels.tolist(),
                d.ids.tolist(),
                d.ok.tolist(),
                c.split_attrs(s),
            )
        state["text"] = (
            c.concept_emb().tobytes(),
            c.class_emb().tobytes(),
            c.concepts,
            c.classes,
            c.templates,
        )
    return state


DATASET_CASES = {
    "cifar10": lambda p: fx.make_cifar10(p, n_train=6, n_test=3),
    "cifar100": lambda p: fx.make_cifar100(p, n_train=6, n_test=3),
    "cub200": lambda p: fx.make_cub(p, per_class=2),
    "places365": lambda p: fx.make_places365(p),
    "imagenet": lambda p: fx.make_imagenet(p),
    "imagefolder": lambda p: fx.make_imagefolder(p),
}


@pytest.mark.parametrize("name", sorted(DATASET_CASES))
def test_embed_every_dataset_kind(tiny_clip_dir, concepts, tmp_path, name):
    from clipcbm.pipeline.datasets import build_dataset

    root = DATASET_CASES[name](tmp_path / "data")
    out = tmp_path / "cache.zarr"
    result = embed(
        tiny_clip_dir, name, root, out, concepts, "--shard-rows", "4", "--chunk-rows", "2"
    )
    assert "wrote" in result.output
    assert verify_cache(out) == []
    with open_cache(out) as c:
        assert c.splits == ["test", "train"] and c.embed_dim == 16
        assert c.concepts == ["red fur", "four legs", "wings", "wheels"]
        for split in ("train", "test"):
            ds = build_dataset(name, root, split)
            d = c.split(split)
            assert d.labels.tolist() == ds.labels.tolist() and d.ids.tolist() == ds.ids
            assert d.ok.all()
            np.testing.assert_allclose(np.linalg.norm(d.image_emb, axis=1), 1, atol=2e-3)
        assert c.classes == ds.classes
        assert c.metadata["dataset"]["splits"]["test"]["source_split"] in ("test", "val")


def test_embeddings_equal_direct_model_call(tiny_clip_dir, concepts, tmp_path):
    """The cached row is what the processor + model give for that image, and text is right."""
    from transformers import CLIPImageProcessor

    from clipcbm.pipeline.datasets import build_dataset
    from clipcbm.pipeline.encoder import ClipEncoder

    root = fx.make_imagefolder(tmp_path / "data", per_class=3, ext=".jpg")
    out = tmp_path / "c.zarr"
    embed(tiny_clip_dir, "imagefolder", root, out, concepts, "--workers", "2")
    enc = ClipEncoder.load(str(tiny_clip_dir), device="cpu")
    proc = CLIPImageProcessor.from_pretrained(tiny_clip_dir)
    ds = build_dataset("imagefolder", root, "test")
    pixels = torch.from_numpy(
        proc(images=[ds.load(i) for i in range(len(ds))], return_tensors="np")["pixel_values"]
    )
    want, _ = enc.encode_images(pixels)
    with open_cache(out) as c:
        np.testing.assert_allclose(c.split("test").image_emb, want.numpy(), atol=2e-3)
        np.testing.assert_allclose(c.concept_emb(), enc.encode_text(c.concepts).numpy(), atol=1e-6)
        assert c.logit_scale == pytest.approx(enc.logit_scale)


def test_csv_manifest_and_hdf5(tiny_clip_dir, concepts, tmp_path):
    manifest = fx.make_csv(tmp_path / "data" / "m.csv")
    out = tmp_path / "c.h5"
    embed(tiny_clip_dir, "csv", manifest, out, concepts, "--split", "test", "--format", "hdf5")
    assert out.is_file() and verify_cache(out) == []
    with open_cache(out) as c:
        assert c.splits == ["test"] and len(c.split("test")) == 4
    info = runner.invoke(cli.app, ["cache", "info", str(out)])
    assert info.exit_code == 0 and "4 rows" in info.output and "hdf5" in info.output
    assert runner.invoke(cli.app, ["cache", "verify", str(out)]).exit_code == 0


def test_corrupt_image_is_recorded_and_run_goes_on(tiny_clip_dir, concepts, tmp_path):
    root = fx.make_imagefolder(tmp_path / "data")
    bad = sorted((root / "test" / "dog").iterdir())[0]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    out = tmp_path / "c.zarr"
    embed(tiny_clip_dir, "imagefolder", root, out, concepts)
    with open_cache(out) as c:
        d = c.split("test")
        assert d.ok.tolist() == [True, True, False, True]
        assert np.all(d.image_emb[2] == 0)
        (failure,) = c.split_attrs("test")["failures"]
        assert failure["id"] == "test/dog/000.png" and failure["index"] == 2 and failure["reason"]
    assert verify_cache(out) == []
    info = runner.invoke(cli.app, ["cache", "info", str(out)])
    assert "1 unreadable" in info.output


def test_wrong_root_and_bad_options(tiny_clip_dir, concepts, tmp_path):
    r = embed(tiny_clip_dir, "cifar10", tmp_path / "nowhere", tmp_path / "c.zarr", concepts, code=2)
    assert "cifar-10-batches-py" in r.output
    r = embed(
        tiny_clip_dir,
        "imagefolder",
        tmp_path,
        tmp_path / "c.zarr",
        concepts,
        "--format",
        "hdf5",
        code=2,
    )
    assert "needs --out a path ending in .h5" in r.output
    root = fx.make_imagefolder(tmp_path / "data")
    r = embed(tmp_path / "no-model", "imagefolder", root, tmp_path / "c.zarr", concepts, code=2)
    assert "no-model does not exist" in r.output
    (tmp_path / "empty-model").mkdir()
    r = embed(tmp_path / "empty-model", "imagefolder", root, tmp_path / "c.zarr", concepts, code=2)
    assert "could not read CLIP config" in r.output


def test_fingerprint_follows_concepts_and_refuses_other_cache(tiny_clip_dir, concepts, tmp_path):
    root = fx.make_imagefolder(tmp_path / "data")
    out = tmp_path / "c.zarr"
    embed(tiny_clip_dir, "imagefolder", root, out, concepts)
    first = open_cache(out).fingerprint
    r = embed(tiny_clip_dir, "imagefolder", root, out, concepts)
    assert "nothing to do" in r.output
    other = tmp_path / "other.txt"
    other.write_text("red fur\nfour legs\n")
    r = embed(tiny_clip_dir, "imagefolder", root, out, other, code=2)
    assert "differs in: concepts_sha256" in r.output and "--overwrite" in r.output
    assert open_cache(out).fingerprint == first  # untouched
    embed(tiny_clip_dir, "imagefolder", root, out, other, "--overwrite")
    assert open_cache(out).fingerprint != first and open_cache(out).concepts == [
        "red fur",
        "four legs",
    ]


def test_crash_then_same_command_gives_identical_cache(
    tiny_clip_dir, concepts, tmp_path, monkeypatch
):
    root = fx.make_cifar10(tmp_path / "data", n_train=10, n_test=5)
    ref, out = tmp_path / "ref.zarr", tmp_path / "run.zarr"
    opts = ("--shard-rows", "2", "--chunk-rows", "2")
    embed(tiny_clip_dir, "cifar10", root, ref, concepts, *opts)

    real, calls = CacheWriter.write_shard, []

    def crashing(self, split, shard, **kw):
        if len(calls) == 3:  # die half-way through writing the 4th shard
            self._group[f"{split}/image_emb"][self.plans[split].rows(shard).start] = 9.0
            raise RuntimeError("simulated kill")
        calls.append(shard)
        return real(self, split, shard, **kw)

    monkeypatch.setattr(CacheWriter, "write_shard", crashing)
    with pytest.raises(RuntimeError, match="simulated kill"):
        cli.app(
            [
                "embed",
                "--dataset",
                "cifar10",
                "--root",
                str(root),
                "--out",
                str(out),
                "--concepts",
                str(concepts),
                "--model",
                str(tiny_clip_dir),
                "--device",
                "cpu",
                "--workers",
                "0",
                "--batch-size",
                "4",
                "--no-progress",
                *opts,
            ],
            standalone_mode=False,
        )
    monkeypatch.setattr(CacheWriter, "write_shard", real)
    r = embed(tiny_clip_dir, "cifar10", root, out, concepts, *opts)
    assert "wrote" in r.output
    assert cache_state(out) == cache_state(ref)


@pytest.mark.slow
def test_kill_9_and_resume(tiny_clip_dir, concepts, tmp_path):
    """A real SIGKILL mid-run; re-running the same command completes an identical cache."""
    from PIL import Image

    root = tmp_path / "data"
    # Big noisy PNGs decode slowly (~0.1 s each), so the kill lands mid-run.
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), np.uint8))
    for c in ("a", "b"):
        (root / "test" / c).mkdir(parents=True)
        big.save(root / "test" / c / "0.png")
        for k in range(1, 8):
            os.link(root / "test" / c / "0.png", root / "test" / c / f"{k}.png")
    base = [
        sys.executable,
        str(ROOT / "cli.py"),
        "embed",
        "--dataset",
        "imagefolder",
        "--root",
        str(root),
        "--concepts",
        str(concepts),
        "--model",
        str(tiny_clip_dir),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--batch-size",
        "2",
        "--shard-rows",
        "2",
        "--chunk-rows",
        "2",
        "--split",
        "test",
        "--no-progress",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ref, out = tmp_path / "ref.zarr", tmp_path / "run.zarr"
    subprocess.run([*base, "--out", str(ref)], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(
        [*base, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    marks = out / ".progress" / "test"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(marks.glob("*.json"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(list(marks.glob("*.json"))) < 8, "run was not killed mid-way"
    t0 = time.perf_counter()
    done = subprocess.run([*base, "--out", str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert time.perf_counter() - t0 < 120
    assert cache_state(out) == cache_state(ref)


@pytest.mark.slow
def test_torchrun_two_ranks_match_single_process(tiny_clip_dir, concepts, tmp_path):
    root = fx.make_cifar10(tmp_path / "data", n_train=10, n_test=5)
    opts = [
        "--dataset",
        "cifar10",
        "--root",
        str(root),
        "--concepts",
        str(concepts),
        "--model",
        str(tiny_clip_dir),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--batch-size",
        "2",
        "--shard-rows",
        "2",
        "--chunk-rows",
        "2",
        "--no-progress",
    ]
    single, multi = tmp_path / "single.zarr", tmp_path / "multi.zarr"
    embed(
        tiny_clip_dir,
        "cifar10",
        root,
        single,
        concepts,
        "--shard-rows",
        "2",
        "--chunk-rows",
        "2",
        "--batch-size",
        "2",
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(ROOT / "cli.py"),
            "embed",
            *opts,
            "--out",
            str(multi),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "embedded 6 images" in r.stderr and "embedded 9 images" in r.stderr  # 8 vs 7 shards
    a, b = cache_state(single), cache_state(multi)
    for split in ("train", "test"):
        assert a[split][1:] == b[split][1:]
        np.testing.assert_allclose(
            np.frombuffer(a[split][0], np.float32),
            np.frombuffer(b[split][0], np.float32),
            atol=2e-3,
        )
