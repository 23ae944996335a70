"""heads/metrics.py: hand-computed values, NEC truncation protocol, sparsity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipcbm.heads.eval.metrics import (
    NEC_GRID,
    NecEvaluator,
    activation_sparsity,
    classification_metrics,
    concepts_used,
    confusion_matrix,
    mean_of,
    nec_per_class,
    per_class_accuracy,
    ranked,
    topk_hits,
    truncate_rows,
    weight_metrics,
)


def test_topk_and_per_class_by_hand():
    # 4 samples, 3 classes; ranked lists given directly
    topk = torch.tensor([[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1]])
    labels = np.array([0, 1, 1, 1])
    m = classification_metrics(topk, labels, 3)
    assert m["n"] == 4
    assert m["top1"] == pytest.approx(2 / 4)  # samples 0 and 2
    assert m["top5"] == pytest.approx(1.0)  # clipped to top-3 = every class
    # class 0: 1/1, class 1: 1/3, class 2: no samples -> NaN, excluded from the mean
    pc = per_class_accuracy(topk[:, 0], labels, 3)
    np.testing.assert_allclose(pc[:2], [1.0, 1 / 3])
    assert np.isnan(pc[2])
    assert m["mean_per_class_acc"] == pytest.approx((1 + 1 / 3) / 2)


def test_top5_counts_only_the_first_five():
    scores = torch.arange(10, dtype=torch.float32).repeat(2, 1)  # class 9 best, 0 worst
    top = ranked(scores, 10)
    hits = topk_hits(top, [5, 4])  # ranks 5 and 6
    assert hits["top5"].tolist() == [True, False]
    assert hits["top1"].tolist() == [False, False]


def test_ranked_ties_are_in_index_order():
    s = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])
    assert ranked(s, 4).tolist() == [[1, 2, 4, 0]]
    assert ranked(s, 1).tolist() == [[1]]


def test_confusion_matrix_by_hand():
    cm = confusion_matrix([0, 2, 2, 1], [0, 1, 2, 1], 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    assert cm.dtype == np.int64


def test_metric_errors_are_readable():
    with pytest.raises(ValueError, match=r"labels must lie in 0..2 \(\|C\| = 3\), got range 0..3"):
        confusion_matrix([0, 1], [0, 3], 3)
    with pytest.raises(ValueError, match="pred has 1 entries but labels has 2"):
        confusion_matrix([0], [0, 1], 3)
    with pytest.raises(ValueError, match="no samples"):
        classification_metrics(torch.zeros((0, 3), dtype=torch.int64), [], 3)
    with pytest.raises(ValueError, match="topk must be"):
        topk_hits(torch.zeros((2, 3), dtype=torch.int64), [0, 1, 2])
    with pytest.raises(ValueError, match="nec must be >= 1, got 0"):
        truncate_rows(torch.ones(2, 3), 0)


# ------------------------------------------------------------------ NEC


def test_truncation_keeps_exactly_nec_nonzeros_per_class():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 40, generator=g)
    w[3, 10:] = 0.0  # a row with only 10 non-zeros
    w[5, :] = 0.5  # a row of exact ties
    w[5, 2] = -2.0
    for nec in NEC_GRID:
        t = truncate_rows(w, nec)
        counts = nec_per_class(t)
        for m in range(7):
            want = min(nec, int((w[m] != 0).sum()))
            assert int(counts[m]) == want, (nec, m)
        # the kept entries are the largest |w| of the row, unchanged
        for m in (0, 6):
            kept = torch.nonzero(t[m]).flatten()
            assert set(kept.tolist()) == set(w[m].abs().argsort(descending=True)[:nec].tolist())
            assert torch.equal(t[m, kept], w[m, kept])
    # ties: the largest magnitude first, then the lowest concept indices
    assert torch.nonzero(truncate_rows(w, 5)[5]).flatten().tolist() == [0, 1, 2, 3, 4]
    assert torch.nonzero(truncate_rows(w, 3)[5]).flatten().tolist() == [0, 1, 2]
    assert w.abs().sum() > 0 and not torch.equal(truncate_rows(w, 5), w)


def test_weight_metrics_and_concepts_used():
    w = torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, -1.0], [0.5, 0.0, 0.0, 0.0]])
    assert nec_per_class(w).tolist() == [2, 1, 1]
    assert concepts_used(w) == 2  # columns 0 and 3
    m = weight_metrics(w)
    assert m == {
        "nec_mean": 4 / 3,
        "nec_min": 1,
        "nec_max": 2,
        "concepts_used": 2,
        "n_concepts": 4,
    }
    assert isinstance(m["nec_min"], int) and isinstance(m["concepts_used"], int)


def test_nec_accuracy_is_recomputed_with_truncated_weights_and_kept_bias():
    # class 0 reads concept 0 (strong) and many weak concepts; class 1 reads concept 1 only.
    n_concepts = 40
    w = torch.zeros(2, n_concepts)
    w[0, 0] = 1.0
    w[0, 2:] = 0.1  # 38 weak weights: truncation to NEC=5 removes 34 of them
    w[1, 1] = 1.0
    bias = torch.tensor([0.0, 0.5])
    a = torch.zeros(4, n_concepts)
    a[0, 0] = 1.0  # class-0 logit 1.0 vs 0.5 -> class 0 at any NEC
    a[1, 2:] = 1.0  # dense: 3.8 vs 0.5 -> class 0; at NEC=5: 0.4 vs 0.5 -> class 1
    a[2, 1] = 1.0  # class 1
    a[3, 2:] = 1.0  # like sample 1
    labels = torch.tensor([0, 0, 1, 0])
    ev = NecEvaluator(w, bias, necs=(5, 40))
    ev.update(a[:3], labels[:3])  # uneven chunks
    ev.update(a[3:], labels[3:])
    res = ev.result()
    assert res["acc_nec40"] == pytest.approx(1.0)
    assert res["acc_nec5"] == pytest.approx(2 / 4)
    assert res["acc_nec_avg"] == pytest.approx(0.75)
    # without the bias the truncated layer would still get sample 1 right: the bias is kept
    res_nb = NecEvaluator(w, None, necs=(5,))
    res_nb.update(a, labels)
    assert res_nb.result()["acc_nec5"] == pytest.approx(1.0)


def test_nec_evaluator_default_grid_and_empty_error():
    ev = NecEvaluator(torch.eye(3), torch.zeros(3))
    with pytest.raises(ValueError, match="never called"):
        ev.result()
    ev.update(torch.eye(3), [0, 1, 2])
    res = ev.result()
    assert set(res) == {f"acc_nec{k}" for k in NEC_GRID} | {"acc_nec_avg"}
    assert res["acc_nec_avg"] == 1.0


# ------------------------------------------------------------------ sparsity


def test_activation_sparsity_by_hand():
    a = torch.tensor(
        [
            [10.0, 0.0, 0.005, -0.02],  # threshold 0.01: 0.0 and 0.005 inactive
            [0.0, 0.0, 0.0, 0.0],  # all zero: fully sparse
            [1.0, -1.0, 0.5, 2.0],
        ]
    )
    s = activation_sparsity(a)
    np.testing.assert_allclose(s["sparsity"].numpy(), [0.5, 1.0, 0.0])
    np.testing.assert_allclose(s["l0"].numpy(), [3, 0, 4])
    np.testing.assert_allclose(s["l0_eff"].numpy(), [2, 0, 4])
    assert mean_of([s["sparsity"][:1], s["sparsity"][1:]]) == pytest.approx(0.5)
    assert np.isnan(mean_of([]))


def test_ranked_equals_a_stable_descending_sort_with_many_ties():
    g = torch.Generator().manual_seed(3)
    s = torch.randint(-3, 4, (200, 17), generator=g).float() / 2  # heavy ties, negatives
    s[0] = 0.0
    s[1, ::2] = -0.0  # -0.0 ties with +0.0
    s[2, 3] = float("inf")
    s[3, 5] = float("-inf")
    s[4] = torch.randn(17, generator=g) * 1e-40  # subnormals keep their order
    want = torch.sort(s, dim=1, descending=True, stable=True).indices
    for k in (1, 2, 5, 17, 30):
        np.testing.assert_array_equal(ranked(s, k).numpy(), want[:, : min(k, 17)].numpy())
    h = s.half()  # the subnormal row underflows to ties at 0 in fp16
    want_h = torch.sort(h.float(), dim=1, descending=True, stable=True).indices
    np.testing.assert_array_equal(ranked(h, 5).numpy(), want_h[:, :5].numpy())
