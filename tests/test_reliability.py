"""Nothing wrong is used silently (issue 13): damaged caches, leaked splits, offline hubs, full
disks, interrupted head swaps, results of other runs, and option names in messages."""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import clipcbm.cache.writer as cache_writer
import clipcbm.core.atomic as atomic
from clipcbm.cache import CacheWriter, cache_info, open_cache, verify_cache, write_cache
from clipcbm.cache.errors import CacheCorruptError, CacheExistsError, CacheWriteError
from clipcbm.cli import app

runner = CliRunner()
CONCEPTS = [f"concept {i}" for i in range(6)]
CLASSES = ["cat", "dog", "bird"]


def _arrays(n_train=64, n_test=32, seed=0, e=8, n_concepts=len(CONCEPTS), **extra):
    rng = np.random.default_rng(seed)
    return {
        "splits": {
            "train": {
                "image_emb": rng.normal(size=(n_train, e)),
                "labels": rng.integers(0, 3, n_train),
            },
            "test": {
                "image_emb": rng.normal(size=(n_test, e)),
                "labels": rng.integers(0, 3, n_test),
            },
        },  # fmt: skip
        "concepts": [f"concept {i}" for i in range(n_concepts)],
        "classes": CLASSES,
        "concept_emb": rng.normal(size=(n_concepts, e)),
        "class_emb": rng.normal(size=(len(CLASSES), e)),
        "shard_rows": 16,
        "chunk_rows": 8,
        **extra,
    }


def _flip(path: Path, start: int, n: int = 16) -> None:
    b = bytearray(path.read_bytes())
    b[start : start + n] = bytes(x ^ 0xFF for x in b[start : start + n])
    path.write_bytes(bytes(b))


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _fit(cache, out, *extra):
    return _cli("fit-head", "--cache", cache, "--out", out, "--loss", "probe", "--no-progress",
                "--device", "cpu", "--probe-max-iter", "5", *extra)  # fmt: skip


# ------------------------------------------------------------------------- checked reads


def test_a_bit_flip_in_a_shard_is_refused_by_stage_two_with_the_array_and_shard(tmp_path):
    path = write_cache(tmp_path / "c.zarr", **_arrays())
    _flip(path / "train" / "image_emb" / "c" / "1" / "0", 100)  # payload: still decodes
    res = _fit(path, tmp_path / "head")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "train/image_emb, shard 1 (rows 16..31)" in res.output
    assert "train/image_emb/c/1/0" in res.output  # the file to look at
    assert not (tmp_path / "head").exists()
    ok = _fit(path, tmp_path / "head", "--no-verify")  # the user's explicit choice
    assert ok.exit_code == 0, ok.output


def test_compressed_chunk_damage_is_a_fail_line_from_verify_not_a_traceback(tmp_path):
    path = write_cache(tmp_path / "c.zarr", **_arrays())
    _flip(path / "train" / "labels" / "c" / "0", 8)  # zstd payload: decoding fails
    res = _cli("cache", "verify", path)
    assert res.exit_code == 1 and "Traceback" not in res.output
    fail = [line for line in res.output.splitlines() if line.startswith("FAIL")]
    assert fail and "train/labels" in fail[0] and "shard 0" in fail[0]
    assert str(path / "train" / "labels" / "c" / "0") in fail[0]
    res = _cli("cms-eval", "--cache", path, "--split", "train", "--no-progress", "--out",
               tmp_path / "cms")  # fmt: skip
    assert res.exit_code == 2 and "cannot be read" in res.output and "train/labels" in res.output


def test_a_damaged_shard_index_names_the_shard(tmp_path):
    path = write_cache(tmp_path / "c.zarr", **_arrays())
    shard = path / "train" / "image_emb" / "c" / "2" / "0"
    _flip(shard, shard.stat().st_size - 12, 8)  # the index (and its crc32c) at the end
    problems = verify_cache(path)
    assert len(problems) == 1 and "shard 2 (rows 32..47)" in problems[0]
    with pytest.raises(CacheCorruptError, match="train/image_emb'?, shard 2"):
        open_cache(path).split("train")


def test_hdf5_damage_and_text_damage_are_refused(tmp_path):
    path = write_cache(tmp_path / "c.h5", format="hdf5", **_arrays())
    with open_cache(path) as c:
        emb = c.split("train").image_emb
    import h5py

    with h5py.File(path, "r+") as f:  # one stored value changed, file still well-formed
        f["train/image_emb"][3, 0] = -f["train/image_emb"][3, 0]
        f["text/concept_emb"][0, 0] += 0.5
    with open_cache(path) as c, pytest.raises(CacheCorruptError, match="train/image_emb, shard 0"):
        c.split("train")
    with open_cache(path) as c, pytest.raises(CacheCorruptError, match="text/concept_emb"):
        c.concept_emb()
    with open_cache(path, verify=False) as c:
        assert c.split("train").image_emb[3, 0] == pytest.approx(-emb[3, 0], abs=1e-3)
    assert len(verify_cache(path)) >= 2


# ------------------------------------------------------------------------- leaked splits


def test_csv_without_split_is_refused_and_a_split_column_selects_rows(tmp_path):
    from clipcbm.pipeline.config import EmbedConfig
    from clipcbm.pipeline.datasets.manifest import read_csv_manifest
    from clipcbm.pipeline.errors import PipelineConfigError

    with pytest.raises(PipelineConfigError, match="--dataset csv needs --split"):
        EmbedConfig(dataset="csv", root=tmp_path / "m.csv", out=tmp_path / "o", concepts="c")
    res = _cli("embed", "--dataset", "csv", "--root", tmp_path / "m.csv", "--out",
               tmp_path / "o.zarr", "--concepts", tmp_path / "c.txt")  # fmt: skip
    assert res.exit_code == 2 and "leak" in res.output
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split\na.png,cat,train\nb.png,dog,train\nc.png,cat,test\n")
    train, test = (read_csv_manifest(manifest, s, None) for s in ("train", "test"))
    assert train.ids == ["a.png", "b.png"] and test.ids == ["c.png"]
    assert train.classes == test.classes == ["cat", "dog"]  # from every row, not one split's
    with pytest.raises(ValueError, match="no rows of split 'val'"):
        read_csv_manifest(manifest, "val", None)


def test_train_and_test_sharing_rows_are_refused_unless_allowed(tmp_path):
    a = _arrays(n_train=64, n_test=32)
    a["splits"]["test"] = dict(a["splits"]["train"])  # the csv-without-split leak
    path = write_cache(tmp_path / "leak.zarr", **a)
    with open_cache(path) as c:
        assert c.metadata["overlap"]["test|train"]["embeddings"] == 64
    res = _fit(path, tmp_path / "h")
    assert res.exit_code == 2 and "share 64 of 64 rows" in res.output
    assert "--allow-overlap" in res.output
    assert _fit(path, tmp_path / "h", "--allow-overlap").exit_code == 0
    res = _cli("evaluate", "--cache", path, "--head", tmp_path / "h", "--out", tmp_path / "ev",
               "--no-progress")  # fmt: skip
    assert res.exit_code == 2 and "share 64" in res.output


def test_one_exact_duplicate_in_a_big_split_is_a_warning_and_file_ids_count(tmp_path, caplog):
    a = _arrays(n_train=2000, n_test=1500)
    a["splits"]["test"]["image_emb"][7] = a["splits"]["train"]["image_emb"][3]
    path = write_cache(tmp_path / "dup.zarr", **a)
    assert _fit(path, tmp_path / "h").exit_code == 0  # 1 of 1500 <= 0.1%: reported, not refused
    ids = [f"img/{i}.jpg" for i in range(64)]
    b = _arrays(n_train=64, n_test=64)
    for s in ("train", "test"):
        b["splits"][s]["ids"] = ids  # the same files in both splits, embeddings differ
    kinds = {"splits": {s: {"id_kind": "path"} for s in ("train", "test")}}
    path = write_cache(tmp_path / "ids.zarr", metadata={"dataset": kinds}, **b)
    res = _fit(path, tmp_path / "h2")
    assert res.exit_code == 2 and "share 64 of 64 rows" in res.output
    path = write_cache(tmp_path / "idx.zarr", **b)  # index ids ("0".. per split) do not count
    assert _fit(path, tmp_path / "h3").exit_code == 0


# ------------------------------------------------------------------- a main job that runs


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "cub200", "places365", "imagenet"])
def test_builtin_concept_sets_are_valid_and_the_default(dataset, tmp_path):
    from clipcbm.pipeline.concept_sets import builtin_concepts
    from clipcbm.pipeline.concepts.io import read_concept_file
    from clipcbm.pipeline.config import EmbedConfig

    cfg = EmbedConfig(dataset=dataset, root=tmp_path, out=tmp_path / "c.zarr")
    assert cfg.concepts == builtin_concepts(dataset)
    assert len(read_concept_file(cfg.concepts).concepts) >= 120  # no repeats, no empty lines


def test_no_builtin_set_for_a_folder_dataset(tmp_path):
    res = _cli("embed", "--dataset", "imagefolder", "--root", tmp_path, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "no built-in concept set" in res.output


def test_offline_hub_ids_fail_fast_with_one_line(monkeypatch, tmp_path):
    import clipcbm.pipeline.hub as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty local cache
    t0 = time.perf_counter()
    with pytest.raises(hub.ModelUnavailableError, match="HF_HUB_OFFLINE is set.*--model"):
        hub.pretrained_kwargs("openai/clip-vit-base-patch32")
    assert time.perf_counter() - t0 < 5
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "host_resolves", lambda host: False)
    with pytest.raises(hub.ModelUnavailableError, match="cannot be resolved"):
        hub.pretrained_kwargs("openai/clip-vit-base-patch32")
    assert hub.pretrained_kwargs(str(tmp_path)) == {}  # a local directory loads as is
    with pytest.raises(hub.ModelUnavailableError, match="does not exist"):
        hub.pretrained_kwargs("./no-such-model")


def test_conceptnet_does_not_retry_a_failed_name_lookup(tmp_path):
    from clipcbm.pipeline.concepts.conceptnet import ConceptNetAPI, ConceptNetError

    def get(url):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    api = ConceptNetAPI(tmp_path, get=get, sleep=lambda s: None)
    with pytest.raises(ConceptNetError, match="cannot resolve.*--conceptnet-dump"):
        api.edges("cat", "IsA")
    assert api.n_requests == 1


# ------------------------------------------------------------------- heads and disk errors


def test_a_swap_killed_between_its_renames_leaves_the_old_head_loadable(tmp_path, monkeypatch):
    from clipcbm.heads.io.artifact import load_head

    path = write_cache(tmp_path / "c.zarr", **_arrays())
    head = tmp_path / "head"
    assert _fit(path, head).exit_code == 0
    before = (head / "model.safetensors").read_bytes()
    calls = []
    real = os.replace

    def killed(src, dst):  # the first rename (old aside) happens, then the process "dies"
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_dir = atomic.directory(head)
        with atomic_dir as tmp:
            (tmp / "model.safetensors").write_bytes(b"new")
    monkeypatch.setattr(atomic.os, "replace", real)
    assert not head.exists() and list(tmp_path.glob(".head.*.old"))
    with open_cache(path) as c:
        h = load_head(head, c)  # restored from the aside copy
    assert h.kind == "probe" and (head / "model.safetensors").read_bytes() == before


def test_disk_full_is_one_line_and_the_retry_resumes_identically(tmp_path, monkeypatch):
    a = _arrays()
    clean = write_cache(tmp_path / "clean.zarr", **a)
    real = cache_writer._atomic_write_json
    n = []

    def full(path, obj):
        n.append(path)
        if len(n) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, obj)

    monkeypatch.setattr(cache_writer, "_atomic_write_json", full)
    with pytest.raises(CacheWriteError, match="no space left on the device.*re-run the same"):
        write_cache(tmp_path / "c.zarr", **a)
    monkeypatch.setattr(cache_writer, "_atomic_write_json", real)
    path = write_cache(tmp_path / "c.zarr", **a)  # resumes
    with open_cache(path) as c, open_cache(clean) as d:
        np.testing.assert_array_equal(c.split("train").image_emb, d.split("train").image_emb)
        assert c.fingerprint == d.fingerprint


def test_a_full_disk_during_hdf5_export_leaves_no_temp_file(tmp_path, monkeypatch):
    a = _arrays()
    real = cache_writer._export

    def full(store, tmp):
        tmp.write_bytes(b"x" * 1024)  # half a file holding space
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_writer, "_export", full)
    out = tmp_path / "c.h5"
    with pytest.raises(CacheWriteError, match="HDF5 export.*MiB needed"):
        write_cache(out, format="hdf5", **a)
    assert not (tmp_path / "c.h5.tmp").exists() and not out.exists()
    assert (tmp_path / "c.h5.partial.zarr").is_dir()  # the staged shards are kept
    monkeypatch.setattr(cache_writer, "_export", real)
    assert verify_cache(write_cache(out, format="hdf5", **a)) == []


def test_cache_info_shows_an_hdf5_run_in_progress(tmp_path):
    out = tmp_path / "c.h5"
    w = CacheWriter(out, identity={"x": 1}, metadata={"embed_dim": 4}, split_sizes={"train": 40},
                    embed_dim=4, chunk_rows=8, shard_rows=16)  # fmt: skip
    assert w.prepare() == "new"
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(16, 4))
    w.write_shard("train", 0, image_emb=emb / np.linalg.norm(emb, axis=1, keepdims=True),
                  norms=np.ones(16), labels=np.zeros(16), ids=range(16),
                  ok=np.ones(16, bool))  # fmt: skip
    info = cache_info(out)
    assert info["staging"].endswith("c.h5.partial.zarr") and info["complete"] is False
    assert info["split_rows"]["train"]["shards_done"] == 1
    assert info["split_rows"]["train"]["shards"] == 3
    res = _cli("cache", "info", out)
    assert res.exit_code == 0 and "shards 1 / 3 done" in res.output and "in progress" in res.output


def test_the_fingerprint_diff_names_only_fields_that_differ(tmp_path):
    ident = {"preprocess": {"mean": (0.5, 0.5), "crop": 4}, "concepts_sha256": "a"}
    kw = dict(metadata={"embed_dim": 4}, split_sizes={"train": 4}, embed_dim=4)
    CacheWriter(tmp_path / "c.zarr", identity=ident, **kw).prepare()
    other = {**ident, "concepts_sha256": "b"}
    with pytest.raises(CacheExistsError, match=r"differs in: concepts_sha256\)"):
        CacheWriter(tmp_path / "c.zarr", identity=other, **kw).prepare()


# ------------------------------------------------------------------- results and messages


def test_results_of_other_settings_are_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output folders are relative (runs/...)
    path = write_cache(tmp_path / "c.zarr", **_arrays())
    for name in ("h1", "h2"):
        assert _fit(path, tmp_path / name, "--seed", str(len(name))).exit_code == 0
    out = tmp_path / "ev"
    args = ["evaluate", "--cache", path, "--out", out, "--no-progress"]
    assert _cli(*args, "--head", tmp_path / "h1").exit_code == 0
    assert _cli(*args, "--head", tmp_path / "h1").exit_code == 0  # same settings: refreshed
    res = _cli(*args, "--head", tmp_path / "h2")
    assert res.exit_code == 2 and "differs in: head" in res.output
    record = json.loads((out / "metrics_test.json").read_text())
    assert record["head"].endswith("h1")  # the earlier results are still there
    assert _cli(*args, "--head", tmp_path / "h2", "--overwrite").exit_code == 0
    outs = set()
    for norm in ("none", "l2"):
        res = _cli("cms-eval", "--cache", path, "--normalize", norm, "--no-progress")
        outs.add(res.output.strip().splitlines()[-1])
    assert len(outs) == 2  # default folders carry the setting


def test_messages_name_the_options_a_user_types(tmp_path):
    res = _cli("fit-head", "--cache", tmp_path, "--lambda", "-1")
    assert res.exit_code == 2 and "--lambda must be >= 0" in res.output
    res = _cli("fit-head", "--cache", tmp_path, "--lr-cbl", "0")
    assert "--lr-cbl must be > 0" in res.output
    res = _cli("embed", "--dataset", "cifar10", "--root", tmp_path, "--out", tmp_path / "o",
               "--workers", "-5")  # fmt: skip
    assert res.exit_code == 2 and "--workers must be -1" in res.output
    res = _cli("embed", "--dataset", "cifar10", "--root", tmp_path, "--out", tmp_path / "o",
               "--chunk-rows", "128", "--shard-rows", "64")  # fmt: skip
    assert res.exit_code == 2 and "--chunk-rows (128) must be <= --shard-rows (64)" in res.output


def test_explain_top_k_beyond_the_concepts_and_a_missing_head_are_clear(tmp_path):
    path = write_cache(tmp_path / "c.zarr", **_arrays())
    res = _cli("explain", "--cache", path, "--index", "0", "--top-k", "1000")
    assert res.exit_code == 2 and "more than the cache's 6 concepts" in res.output
    res = _cli("evaluate", "--cache", path, "--head", tmp_path / "nope", "--no-progress")
    assert res.exit_code == 2 and "does not exist" in res.output


def test_a_run_killed_while_creating_the_store_does_not_block_the_retry(tmp_path, monkeypatch):
    real, calls = CacheWriter._create_split, []

    def dies(self, group, split, plan):
        calls.append(split)
        if len(calls) == 2:
            raise KeyboardInterrupt  # SIGKILL between the group and its second split
        return real(self, group, split, plan)

    monkeypatch.setattr(CacheWriter, "_create_split", dies)
    with pytest.raises(KeyboardInterrupt):
        write_cache(tmp_path / "c.zarr", **_arrays())
    assert not (tmp_path / "c.zarr").exists()  # nothing half-made at the final path
    monkeypatch.setattr(CacheWriter, "_create_split", real)
    assert verify_cache(write_cache(tmp_path / "c.zarr", **_arrays())) == []
    assert not list(tmp_path.glob(".c.zarr.creating"))
