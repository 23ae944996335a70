"""Caches at URLs, against real servers the tests start: moto's S3 server and http.server.

A planted cache is written locally, pushed to s3:// (moto, loopback), and read back by stage
two; the head fitted from s3:// equals the one fitted from the path. A push killed half-way
resumes; a flipped byte in the bucket is refused; bad URLs fail with one line that never holds
a credential.
"""

from __future__ import annotations

import functools
import http.server
import importlib
import json
import logging
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from clipcbm.cache import (  # noqa: E402
    CacheCorruptError,
    CacheError,
    CacheExistsError,
    open_cache,
    verify_cache,
)
from clipcbm.cache.errors import IncompleteCacheError, RemoteCacheError  # noqa: E402
from clipcbm.cache.planted import make_planted_cache  # noqa: E402
from clipcbm.cache.remote import MissingBackendError, Tree  # noqa: E402
from clipcbm.cache.transfer import MARKS, copy_cache  # noqa: E402
from clipcbm.cli import app  # noqa: E402
from clipcbm.core.location import as_location, location_stem, redact  # noqa: E402

runner = CliRunner()
BUCKET = "caches"
SECRET = "testing-secret-do-not-print"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on loopback; AWS_* in the environment, as a user's shell has them."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield fs
    server.stop()


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    return make_planted_cache(tmp_path_factory.mktemp("remote") / "planted.zarr", seed=3)


@pytest.fixture(scope="module")
def pushed(s3, local) -> str:
    url = f"s3://{BUCKET}/runs/planted.zarr"
    copy_cache(local, url, progress=False)
    return url


def _fresh(s3, name: str) -> str:
    s3.invalidate_cache()
    return f"s3://{BUCKET}/{name}"


# -- locations ------------------------------------------------------------------------------
def test_location_keeps_urls_and_redacts_credentials():
    assert as_location("s3://b/x.zarr") == "s3://b/x.zarr"
    assert as_location(Path("s3://b/x.zarr")) == "s3://b/x.zarr"  # what Path() folds
    assert as_location("file:///tmp/c.zarr") == Path("/tmp/c.zarr")
    assert as_location("runs/c.zarr") == Path("runs/c.zarr")
    assert redact("https://u:pw@host/c.zarr?token=abc") == "https://host/c.zarr"
    assert "pw" not in redact("cannot open https://u:pw@h/x?sig=1 now")
    assert location_stem("s3://b/runs/cifar.zarr/") == "cifar"


# -- reads ----------------------------------------------------------------------------------
def test_s3_read_equals_local_read(pushed, local):
    with open_cache(local) as a, open_cache(pushed) as b:
        assert b.path == pushed and b.fingerprint == a.fingerprint
        for split in a.splits:
            x, y = a.split(split), b.split(split)
            np.testing.assert_array_equal(x.image_emb, y.image_emb)
            np.testing.assert_array_equal(x.ids, y.ids)
        assert a.concepts == b.concepts
        np.testing.assert_array_equal(a.concept_emb(), b.concept_emb())


def test_explicit_storage_options_are_used(pushed, s3, monkeypatch):
    endpoint = s3.client_kwargs.get("endpoint_url") or __import__("os").environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    opts = {"client_kwargs": {"endpoint_url": endpoint}, "skip_instance_cache": True}
    with open_cache(pushed, storage_options=opts) as c:
        assert len(c.split("test")) == 200


def test_fit_head_from_s3_equals_fit_from_path(pushed, local, tmp_path):
    from clipcbm.heads.cbm.config import FitHeadConfig
    from clipcbm.heads.cbm.train import run

    common = dict(loss="l1", max_steps=20, progress=False, device="cpu", seed=0)
    a = run(FitHeadConfig(cache=local, out=tmp_path / "a", **common))
    b = run(FitHeadConfig(cache=pushed, out=tmp_path / "b", **common))
    assert a.metrics == b.metrics
    wa, wb = load_file(a.out_dir / "model.safetensors"), load_file(b.out_dir / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    recorded = json.loads((b.out_dir / "config.json").read_text())
    assert recorded["cache_path"] == pushed and recorded["hyperparameters"]["cache"] == pushed


def test_fit_head_cli_reads_s3(pushed, tmp_path):
    out = tmp_path / "cli-head"
    r = runner.invoke(app, ["fit-head", "--cache", pushed, "--out", str(out), "--loss", "probe",
                            "--no-progress", "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize(("flag", "want"), [("--no-progress", False), ("--progress", None)])
def test_no_progress_silences_the_remote_read_bars(pushed, tmp_path, monkeypatch, flag, want):
    """--no-progress reaches the cache (no shard bars in a log); --progress leaves the choice
    to the reader (bars on a terminal)."""
    import clipcbm.heads.cbm.train as train

    seen, real = [], train.open_cache

    def spy(*args, **kwargs):
        seen.append(kwargs.get("progress", "unset"))
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "open_cache", spy)
    r = runner.invoke(app, ["fit-head", "--cache", pushed, "--out", str(tmp_path / "h"),
                            "--loss", "probe", flag, "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert seen == [want]


def test_default_head_name_from_url_stem(pushed):
    from clipcbm.heads.cbm.config import FitHeadConfig

    assert FitHeadConfig(cache=pushed).out_dir() == Path("runs/heads/planted-sparse")


def test_info_and_verify_of_s3_cache(pushed):
    r = runner.invoke(app, ["cache", "info", pushed, "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output[r.output.index("{") :])
    assert info["path"] == pushed and info["split_rows"]["train"]["rows"] == 600
    assert info["bytes_on_disk"] > 0
    r = runner.invoke(app, ["cache", "verify", pushed])
    assert r.exit_code == 0 and "OK s3://" in r.output, r.output


def test_remote_read_shows_progress_per_shard(s3, tmp_path, capsys):
    from clipcbm.cache import write_cache

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    splits = {"train": {"image_emb": emb, "labels": np.zeros(40, int)}}
    src = write_cache(
        tmp_path / "sharded.zarr",
        splits=splits,
        concepts=["a"],
        classes=["x"],
        concept_emb=emb[:1],
        class_emb=emb[:1],
        chunk_rows=8,
        shard_rows=8,
    )
    url = _fresh(s3, "sharded.zarr")
    copy_cache(src, url, progress=False)
    with open_cache(url, progress=True) as c:  # the default where stderr is a terminal
        c.split("train")
    err = capsys.readouterr().err
    assert "read train/image_emb" in err and "5/5" in err


# -- push / pull ----------------------------------------------------------------------------
def test_push_killed_half_way_resumes_and_completes(s3, local, monkeypatch):
    url = _fresh(s3, "killed.zarr")
    real, calls = Tree.write, {"n": 0}

    def dies_after_ten(self, rel, data):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt("killed")
        return real(self, rel, data)

    monkeypatch.setattr(Tree, "write", dies_after_ten)
    with pytest.raises(KeyboardInterrupt):
        copy_cache(local, url, progress=False)
    monkeypatch.setattr(Tree, "write", real)
    s3.invalidate_cache()
    with pytest.raises(CacheError, match="no cache at s3://caches/killed.zarr"):
        open_cache(url)  # a partial copy is never taken for a cache
    report = copy_cache(local, url, progress=False)
    assert report.status == "resumed" and report.skipped >= 4
    s3.invalidate_cache()
    assert verify_cache(url) == []
    assert not Tree(url).files(MARKS)
    again = copy_cache(local, url, progress=False)
    assert again.status == "complete" and again.copied == 0


def test_pull_back_to_a_path(pushed, tmp_path, local):
    dest = tmp_path / "pulled.zarr"
    r = runner.invoke(app, ["cache", "pull", pushed, str(dest)])
    assert r.exit_code == 0, r.output
    assert verify_cache(dest) == []
    with open_cache(dest) as a, open_cache(local) as b:
        assert a.fingerprint == b.fingerprint


def test_flipped_byte_in_bucket_is_refused(s3, local):
    url = _fresh(s3, "flipped.zarr")
    copy_cache(local, url, progress=False)
    key = f"{BUCKET}/flipped.zarr/train/image_emb/c/0/0"
    blob = bytearray(s3.cat_file(key))
    blob[100] ^= 0x40
    s3.pipe_file(key, bytes(blob))
    s3.invalidate_cache()
    with open_cache(url) as c, pytest.raises(CacheCorruptError, match=r"train/image_emb, shard 0"):
        c.split("train")
    r = runner.invoke(app, ["cache", "verify", url])
    assert r.exit_code == 1 and "does not match the checksum" in r.output
    with pytest.raises(CacheCorruptError, match="source is damaged"):
        copy_cache(url, _fresh(s3, "copy-of-flipped.zarr"), progress=False)


def test_push_over_something_else_is_refused(s3, local, tmp_path):
    url = _fresh(s3, "occupied")
    s3.pipe_file(f"{BUCKET}/occupied/notes.txt", b"not a cache")
    with pytest.raises(CacheExistsError, match="is not empty"):
        copy_cache(local, url, progress=False)
    other = make_planted_cache(tmp_path / "other.zarr", seed=4)
    url = _fresh(s3, "other.zarr")
    copy_cache(other, url, progress=False)
    with pytest.raises(CacheExistsError, match="already holds a different cache"):
        copy_cache(local, url, progress=False)


def test_incomplete_source_is_refused(s3, local, tmp_path):
    from clipcbm.cache import CacheWriter

    w = CacheWriter(tmp_path / "half.zarr", identity={"x": 1}, metadata={}, split_sizes={"a": 4},
                    embed_dim=4)  # fmt: skip
    w.prepare()
    with pytest.raises(IncompleteCacheError, match="incomplete"):
        copy_cache(tmp_path / "half.zarr", _fresh(s3, "half.zarr"), progress=False)


# -- http -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def web(local):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(local.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_stage_two_reads_http(web, local, tmp_path):
    url = f"{web}/{local.name}"
    out = tmp_path / "zs"
    r = runner.invoke(app, ["cache", "verify", url])
    assert r.exit_code == 0, r.output
    with open_cache(url) as c, open_cache(local) as d:
        np.testing.assert_array_equal(c.split("test").image_emb, d.split("test").image_emb)
    r = runner.invoke(app, ["fit-head", "--cache", url, "--out", str(out), "--loss", "probe",
                            "--no-progress", "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output


def test_server_gone_mid_read_is_one_line_naming_the_object(local):
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler,
                                            directory=str(local.parent)))  # fmt: skip
    server.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{local.name}"
    cache = open_cache(url)
    server.shutdown()
    server.server_close()
    with pytest.raises(RemoteCacheError, match=r"cannot reach http://127\.0\.0\.1:\d+/planted\.zarr"
                       r" while reading train"):  # fmt: skip
        cache.split("train")


def test_network_error_on_a_shard_names_it(pushed, monkeypatch):
    from zarr.storage import FsspecStore

    class EndpointConnectionError(Exception):  # botocore's: not an OSError
        __module__ = "botocore.exceptions"

    real = FsspecStore.get

    async def flaky(self, key, *args, **kwargs):
        if key.startswith("train/image_emb/c/"):
            raise EndpointConnectionError("Could not connect to the endpoint URL")
        return await real(self, key, *args, **kwargs)

    monkeypatch.setattr(FsspecStore, "get", flaky)
    with open_cache(pushed) as c, pytest.raises(
        RemoteCacheError, match=r"cannot read s3://caches/runs/planted.zarr/train/image_emb/c/0/0 "
        r"\(array 'train/image_emb', shard 0, rows 0..599\): EndpointConnectionError"
    ):  # fmt: skip
        c.split("train")


def test_push_to_http_is_refused(web, local):
    r = runner.invoke(app, ["cache", "push", str(local), f"{web}/new.zarr"])
    assert r.exit_code == 2 and "read-only" in r.output


# -- bad input ------------------------------------------------------------------------------
def test_no_such_bucket(s3):
    with pytest.raises(RemoteCacheError, match="no bucket 'no-such-bucket'"):
        open_cache("s3://no-such-bucket/c.zarr")


def test_no_such_cache_is_one_line_without_credentials(s3):
    url = f"s3://{BUCKET}/nothing-here.zarr"
    r = runner.invoke(app, ["cache", "info", url])
    assert r.exit_code == 2 and "no cache at s3://caches/nothing-here.zarr" in r.output
    assert len(r.output.strip().splitlines()) == 1
    secret_url = "https://user:hunter2@127.0.0.1:9/c.zarr?token=hunter3"
    r = runner.invoke(app, ["cache", "info", secret_url])
    assert r.exit_code == 2 and "127.0.0.1" in r.output, r.output
    assert "hunter2" not in r.output and "hunter3" not in r.output
    assert SECRET not in r.output


def test_missing_credentials_is_one_line_saying_so(pushed, monkeypatch, tmp_path):
    """No AWS credentials anywhere (env, files, instance metadata): one line naming the URL and
    what to set, not a botocore traceback."""
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import fsspec

    s3fs_class = type(fsspec.filesystem("s3"))
    s3fs_class.clear_instance_cache()  # a filesystem made with the credentials is cached
    try:
        r = runner.invoke(app, ["cache", "info", pushed])
    finally:
        s3fs_class.clear_instance_cache()  # ... and so is this one without them
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert len(line.splitlines()) == 1 and pushed in line, line
    assert "credential" in line.lower() and "AWS_ACCESS_KEY_ID" in line, line


def test_unknown_scheme_names_the_extra(monkeypatch):
    with pytest.raises(MissingBackendError, match=r"clipcbm\[gcs\]"):
        registry = importlib.import_module("fsspec.registry")  # gcsfs is not installed here
        absent = {"class": "no_such_module.GCSFileSystem", "err": "install gcsfs"}
        monkeypatch.setitem(registry.known_implementations, "gs", absent)
        monkeypatch.delitem(registry._registry, "gs", raising=False)
        open_cache("gs://b/c.zarr")
    with pytest.raises(MissingBackendError, match="no fsspec backend is known"):
        open_cache("zz://b/c.zarr")


def test_remote_hdf5_is_refused(s3):
    with pytest.raises(CacheError, match="HDF5 caches are read from a local file only"):
        open_cache(f"s3://{BUCKET}/c.h5")


# -- writing to a URL: write_cache and `embed --out s3://` ------------------------------------
def test_write_cache_to_s3_shard_by_shard_resumes(s3, monkeypatch):
    from clipcbm.cache import CacheWriter, write_cache

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(24, 8)).astype(np.float32)
    kw = dict(splits={"train": {"image_emb": emb, "labels": np.arange(24) % 2}},
              concepts=["a", "b"], classes=["x", "y"], concept_emb=emb[:2], class_emb=emb[2:4],
              chunk_rows=4, shard_rows=4)  # fmt: skip
    url = _fresh(s3, "written.zarr")
    real, calls = CacheWriter.write_shard, []

    def dies_at_the_fourth(self, split, shard, **arrays):
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        calls.append(shard)
        return real(self, split, shard, **arrays)

    monkeypatch.setattr(CacheWriter, "write_shard", dies_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        write_cache(url, **kw)
    monkeypatch.setattr(CacheWriter, "write_shard", real)
    s3.invalidate_cache()
    with pytest.raises(IncompleteCacheError, match="3 / 6 shards done"):
        open_cache(url)
    resumed = []
    monkeypatch.setattr(CacheWriter, "write_shard",
                        lambda self, split, shard, **a: resumed.append(shard) or real(
                            self, split, shard, **a))  # fmt: skip
    write_cache(url, **kw)
    assert resumed == [3, 4, 5]  # only the shards without a marker
    s3.invalidate_cache()
    assert verify_cache(url) == []
    assert not Tree(url).files(".progress")
    with open_cache(url) as c:
        np.testing.assert_array_equal(c.split("train").labels, np.arange(24) % 2)


def test_embed_out_s3_equals_local_embed(s3, tiny_clip_dir, tmp_path):
    from tests import _dataset_factories as fx

    root = fx.make_cifar10(tmp_path / "data", n_train=6, n_test=3)
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("red fur\nwings\n")
    url, local_out = _fresh(s3, "embedded.zarr"), tmp_path / "embedded.zarr"
    for out in (local_out, url):
        r = runner.invoke(app, ["embed", "--dataset", "cifar10", "--root", str(root), "--out",
                                str(out), "--concepts", str(concepts), "--model",
                                str(tiny_clip_dir), "--device", "cpu", "--workers", "0",
                                "--batch-size", "4", "--no-progress", "--shard-rows", "4",
                                "--chunk-rows", "2"])  # fmt: skip
        assert r.exit_code == 0, r.output + repr(r.exception)
    s3.invalidate_cache()
    assert verify_cache(url) == []
    with open_cache(url) as a, open_cache(local_out) as b:
        assert a.fingerprint == b.fingerprint
        for split in b.splits:
            np.testing.assert_array_equal(a.split(split).image_emb, b.split(split).image_emb)
