"""Model-randomisation sanity check (Adebayo et al. 2018): the cascade re-initialises the named
layer groups top-down, cumulatively, seeded, on a deep copy; a map that ignores the weights
keeps ρ = 1 while a gradient map's ρ falls; the standard errors over pairs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clipcbm.pipeline.attribution.baselines import BASELINE_FNS
from clipcbm.pipeline.attribution.evaluate import (
    average_ranks,
    binomial_se,
    bootstrap_se,
    make_batch,
    mean_se,
    randomisation_curves,
    randomisation_steps,
    randomised_models,
    spearman_rows,
    ssim_maps,
    summarise_curves,
)
from clipcbm.pipeline.preprocess import PreprocessSpec

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # stands in for training: no weight (layer norms included) at its init
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def batches(clip):
    rng = np.random.default_rng(0)
    cfg = clip.config.text_config
    spec = PreprocessSpec(resize=32, crop=32)
    out = []
    for n in (3, 2):  # two batches of different text lengths
        crops = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(n)]
        ids = [[cfg.bos_token_id, *rng.integers(0, 200, 3 + r).tolist(), cfg.eos_token_id]
               for r in range(n)]  # fmt: skip
        out.append(make_batch(clip, spec, "cpu", torch.float32, crops, ids))
    return out


def _params(model, path):
    return [p.detach().clone() for p in model.get_submodule(path).parameters()]


def _same(model, ref, path) -> bool:
    return all(torch.equal(a, b) for a, b in zip(_params(model, path), _params(ref, path),
                                                 strict=True))  # fmt: skip


def test_steps_cover_every_weight_but_the_logit_scale_top_down(clip):
    steps = randomisation_steps(clip)
    names = [n for n, _ in steps]
    assert names == ["projection", "block 1 from top", "block 2 from top", "embeddings"]
    assert steps[1][1] == ["vision_model.encoder.layers.1", "text_model.encoder.layers.1"]
    assert steps[2][1] == ["vision_model.encoder.layers.0", "text_model.encoder.layers.0"]
    covered = {
        n
        for _, paths in steps
        for path in paths
        for n, _ in clip.get_submodule(path).named_parameters(prefix=path)
    }
    assert {n for n, _ in clip.named_parameters()} - covered == {"logit_scale"}


def test_cascade_reinitialises_the_named_groups_in_order_on_a_copy(clip):
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    steps = randomisation_steps(clip)
    seen = []
    for k, name, m in randomised_models(clip, seed=3):
        assert m is not clip
        seen.append(name)
        for j, (_, paths) in enumerate(steps, start=1):
            for path in paths:
                assert _same(m, clip, path) == (j > k), (k, path)  # 1..k new, the rest kept
        assert torch.equal(m.logit_scale, clip.logit_scale)
    assert seen == ["original", *(n for n, _ in steps)]
    after = clip.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the original is untouched


def test_independent_mode_changes_one_group_at_a_time(clip):
    steps = randomisation_steps(clip)
    for k, _, m in randomised_models(clip, seed=3, mode="independent"):
        for j, (_, paths) in enumerate(steps, start=1):
            assert all(_same(m, clip, p) == (j != k) for p in paths), (k, j)
    with pytest.raises(ValueError, match="cascade"):
        next(randomised_models(clip, mode="top-down"))


def test_randomisation_is_seeded(clip):
    def weights(seed):
        return [{k: v.clone() for k, v in m.state_dict().items()}
                for _, _, m in randomised_models(clip, seed=seed)]  # fmt: skip

    a, b, c = weights(5), weights(5), weights(6)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)
    last = "vision_model.encoder.layers.0.mlp.fc1.weight"
    assert not torch.equal(a[-1][last], c[-1][last])
    torch.manual_seed(0)
    r0 = torch.rand(1)
    torch.manual_seed(0)
    list(randomised_models(clip, seed=9))
    assert torch.equal(torch.rand(1), r0)  # the global RNG is left alone


def _blob(model, b, gen):
    """A "method" that ignores the model: a fixed centre blob and fixed token scores."""
    n, _, h, w = b.pixels.shape
    yy, xx = torch.meshgrid(torch.arange(h) - h / 2, torch.arange(w) - w / 2, indexing="ij")
    img = torch.exp(-(yy**2 + xx**2) / (2 * (h / 6) ** 2)).expand(n, h, w)
    return img, torch.arange(b.ids.shape[1], dtype=torch.float32).expand(n, -1) * b.mask


def _saliency(model, b, gen):
    return BASELINE_FNS["saliency"](model, b, SimpleNamespace())


def test_weight_free_map_stays_at_one_and_saliency_falls(clip, batches):
    curves = randomisation_curves(clip, batches, {"blob": _blob, "saliency": _saliency}, seed=1,
                                  seed_floor=True)  # fmt: skip
    assert curves["steps"][0] == "original" and len(curves["steps"]) == 5
    blob, sal = curves["per_pair"]["blob"], curves["per_pair"]["saliency"]
    assert blob["image_spearman"].shape == (5, 5)  # steps x pairs
    for key in ("image_spearman", "image_spearman_abs", "image_ssim", "text_spearman"):
        assert np.allclose(blob[key], 1.0), key
    assert np.allclose(sal["image_spearman"][0], 1.0) and np.allclose(sal["text_spearman"][0], 1.0)
    assert sal["image_spearman"][-1].mean() < 0.8  # the gradient map changed with the weights
    assert sal["text_spearman"][-1].mean() < 0.9
    assert np.allclose(curves["seed_floor"]["saliency"]["image_spearman"], 1.0)  # deterministic
    summary = summarise_curves(curves)
    assert summary["blob"]["image_spearman"]["mean"] == pytest.approx([1.0] * 5)
    assert summary["saliency"]["image_spearman"]["n"] == [5] * 5
    assert all(np.isfinite(summary["saliency"]["image_spearman"]["se"][1:]))


def test_curves_of_a_stochastic_method_are_seeded(clip, batches):
    from clipcbm.pipeline.attribution import known_answer as ka
    from clipcbm.pipeline.attribution.bottleneck import M2IBSettings

    spec = PreprocessSpec(resize=32, crop=32)
    s = M2IBSettings(steps=2, samples=2)

    def m2ib(model, b, gen):
        img, txt, _ = ka.method_maps("m2ib", model, b, s, spec, None, gen)
        return img, txt

    one = randomisation_curves(clip, batches[:1], {"m2ib": m2ib}, seed=2, seed_floor=True)
    two = randomisation_curves(clip, batches[:1], {"m2ib": m2ib}, seed=2)
    for key, v in one["per_pair"]["m2ib"].items():
        assert np.array_equal(v, two["per_pair"]["m2ib"][key], equal_nan=True), key
    assert np.allclose(one["per_pair"]["m2ib"]["image_spearman"][0], 1.0)  # same noise at k = 0
    assert one["seed_floor"]["m2ib"]["image_spearman"].shape == (3,)


def test_spearman_averages_tied_ranks_like_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.integers(0, 4, (3, 20)).astype(float))  # many ties
    b = torch.from_numpy(rng.normal(size=(3, 20)))
    assert np.allclose(average_ranks(a).numpy(), stats.rankdata(a.numpy(), axis=1) - 1)
    want = [stats.spearmanr(x, y).statistic for x, y in zip(a.numpy(), b.numpy(), strict=True)]
    assert np.allclose(spearman_rows(a, b), want)
    valid = torch.zeros(3, 20, dtype=torch.bool)
    valid[:, :7] = True
    want = [stats.spearmanr(x[:7], y[:7]).statistic for x, y in zip(a, b, strict=True)]
    assert np.allclose(spearman_rows(a, b, valid), want)
    assert np.isnan(spearman_rows(torch.ones(1, 5), b[:1, :5])[0])  # constant map: undefined
    assert np.allclose(spearman_rows(a, -a), -1.0)


def test_ssim_of_identical_scaled_and_different_maps():
    x = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0))
    assert np.allclose(ssim_maps(x, 3 * x + 1), 1.0)  # min-max normalised first
    assert (ssim_maps(x, torch.rand(2, 16, 16)) < 0.5).all()


def test_standard_errors():
    hits = np.array([1.0] * 46 + [0.0] * 18)  # 64 pairs, p = 0.71875
    assert binomial_se(hits.mean(), 64) == pytest.approx(0.0562, abs=1e-4)
    assert mean_se(hits)[1] == pytest.approx(np.sqrt(64 / 63) * 0.0562, abs=1e-4)  # ddof 1
    boot = bootstrap_se(hits, seed=0)
    assert boot == bootstrap_se(hits, seed=0) and boot == pytest.approx(0.0562, abs=0.005)
    m, se = mean_se([1.0, np.nan, 3.0])
    assert m == 2.0 and se == pytest.approx(1.0)
    assert np.isnan(mean_se([])[0]) and np.isnan(bootstrap_se([1.0]))
