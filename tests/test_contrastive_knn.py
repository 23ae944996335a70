"""kNN (heads.contrastive.knn): chunked equals the naive full-matrix version (ties, fp16 input),
faiss gives the same predictions, and the accuracies are hand-checkable."""

from __future__ import annotations

import pytest
import torch

from clipcbm.heads.contrastive import knn
from clipcbm.heads.contrastive.knn import knn_scores, ranked_classes, topk_accuracy

torch.set_num_threads(1)


def naive_scores(bank, labels, queries, n_classes, k, t, weighting):
    """Full similarity matrix, one stable sort per query (ties: lower bank row), one vote."""
    bank, queries = bank.float(), queries.float()
    sims = queries @ bank.T
    k = min(k, len(bank))
    order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k]
    out = torch.zeros(len(queries), n_classes)
    for q in range(len(queries)):
        for j in order[q].tolist():
            s = float(sims[q, j])
            w = torch.exp(torch.tensor((s - 1.0) / t)) if weighting == "exp" else 1.0
            out[q, labels[j]] += w
    return out


def random_unit(n, e, seed):
    x = torch.randn(n, e, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(x, dim=-1)


@pytest.mark.parametrize("weighting", knn.WEIGHTINGS)
def test_chunked_equals_naive_on_uneven_chunks(weighting):
    bank, queries = random_unit(53, 8, 0), random_unit(17, 8, 1)
    labels = torch.arange(53) % 5
    want = naive_scores(bank, labels, queries, 5, 10, 0.1, weighting)
    got = knn_scores(bank, labels, queries, n_classes=5, k=10, t=0.1, weighting=weighting,
                     query_chunk=4, bank_chunk=7)  # fmt: skip
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(ranked_classes(got), ranked_classes(want))


@pytest.mark.parametrize("weighting", knn.WEIGHTINGS)
def test_ties_are_broken_like_the_naive_version(weighting):
    # bank rows repeat four vectors exactly (values exact in fp16 and fp32), with different labels:
    # most neighbour slots are ties, and k = 6 cuts through a tie group
    base = torch.tensor(
        [[1.0, 0, 0, 0], [0.5, 0.5, 0.5, 0.5], [0, 1.0, 0, 0], [0.5, -0.5, 0.5, -0.5]]
    )
    bank = base.repeat(5, 1)
    labels = torch.arange(20) % 3
    queries = torch.cat([base, torch.tensor([[0.5, 0.5, 0, 0]])])
    want = naive_scores(bank, labels, queries, 3, 6, 0.5, weighting)
    for qc, bc in [(1, 1), (2, 3), (5, 20), (1024, 7)]:
        got = knn_scores(bank, labels, queries, n_classes=3, k=6, t=0.5, weighting=weighting,
                         query_chunk=qc, bank_chunk=bc)  # fmt: skip
        assert torch.equal(got, want), (qc, bc)


def test_fp16_input_equals_fp32_of_the_same_values():
    bank, queries = random_unit(40, 16, 2).half(), random_unit(9, 16, 3).half()
    labels = torch.arange(40) % 4
    a = knn_scores(bank, labels, queries, n_classes=4, k=7, t=0.2, bank_chunk=6)
    b = naive_scores(bank.float(), labels, queries.float(), 4, 7, 0.2, "exp")
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_k_is_capped_at_the_bank_size_and_majority_counts_votes():
    bank = torch.eye(3)
    scores = knn_scores(bank, [0, 1, 1], torch.eye(3)[:1], n_classes=2, k=200,
                        weighting="majority")  # fmt: skip
    assert scores.tolist() == [[1.0, 2.0]]


def test_topk_accuracy_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    # row 1 is a tie between classes 0 and 1: the lower class index ranks first
    acc = topk_accuracy(scores, [1, 1, 0])
    assert acc == {"top1": pytest.approx(1 / 3), "top5": 1.0, "n": 3}


@pytest.mark.skipif(not knn.has_faiss(), reason="faiss-cpu not installed")
def test_faiss_gives_the_same_predictions():
    bank, queries = random_unit(300, 12, 4), random_unit(50, 12, 5)
    labels = torch.arange(300) % 7
    kw = dict(n_classes=7, k=20, t=0.1)
    a = knn_scores(bank, labels, queries, backend="torch", **kw)
    b = knn_scores(bank, labels, queries, backend="faiss", **kw)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(ranked_classes(a), ranked_classes(b))


def test_faiss_backend_without_faiss_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(knn, "has_faiss", lambda: False)
    with pytest.raises(ValueError, match="pip install faiss-cpu"):
        knn_scores(torch.eye(2), [0, 1], torch.eye(2), n_classes=2, backend="faiss")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(queries=torch.ones(2, 3)), "must share E"),
        (dict(bank_labels=[0]), "one label per row"),
        (dict(weighting="softmax"), "weighting must be one of"),
        (dict(backend="annoy"), "backend must be one of"),
        (dict(k=0), "k must be >= 1"),
    ],
)
def test_bad_inputs_are_clear_errors(kwargs, match):
    args = dict(bank=torch.eye(2), bank_labels=[0, 1], queries=torch.eye(2), n_classes=2)
    with pytest.raises(ValueError, match=match):
        knn_scores(**{**args, **kwargs})
