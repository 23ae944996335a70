"""The contrastive losses (heads.contrastive.losses): a literal per-anchor loop equals the batched
form, and the closed forms and identities of issue 12 hold."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
import torch

from clipcbm.heads.contrastive import AGGREGATES, LOSSES

torch.set_num_threads(1)
UNSUPERVISED = ("contrastive", "debiased-neg", "debiased-pos")


def unit_views(b: int, v: int, e: int = 8, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, v, e, generator=g, dtype=dtype)
    return torch.nn.functional.normalize(x, dim=-1)


def literal(name, views, t, tau_plus, aggregate, labels=None) -> float:
    """The losses written anchor by anchor from their formulas, h = exp(sim / t), float64."""
    b, v, _ = views.shape
    groups = [tuple(range(v))] if aggregate == "pos-grouping" else list(combinations(range(v), 2))
    total = 0.0
    for group in groups:
        samples = [(i, a) for a in group for i in range(b)]
        losses = []
        for i, a in samples:
            x = views[i, a]

            def h(j, c, x=x):
                return math.exp(float(x @ views[j, c]) / t)

            others = [(j, c) for j, c in samples if (j, c) != (i, a)]
            if name == "supcon":
                pos = [(j, c) for j, c in others if labels[j] == labels[i]]
                den = sum(h(j, c) for j, c in others)
                losses.append(-sum(math.log(h(j, c) / den) for j, c in pos) / len(pos))
                continue
            pos = [(j, c) for j, c in others if j == i]
            neg = [(j, c) for j, c in others if j != i]
            if labels is not None:  # oracle false-negative removal
                neg = [(j, c) for j, c in neg if labels[j] != labels[i]]
            hp = sum(h(j, c) for j, c in pos) / len(pos)
            s, n = sum(h(j, c) for j, c in neg), len(neg)
            if name == "contrastive":
                losses.append(-math.log(hp / (hp + s)))
            elif name == "debiased-neg":
                ng = max((s - n * tau_plus * hp) / (1 - tau_plus), n * math.exp(-1 / t))
                losses.append(-math.log(hp / (hp + ng)))
            else:
                tau_minus = 1 - tau_plus
                p_emp = (s + hp + h(i, a)) / (n + 2)
                p_neg = s / n
                num = p_emp - tau_minus * p_neg
                den = p_emp + (n * tau_plus - tau_minus) * p_neg
                losses.append(-math.log(num / den))
        total += sum(losses) / len(losses)
    return total / len(groups)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("aggregate", AGGREGATES)
@pytest.mark.parametrize("v", [2, 3])
def test_literal_loop_equals_batched(name, aggregate, v):
    views = unit_views(5, v, seed=v)
    labels = torch.tensor([0, 1, 0, 2, 1])
    kw = dict(t=0.5, tau_plus=0.1, aggregate=aggregate)
    lab = labels if name == "supcon" else None
    got = LOSSES[name](views, **kw, labels=lab)
    assert float(got) == pytest.approx(literal(name, views, **kw, labels=lab), rel=1e-10)
    if name != "supcon":  # labels: the false-negative removal oracle
        got = LOSSES[name](views, **kw, labels=labels)
        assert float(got) == pytest.approx(literal(name, views, **kw, labels=labels), rel=1e-10)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("aggregate", AGGREGATES)
def test_collapsed_batch_is_log_2b_minus_1(name, aggregate):
    b = 6
    views = torch.nn.functional.normalize(torch.ones(b, 2, 4, dtype=torch.float64), dim=-1)
    got = LOSSES[name](views, t=0.2, tau_plus=0.1, aggregate=aggregate, labels=torch.arange(b))
    assert float(got) == pytest.approx(math.log(2 * b - 1), rel=1e-9)


@pytest.mark.parametrize("name", UNSUPERVISED)
def test_collapsed_batch_with_more_views(name):
    """M = 2: loss-combination keeps N = 2B - 2; pos-grouping has N = (B - 1) V negatives."""
    b, v = 4, 3
    views = torch.nn.functional.normalize(torch.ones(b, v, 4, dtype=torch.float64), dim=-1)
    kw = dict(t=0.2, tau_plus=0.1)
    comb = LOSSES[name](views, **kw, aggregate="loss-combination")
    group = LOSSES[name](views, **kw, aggregate="pos-grouping")
    assert float(comb) == pytest.approx(math.log(2 * b - 1), rel=1e-9)
    assert float(group) == pytest.approx(math.log((b - 1) * v + 1), rel=1e-9)


@pytest.mark.parametrize("aggregate", AGGREGATES)
def test_debiased_neg_at_tau_plus_zero_is_nt_xent(aggregate):
    views = unit_views(6, 3, seed=1)
    a = LOSSES["debiased-neg"](views, t=0.3, tau_plus=0.0, aggregate=aggregate)
    b = LOSSES["contrastive"](views, t=0.3, tau_plus=0.0, aggregate=aggregate)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("aggregate", AGGREGATES)
def test_supcon_with_distinct_labels_is_nt_xent(aggregate):
    views = unit_views(7, 2, seed=2)
    a = LOSSES["supcon"](views, t=0.3, tau_plus=0.1, aggregate=aggregate, labels=torch.arange(7))
    b = LOSSES["contrastive"](views, t=0.3, tau_plus=0.1, aggregate=aggregate)
    torch.testing.assert_close(a, b)
    views = unit_views(7, 4, seed=3)  # every pair of views: one positive per anchor
    kw = dict(t=0.3, tau_plus=0.1, aggregate="loss-combination")
    a = LOSSES["supcon"](views, **kw, labels=torch.arange(7))
    torch.testing.assert_close(a, LOSSES["contrastive"](views, **kw))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_aggregations_coincide_at_m_1(name):
    views = unit_views(6, 2, seed=4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    kw = dict(t=0.4, tau_plus=0.1, labels=labels if name == "supcon" else None)
    a = LOSSES[name](views, aggregate="pos-grouping", **kw)
    b = LOSSES[name](views, aggregate="loss-combination", **kw)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("aggregate", AGGREGATES)
def test_finite_gradients_at_t_0_1(name, aggregate):
    raw = torch.randn(16, 3, 8, generator=torch.Generator().manual_seed(5), requires_grad=True)
    views = torch.nn.functional.normalize(raw, dim=-1)
    labels = torch.arange(16) % 4
    loss = LOSSES[name](views, t=0.1, tau_plus=0.1, aggregate=aggregate, labels=labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(raw.grad).all()
    assert raw.grad.abs().sum() > 0


def test_float32_matches_float64():
    views = unit_views(8, 3, seed=6)
    for name in LOSSES:
        kw = dict(t=0.1, tau_plus=0.1, aggregate="pos-grouping", labels=torch.arange(8) % 3)
        a = LOSSES[name](views.float(), **kw)
        assert float(a) == pytest.approx(float(LOSSES[name](views, **kw)), rel=1e-4)


def test_debiased_pos_guard_when_numerator_is_not_positive():
    # B = 2 (N = 2 negatives), tau+ = 0.01: N tau+ < 2 tau-; the negatives equal the anchor and
    # the positive is its opposite, so P_emp - tau- P-_emp < 0
    x = torch.tensor([1.0, 0.0], dtype=torch.float64)
    views = torch.stack([torch.stack([x, -x]), torch.stack([x, x])])
    with pytest.raises(ValueError, match=r"numerator P_emp - tau- P-_emp is <= 0.*larger batch"):
        LOSSES["debiased-pos"](views, t=0.5, tau_plus=0.01, aggregate="pos-grouping")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda v: LOSSES["supcon"](v, t=0.5, tau_plus=0.1, aggregate="pos-grouping"),
         "supcon needs labels"),
        (lambda v: LOSSES["debiased-pos"](v, t=0.5, tau_plus=0.0, aggregate="pos-grouping"),
         "identically 0"),
        (lambda v: LOSSES["contrastive"](v[0], t=0.5, tau_plus=0.1, aggregate="pos-grouping"),
         r"\(B, V, E\) tensor"),
        (lambda v: LOSSES["contrastive"](v[:, :1], t=0.5, tau_plus=0.1, aggregate="pos-grouping"),
         "V >= 2 views"),
        (lambda v: LOSSES["contrastive"](v, t=0.0, tau_plus=0.1, aggregate="pos-grouping"),
         "temperature t"),
        (lambda v: LOSSES["debiased-neg"](v, t=0.5, tau_plus=1.0, aggregate="pos-grouping"),
         r"tau_plus .* \[0, 1\)"),
        (lambda v: LOSSES["contrastive"](v, t=0.5, tau_plus=0.1, aggregate="mean"),
         "aggregate must be one of"),
        (lambda v: LOSSES["contrastive"](v, t=0.5, tau_plus=0.1, aggregate="pos-grouping",
                                         labels=torch.arange(3)), r"labels must have shape \(4,\)"),
    ],
)  # fmt: skip
def test_bad_inputs_are_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(unit_views(4, 2))


def test_anchors_without_a_positive_are_left_out_of_the_mean_not_counted_as_zero():
    """Issue 18 item 6. Through LOSSES every anchor has a positive (its other views), also for a
    singleton label; the per-anchor mean leaves out anchors that have none instead of
    averaging in a 0 (what `clamp_min(1)` alone did)."""
    from clipcbm.heads.contrastive.losses import _anchor_mean, _masks, _supcon

    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(6, 5), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])  # label 2: a singleton
    ids = torch.arange(6)  # one view per image: the singleton's anchor has no positive
    pos, neg = _masks(ids, labels, supervised=True)
    assert not pos[5].any() and pos[:5].any(1).all()
    per = _supcon(z, pos, neg, 0.5, 0.1)
    got = _anchor_mean(per, pos)
    assert torch.allclose(got, per[:5].mean()) and not torch.allclose(got, per.mean())
    with pytest.raises(ValueError, match="no anchor"):
        _anchor_mean(per, torch.zeros_like(pos))
    # the public loss with a singleton label: finite, and every anchor has its other view
    views = torch.nn.functional.normalize(torch.randn(6, 2, 5), dim=2)
    out = LOSSES["supcon"](views, t=0.5, tau_plus=0.1, aggregate="pos-grouping", labels=labels)
    assert torch.isfinite(out)
