"""CMS (heads/cms.py) against a literal per-pair loop of Algorithm 1 (thesis §4.2, SPEC §3)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from clipcbm.heads.baselines import normalize as cms_normalize
from clipcbm.heads.baselines.cms import (
    NORMALIZE_CHOICES,
    build_scorer,
    cms_explain,
    cms_predict,
    resolve_normalize,
    zero_shot_predict,
)

# ---------------------------------------------------------------- literal Algorithm 1 (float64)


def _cos(a, b) -> float:
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    if na < 1e-12 or nb < 1e-12:
        return 0.0  # documented convention: a zero vector has cosine 0 with everything
    return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


def _column_normalize(rows, how):
    """Each column mapped with its own mean / population std over the rows, by hand."""
    if how == "none":
        return rows
    n, d = len(rows), len(rows[0])
    out = [list(r) for r in rows]
    for j in range(d):
        col = [rows[k][j] for k in range(n)]
        mean = sum(col) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in col) / n)
        shift, scale = (0.0, mean) if how == "column" else (mean, std)
        if abs(scale) <= 1e-12:
            scale = 1.0
        for k in range(n):
            out[k][j] = (rows[k][j] - shift) / scale
    return out


def literal_cms(images, concepts, classes, how="none"):
    """Algorithm 1 verbatim: for every image k, for every class m, compute cos(V_k, T_m)."""
    images, concepts, classes = (
        np.asarray(a, dtype=np.float64).tolist() for a in (images, concepts, classes)
    )
    V = [[_cos(i, d) for d in concepts] for i in images]
    T = [[_cos(c, d) for d in concepts] for c in classes]
    V, T = _column_normalize(V, how), _column_normalize(T, how)
    preds, scores = [], []
    for k in range(len(V)):
        row = []
        best, best_m = -math.inf, -1
        for m in range(len(T)):
            s = _cos(V[k], T[m])
            row.append(s)
            if s > best:  # strict: on a tie the lowest class index wins
                best, best_m = s, m
        preds.append(best_m)
        scores.append(row)
    return np.array(preds), np.array(scores), V, T


def _clip_like(rng, n, e, common):
    """Unit rows sharing a common direction, so cosines are positive like CLIP's (~0.2-0.6)."""
    x = common[None] + 0.8 * rng.standard_normal((n, e)) / math.sqrt(e)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def small():
    rng = np.random.default_rng(7)
    e = 16
    common = rng.standard_normal(e)
    common /= np.linalg.norm(common)
    return {
        "images": _clip_like(rng, 23, e, common),
        "concepts": _clip_like(rng, 11, e, common),
        "classes": _clip_like(rng, 6, e, common),
    }


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize("how", ["none", "column", "zscore"])
@pytest.mark.parametrize("chunk", [1, 4, 7, 23, 100])
def test_cms_equals_literal_loop(small, how, chunk):
    want_pred, want_scores, _, _ = literal_cms(
        small["images"], small["concepts"], small["classes"], how
    )
    out = cms_predict(
        small["images"],
        small["concepts"],
        small["classes"],
        normalize=how,
        chunk_size=chunk,
        keep_scores=True,
    )
    np.testing.assert_allclose(out.scores.numpy(), want_scores, atol=2e-5)
    np.testing.assert_array_equal(out.pred.numpy(), want_pred)
    # top-k: classes in decreasing literal score order, and top-1 is the prediction
    want_top5 = np.argsort(-want_scores, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(out.topk.numpy(), want_top5)
    np.testing.assert_allclose(out.pred_score.numpy(), want_scores.max(1), atol=2e-5)


@pytest.mark.parametrize("how", ["none", "column", "zscore"])
def test_cms_fp16_input_matches_literal_on_the_fp16_values(small, how):
    img16 = small["images"].astype(np.float16)
    want_pred, want_scores, _, _ = literal_cms(img16, small["concepts"], small["classes"], how)
    out = cms_predict(
        img16, small["concepts"], small["classes"], normalize=how, chunk_size=5, keep_scores=True
    )
    assert out.scores.dtype == torch.float32
    np.testing.assert_allclose(out.scores.numpy(), want_scores, atol=2e-5)
    np.testing.assert_array_equal(out.pred.numpy(), want_pred)
    # torch half tensors are accepted as well and give the same answer
    out_t = cms_predict(
        torch.from_numpy(img16), small["concepts"], small["classes"], normalize=how, chunk_size=5
    )
    np.testing.assert_array_equal(out_t.pred.numpy(), want_pred)


def test_cms_result_does_not_depend_on_chunking(small):
    outs = [
        cms_predict(
            small["images"],
            small["concepts"],
            small["classes"],
            normalize="zscore",
            chunk_size=c,
            keep_scores=True,
        )
        for c in (1, 3, 23)
    ]
    for o in outs[1:]:
        np.testing.assert_array_equal(o.pred.numpy(), outs[0].pred.numpy())
        np.testing.assert_allclose(o.scores.numpy(), outs[0].scores.numpy(), atol=1e-6)


@pytest.mark.parametrize("how", ["none", "column", "zscore"])
def test_ties_break_to_the_lowest_class_index(small, how):
    # classes 1 and 4 are the same vector as class 3: exact ties, lowest index must win
    classes = small["classes"].copy()
    classes[4] = classes[1]
    classes[3] = classes[1]
    want_pred, want_scores, _, _ = literal_cms(small["images"], small["concepts"], classes, how)
    out = cms_predict(
        small["images"], small["concepts"], classes, normalize=how, chunk_size=4, keep_scores=True
    )
    np.testing.assert_array_equal(out.pred.numpy(), want_pred)
    assert not np.isin(out.pred.numpy(), [3, 4]).any()
    assert (out.pred.numpy() == 1).any(), "fixture should make class 1 win somewhere"
    # in the ranking, tied classes stay in index order: 1 before 3 before 4
    for row in out.topk.numpy():
        pos = [list(row).index(m) for m in (1, 3, 4) if m in row]
        assert pos == sorted(pos)


def test_all_tied_scores_give_class_zero_and_index_order(small):
    classes = np.repeat(small["classes"][:1], 4, axis=0)  # four identical classes
    out = cms_predict(small["images"], small["concepts"], classes, top_k=5)
    assert (out.pred == 0).all()
    assert out.topk.shape == (23, 4)  # top-5 clipped to |C| = 4
    np.testing.assert_array_equal(out.topk.numpy(), np.tile(np.arange(4), (23, 1)))


def test_zero_image_row_scores_zero_and_predicts_class_zero(small):
    images = small["images"].copy()
    images[5] = 0.0
    want_pred, want_scores, _, _ = literal_cms(images, small["concepts"], small["classes"], "none")
    out = cms_predict(images, small["concepts"], small["classes"], keep_scores=True)
    assert want_pred[5] == 0 and np.all(want_scores[5] == 0)
    assert out.pred[5] == 0 and torch.all(out.scores[5] == 0)


# ---------------------------------------------------------------- normalisation variants


def test_sum_normalisation_is_exactly_none_and_says_so(small, caplog, monkeypatch):
    monkeypatch.setattr(
        cms_normalize, "_alias_logged", set()
    )  # the note is logged once per process
    with caplog.at_level(logging.INFO, logger="clipcbm.heads.baselines.normalize"):
        a = cms_predict(
            small["images"], small["concepts"], small["classes"], normalize="sum", keep_scores=True
        )
    b = cms_predict(
        small["images"], small["concepts"], small["classes"], normalize="none", keep_scores=True
    )
    assert a.normalize == "none"
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred, b.pred)
    assert "alias of 'none'" in caplog.text
    assert resolve_normalize("sum") == "none"


def test_product_sum_alias_equals_the_literal_row_sum_scaling(small):
    # the published "normalisation": divide each row of V and T by its sum, then the cosine;
    # the product's normalize="sum" must give exactly those scores (and so equal "none")
    _, want_scores, V, T = literal_cms(small["images"], small["concepts"], small["classes"])
    Vs = [[x / sum(r) for x in r] for r in V]
    Ts = [[x / sum(r) for x in r] for r in T]
    scaled = np.array([[_cos(v, t) for t in Ts] for v in Vs])
    out = cms_predict(
        small["images"], small["concepts"], small["classes"], normalize="sum", keep_scores=True
    )
    np.testing.assert_allclose(out.scores.numpy(), scaled, atol=1e-5)
    np.testing.assert_array_equal(out.pred.numpy(), scaled.argmax(1))


def test_column_normalisation_changes_results(small):
    a = cms_predict(small["images"], small["concepts"], small["classes"], keep_scores=True)
    b = cms_predict(
        small["images"], small["concepts"], small["classes"], normalize="column", keep_scores=True
    )
    assert not torch.allclose(a.scores, b.scores, atol=1e-3)


def test_every_normalize_choice_runs(small):
    for how in NORMALIZE_CHOICES:
        out = cms_predict(small["images"], small["concepts"], small["classes"], normalize=how)
        assert out.pred.shape == (23,)


# ---------------------------------------------------------------- explanations


@pytest.mark.parametrize("how", ["none", "zscore"])
def test_top_concepts_are_the_largest_terms_of_the_predicted_cosine(small, how):
    want_pred, want_scores, V, T = literal_cms(
        small["images"], small["concepts"], small["classes"], how
    )
    out = cms_predict(
        small["images"], small["concepts"], small["classes"], normalize=how, n_concepts=3
    )
    for k in (0, 9, 22):
        v = np.array(V[k]) / np.linalg.norm(V[k])
        t = np.array(T[want_pred[k]]) / np.linalg.norm(T[want_pred[k]])
        terms = v * t
        assert terms.sum() == pytest.approx(want_scores[k].max(), abs=1e-9)
        np.testing.assert_array_equal(
            out.top_concepts[k].numpy(), np.argsort(-terms, kind="stable")[:3]
        )
        np.testing.assert_allclose(out.top_terms[k].numpy(), np.sort(terms)[::-1][:3], atol=2e-6)


def test_cms_explain_terms_sum_to_the_score(small):
    scorer = build_scorer(small["images"], small["concepts"], small["classes"], normalize="column")
    out = cms_predict(small["images"], small["concepts"], small["classes"], normalize="column")
    ex = cms_explain(scorer, small["images"][4])
    assert ex["cls"] == int(out.pred[4])
    assert ex["term"].sum() == pytest.approx(ex["score"], abs=1e-5)
    assert ex["score"] == pytest.approx(float(out.pred_score[4]), abs=1e-6)
    other = cms_explain(scorer, small["images"][4], cls=0)
    assert other["cls"] == 0
    with pytest.raises(ValueError, match="class index 9 out of range"):
        cms_explain(scorer, small["images"][4], cls=9)


# ---------------------------------------------------------------- zero-shot and errors


def test_zero_shot_is_argmax_of_dot_products(small):
    pred, top = zero_shot_predict(
        small["images"].astype(np.float16), small["classes"], chunk_size=4
    )
    logits = small["images"].astype(np.float16).astype(np.float64) @ small["classes"].T.astype(
        np.float64
    )
    np.testing.assert_array_equal(pred.numpy(), logits.argmax(1))
    np.testing.assert_array_equal(top.numpy(), np.argsort(-logits, axis=1, kind="stable")[:, :5])


def test_user_errors_are_readable(small):
    with pytest.raises(ValueError, match="normalize='l2' is not known; allowed: none, column"):
        cms_predict(small["images"], small["concepts"], small["classes"], normalize="l2")
    with pytest.raises(ValueError, match="embedding widths differ"):
        cms_predict(small["images"][:, :8], small["concepts"], small["classes"])
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        cms_predict(small["images"], small["concepts"], small["classes"], chunk_size=0)
    with pytest.raises(ValueError, match="0 rows"):
        cms_predict(small["images"][:0], small["concepts"], small["classes"])
    with pytest.raises(ValueError, match="must be a 2-D array"):
        cms_predict(small["images"][0], small["concepts"], small["classes"])
    with pytest.raises(ValueError, match="at least one concept"):
        cms_predict(small["images"], small["concepts"][:0], small["classes"])


@pytest.mark.parametrize("how", ["column", "zscore"])
def test_column_statistics_stay_accurate_over_many_chunks(how):
    """fp32 chunks vs a float64 full-matrix reference, embeddings sharing a common direction."""
    rng = np.random.default_rng(11)
    e = 64
    common = rng.standard_normal(e)
    common /= np.linalg.norm(common)
    images = _clip_like(rng, 3000, e, common).astype(np.float16)  # cosines ~0.6
    concepts = _clip_like(rng, 50, e, common)
    classes = _clip_like(rng, 20, e, common)

    def unit(x):
        x = np.asarray(x, np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    V, T = unit(images) @ unit(concepts).T, unit(classes) @ unit(concepts).T
    if how == "column":
        V, T = V / V.mean(0), T / T.mean(0)
    else:
        V, T = (V - V.mean(0)) / V.std(0), (T - T.mean(0)) / T.std(0)
    want = unit(V) @ unit(T).T
    out = cms_predict(images, concepts, classes, normalize=how, chunk_size=256, keep_scores=True)
    np.testing.assert_allclose(out.scores.numpy(), want, atol=1e-5)
    gap = np.sort(want, 1)[:, -1] - np.sort(want, 1)[:, -2]
    clear = gap > 1e-5  # fp32 scores are exact to ~1e-6 here; closer calls may flip
    np.testing.assert_array_equal(out.pred.numpy()[clear], want.argmax(1)[clear])
    assert clear.mean() > 0.9


# ---------------------------------------------------------------- the factorised scores (issue 22)


def _explicit_cms(images, concepts, classes, how):
    """V = cos(I, D), T = cos(C, D) built whole in float64, column-normalised, then
    cos(V_n, T_m) for every pair: the matrices cms_predict never forms (it scores through
    x (D̃ᵀ T̂ᵀ) / |V_n|). Zero rows have cosine 0 with everything."""

    def unit(x):
        x = np.asarray(x, np.float64)
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return np.where(n > 1e-12, x / np.maximum(n, 1e-12), 0.0)

    def columns(m):
        mean, std = m.mean(0), m.std(0)
        shift, scale = {"none": (0.0, 1.0), "column": (0.0, mean), "zscore": (mean, std)}[how]
        return (m - shift) / np.where(np.abs(scale) <= 1e-12, 1.0, scale)

    d = unit(concepts)
    v, t = unit(columns(unit(images) @ d.T)), unit(columns(unit(classes) @ d.T))
    return v @ t.T, v, t


@pytest.mark.parametrize("how", ["none", "column", "zscore"])
def test_factorised_cms_equals_the_explicit_v_t_cosines(how):
    rng = np.random.default_rng(22)
    e = 24
    common = rng.standard_normal(e)
    common /= np.linalg.norm(common)
    images = _clip_like(rng, 61, e, common)
    images[17] = 0.0  # a zero-norm image
    concepts = _clip_like(rng, 40, e, common)
    classes = _clip_like(rng, 12, e, common)
    classes[[5, 9]] = classes[2]  # duplicated classes: exact ties, the lowest index wins
    classes[11] = 0.0  # a zero-norm class: T_11 = 0, cosine 0 with every V_n
    img16 = images.astype(np.float16)
    scores, v, t = _explicit_cms(img16, concepts, classes, how)
    scores[:, [5, 9]] = scores[:, [2]]  # the same values, tied exactly as they are in CMS
    want_top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    # self-check: apart from the duplicates (and the zero image, whose V row stays 0 unless
    # zscore centres it: all its scores tie), no two top classes are closer than fp32 resolves
    distinct = np.sort(np.delete(scores, [5, 9], axis=1), 1)
    gaps = np.diff(distinct[:, -6:], axis=1).min(1)
    assert (np.delete(gaps, 17) > 1e-6).all() and (gaps[17] == 0) == (how != "zscore")
    want_pred, want_lit, _, _ = literal_cms(img16, concepts, classes, how)
    np.testing.assert_array_equal(want_top[:, 0], want_pred)  # explicit == Algorithm 1

    out = cms_predict(img16, concepts, classes, normalize=how, chunk_size=7, keep_scores=True)
    np.testing.assert_array_equal(out.pred.numpy(), want_pred)
    np.testing.assert_array_equal(out.topk.numpy(), want_top)
    assert not np.isin(out.pred.numpy(), [5, 9]).any() and (out.pred.numpy() == 2).any()
    np.testing.assert_allclose(out.scores.numpy(), scores, atol=2e-5)
    assert torch.equal(out.scores[:, 5], out.scores[:, 2])  # one shared column, bitwise
    np.testing.assert_allclose(out.pred_score.numpy(), scores.max(1), atol=2e-5)
    # the top concepts: the largest terms v_j t_j of the predicted class's cosine
    terms = v * t[want_pred]
    np.testing.assert_allclose(out.top_terms.numpy(), -np.sort(-terms, 1)[:, :5], atol=2e-5)
    np.testing.assert_allclose(terms.sum(1), out.pred_score.numpy(), atol=2e-5)
    clear = (-np.diff(np.sort(terms, 1)[:, ::-1][:, :6], axis=1) > 1e-5).all(1)
    want_c = np.argsort(-terms, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(out.top_concepts.numpy()[clear], want_c[clear])
    assert clear.mean() > 0.8


def test_top_classes_equals_ranked_with_ties_signed_zeros_nan_and_inf():
    from clipcbm.heads.baselines.cms import top_classes
    from clipcbm.heads.eval.metrics import ranked

    g = torch.Generator().manual_seed(3)
    for trial in range(200):
        m = int(torch.randint(1, 12, (1,), generator=g))
        s = torch.randint(-3, 4, (9, m), generator=g).float() / 2  # many exact ties
        s[0, 0], s[1] = float("nan"), -0.0
        s[1, 0], s[2, -1], s[3, 0] = 0.0, float("inf"), -float("inf")
        s[4] = torch.randn(m, generator=g)  # a row without ties (the fast path)
        for k in (1, 2, 5, m, m + 2):
            assert torch.equal(top_classes(s, k), ranked(s, k)), (trial, k)
