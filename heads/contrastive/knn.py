"""kNN classification against a bank of embeddings (the seed's and DCL's evaluation monitor).

For each query the k most cosine-similar bank rows vote for their labels: weighted kNN
(weights exp(sim / t), k = 200, as in DCL's and the InstDisc/SimCLR monitor code) or plain
majority kNN (weight 1). The class scores (Q, C) give top-1 / top-5.

Chunked over queries and bank rows (memory bounded by query_chunk x bank_chunk), fp32
throughout (fp16 inputs are upcast first). Ties are broken deterministically, so the chunked
result equals the naive full-matrix one exactly: among equal similarities the lower bank row
wins a neighbour slot, among equal class scores the lower class index ranks first.
Weights are exp((sim - 1) / t): the same ranking as exp(sim / t) (a constant factor), no
overflow at small t. `faiss-cpu` (optional) serves large banks (exact inner-product search,
`IndexFlatIP`); it gives the same predictions up to the order of exact ties at the k-th slot.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from clipcbm.heads.errors import EvalInputError

WEIGHTINGS = ("exp", "majority")
BACKENDS = ("auto", "torch", "faiss")
FAISS_MIN_BANK = 200_000  # auto uses faiss (when installed) from this many bank rows
QUERY_CHUNK = 1024
BANK_CHUNK = 16384


def has_faiss() -> bool:
    return importlib.util.find_spec("faiss") is not None


def _f32(x) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).float()


def _stable_topk(vals: Tensor, idx: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top k of each row, ties to the lower column position (idx is ascending along rows)."""
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]
    return vals.gather(1, order), idx.gather(1, order)


def neighbours_torch(
    bank: Tensor, queries: Tensor, k: int, *, bank_chunk: int = BANK_CHUNK
) -> tuple[Tensor, Tensor]:
    """(sims, rows) (Q, k) of the k nearest bank rows, merged over bank chunks."""
    best_v = queries.new_empty((len(queries), 0))
    best_i = torch.empty((len(queries), 0), dtype=torch.long, device=queries.device)
    for start in range(0, len(bank), bank_chunk):
        part = bank[start : start + bank_chunk]
        sims = queries @ part.T  # (Qc, Bc)
        rows = torch.arange(start, start + len(part), device=queries.device).expand_as(sims)
        # kept candidates have lower rows than this chunk and come first: ties keep them
        best_v, best_i = _stable_topk(torch.cat([best_v, sims], 1), torch.cat([best_i, rows], 1), k)
    return best_v, best_i


def _faiss_index(bank: Tensor):
    import faiss

    index = faiss.IndexFlatIP(bank.shape[1])  # exact inner-product search
    index.add(np.ascontiguousarray(bank.cpu().numpy(), dtype=np.float32))
    return index


def neighbours_faiss(index, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(sims, rows) (Q, k) from a faiss index of the bank."""
    d, i = index.search(np.ascontiguousarray(queries.cpu().numpy(), dtype=np.float32), k)
    return torch.from_numpy(d).to(queries.device), torch.from_numpy(i).long().to(queries.device)


def vote(sims: Tensor, rows: Tensor, bank_labels: Tensor, n_classes: int, t: float, weighting):
    """Class scores (Q, C) from the neighbours' labels and similarities."""
    w = torch.exp((sims - 1.0) / t) if weighting == "exp" else torch.ones_like(sims)
    scores = torch.zeros((len(sims), n_classes), dtype=torch.float32, device=sims.device)
    return scores.scatter_add_(1, bank_labels[rows], w)


def knn_scores(
    bank,
    bank_labels,
    queries,
    *,
    n_classes: int,
    k: int = 200,
    t: float = 0.5,
    weighting: str = "exp",
    backend: str = "auto",
    query_chunk: int = QUERY_CHUNK,
    bank_chunk: int = BANK_CHUNK,
) -> Tensor:
    """Class scores (Q, C) fp32 of kNN over `bank` (N, E) with labels (N,) for `queries` (Q, E).

    Rows are expected L2-normalised (similarity = inner product). k is capped at N.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {list(WEIGHTINGS)}, got {weighting!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if k < 1 or not t > 0:
        raise ValueError(f"k must be >= 1 and t > 0, got k={k!r}, t={t!r}")
    bank, queries = _f32(bank), _f32(queries)
    labels = torch.as_tensor(np.asarray(bank_labels)).long().to(bank.device)
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(
            f"bank (N, E) and queries (Q, E) must share E, got {tuple(bank.shape)} and "
            f"{tuple(queries.shape)}"
        )
    if len(labels) != len(bank) or len(bank) == 0:
        raise ValueError(f"need a non-empty bank with one label per row, got {len(bank)} rows, "
                         f"{len(labels)} labels")  # fmt: skip
    k = min(k, len(bank))
    if backend == "faiss" and not has_faiss():
        raise ValueError("backend 'faiss' needs `pip install faiss-cpu` (or use --backend torch)")
    use_faiss = backend == "faiss" or (
        backend == "auto" and len(bank) >= FAISS_MIN_BANK and has_faiss()
    )
    index = _faiss_index(bank) if use_faiss else None
    out = []
    for start in range(0, len(queries), query_chunk):
        q = queries[start : start + query_chunk]
        if index is not None:
            sims, rows = neighbours_faiss(index, q, k)
        else:
            sims, rows = neighbours_torch(bank, q, k, bank_chunk=bank_chunk)
        out.append(vote(sims, rows, labels, n_classes, t, weighting))
    return torch.cat(out) if out else torch.zeros((0, n_classes))


def ranked_classes(scores: Tensor, top: int = 5) -> Tensor:
    """(Q, min(top, C)) class indices by score, ties to the lower class index."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :top]


def topk_accuracy(scores: Tensor, labels) -> dict:
    """{"top1", "top5", "n"} of class scores (Q, C) against labels (Q,)."""
    y = torch.as_tensor(np.asarray(labels)).long()
    ranked = ranked_classes(scores, 5)
    hit = ranked == y[:, None]
    n = len(y)
    return {
        "top1": float(hit[:, 0].float().mean()) if n else float("nan"),
        "top5": float(hit.any(1).float().mean()) if n else float("nan"),
        "n": n,
    }


@dataclass
class KnnResult:
    """Top-1 / top-5 of weighted and majority kNN for one (cache, adapter) pair."""

    metrics: dict  # {"weighted": {top1, top5, n}, "majority": {...}, ...}
    seconds: float

    def summary(self) -> str:
        m = self.metrics
        feats = m["features"]
        lines = [
            f"kNN on {feats} ({m['bank_split']} bank {m['bank_rows']} rows -> "
            f"{m['query_split']} {m['weighted']['n']} queries, k = {m['k']}, t = {m['t']}, "
            f"{m['backend']}, {self.seconds:.1f} s)",
            f"{'vote':<10} {'top-1 %':>8} {'top-5 %':>8}",
        ]
        for vote_kind in ("weighted", "majority"):
            r = m[vote_kind]
            lines.append(f"{vote_kind:<10} {100 * r['top1']:>8.2f} {100 * r['top5']:>8.2f}")
        return "\n".join(lines)


def check_k(k: int, bank_rows: int, bank_split: str) -> None:
    """k neighbours need a bank of at least k rows: a larger k is refused, not capped (a cap
    turns the majority vote into the bank's class prior)."""
    if k > bank_rows:
        raise EvalInputError(
            f"--k {k} is more than the {bank_rows} rows of the bank (split {bank_split!r}): each "
            f"query can have at most {bank_rows} neighbours. Pass --k {bank_rows} or less, or "
            "a larger --bank-split"
        )


def evaluate_knn(bank, bank_labels, queries, query_labels, *, n_classes, k, t, backend) -> dict:
    """{"weighted": {...}, "majority": {...}} top-1 / top-5 of both votes."""
    out = {}
    for vote_kind, weighting in (("weighted", "exp"), ("majority", "majority")):
        scores = knn_scores(
            bank, bank_labels, queries, n_classes=n_classes, k=k, t=t,
            weighting=weighting, backend=backend,
        )  # fmt: skip
        out[vote_kind] = topk_accuracy(scores, query_labels)
    return out


def run(cfg) -> KnnResult:
    """The `knn-eval` command (config: heads.contrastive.config.KnnEvalConfig)."""
    from clipcbm.cache import open_cache
    from clipcbm.core.device import resolve_device
    from clipcbm.heads.contrastive.artifact import check_model, load_adapter
    from clipcbm.heads.io.evaldata import check_disjoint, check_split_name, load_split, write_json
    from clipcbm.heads.io.output import write_errors

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    if cfg.backend == "faiss" and not has_faiss():
        raise EvalInputError("--backend faiss needs `pip install faiss-cpu` (or --backend torch)")
    with open_cache(cfg.cache, verify=cfg.verify) as cache:
        check_split_name(cache, cfg.bank_split, hint="Pass --bank-split with one of those.")
        check_split_name(cache, cfg.query_split, hint="Pass --query-split with one of those.")
        check_disjoint(cache, cfg.bank_split, cfg.query_split, allow=cfg.allow_overlap,
                       fitted_on="that are in the kNN bank")  # fmt: skip
        bank = load_split(cache, cfg.bank_split, hint="Pass --bank-split with one of those.")
        query = load_split(cache, cfg.query_split, hint="Pass --query-split with one of those.")
        adapter = None if cfg.adapter is None else load_adapter(cfg.adapter, device)
        if adapter is not None:
            check_model(adapter, cache)
        check_k(cfg.k, len(bank), cfg.bank_split)
        n_classes = len(cache.classes)
        bank_x = torch.from_numpy(bank.image_emb).to(device)
        query_x = torch.from_numpy(query.image_emb).to(device)
        features = "raw embeddings"
        if adapter is not None:
            bank_x, query_x = adapter.project(bank_x), adapter.project(query_x)
            features = f"adapter {cfg.adapter}"
    metrics = evaluate_knn(
        bank_x, bank.labels, query_x, query.labels, n_classes=n_classes, k=cfg.k, t=cfg.t,
        backend=cfg.backend,
    )  # fmt: skip
    metrics.update(
        features=features, k=cfg.k, t=cfg.t, bank_split=cfg.bank_split,
        query_split=cfg.query_split, bank_rows=len(bank), backend=cfg.backend,
        device=str(device), config=cfg.to_json(),
    )  # fmt: skip
    result = KnnResult(metrics, time.perf_counter() - t0)
    if cfg.out is not None:
        with write_errors(cfg.out, "the knn-eval metrics"):
            write_json(cfg.out, {**metrics, "seconds": result.seconds})
    return result
