"""Pinned SAE metric definitions, the k-sweep and accuracy kept (heads/sae/metrics.py)."""

import numpy as np
import pytest
import torch
from torch import nn

from clipcbm.heads.eval.evaluate import Scorer
from clipcbm.heads.features import TextTensors
from clipcbm.heads.sae.metrics import ReconstructionMeter, evaluate_sae, reconstruct
from clipcbm.heads.sae.model import TopKSAE

E, F = 10, 40


def _rows(n=57, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, E, generator=g) + 2.0 * torch.ones(E)  # a shared mean direction
    return x / x.norm(dim=1, keepdim=True)


def _meter(x, x_hat, chunks=1, mean=None) -> dict:
    m = ReconstructionMeter(F, mean)
    for part, part_hat in zip(x.tensor_split(chunks), x_hat.tensor_split(chunks), strict=True):
        m.update(part, part_hat, torch.full((len(part),), 3), torch.zeros(F, dtype=torch.bool))
    return m.result()


def test_predicting_the_mean_gives_fvu_1_and_perfect_reconstruction_0():
    x = _rows()
    assert _meter(x, x.mean(0).expand_as(x))["fvu"] == pytest.approx(1.0, abs=1e-9)
    perfect = _meter(x, x.clone())
    assert perfect["fvu"] == 0.0 and perfect["mse"] == 0.0 and perfect["nmae"] == 0.0
    assert perfect["cosine"] == pytest.approx(1.0)


def test_metric_definitions_by_hand_and_chunk_independent():
    x = _rows().double()
    x_hat = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3),
                                   dtype=torch.float64)).float()  # fmt: skip
    mu = torch.linspace(0, 0.3, E)
    got = _meter(x.float(), x_hat, chunks=1, mean=mu)
    xh = x_hat.double()
    fvu = ((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    cos = nn.functional.cosine_similarity(x, xh).mean()
    cos_c = nn.functional.cosine_similarity(x - mu.double(), xh - mu.double()).mean()
    nmae = ((x - xh).abs().mean(1) / x.abs().mean(1)).mean()
    assert got["fvu"] == pytest.approx(float(fvu), rel=1e-5)
    assert got["cosine"] == pytest.approx(float(cos), rel=1e-6)
    assert got["cosine_centred"] == pytest.approx(float(cos_c), rel=1e-6)
    assert got["nmae"] == pytest.approx(float(nmae), rel=1e-5)
    assert got["l0"] == 3.0
    chunked = _meter(x.float(), x_hat, chunks=5, mean=mu)
    for key, value in got.items():
        assert chunked[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def _sae(seed=0) -> TopKSAE:
    sae = TopKSAE(E, F, 4)
    sae.tied_init(None, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_enc.copy_(0.05 * torch.randn(F, generator=torch.Generator().manual_seed(1)))
    return sae.eval()


def test_k_sweep_equals_separate_topk_models():
    sae, x = _sae(), _rows(40)
    ev = evaluate_sae(sae, x.numpy(), ks=(1, 2, 4, 8, F, F + 5), chunk_rows=16)
    assert list(ev.sweep["k"]) == [1, 2, 4, 8, F]  # k above F is skipped
    for k in (1, 2, 8, F):
        other = TopKSAE(E, F, k)
        other.load_state_dict(sae.state_dict())
        alone = evaluate_sae(other.eval(), x.numpy(), chunk_rows=7).metrics
        row = ev.sweep.set_index("k").loc[k]
        for key in ("fvu", "cosine", "l0", "dead_fraction", "nmae"):
            assert row[key] == pytest.approx(alone[key], rel=1e-6, abs=1e-9), (k, key)
    # the trained k's row is the model's own metrics
    assert ev.sweep.set_index("k").loc[4]["fvu"] == pytest.approx(ev.metrics["fvu"], rel=1e-9)


def test_dead_fraction_counts_latents_that_never_fire():
    sae, x = _sae(), _rows(30)
    with torch.no_grad():
        sae.b_enc[:10] = -100.0  # these can never be in the top k with a positive value
    ev = evaluate_sae(sae, x.numpy())
    _, active, fired = reconstruct(sae, sae.pre_activations(x))
    assert not ev.fired[:10].any()
    assert ev.metrics["dead_fraction"] == pytest.approx(1 - fired.sum().item() / F)
    assert ev.metrics["l0"] == pytest.approx(active.float().mean().item())


def test_accuracy_kept_scores_unit_reconstructions_against_the_originals():
    sae, x = _sae(), _rows(50)
    classes = torch.eye(E)[:3]
    text = TextTensors(concept_emb=classes, class_emb=classes, logit_scale=100.0)
    scorer = Scorer("zero-shot", nn.Identity(), text)
    y = np.asarray((x[:, :3]).argmax(1))  # labels = the zero-shot prediction on x
    ev = evaluate_sae(sae, x.numpy(), y, scorers={"zero_shot": scorer, "head": scorer})
    m = ev.metrics
    assert m["zero_shot_top1"] == 1.0
    z, x_hat = sae(x)
    want = float((x_hat[:, :3].argmax(1).numpy() == y).mean())
    assert m["zero_shot_top1_recon"] == pytest.approx(want)
    assert m["accuracy_kept"] == pytest.approx(want)
    assert m["head_accuracy_kept"] == pytest.approx(want) and m["head_top1"] == 1.0
