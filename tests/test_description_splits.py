"""benchmarks/description_proxy.py splits (issue 18 item 1): no text or embedding under two
classes, no test row equal to a train row, balanced, seeded, deterministic. Tiny inline data:
needs no data outside the project and no sentence model."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tests._bench import load_benchmark


@pytest.fixture(scope="module")
def dp():
    return load_benchmark("description_proxy")


CLASSES = ["cat", "dog", "truck", "owl"]
DESCRIPTIONS = {
    "cat": ["whiskers", "four legs", "Fur.", "a long tail", "pointed ears", "purrs", "claws"],
    "dog": ["four legs", "fur", "barks", "a wagging tail", "a leash", "paws"],
    "truck": ["wheels", "a cargo bed", "Headlights", "headlights.", "a  diesel engine", "a cab"],
    # every text of owl is also another class's: owl is left with no row at all
    "owl": ["Four  legs!", "whiskers", "WHEELS"],
}
SHARED = {"four legs", "fur", "whiskers", "wheels"}  # normalised texts under two or more classes


def fake_embed(texts, collide=()):
    """Deterministic 8-d rows from a text's hash; texts in `collide` groups share one row."""
    rows = []
    for t in texts:
        key = next((g[0] for g in collide if t in g), t)
        h = hashlib.sha256(key.encode()).digest()
        rows.append(np.frombuffer(h, dtype=np.uint8)[:8].astype(np.float32) - 127.5)
    x = np.asarray(rows, dtype=np.float32).reshape(len(texts), 8)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_normalize_text(dp):
    assert dp.normalize_text("  A  red\tcrown. ") == "a red crown"
    assert dp.normalize_text("Four  legs!") == dp.normalize_text("four legs")
    assert dp.normalize_text("a cab?!") == "a cab"
    assert dp.normalize_text("a.b") == "a.b"  # only trailing punctuation goes


def test_text_under_two_classes_never_in_any_split(dp):
    parts = dp.split_descriptions(DESCRIPTIONS, CLASSES, seed=0)
    assert set(parts) == {"train", "test"}  # benchmarks/debiased.py iterates these two
    texts = [dp.normalize_text(t) for rows in parts.values() for t, _ in rows]
    assert not SHARED & set(texts)
    assert len(texts) == len(set(texts))  # "Headlights"/"headlights." are one text
    assert ("Headlights", 2) in parts["train"] + parts["test"]  # the smallest spelling is kept
    assert not any(y == 3 for rows in parts.values() for _, y in rows)  # owl: nothing left
    _, report = dp.dedupe_descriptions(DESCRIPTIONS, CLASSES)
    assert report == {
        "texts_before": 22,
        "merged_same_normalised_text_in_class": 1,
        "shared_normalised_texts": 4,
        "dropped_shared_by_classes": 9,
    }


def test_split_balanced_seeded_deterministic(dp):
    a = dp.split_descriptions(DESCRIPTIONS, CLASSES, seed=0)
    assert a == dp.split_descriptions(DESCRIPTIONS, CLASSES, seed=0)
    shuffled = {c: list(reversed(v)) for c, v in reversed(list(DESCRIPTIONS.items()))}
    assert a == dp.split_descriptions(shuffled, CLASSES, seed=0)  # input order does not matter
    seeds = [dp.split_descriptions(DESCRIPTIONS, CLASSES, seed=s) for s in range(6)]
    assert any(s != a for s in seeds)
    kept, _ = dp.dedupe_descriptions(DESCRIPTIONS, CLASSES)
    for parts in seeds:
        for label, cls in enumerate(CLASSES):
            n = len(kept[cls])
            n_train = sum(y == label for _, y in parts["train"])
            n_test = sum(y == label for _, y in parts["test"])
            assert (n_train, n_test) == (-(-n // 2), n // 2)  # train gets the odd row
            got = sorted(t for rows in parts.values() for t, y in rows if y == label)
            assert got == kept[cls]


def test_no_test_embedding_equals_a_train_embedding(dp):
    parts = dp.split_descriptions(DESCRIPTIONS, CLASSES, seed=0)
    cat_train = [t for t, y in parts["train"] if y == 0]
    cat_test = [t for t, y in parts["test"] if y == 0]
    dog_train = [t for t, y in parts["train"] if y == 1]
    # different texts, same embedding: a cat test row equal to a cat train row (a leak), and a
    # cat row equal to a dog row (a label mix: both go)
    collide = [(cat_test[0], cat_train[0]), (cat_train[1], dog_train[0])]

    def embed(texts):
        return fake_embed(texts, collide)

    made = dp.make_splits(DESCRIPTIONS, CLASSES, 0, embed)
    again = dp.make_splits(DESCRIPTIONS, CLASSES, 0, embed)
    for s in ("train", "test"):
        assert made["splits"][s]["texts"] == again["splits"][s]["texts"]
        np.testing.assert_array_equal(made["splits"][s]["labels"], again["splits"][s]["labels"])
    tr, te = made["splits"]["train"], made["splits"]["test"]
    assert made["classes"] == ["cat", "dog", "truck"]  # owl had no train row: dropped
    rep = made["report"]
    assert rep["dropped_embedding_under_several_classes"] == {"train": 2, "test": 0}
    assert rep["dropped_test_equal_to_train"] == 1
    assert rep["dropped_duplicate_embeddings"] == 3
    assert rep["rows"] == {"train": len(tr["texts"]), "test": len(te["texts"])}
    assert rep["classes"]["without_train_row"]["names"] == ["owl"]
    assert cat_test[0] not in te["texts"] and cat_train[0] in tr["texts"]
    assert cat_train[1] not in tr["texts"] and dog_train[0] not in tr["texts"]
    # stored rows (unit fp16, as the cache writes them): no test row equals a train row, and no
    # stored row is under two labels
    k_tr, k_te = dp.fp16_row_keys(tr["image_emb"]), dp.fp16_row_keys(te["image_emb"])
    assert not set(k_tr) & set(k_te)
    labels_of = {}
    for k, y in [*zip(k_tr, tr["labels"], strict=True), *zip(k_te, te["labels"], strict=True)]:
        labels_of.setdefault(k, set()).add(int(y))
    assert all(len(v) == 1 for v in labels_of.values())
    for s in (tr, te):  # labels index the kept classes
        assert s["labels"].dtype == np.int64 and s["labels"].max() < len(made["classes"])
        assert len(s["texts"]) == len(s["labels"]) == len(s["image_emb"])
    for s in ("train", "test"):  # each kept row is still under its own class
        for t, y in zip(made["splits"][s]["texts"], made["splits"][s]["labels"], strict=True):
            assert t in DESCRIPTIONS[made["classes"][y]]


def test_drop_duplicate_embeddings_counts(dp):
    keep_tr, keep_te, rep = dp.drop_duplicate_embeddings(
        [b"a", b"b", b"c", b"d"], [0, 0, 1, 2], [b"a", b"c", b"e", b"d", b"f"], [0, 0, 1, 2, 2]
    )
    # b"c": under labels 1 (train) and 0 (test) -> dropped from both; b"a", b"d": test rows equal
    # to a train row of their own class -> dropped from test
    assert keep_tr.tolist() == [True, True, False, True]
    assert keep_te.tolist() == [False, False, True, False, True]
    assert rep == {
        "dropped_embedding_under_several_classes": {"train": 1, "test": 1},
        "dropped_test_equal_to_train": 2,
    }


def test_fp16_keys_see_rows_as_stored(dp):
    x = np.array([[1.0, 0.0], [1.0, 1e-8], [0.5, -0.0], [2.0, 0.0]], dtype=np.float32)
    k = dp.fp16_row_keys(x)
    assert k[0] == k[1] == k[3]  # equal once unit-normalised and rounded to fp16
    assert k[2] == k[0]  # -0 and +0 are the same stored value
