"""Planted-concept synthetic caches for the heads tests (shared by heads-train and heads-eval).

Each class is defined by a few "planted" concepts: an image of class y is the normalised
weighted sum of its class's planted concept embeddings (random weights in [0.5, 1.5]) plus
isotropic Gaussian noise, so a concept bottleneck that works must (a) beat chance by a wide
margin and (b) explain a prediction of class y with y's planted concepts. The remaining
concepts are distractors. Class embeddings are the normalised mean of the planted concept
embeddings, so zero-shot and CMS also work on these caches.

    path = make_planted_cache(tmp_path / "p.zarr", n_classes=5, seed=0)
    planted_concepts(n_classes=5, n_concepts=24, concepts_per_class=3, seed=0)
    # -> {0: [..3 concept indices..], 1: [...], ...}; the same mapping is stored in the cache
    # metadata under "planted" (a list indexed by class) and returned by planted_from_cache().
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Defaults: tiny and fast, still clearly separable.
N_TRAIN = 600
N_TEST = 200
N_CLASSES = 5
N_CONCEPTS = 24
EMBED_DIM = 32
CONCEPTS_PER_CLASS = 3
NOISE = 0.5  # norm of the noise vector relative to the (unit) clean signal


def planted_concepts(
    *,
    n_classes: int = N_CLASSES,
    n_concepts: int = N_CONCEPTS,
    concepts_per_class: int = CONCEPTS_PER_CLASS,
    seed: int = 0,
) -> dict[int, list[int]]:
    """Class index -> sorted list of its planted concept indices (disjoint across classes).

    Deterministic in (n_classes, n_concepts, concepts_per_class, seed); identical to what
    `make_planted_cache` with the same arguments plants.
    """
    if n_classes * concepts_per_class > n_concepts:
        raise ValueError(
            f"n_classes * concepts_per_class = {n_classes * concepts_per_class} > n_concepts = "
            f"{n_concepts}; planted concepts are disjoint per class, raise n_concepts"
        )
    perm = np.random.default_rng([seed, 0]).permutation(n_concepts)
    blocks = perm[: n_classes * concepts_per_class].reshape(n_classes, concepts_per_class)
    return {m: sorted(int(j) for j in blocks[m]) for m in range(n_classes)}


def _images(rng, concept_emb, planted, labels, noise):
    """(N, E) noisy images: unit weighted sum of the class's planted concepts + noise."""
    n, e = len(labels), concept_emb.shape[1]
    out = np.empty((n, e), dtype=np.float64)
    for m, idx in planted.items():
        rows = np.flatnonzero(labels == m)
        w = rng.uniform(0.5, 1.5, size=(len(rows), len(idx)))
        sig = w @ concept_emb[idx]
        out[rows] = sig / np.linalg.norm(sig, axis=1, keepdims=True)
    out += noise * rng.standard_normal((n, e)) / np.sqrt(e)
    return out.astype(np.float32)


def planted_arrays(
    *,
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    n_classes: int = N_CLASSES,
    n_concepts: int = N_CONCEPTS,
    embed_dim: int = EMBED_DIM,
    concepts_per_class: int = CONCEPTS_PER_CLASS,
    noise: float = NOISE,
    seed: int = 0,
) -> dict:
    """Everything `write_cache` needs, as in-memory arrays (embeddings not yet normalised)."""
    planted = planted_concepts(
        n_classes=n_classes, n_concepts=n_concepts, concepts_per_class=concepts_per_class, seed=seed
    )
    rng = np.random.default_rng([seed, 1])
    d = rng.standard_normal((n_concepts, embed_dim))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    c = np.stack([d[planted[m]].mean(axis=0) for m in range(n_classes)])
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    splits = {}
    for name, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n, dtype=np.int64) % n_classes
        rng.shuffle(labels)
        splits[name] = {
            "image_emb": _images(rng, d, planted, labels, noise),
            "labels": labels,
            "ids": np.array([f"{name}/{i:06d}" for i in range(n)]),
            "ok": np.ones(n, dtype=bool),
        }
    classes = [f"class_{m}" for m in range(n_classes)]
    owner = {j: classes[m] for m, idx in planted.items() for j in idx}
    return {
        "splits": splits,
        "concepts": [f"concept_{j:03d}" for j in range(n_concepts)],
        "classes": classes,
        "concept_emb": d.astype(np.float32),
        "class_emb": c.astype(np.float32),
        "concept_classes": [[owner[j]] if j in owner else [] for j in range(n_concepts)],
        "planted": [planted[m] for m in range(n_classes)],
    }


def make_planted_cache(path, *, format: str = "zarr", **kwargs) -> Path:
    """Write a planted-concept cache (splits "train" and "test") with `cache.write_cache`.

    `kwargs` are those of `planted_arrays` (n_train, n_test, n_classes, n_concepts, embed_dim,
    concepts_per_class, noise, seed). Returns the path written (write_cache gives an HDF5
    cache a .h5 suffix). The planted mapping is in `metadata["planted"]` (list indexed by
    class of concept-index lists); `planted_concepts(...)` with the same arguments returns it.
    """
    from clipcbm.cache import (
        write_cache,  # lazy: keeps planted_arrays usable without the cache module
    )

    arr = planted_arrays(**kwargs)
    seed, noise = kwargs.get("seed", 0), kwargs.get("noise", NOISE)
    meta = {"synthetic": "planted", "planted": arr["planted"], "seed": seed, "noise": noise}
    return write_cache(
        Path(path),
        splits=arr["splits"],
        concepts=arr["concepts"],
        classes=arr["classes"],
        concept_emb=arr["concept_emb"],
        class_emb=arr["class_emb"],
        concept_classes=arr["concept_classes"],
        metadata=meta,
        format=format,
    )


def planted_from_cache(cache) -> dict[int, list[int]]:
    """The planted mapping of a cache written by `make_planted_cache` (class -> concepts)."""
    return {m: list(idx) for m, idx in enumerate(cache.metadata["planted"])}
