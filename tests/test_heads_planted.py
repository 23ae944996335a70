"""Heads fitted on a planted-concept cache: accuracy, both layers training, couplings,
explanations and sparsity (issue 3 correctness evidence)."""

import pytest
import torch
import torch.nn.functional as F

from clipcbm.cache import open_cache
from clipcbm.cache.planted import make_planted_cache, planted_from_cache
from clipcbm.heads.cbm.config import FitHeadConfig
from clipcbm.heads.cbm.losses import CBL_LOSSES
from clipcbm.heads.cbm.model import ConceptBottleneck
from clipcbm.heads.cbm.train import StepState, run, train_step
from clipcbm.heads.features import FEATURES
from clipcbm.heads.io.artifact import load_head
from clipcbm.heads.io.data import carve_validation

N_CLASSES = 5
CHANCE = 1 / N_CLASSES
HEADS = ("l1", "contrastive", "sparse", "probe", "zs-probe")
FIT = dict(batch_size=64, epochs=30, patience=10, progress=False)  # 540 fit rows: 9 steps/epoch
# the SPEC §2 CBM as the thesis states it (diagonal positives, W_F from zero, no TopK): the
# mechanics tests below are about that model; the product's defaults are tested further down
SPEC_CBM = dict(fc_init="zero", positives="diagonal", topk=0)
TOPK = 5  # the opt-in TopK bottleneck (fit-head --topk): 5 of |D| = 24 concepts per image
CBMS = ("l1", "contrastive", "sparse", "sparse-topk")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted_heads")
    path = make_planted_cache(root / "p.zarr", n_classes=N_CLASSES, noise=2.5, seed=0)
    spec = lambda loss: SPEC_CBM if loss in ("l1", "contrastive", "sparse") else {}  # noqa: E731
    results = {
        loss: run(
            FitHeadConfig(cache=path, out=root / loss, loss=loss, seed=0, **spec(loss), **FIT)
        )
        for loss in HEADS
    }
    results["sparse-topk"] = run(
        FitHeadConfig(cache=path, out=root / "sparse-topk", loss="sparse", seed=0,
                      **{**SPEC_CBM, "topk": TOPK}, **FIT)
    )  # fmt: skip
    for loss in ("l1", "contrastive", "sparse"):  # the product's defaults
        results[f"{loss}-default"] = run(
            FitHeadConfig(cache=path, out=root / f"{loss}-default", loss=loss, progress=False)
        )
    with open_cache(path) as c:
        test = c.split("test").valid()
        yield {
            "cache": c,
            "path": path,
            "results": results,
            "x": torch.from_numpy(test.image_emb),
            "y": torch.from_numpy(test.labels),
            "planted": planted_from_cache(c),
        }


def _acc(logits, y):
    return (logits.argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("loss", (*HEADS, "sparse-topk"))
def test_every_head_beats_chance_by_a_wide_margin(planted, loss):
    m = planted["results"][loss].metrics
    assert m["val"]["top1"] >= 3 * CHANCE, m
    assert m["test"]["top1"] >= 3 * CHANCE, m


@pytest.mark.parametrize("loss", CBMS)
def test_both_layers_train_and_the_fc_matters(planted, loss):
    c, x, y = planted["cache"], planted["x"], planted["y"]
    head = load_head(planted["results"][loss].out_dir, c)
    change = head.config["fit"]["weight_change"]
    assert change["cbl"] > 1e-3 and change["fc"] > 1e-3
    fresh = ConceptBottleneck(len(c.concepts), len(c.classes))
    assert not torch.allclose(head.module.fc.weight, fresh.fc.weight)
    assert not torch.allclose(head.module.cbl.weight, fresh.cbl.weight)
    acc = _acc(head.logits(x, c), y)
    with torch.no_grad():
        head.module.fc.weight.zero_()
    acc_without_fc = _acc(head.logits(x, c), y)
    assert acc_without_fc <= CHANCE + 0.05 < acc - 0.3


@pytest.mark.parametrize("loss", CBMS)
def test_planted_concepts_rank_in_the_top_explanations(planted, loss):
    """Contributions W_F[y_hat] * a, averaged over correctly predicted test images of a class:
    the class's planted concepts must be among its top-5 (|D| = 24, 3 planted per class)."""
    c, x, y = planted["cache"], planted["x"], planted["y"]
    head = load_head(planted["results"][loss].out_dir, c)
    a, pred = head.activations(x, c), head.logits(x, c).argmax(1)
    contrib = head.module.fc.weight[pred].detach() * a  # (N, |D|)
    found = total = 0
    for m, idx in planted["planted"].items():
        sel = (y == m) & (pred == m)
        top5 = set(contrib[sel].mean(0).topk(5).indices.tolist())
        found, total = found + len(top5 & set(idx)), total + len(idx)
    assert found / total >= 0.8, (found, total)


def _sparsity(a: torch.Tensor) -> float:
    """SPEC §2 activation sparsity: fraction of |a_j| <= 1e-3 * max_j |a_j|, per image."""
    return (a.abs() <= 1e-3 * a.abs().amax(1, keepdim=True)).float().mean().item()


@pytest.mark.xfail(
    strict=True,
    reason="finding: with shuffled batches the diagonal positives are random pairings, so both "
    "SPEC losses are in expectation a cross-entropy to a uniform target that prefers dense "
    "activations (test_under_shuffled_batches_the_losses_prefer_dense_over_sparse_activations); "
    "on planted caches both heads are equally dense (~0.2% near-zero). --topk is the opt-in "
    "sparse bottleneck. Strict: an XPASS means the finding changed.",
)
def test_sparse_head_activations_are_sparser_than_contrastive(planted):
    c, x = planted["cache"], planted["x"]
    sp = load_head(planted["results"]["sparse"].out_dir, c).activations(x, c)
    co = load_head(planted["results"]["contrastive"].out_dir, c).activations(x, c)
    assert _sparsity(sp) >= _sparsity(co) + 0.05


def test_topk_head_has_k_active_concepts_and_is_sparser_than_contrastive(planted):
    """The opt-in bottleneck delivers what the SPEC losses do not: every test image uses at
    most TOPK concepts, so >= 1 - TOPK/|D| of its activations are zero."""
    c, x = planted["cache"], planted["x"]
    tk = load_head(planted["results"]["sparse-topk"].out_dir, c).activations(x, c)
    co = load_head(planted["results"]["contrastive"].out_dir, c).activations(x, c)
    assert ((tk != 0).sum(1) <= TOPK).all()
    assert _sparsity(tk) >= 1 - TOPK / tk.shape[1] >= _sparsity(co) + 0.5
    for name, a in (("sparse-topk", tk), ("contrastive", co)):  # what fit-head reported
        m = planted["results"][name].metrics["test"]
        assert m["act_sparsity"] == pytest.approx(_sparsity(a), abs=1e-6)
        active = (a.abs() > 1e-3 * a.abs().amax(1, keepdim=True)).sum(1).float().mean().item()
        assert m["active_concepts"] == pytest.approx(active)


def test_validation_split_is_seeded_from_train_and_recorded(planted):
    cfg = planted["results"]["sparse"].out_dir / "config.json"
    head = load_head(cfg.parent, planted["cache"])
    val = head.config["validation"]
    n_train = len(planted["cache"].split("train").valid().labels)
    _, expected = carve_validation(n_train, 0.1, 0)
    assert val["indices"] == expected.tolist() and val["seed"] == 0 and val["split"] == "train"
    assert head.config["cache_fingerprint"] == planted["cache"].fingerprint


def test_zs_probe_is_flagged_as_not_a_true_probe(planted):
    r = planted["results"]["zs-probe"]
    assert "not a true linear probe" in r.metrics["note"]
    head = load_head(r.out_dir, planted["cache"])
    assert head.kind == "zs-probe" and "not a true linear probe" in head.config["fit"]["note"]
    assert load_head(planted["results"]["probe"].out_dir).config["fit"]["C"] in FIT_GRID


FIT_GRID = FitHeadConfig(cache="x").c_grid


def test_fit_is_deterministic(planted, tmp_path):
    cfg = FitHeadConfig(cache=planted["path"], out=tmp_path / "again", loss="sparse", **SPEC_CBM,
                        **FIT)  # fmt: skip
    again = load_head(run(cfg).out_dir)
    first = load_head(planted["results"]["sparse"].out_dir)
    for k, v in first.module.state_dict().items():
        assert torch.equal(v, again.module.state_dict()[k]), k


class _GradOnly:
    """Stands in for an optimizer: train_step zeroes and 'steps', we read the grads."""

    def __init__(self, params):
        self.params = list(params)

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self):
        pass


@pytest.mark.parametrize(
    ("loss", "coupling", "ce_reaches_cbl"),
    [
        ("contrastive", "sequential", False),
        ("contrastive", "joint", True),
        ("sparse", "sequential", False),
        ("l1", "sequential", True),  # l1-CBM: CE trains W_CBL in both couplings
        ("l1", "joint", True),
    ],
)
def test_coupling_decides_whether_ce_reaches_w_cbl(planted, loss, coupling, ce_reaches_cbl):
    from clipcbm.heads.features import TextTensors

    c = planted["cache"]
    text = TextTensors.from_cache(c, "cpu")
    data = type("D", (), {"text": text})()
    cfg = FitHeadConfig(cache="x", loss=loss, coupling=coupling)
    xb, yb = planted["x"][:16], planted["y"][:16]
    torch.manual_seed(0)
    model = ConceptBottleneck(len(c.concepts), len(c.classes))
    with torch.no_grad():
        model.fc.weight.normal_()  # a non-zero W_F so that CE has a gradient w.r.t. a
    opts = [_GradOnly(model.parameters())]
    state = lambda: StepState(1e-3, 0.5, torch.Generator().manual_seed(0), False, "paper")  # noqa: E731
    train_step(model, opts, xb, yb, data, cfg, state())
    got = model.cbl.weight.grad.clone()
    a = model.activations(FEATURES["cbm"](xb, text))
    l_cbl = CBL_LOSSES[loss](a, model, state())
    ce = F.cross_entropy(model.fc(a), yb)
    (only_cbl,) = torch.autograd.grad(l_cbl, model.cbl.weight, retain_graph=True)
    (with_ce,) = torch.autograd.grad(l_cbl + ce, model.cbl.weight)
    assert torch.allclose(got, with_ce if ce_reaches_cbl else only_cbl, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(only_cbl, with_ce, rtol=1e-4, atol=1e-6)
    assert model.fc.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ the product's defaults


@pytest.mark.parametrize("loss", ("l1", "contrastive", "sparse"))
def test_default_heads_are_never_below_their_start_on_validation(planted, loss):
    """Early stopping evaluates step 0: the kept CBL is at least as good on validation as the
    zero-shot-initialised start (for dense heads that start is the zero-shot classifier); the
    anchored final layer then picks its pull by cross-validation, the strongest pull (the
    start itself) among the candidates, and is refitted on all of train."""
    r = planted["results"][f"{loss}-default"]
    hist = r.history
    fit = load_head(r.out_dir).config["fit"]
    assert hist[0]["step"] == 0
    best = max(h["val_top1"] for h in hist)
    kept = fit["best_val_top1"]
    assert kept >= hist[0]["val_top1"]
    # the best checkpoint, or the start when the best is within one standard error of it
    margin = fit["start_margin"]
    assert kept == pytest.approx(best) or (kept == hist[0]["val_top1"] and best <= kept + margin)
    ff = fit["final_fit"]
    cv = {float(c): v for c, v in ff["cv_top1_per_C"].items()}
    assert cv[ff["C"]] >= cv[min(cv)]  # the chosen pull is no worse held out than the start's
    assert ff["refit_rows"] == len(planted["cache"].split("train").valid().labels)  # all train
    if loss != "sparse":  # dense: step 0 is the zero-shot classifier (class_emb in span(D))
        assert hist[0]["val_top1"] == pytest.approx(r.metrics["zero_shot"]["val"]["top1"])
        assert r.metrics["test"]["top1"] >= r.metrics["zero_shot"]["test"]["top1"] - 0.01


def test_default_sparse_head_is_sparse_where_the_final_layer_looks(planted):
    c, x = planted["cache"], planted["x"]
    r = planted["results"]["sparse-default"]
    head = load_head(r.out_dir, c)
    k = head.config["topk"]
    assert 1 <= k <= 0.1 * len(c.concepts)  # >= 90 % of the concepts inactive per image
    a = head.activations(x, c)
    assert ((a != 0).sum(1) <= k).all()
    assert r.metrics["test"]["act_sparsity"] >= 0.9
    assert head.config["hyperparameters"]["positives"] == "class"


def test_zero_shot_init_reproduces_zero_shot_when_the_concepts_span_the_classes(planted):
    """Planted class embeddings are means of concept embeddings, so span(D) contains C: the
    ridge solution makes step-0 logits predict exactly what zero-shot predicts."""
    from clipcbm.heads.cbm.init import init_final_layer
    from clipcbm.heads.io.data import load_data
    from clipcbm.heads.psi import class_logits

    c = planted["cache"]
    cfg = FitHeadConfig(cache=planted["path"], loss="l1")
    data = load_data(c, cfg, "cpu")
    model = ConceptBottleneck(len(c.concepts), len(c.classes))
    info = init_final_layer(model, data, "zero-shot")
    assert info["agreement"] == 1.0 and info["relative_residual"] < 0.05
    x = planted["x"]
    with torch.no_grad():
        head = model(FEATURES["cbm"](x, data.text)).argmax(1)
    zs = class_logits(x, data.text.class_emb, data.text.logit_scale).argmax(1)
    assert torch.equal(head, zs)
