"""fit-sae's training loop on tiny synthetic caches (CPU): it learns, it is seeded, streaming
sees every row, BatchTopK, the artifact, the feature transform and the refusals."""

import json

import numpy as np
import pytest
import torch

from clipcbm.cache import open_cache, write_cache
from clipcbm.heads.errors import (
    HeadCacheMismatchError,
    HeadFormatError,
    HeadsConfigError,
    OutputExistsError,
)
from clipcbm.heads.sae.artifact import check_model, load_feature_transform, load_names, load_sae
from clipcbm.heads.sae.config import FitSaeConfig
from clipcbm.heads.sae.data import carve_holdout, load_train_rows
from clipcbm.heads.sae.train import Schedule, run

E = 16


def _arrays(n, seed, n_atoms=48, active=3):
    rng = np.random.default_rng(seed)
    mu = np.ones(E) / np.sqrt(E)
    atoms = np.random.default_rng(99).normal(size=(n_atoms, E))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    idx = rng.integers(0, n_atoms, size=(n, active))
    x = mu + (atoms[idx] * rng.exponential(size=(n, active, 1)) * 0.4).sum(1)
    return x, atoms


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    x, atoms = _arrays(600, 0)
    xt, _ = _arrays(200, 1)
    labels = np.random.default_rng(2).integers(0, 3, 600)
    ok = np.ones(600, bool)
    ok[5] = False  # an unreadable image is never trained on
    return write_cache(
        tmp_path_factory.mktemp("sae") / "syn.zarr",
        splits={"train": {"image_emb": x, "labels": labels, "ok": ok},
                "test": {"image_emb": xt, "labels": np.zeros(200, np.int64)}},
        concepts=[f"atom{i}" for i in range(len(atoms))], classes=["a", "b", "c"],
        concept_emb=atoms, class_emb=atoms[:3],
        metadata={"model": {"id": "tiny", "revision": None, "commit": None, "embed_dim": E}},
    )  # fmt: skip


def _fit(cache_path, tmp_path, name="sae", **kw):
    kw = {"expansion": 4, "k": 3, "max_steps": 120, "select_dtype": "fp32", **kw}
    cfg = FitSaeConfig(cache=cache_path, out=tmp_path / name, progress=False, **kw)
    return cfg, run(cfg)


def test_fit_sae_learns_and_writes_the_artifact(cache_path, tmp_path):
    cfg, r = _fit(cache_path, tmp_path)
    hist = r.history
    assert hist[-1]["fvu"] < 0.6 * hist[0]["fvu"]
    m = json.loads((r.out_dir / "metrics.json").read_text())
    for key in ("fvu", "cosine", "l0", "dead_fraction"):  # the names the issue fixes
        assert key in m
    assert m["split"] == "test" and m["n"] == 200 and m["l0"] <= 3
    assert 0 < m["fvu"] < 1 and 0 < m["cosine"] <= 1
    sae, scfg = load_sae(r.out_dir)
    ours = scfg["clipcbm"]
    assert (scfg["architecture"], scfg["d_in"], scfg["d_sae"], scfg["k"]) == ("topk", E, 64, 3)
    assert scfg["apply_b_dec_to_input"] is True
    assert tuple(sae.W_enc.shape) == (E, 64) and tuple(sae.W_dec.shape) == (64, E)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5, rtol=0)
    for key in ("expansion", "k", "k_aux", "centring_mean", "seed", "cache_fingerprint",
                "model_fingerprint", "metrics", "aux_coef"):  # fmt: skip
        assert key in ours, key
    assert ours["k_aux"] == E // 2 and ours["aux_coef"] == 1 / 32 and ours["n_train"] == 599
    with open_cache(cache_path) as c:
        assert ours["cache_fingerprint"] == c.fingerprint
        valid = c.split("train").valid().image_emb
    np.testing.assert_allclose(ours["centring_mean"], valid.mean(0), atol=1e-5)
    names = load_names(r.out_dir)
    assert len(names) == 64 and set(names.columns) >= {"name", "cosine", "runner_up", "alive"}


def test_the_same_seed_gives_the_same_sae(cache_path, tmp_path):
    _, a = _fit(cache_path, tmp_path, "a", max_steps=20)
    _, b = _fit(cache_path, tmp_path, "b", max_steps=20)
    _, c = _fit(cache_path, tmp_path, "c", max_steps=20, seed=1)
    wa, wb, wc = (load_sae(r.out_dir)[0].W_dec for r in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_streaming_visits_every_kept_row_once_per_epoch(cache_path):
    with open_cache(cache_path) as c:
        hold = carve_holdout(c, "train", 0.1, seed=0)
        rows = load_train_rows(c, "train", hold, device="cpu", stream="on", block_rows=64,
                               buffer_blocks=2)  # fmt: skip
        memory = load_train_rows(c, "train", hold, device="cpu", stream="off", block_rows=64,
                                 buffer_blocks=2)  # fmt: skip
        assert rows.streamed and not memory.streamed and rows.n == memory.n == 539 - 0
        torch.testing.assert_close(rows.mean, memory.mean)
        batch = 7  # 539 = 77 x 7
        seen = torch.cat([b for _, b in zip(range(rows.n // batch), rows.batches(
            batch, torch.Generator().manual_seed(0)), strict=False)])  # fmt: skip
        want = memory.rows.float()
        key = lambda t: sorted(map(tuple, t.numpy().round(3).tolist()))  # noqa: E731
        assert key(seen) == key(want)


def test_streamed_and_batchtopk_fits_run(cache_path, tmp_path):
    _, s = _fit(cache_path, tmp_path, "stream", stream="on", stream_rows=100, max_steps=30)
    assert load_sae(s.out_dir)[1]["clipcbm"]["streamed"] is True
    _, b = _fit(cache_path, tmp_path, "btk", selection="batchtopk", max_steps=60)
    sae, cfg = load_sae(b.out_dir)
    assert cfg["architecture"] == "jumprelu" and float(sae.threshold) > 0
    assert b.metrics["l0"] > 0


def test_schedule_rules():
    cfg = FitSaeConfig(cache="c.zarr", batch_size=4096, max_steps=2000, epochs=2)
    s = Schedule.for_rows(1000, cfg)
    assert s.batch == 100 and s.per_epoch == 10 and s.steps == 20 and s.dead_steps == 10
    s = Schedule.for_rows(10_000_000, FitSaeConfig(cache="c.zarr"))
    assert s.batch == 4096 and s.steps == 2000 and s.dead_steps == 1000
    assert s.lr_factor(0) < s.lr_factor(s.warmup) == pytest.approx(1.0)
    assert s.lr_factor(s.steps) == pytest.approx(0.0)


def test_feature_transform_gives_the_codes_and_the_names(cache_path, tmp_path):
    _, r = _fit(cache_path, tmp_path, "ft", max_steps=20)
    sae, cfg = load_sae(r.out_dir)
    t = load_feature_transform(r.out_dir, "cpu")
    x = torch.randn(5, E)
    x = x / x.norm(dim=1, keepdim=True)
    torch.testing.assert_close(t(x), sae.codes(sae.pre_activations(x)))
    assert t.kind == "sae" and t.out_dim == 64 and t.in_dim == E
    assert t.sha256 == cfg["clipcbm"]["weights_sha256"]
    names = load_names(r.out_dir)
    j = int(np.flatnonzero(names["alive"])[0])
    assert names.loc[j, "name"] in t.names[j]
    with open_cache(cache_path) as c:
        from clipcbm.cache.layout import model_fingerprint

        assert t.model_fingerprint == model_fingerprint(c.metadata)


def test_refusals_and_damage(cache_path, tmp_path):
    _, r = _fit(cache_path, tmp_path, "dmg", max_steps=5)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _fit(cache_path, tmp_path, "dmg", max_steps=5)
    with pytest.raises(HeadsConfigError, match="more than the 64 latents"):
        _fit(cache_path, tmp_path, "big", k=65)
    other = write_cache(tmp_path / "other.zarr", splits={"test": {"image_emb": np.ones((3, E)),
                        "labels": np.zeros(3, np.int64)}}, concepts=["a"], classes=["a"],
                        concept_emb=np.ones((1, E)), class_emb=np.ones((1, E)),
                        metadata={"model": {"id": "another"}})  # fmt: skip
    _, cfg = load_sae(r.out_dir)
    with open_cache(other) as c, pytest.raises(HeadCacheMismatchError, match="another model"):
        check_model(cfg, c)
    weights = r.out_dir / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(HeadFormatError, match="sha256"):
        load_sae(r.out_dir)
    with pytest.raises(HeadFormatError, match="does not exist"):
        load_sae(tmp_path / "nothing")
