"""The concept filter of SPEC §4 / thesis §4.3 step 2, model-agnostic.

Raw candidates (text, class, source) are normalised (strip, lower-case, collapse spaces, drop a
leading "a"/"an"/"the"), merged when equal, then filtered in this order, every drop recorded
with its rule and the value that triggered it:

    (1) length       : more than `max_length` characters (30);
    (2) class_sim    : cosine similarity to any class name >= `class_sim` (0.85);
    (3) concept_sim  : of concepts with pairwise similarity >= `concept_sim` (0.9) keep one, the
                       more general = higher mean similarity to the other survivors of (2);
    (4) low_mean_sim : optional, mean similarity to the other survivors of (3) < `min_mean_sim`.

Rule (3) is greedy non-maximum suppression, deterministic by construction: concepts are
visited from most to least general (generality rounded to 1e-6 so float noise cannot reorder
near-ties; exact ties go to the concept seen first), and a concept is kept unless it is
>= `concept_sim` similar to one already kept; the drop records the kept concept with the
highest similarity. Generality is computed once, over the survivors of rule (2). (The published
Label-free CBM code instead walks index pairs (i, j) and deletes the lower row-sum of each pair;
its result depends on the input order.)

Similarity is the inner product of the unit rows returned by an `Embed` callable, so any model
(sentence-transformers, the mpnet/CLIP-text blend, a hand-made fake in tests) plugs in. Memory
stays O(n * E): mean similarities come from the column sum, rule (3) works in blocks.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from clipcbm.core.progress import bar as progress_bar

from .io import ConceptSet

log = logging.getLogger(__name__)

# n strings -> (n, E) float array; rows are L2-normalised here anyway
Embed = Callable[[list[str]], np.ndarray]

RULES = ("empty", "duplicate", "length", "class_sim", "concept_sim", "low_mean_sim")
_ARTICLE = re.compile(r"^(?:a|an|the)\s+")
_SPACES = re.compile(r"\s+")
_BLOCK = 1024  # candidates per block in rule (3): a (block, kept) similarity matrix at a time


def normalize_concept(text: str) -> str:
    """'  The  Long Tail ' -> 'long tail' (only one leading article is removed)."""
    text = _SPACES.sub(" ", text.strip().lower())
    return _ARTICLE.sub("", text)


@dataclass(frozen=True)
class FilterRules:
    max_length: int = 30  # characters, after normalisation
    class_sim: float = 0.85  # drop when cosine to any class >= this
    concept_sim: float = 0.9  # pairs at cosine >= this keep only the more general concept
    min_mean_sim: float | None = None  # drop when mean cosine to the others < this; None = off


@dataclass
class Item:
    """One normalised concept with every class and source it came from (first-seen order)."""

    text: str
    classes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def add(self, cls: str, source: str) -> None:
        if cls and cls not in self.classes:
            self.classes.append(cls)
        if source and source not in self.sources:
            self.sources.append(source)


@dataclass(frozen=True)
class Drop:
    concept: str
    rule: str  # one of RULES
    value: object  # the number (or text) that triggered the rule
    detail: str
    classes: list[str]
    sources: list[str]

    def row(self) -> tuple:
        value = round(self.value, 6) if isinstance(self.value, float) else self.value
        return (self.concept, self.rule, value, self.detail, self.classes, self.sources)


@dataclass
class FilterResult:
    kept: ConceptSet
    dropped: list[Drop]
    n_raw: int  # candidates given, before normalisation

    @property
    def counts(self) -> dict[str, int]:
        """rule -> number of candidates it dropped, every rule listed, in filter order."""
        counts = dict.fromkeys(RULES, 0)
        for d in self.dropped:
            counts[d.rule] += 1
        return counts


def merge_candidates(raw: Iterable[tuple[str, str, str]]) -> tuple[list[Item], list[Drop]]:
    """(text, class, source) triples -> unique normalised items, plus 'empty'/'duplicate' drops.
    A duplicate's class and source are merged into the first item with the same text."""
    items: dict[str, Item] = {}
    drops: list[Drop] = []
    for text, cls, source in raw:
        norm = normalize_concept(text)
        if not norm:
            drops.append(
                Drop(
                    text,
                    "empty",
                    "",
                    "nothing left after normalisation",
                    [cls] if cls else [],
                    [source] if source else [],
                )
            )
            continue
        if norm in items:
            drops.append(
                Drop(
                    text,
                    "duplicate",
                    norm,
                    f"same as {norm!r} after normalisation",
                    [cls] if cls else [],
                    [source] if source else [],
                )
            )
        items.setdefault(norm, Item(norm)).add(cls, source)
    return list(items.values()), drops


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"the embedding model returned shape {x.shape}; expected (n, E)")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def mean_similarity_to_rest(x: np.ndarray) -> np.ndarray:
    """(n, E) unit rows -> (n,) float64 mean cosine to the other n-1 rows (0 when n == 1),
    from the column sum: mean_i = (x_i . sum_j x_j - x_i . x_i) / (n - 1)."""
    x64 = x.astype(np.float64)
    n = len(x64)
    if n < 2:
        return np.zeros(n)
    return (x64 @ x64.sum(axis=0) - np.einsum("ij,ij->i", x64, x64)) / (n - 1)


def _drop(item: Item, rule: str, value, detail: str) -> Drop:
    return Drop(item.text, rule, value, detail, list(item.classes), list(item.sources))


def _rule_length(items: list[Item], rules: FilterRules) -> tuple[list[Item], list[Drop]]:
    keep = [it for it in items if len(it.text) <= rules.max_length]
    drops = [
        _drop(it, "length", len(it.text), f"> {rules.max_length} characters")
        for it in items
        if len(it.text) > rules.max_length
    ]
    return keep, drops


def _rule_class_sim(
    x: np.ndarray, class_x: np.ndarray, classes: list[str], rules: FilterRules, items: list[Item]
) -> tuple[np.ndarray, list[Drop]]:
    """-> (bool keep mask (n,), drops). Similarity to each class, chunked over concepts."""
    keep = np.ones(len(items), dtype=bool)
    drops = []
    for start in range(0, len(items), _BLOCK):
        sims = x[start : start + _BLOCK] @ class_x.T  # (b, |C|)
        best = sims.argmax(axis=1)
        for k, m in enumerate(best):
            value = float(sims[k, m])
            if value >= rules.class_sim:
                keep[start + k] = False
                drops.append(_drop(items[start + k], "class_sim", value, classes[m]))
    return keep, drops


def suppress_near_duplicates(
    x: np.ndarray, threshold: float, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rule (3) on (n, E) unit rows.

    Returns (keep (n,) bool, by (n,) int index of the kept concept that suppressed each dropped
    one, -1 for kept, sim (n,) float its similarity). See the module docstring for the order."""
    n = len(x)
    generality = np.round(mean_similarity_to_rest(x), 6)
    order = np.lexsort((np.arange(n), -generality))  # most general first, ties: seen first
    xo = x[order]
    keep_o = np.zeros(n, dtype=bool)
    by_o, sim_o = np.full(n, -1), np.zeros(n)
    kept_rows: list[int] = []  # positions in `order` of kept concepts, increasing
    kept_x = np.empty_like(xo)  # their rows, contiguous: a view per block, never a gather
    for start in progress_bar(range(0, n, _BLOCK), desc="concept similarity", enabled=progress):
        stop = min(start + _BLOCK, n)
        block = xo[start:stop]
        best_sim = np.full(stop - start, -np.inf)
        best_by = np.full(stop - start, -1)
        if kept_rows:
            prev = block @ kept_x[: len(kept_rows)].T  # (b, k): every earlier kept concept
            arg = prev.argmax(axis=1)
            best_sim = prev[np.arange(len(block)), arg].astype(np.float64)
            best_by = np.asarray(kept_rows)[arg]
        inner = block @ block.T  # (b, b)
        for i in range(stop - start):
            if best_sim[i] >= threshold:
                sim_o[start + i], by_o[start + i] = best_sim[i], best_by[i]
                continue
            keep_o[start + i] = True
            kept_x[len(kept_rows)] = block[i]
            kept_rows.append(start + i)
            later = np.arange(i + 1, stop - start)  # only later ones can still be suppressed
            better = later[inner[i, later] > best_sim[later]]
            best_sim[better], best_by[better] = inner[i, better], start + i
    keep, by, sim = np.zeros(n, dtype=bool), np.full(n, -1), np.zeros(n)
    keep[order] = keep_o
    by[order] = np.where(by_o >= 0, order[np.maximum(by_o, 0)], -1)
    sim[order] = sim_o
    return keep, by, sim


def filter_concepts(
    raw: Iterable[tuple[str, str, str]],
    classes: list[str],
    embed: Embed,
    rules: FilterRules = FilterRules(),
    progress: bool = False,
) -> FilterResult:
    """Normalise, merge and filter (text, class, source) candidates; see the module docstring."""
    if not classes:
        raise ValueError("no class names given; rule (2) compares concepts with the classes")
    raw = list(raw)
    items, dropped = merge_candidates(raw)
    items, drops = _rule_length(items, rules)
    dropped += drops
    if items:
        log.info("concept filter: embedding %d candidates and %d classes", len(items), len(classes))
        t0 = time.perf_counter()
        x = _unit(embed([it.text for it in items]))
        log.info("concept filter: embedded in %.1f s; rules (2)-(4) next", time.perf_counter() - t0)
        keep, drops = _rule_class_sim(x, _unit(embed(list(classes))), classes, rules, items)
        dropped += drops
        items, x = [it for it, k in zip(items, keep, strict=True) if k], x[keep]
    if items:
        t0 = time.perf_counter()
        keep, by, sim = suppress_near_duplicates(x, rules.concept_sim, progress)
        log.info("concept filter: near-duplicate rule over %d concepts in %.1f s (%d kept)",
                 len(items), time.perf_counter() - t0, int(keep.sum()))  # fmt: skip
        dropped += [
            _drop(it, "concept_sim", float(sim[i]), items[by[i]].text)
            for i, it in enumerate(items)
            if not keep[i]
        ]
        items, x = [it for it, k in zip(items, keep, strict=True) if k], x[keep]
    if items and rules.min_mean_sim is not None:
        mean = mean_similarity_to_rest(x)
        low = mean < rules.min_mean_sim
        dropped += [
            _drop(it, "low_mean_sim", float(mean[i]), f"< {rules.min_mean_sim}")
            for i, it in enumerate(items)
            if low[i]
        ]
        items = [it for it, lo in zip(items, low, strict=True) if not lo]
    kept = ConceptSet(
        [it.text for it in items], [it.classes for it in items], [it.sources for it in items]
    )
    return FilterResult(kept, dropped, n_raw=len(raw))
