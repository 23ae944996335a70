"""`sae-inspect`: retrieval over SAE codes, written as one table a page can be rendered from.

Views (rows of `inspect.csv`, one group per latent / image / cluster):
- latent   the top-activating images of a latent (--latent J, or the latents named --concept
           "cat", or by default the most often firing live latents);
- image    the top named latents of one image (--image ROW);
- cluster  k-means over the split's latent codes (--kmeans K; spherical k-means on unit codes,
           seeded): each cluster's images nearest its centroid and its top latents.

Stage two cannot open images (the boundary is one-way), so thumbnails are a stage-one job:
`pipeline/sae_page.py` renders the self-contained HTML page from `inspect.csv` +
`inspect.json` (which records the cache, the split and the dataset it was embedded from).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clipcbm.cache import open_cache
from clipcbm.core import atomic
from clipcbm.core.device import resolve_device
from clipcbm.heads.chunks import iter_chunks
from clipcbm.heads.errors import (
    EvalInputError,
    HeadCacheMismatchError,
    HeadsConfigError,
    OutputExistsError,
)
from clipcbm.heads.eval.metrics import ranked
from clipcbm.heads.io.evaldata import write_json
from clipcbm.heads.io.output import result_files
from clipcbm.heads.sae.artifact import alive_mask, check_model, load_names, load_sae
from clipcbm.heads.sae.config import SaeInspectConfig
from clipcbm.heads.sae.data import load_heldout
from clipcbm.heads.sae.naming import name_latents, vocab_candidates

TABLE, META = "inspect.csv", "inspect.json"
COLUMNS = ("view", "group", "title", "detail", "query", "rank", "row", "id", "label", "class",
           "latent", "name", "activation")  # fmt: skip


@dataclass
class Codes:
    """A split's SAE codes: acts (N, L) of the queried latents, counts (F,) rows each latent
    fires on, and every row's strongest latents as (values, indices) (N, kk)."""

    acts: torch.Tensor
    counts: torch.Tensor
    values: torch.Tensor
    indices: torch.Tensor


def collect(sae, x: np.ndarray, latents: list[int], chunk_rows: int, device) -> Codes:
    kk = sae.k if sae.selection == "topk" else min(sae.n_latents, 4 * sae.k)
    acts, vals, idx = [], [], []
    counts = torch.zeros(sae.n_latents, dtype=torch.long)
    with torch.no_grad():
        for sl in iter_chunks(len(x), chunk_rows):
            z = sae.codes(sae.pre_activations(torch.from_numpy(x[sl]).float().to(device)))
            acts.append(z[:, latents].cpu())
            counts += (z > 0).sum(0).cpu()
            top = ranked(z, kk)
            vals.append(z.gather(1, top).cpu())
            idx.append(top.cpu())
    return Codes(torch.cat(acts), counts, torch.cat(vals), torch.cat(idx))


def top_rows(acts: torch.Tensor, top: int) -> list[list[int]]:
    """(N, L) -> per column the rows of its `top` largest positive values (ties: lower row)."""
    order = ranked(acts.T.contiguous(), top)  # (L, top)
    return [[int(r) for r in order[c] if acts[r, c] > 0] for c in range(acts.shape[1])]


def kmeans(codes: Codes, n_clusters: int, n_latents: int, seed: int, iters: int = 30):
    """Spherical k-means on the unit sparse codes: (labels (N,), cosine to own centroid (N,),
    centroids (K, F)). Seeded start: K distinct rows drawn by default_rng(seed)."""
    n = len(codes.values)
    if not 1 <= n_clusters <= n:
        raise HeadsConfigError(f"--kmeans must be in 1..{n} (rows of the split), got {n_clusters}")
    dense = torch.zeros(n, n_latents).scatter_(1, codes.indices, codes.values)
    dense = dense / dense.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cent = dense[torch.from_numpy(np.random.default_rng(seed).choice(n, n_clusters, False))]
    labels = torch.full((n,), -1)
    for _ in range(iters):
        sims = torch.cat([dense[sl] @ cent.T for sl in iter_chunks(n)])
        new = ranked(sims, 1)[:, 0]
        if torch.equal(new, labels):
            break
        labels = new
        summed = torch.zeros_like(cent).index_add_(0, labels, dense)
        empty = summed.norm(dim=1) == 0
        summed[empty] = cent[empty]  # an empty cluster keeps its centroid
        cent = summed / summed.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sims = torch.cat([dense[sl] @ cent.T for sl in iter_chunks(n)])
    return labels, sims.gather(1, labels[:, None])[:, 0], cent


def concept_latents(names: pd.DataFrame, concept: str, alive: np.ndarray) -> list[int]:
    """Live latents named `concept` (case-insensitive); none is an error with close names."""
    key = concept.strip().casefold()
    hits = [int(j) for j, n in zip(names["latent"], names["name"], strict=True)
            if str(n).casefold() == key and alive[int(j)]]  # fmt: skip
    if not hits:
        close = difflib.get_close_matches(concept, sorted(set(names["name"].astype(str))), n=5)
        raise EvalInputError(
            f"no live latent is named {concept!r}; close names: {close or 'none'}. Latent names "
            "are the nearest concept/class texts (names.csv), or pass --vocab to name them "
            "with another vocabulary"
        )
    return hits


@dataclass
class InspectResult:
    out_dir: Path
    table: pd.DataFrame
    files: dict = field(default_factory=dict)

    def summary(self, limit: int = 40) -> str:
        shown = self.table[["view", "group", "rank", "id", "class", "latent", "name",
                            "activation"]].head(limit)  # fmt: skip
        more = f"\n... {len(self.table) - limit} more rows" if len(self.table) > limit else ""
        return shown.to_string(index=False, float_format=lambda v: f"{v:.4f}") + more


def _names(cfg, sae, sae_cfg, cache_fp):
    if cfg.vocab is None:
        names = load_names(cfg.sae)
        if names is None:
            names = pd.DataFrame({
                "latent": range(sae.n_latents), "name": "", "cosine": np.nan,
                "runner_up": "", "runner_up_cosine": np.nan, "source": "",
            })  # fmt: skip
        return names
    from clipcbm.cache.vocab import open_vocab

    vocab = open_vocab(cfg.vocab)
    if vocab.model_fingerprint != cache_fp:
        raise HeadCacheMismatchError(f"vocabulary {cfg.vocab} was embedded with another model "
                                     f"than the SAE's cache; embed it with that model "
                                     f"({sae_cfg['clipcbm'].get('model_id')!r})")  # fmt: skip
    named = name_latents(sae.W_dec.detach(), vocab_candidates(vocab))
    saved = load_names(cfg.sae)
    if saved is not None and "alive" in saved:
        named["alive"] = saved["alive"].to_numpy(bool)
    return named


def _title(j: int, names: pd.DataFrame, counts: torch.Tensor, n: int) -> tuple[str, str]:
    r = names.iloc[j]
    name = str(r["name"]) or f"latent {j}"
    detail = f"fires on {100 * int(counts[j]) / n:.1f}% of {n} images"
    if str(r["name"]):
        detail = (f"cos {r['cosine']:.3f} (runner-up {r['runner_up']!s} "
                  f"{r['runner_up_cosine']:.3f}) · {detail}")  # fmt: skip
    return f"latent {j}: {name}", detail


def _image_row(held, cache, pos: int) -> dict:
    label = int(held.labels[pos])
    return {"row": int(held.rows[pos]), "id": str(held.ids[pos]), "label": label,
            "class": cache.classes[label]}  # fmt: skip


def _latent_views(cfg, cache, held, codes, latents, queries, names) -> list[dict]:
    out = []
    for col, (j, query) in enumerate(zip(latents, queries, strict=True)):
        title, detail = _title(j, names, codes.counts, len(held.rows))
        head = {"view": "latent", "group": j, "title": title, "detail": detail, "query": query,
                "latent": j, "name": names.iloc[j]["name"]}  # fmt: skip
        found = top_rows(codes.acts[:, col : col + 1], cfg.top)[0]
        for rank, pos in enumerate(found):
            out.append({**head, "rank": rank, **_image_row(held, cache, pos),
                        "activation": float(codes.acts[pos, col])})  # fmt: skip
        if not found:  # a group with no image: the latent never fires on this split
            out.append({**head, "rank": -1, "row": -1, "id": "", "label": -1, "class": "",
                        "activation": 0.0})  # fmt: skip
    return out


def _image_views(cfg, cache, held, codes, positions, names) -> list[dict]:
    out = []
    for pos in positions:
        img = _image_row(held, cache, pos)
        live = [(float(v), int(j)) for v, j in zip(codes.values[pos], codes.indices[pos],
                                                   strict=True) if v > 0]  # fmt: skip
        title = f"image {img['id']} ({img['class']})"
        detail = f"{len(live)} active latents"
        for rank, (v, j) in enumerate(live[: cfg.top_latents]):
            out.append({"view": "image", "group": img["row"], "title": title, "detail": detail,
                        "query": "", "rank": rank, **img, "latent": j,
                        "name": names.iloc[j]["name"], "activation": v})  # fmt: skip
    return out


def _cluster_views(cfg, cache, held, codes, names, n_latents) -> list[dict]:
    labels, sims, cent = kmeans(codes, cfg.kmeans, n_latents, cfg.seed)
    out = []
    for c in range(cfg.kmeans):
        members = torch.nonzero(labels == c).flatten()
        top_lat = ranked(cent[c : c + 1], 3)[0].tolist()
        title = f"cluster {c}: {len(members)} images"
        detail = "top latents: " + ", ".join(f"{j} {names.iloc[j]['name'] or ''}".strip()
                                             for j in top_lat)  # fmt: skip
        order = members[ranked(sims[members][None], cfg.top)[0]] if len(members) else members
        for rank, pos in enumerate(order.tolist()):
            out.append({"view": "cluster", "group": c, "title": title, "detail": detail,
                        "query": "", "rank": rank, **_image_row(held, cache, pos),
                        "latent": top_lat[0], "name": names.iloc[top_lat[0]]["name"],
                        "activation": float(sims[pos])})  # fmt: skip
    return out


def _positions(held, images) -> list[int]:
    out = []
    for r in images:
        pos = int(np.searchsorted(held.rows, r))
        if pos >= len(held.rows) or held.rows[pos] != r:
            raise EvalInputError(
                f"--image {r} is not a readable row of split {held.split!r} (rows "
                f"0..{held.rows[-1]}, unreadable images skipped)"
            )
        out.append(pos)
    return out


def _queries(cfg, sae, names, alive) -> tuple[list[int], list[str]]:
    bad = [j for j in cfg.latents if j >= sae.n_latents]
    if bad:
        raise EvalInputError(f"--latent {bad[0]} is out of range: the SAE has latents "
                             f"0..{sae.n_latents - 1}")  # fmt: skip
    latents, queries = list(cfg.latents), [f"latent {j}" for j in cfg.latents]
    for concept in cfg.concepts:
        hits = concept_latents(names, concept, alive)
        latents += hits
        queries += [concept] * len(hits)
    return latents, queries


def _refuse_existing(cfg: SaeInspectConfig) -> None:
    """Existing tables (or page) of an earlier run are kept unless --overwrite."""
    out = cfg.out_dir()
    paths = [out / TABLE, out / META, *([cfg.html] if cfg.html is not None else [])]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not cfg.overwrite:
        raise OutputExistsError(
            f"sae-inspect output already exists: {', '.join(existing)}; choose another --out "
            "(or --html) or pass --overwrite to replace it"
        )


def run_sae_inspect(cfg: SaeInspectConfig) -> InspectResult:
    _refuse_existing(cfg)
    device = resolve_device(cfg.device)
    sae, sae_cfg = load_sae(cfg.sae, device)
    with open_cache(cfg.cache, verify=cfg.verify) as cache:
        check_model(sae_cfg, cache)
        names = _names(cfg, sae, sae_cfg, sae_cfg["clipcbm"]["model_fingerprint"])
        alive = alive_mask(names, sae.n_latents)
        held = load_heldout(cache, cfg.split)
        latents, queries = _queries(cfg, sae, names, alive)
        positions = _positions(held, cfg.images)
        default = not (latents or positions or cfg.kmeans)
        codes = collect(sae, held.x, latents, cfg.chunk_size, device)
        if default:  # the most often firing latents, ties to the lower index
            latents = ranked(codes.counts[None].float(), cfg.n_latents)[0].tolist()
            latents = [j for j in latents if codes.counts[j] > 0]
            queries = ["most frequent"] * len(latents)
            codes = collect(sae, held.x, latents, cfg.chunk_size, device)
        rows = _latent_views(cfg, cache, held, codes, latents, queries, names)
        rows += _image_views(cfg, cache, held, codes, positions, names)
        if cfg.kmeans:
            rows += _cluster_views(cfg, cache, held, codes, names, sae.n_latents)
        meta = {"sae": str(cfg.sae), "cache": str(cfg.cache), "split": cfg.split,
                "n_rows": len(held.rows), "dataset": cache.metadata.get("dataset"),
                "cache_fingerprint": cache.fingerprint,
                "model_fingerprint": sae_cfg["clipcbm"]["model_fingerprint"],
                "names": str(cfg.vocab) if cfg.vocab else "names.csv of the SAE",
                "latents": latents, "images": list(cfg.images), "kmeans": cfg.kmeans,
                "k": sae.k, "n_latents": sae.n_latents}  # fmt: skip
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    out = cfg.out_dir()
    with result_files(out, "the sae-inspect tables") as stage:  # both files, or none
        files = {"csv": atomic.write_text(stage / TABLE, table.to_csv(index=False)),
                 "json": write_json(stage / META, meta)}  # fmt: skip
    return InspectResult(out, table, stage.final(files))
