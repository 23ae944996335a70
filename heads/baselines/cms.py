"""Concept Matrix Search (CMS): training-free classification through the concept space.

Thesis §4.2, Algorithm 1; SPEC §3 settles the details. With unit image embeddings i_n,
concept embeddings d_j and class embeddings c_m:

    V[n, j] = cos(i_n, d_j)                (N, |D|)   image-concept matrix
    T[m, j] = cos(c_m, d_j)                (|C|, |D|) class-concept matrix
    pred[n] = argmax_m cos(V[n], T[m])

Algorithm 1 loops over (image, class) pairs; here each chunk of image rows is a few
matmuls (fp32 accumulation, fp16 input upcast first), so memory is bounded by
`chunk_size` rows and never by N. Ties break to the lowest class index (what
`torch.argmax` documents) and top-k lists keep tied classes in index order
(`heads.eval.metrics.ranked`); identical class rows share one score column, so a tie between
duplicated classes is exact. A row of V or T with zero norm has cosine 0 with everything.

Column normalisation (`--normalize`) transforms each concept column of V and of T with
statistics over the rows of its own matrix: `column` divides by the column mean,
`zscore` subtracts the mean and divides by the (population) standard deviation. For V the
statistics span ALL images of the evaluated split (as in the published notebook), which
needs a first pass; since V = Î D̂ᵀ, that pass only accumulates the mean image (E,) and,
for zscore, the image covariance (E, E), so it is far cheaper than building V twice
(column mean of V = μ̂ · d̂_j, column variance = d̂_jᵀ Σ d̂_j).
`sum` (row-sum scaling, what the published code calls normalisation) is an alias of
`none`: the cosine is invariant to scaling a row, so it cannot change any result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from clipcbm.core.progress import bar as progress_bar
from clipcbm.heads.baselines.normalize import (  # noqa: F401
    ALIASES,
    NORMALIZE_CHOICES,
    NORMALIZERS,
    Normalizer,
    resolve_normalize,
)
from clipcbm.heads.chunks import CHUNK_ROWS, iter_chunks
from clipcbm.heads.eval.metrics import ranked

log = logging.getLogger(__name__)

_EPS = 1e-12  # norms and column scales below this count as zero


def _as_tensor(x, name: str, ndim: int) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point array, got dtype {t.dtype}")
    return t


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """fp32 rows scaled to unit norm; zero rows stay zero (their cosines are 0)."""
    x = x.to(torch.float32)
    return x / x.norm(dim=1, keepdim=True).clamp_min(_EPS)


def _check_inputs(image_emb, concept_emb, class_emb):
    img = _as_tensor(image_emb, "image_emb", 2)
    con = _as_tensor(concept_emb, "concept_emb", 2)
    cls = _as_tensor(class_emb, "class_emb", 2)
    dims = {"image_emb": img.shape[1], "concept_emb": con.shape[1], "class_emb": cls.shape[1]}
    if len(set(dims.values())) != 1:
        raise ValueError(f"embedding widths differ: {dims}; all must share the same E")
    if con.shape[0] == 0 or cls.shape[0] == 0:
        raise ValueError(
            f"need at least one concept and one class, got |D|={con.shape[0]}, |C|={cls.shape[0]}"
        )
    return img, con, cls


def image_moments(
    image_emb: torch.Tensor, chunk_size: int, *, covariance: bool, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean (E,) and optionally covariance (E, E) of the unit image rows, fp64, chunked.

    The covariance is a second pass over centred rows, so the fp32 products inside a chunk
    do not cancel against the (large) common direction all CLIP embeddings share.
    """
    n, e = image_emb.shape
    s1 = torch.zeros(e, dtype=torch.float64, device=device)
    for sl in iter_chunks(n, chunk_size):
        s1 += _unit_rows(image_emb[sl].to(device)).sum(0, dtype=torch.float64)
    mean = s1 / n
    if not covariance:
        return mean, None
    mean32, s2 = mean.float(), torch.zeros(e, e, dtype=torch.float64, device=device)
    for sl in iter_chunks(n, chunk_size):
        xc = _unit_rows(image_emb[sl].to(device)) - mean32  # (B, E)
        s2 += (xc.T @ xc).double()  # fp32 within the chunk, fp64 across chunks
    dm = (mean - mean32.double())[:, None]  # what the fp32 centring left out
    return mean, s2 / n - dm @ dm.T


def _safe_scale(scale: torch.Tensor, what: str) -> torch.Tensor:
    bad = scale.abs() <= _EPS
    if bool(bad.any()):
        log.warning(
            "%d concept column(s) of %s have a zero scale; they are left unscaled",
            int(bad.sum()),
            what,
        )
        scale = torch.where(bad, torch.ones_like(scale), scale)
    return scale


def _warn_non_positive(mean: torch.Tensor, what: str) -> None:
    """`column` divides by column means: CLIP cosines are positive (~0.1-0.3), others may not be."""
    bad = int((mean <= 0).sum())
    if bad:
        log.warning(
            "normalize=column: %d of %d concept columns of %s have a mean <= 0 (min %.3g); "
            "dividing by it flips or inflates them. CLIP cosines are positive; on other "
            "embeddings consider --normalize zscore",
            bad,
            mean.numel(),
            what,
            float(mean.min()),
        )


@dataclass(frozen=True)
class CmsScorer:
    """Everything CMS needs besides the images, with V's column map folded into D.

    V's column map (v - mean) / scale, with V = Î D̂ᵀ and mean_j = μ̂ · d̂_j (μ̂ the mean image),
    equals (Î - μ̂) (D̂ / scale)ᵀ: one matmul per chunk gives the normalised V, no bias to
    cancel. cos(V_n, T_m) = <V_n, T̂_m> / |V_n|, and <V_n, T̂_m> = (î_n - μ̂) (D̃ᵀ T̂ᵀ) by
    associativity, which costs E·|C| per image instead of |D|·|C|. V itself is still needed,
    for |V_n| and for the terms of the predicted class (the top contributing concepts).
    """

    concept_rows: torch.Tensor  # (|D|, E) fp32 = D̂ / scale (D̃), contiguous
    image_shift: torch.Tensor | None  # (E,) fp32 mean unit image μ̂ (zscore), else None
    t_unit: torch.Tensor  # (|C|, |D|) fp32, column-normalised then unit rows
    normalize: str  # canonical name

    @cached_property
    def class_map(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(E, U) D̃ᵀ T̂ᵀ over the U distinct rows of T̂, and (|C|,) class -> column (or None).

        Identical classes share one column, so their scores are bitwise equal and a tie
        between them always goes to the lower class index.
        """
        uniq, inverse = torch.unique(self.t_unit, dim=0, return_inverse=True)
        if len(uniq) == len(self.t_unit):
            return self.concept_rows.T @ self.t_unit.T, None
        return self.concept_rows.T @ uniq.T, inverse

    def centred(self, image_chunk: torch.Tensor) -> torch.Tensor:
        """(B, E) images -> fp32 unit rows, minus the mean image when the map centres."""
        x = _unit_rows(image_chunk.to(self.concept_rows.device))  # fp16 is upcast here
        return x if self.image_shift is None else x - self.image_shift

    def v_rows(self, x: torch.Tensor, work: torch.Tensor | None = None) -> torch.Tensor:
        """V (B, |D|) of centred rows x (B, E); `work` (2, >= B·|D|) fp32 scratch, reused.

        Computed as (D̃ X̃ᵀ)ᵀ: MKL's CPU sgemm runs the (|D|, E) x (E, B) product ~25% faster
        than (B, E) x (E, |D|) (83 vs 64 GFLOP/s a core, AVX2, AMD EPYC), and the transposed
        copy costs ~5% of it. Writing into reused buffers saves the page faults of two fresh
        (B, |D|) tensors a chunk (~70 ms each at 4,096 x 4,751).
        """
        if work is None:
            return (self.concept_rows @ x.T).T.contiguous()
        n_d, b = self.concept_rows.shape[0], x.shape[0]
        vt = torch.matmul(self.concept_rows, x.T, out=work[0, : n_d * b].view(n_d, b))
        return work[1, : n_d * b].view(b, n_d).copy_(vt.T)

    def rows_and_scores(self, image_chunk: torch.Tensor, work: torch.Tensor | None = None):
        """(B, E) -> V (B, |D|, rows not unit), |V_n| (B, 1), cos(V_n, T_m) (B, |C|)."""
        x = self.centred(image_chunk)
        v = self.v_rows(x, work)
        r = v.norm(dim=1, keepdim=True).clamp_min(_EPS)  # zero rows score 0 everywhere
        w, inverse = self.class_map
        s = (x @ w) / r
        return v, r, (s if inverse is None else s[:, inverse])


def _normalise_t(t: torch.Tensor, norm: Normalizer) -> torch.Tensor:
    """Column map of T (|C|, |D|) with its own column statistics over the classes."""
    t64 = t.double()
    mean, std = t64.mean(0), t64.std(0, unbiased=False)
    out = t - mean.float() if norm.center else t
    return out / _safe_scale(norm.scale(mean, std).float(), "T")


def build_scorer(
    image_emb, concept_emb, class_emb, *, normalize="none", chunk_size=CHUNK_ROWS, device="cpu"
) -> CmsScorer:
    """Prepare CMS for one split: T, and V's column statistics over all of `image_emb`."""
    name = resolve_normalize(normalize)
    img, con, cls = _check_inputs(image_emb, concept_emb, class_emb)
    norm = NORMALIZERS[name]
    d = _unit_rows(con.to(device))  # (|D|, E)
    t = _unit_rows(cls.to(device)) @ d.T  # (|C|, |D|) = cos(c, d)
    if norm.scale is None:
        return CmsScorer(d.contiguous(), None, _unit_rows(t), name)
    if img.shape[0] == 0:
        raise ValueError(f"normalize={name!r} needs column statistics over >= 1 image, got 0")
    mean_i, cov_i = image_moments(img, chunk_size, covariance=norm.needs_std, device=device)
    d64 = d.double()
    mean_v = d64 @ mean_i  # (|D|,) column means of V
    std_v = None if cov_i is None else ((d64 @ cov_i) * d64).sum(1).clamp_min(0).sqrt()
    if not norm.center:
        _warn_non_positive(mean_v, "V")
        _warn_non_positive(t.double().mean(0), "T")
    scale = _safe_scale(norm.scale(mean_v, std_v).float(), "V")
    shift = mean_i.float() if norm.center else None
    concept_rows = (d / scale[:, None]).contiguous()  # (|D|, E)
    return CmsScorer(concept_rows, shift, _unit_rows(_normalise_t(t, norm)), name)


@dataclass(frozen=True)
class CmsOutput:
    """Per-image CMS results (all on CPU)."""

    pred: torch.Tensor  # (N,) int64, argmax over classes (ties -> lowest index)
    topk: torch.Tensor  # (N, k) int64 classes by decreasing score, k = min(top_k, |C|)
    pred_score: torch.Tensor  # (N,) fp32 cos(V_n, T_pred)
    top_concepts: torch.Tensor  # (N, n_concepts) int64, largest terms of cos(V_n, T_pred)
    top_terms: torch.Tensor  # (N, n_concepts) fp32, those terms (they sum to pred_score)
    scores: torch.Tensor | None  # (N, |C|) fp32 only when keep_scores=True
    normalize: str


def concept_terms(v_unit: torch.Tensor, t_unit_rows: torch.Tensor) -> torch.Tensor:
    """Per-concept terms of cos(V_n, T_m): elementwise products (B, |D|); rows sum to the cosine."""
    return v_unit * t_unit_rows


def top_classes(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, M) scores -> (B, min(k, M)) classes by decreasing score: exactly `ranked`, faster.

    A float `topk` of k + 1 (~10x cheaper than `ranked`'s int64 keys) is exact wherever its
    k + 1 values are distinct: then the k it keeps are in a strict order and every other score
    is below the k-th. Only the rows with a tie there (duplicated classes, a zero row; NaN) go
    through `ranked`, which puts tied classes in index order.
    """
    k = min(k, scores.shape[1])
    if k == 1:
        return scores.argmax(1, keepdim=True)
    vals, top = scores.topk(min(k + 1, scores.shape[1]), dim=1)
    tied = (vals[:, 1:] == vals[:, :-1]).any(1) | vals[:, 0].isnan()
    top = top[:, :k]
    rows = tied.nonzero()[:, 0]
    if len(rows):
        top[rows] = ranked(scores[rows], k)
    return top


def _score_chunk(
    scorer: CmsScorer, images, top_k: int, n_top: int, work: torch.Tensor
) -> dict[str, torch.Tensor]:
    """One chunk of Algorithm 1 as matmuls: (B, E) images -> per-image results.

    `work` (2, >= B·|D|) fp32 scratch is reused across chunks (`CmsScorer.v_rows`); its first
    row, free once V is built, takes T_pred and then the terms.
    """
    v, r, s = scorer.rows_and_scores(images, work)
    top = top_classes(s, top_k)
    pred = top[:, 0]
    # terms of cos(V_n, T_pred) are v_j t_j / |V_n|; the positive 1/|V_n| keeps their order
    t_pred = work[0, : v.numel()].view(v.shape)
    terms = torch.index_select(scorer.t_unit, 0, pred, out=t_pred).mul_(v)
    tt, tc = terms.topk(n_top, dim=1)
    return {
        "pred": pred,
        "topk": top,
        "pred_score": s.gather(1, pred[:, None])[:, 0],
        "top_concepts": tc,
        "top_terms": tt / r,
        "scores": s,
    }


def cms_predict(
    image_emb,
    concept_emb,
    class_emb,
    *,
    normalize: str = "none",
    chunk_size: int = CHUNK_ROWS,
    top_k: int = 5,
    n_concepts: int = 5,
    keep_scores: bool = False,
    device="cpu",
    progress: bool = False,
) -> CmsOutput:
    """CMS predictions for every image row; memory O(chunk_size * (|D| + |C|)).

    image_emb (N, E) float (fp16 is upcast), concept_emb (|D|, E), class_emb (|C|, E);
    rows need not be unit (they are normalised in fp32 first). N must be >= 1.
    """
    scorer = build_scorer(
        image_emb, concept_emb, class_emb, normalize=normalize, chunk_size=chunk_size, device=device
    )
    img = torch.as_tensor(image_emb)
    if img.shape[0] == 0:
        raise ValueError("image_emb has 0 rows; CMS needs at least one image")
    n_top = min(n_concepts, scorer.t_unit.shape[1])
    parts: dict[str, list[torch.Tensor]] = {}
    chunks = list(iter_chunks(img.shape[0], chunk_size))
    t_unit = scorer.t_unit
    work = t_unit.new_empty((2, min(chunk_size, img.shape[0]) * t_unit.shape[1]))
    for sl in progress_bar(chunks, desc="cms", unit="chunk", enabled=progress):
        out = _score_chunk(scorer, img[sl], top_k, n_top, work)
        if not keep_scores:
            del out["scores"]
        for key, val in out.items():
            parts.setdefault(key, []).append(val.cpu())
    res = {key: torch.cat(vals) for key, vals in parts.items()}
    scores = res.pop("scores", None)
    return CmsOutput(**res, scores=scores, normalize=scorer.normalize)


def cms_explain(scorer: CmsScorer, image_row, cls: int | None = None) -> dict[str, np.ndarray]:
    """Terms of cos(V_n, T_m) for one image (E,) and class m (default: the CMS prediction).

    Returns float32 arrays of length |D|: `v` (unit row of normalised V), `t` (unit row of
    normalised T), `term` = v * t (sums to the score); and the class `cls` and its `score`.
    """
    row = _as_tensor(image_row, "image_row", 1)[None]
    v, r, s = scorer.rows_and_scores(row)
    m = int(s[0].argmax()) if cls is None else int(cls)
    if not 0 <= m < s.shape[1]:
        raise ValueError(f"class index {m} out of range 0..{s.shape[1] - 1}")
    v_unit, t = (v / r)[0], scorer.t_unit[m]
    arrays = {"v": v_unit, "t": t, "term": concept_terms(v_unit, t)}
    out = {k: x.detach().cpu().numpy().astype(np.float32) for k, x in arrays.items()}
    return {**out, "cls": m, "score": float(s[0, m])}


def zero_shot_predict(
    image_emb, class_emb, *, chunk_size: int = CHUNK_ROWS, top_k: int = 5, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot CLIP: argmax_m <i, c_m> (cosine; scale-free). Returns pred (N,), topk (N, k)."""
    img = _as_tensor(image_emb, "image_emb", 2)
    cls = _as_tensor(class_emb, "class_emb", 2)
    if img.shape[1] != cls.shape[1]:
        raise ValueError(f"image_emb has E={img.shape[1]} but class_emb has E={cls.shape[1]}")
    c = _unit_rows(cls.to(device))
    tops = [
        ranked(_unit_rows(img[sl].to(device)) @ c.T, top_k).cpu()  # (B, k)
        for sl in iter_chunks(len(img), chunk_size)
    ]
    if not tops:
        raise ValueError("image_emb has 0 rows; zero-shot needs at least one image")
    top = torch.cat(tops)
    return top[:, 0], top
