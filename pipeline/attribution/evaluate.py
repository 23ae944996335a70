"""`attribute-eval`: faithfulness of attribution maps, M2IB against baselines on the same pairs.

Metrics per pair (the target is always cos(one tower's embedding, the other's fixed one)):

- drop / increase in confidence as in the M2IB evaluation (pytorch-grad-cam's
  DropInConfidence / IncreaseInConfidence, ×100): the image multiplied by its map (min-max to
  [0, 1], on the normalised pixels); the text with the tokens at or below the map's median
  removed (BOS/EOS kept). Drop = max(0, cos_before − cos_after)·100, increase = 100·[after >
  before] (so its mean is the % of pairs whose confidence rose). Deviation: removed tokens are
  masked out of attention instead of being replaced by token id 0 (which is a real token, "!").
- deletion / insertion (Petsiuk et al. 2018): cos as the most-attributed pixels (tokens) are
  set to 0 (removed) — or revealed from an all-0 image (only BOS/EOS) — in `curve_steps`
  equal fractions; the area under the curve (mean over the fraction axis, trapezoid).
- pairs/s: maps per second of each method (M2IB from the attribute run).

Model-randomisation sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps"),
`randomised_models` / `randomisation_curves`: the layers are re-initialised from the top
(output) down, one group at a time, cumulatively (cascade; or one group alone: independent),
on a deep copy (the model passed in is never modified): step 1 the projection heads (with the
final layer norm), then the encoder blocks from the last to the first, then the embeddings.
Both towers are randomised at the same step; the targets (the other modality's embedding) stay
the original model's, as the class index does in Adebayo et al., so an image map is affected
only by the vision tower and a text map only by the text tower. At every step k = 0..L the
per-pair Spearman ρ (average ranks for ties) and SSIM of the min-max-normalised maps between
the original and the step-k map are reported as mean ± standard error over pairs. A map that
depends on the learned weights falls towards 0; a map that ignores them stays at 1.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipcbm.core import atomic
from clipcbm.pipeline.attribution.baselines import BASELINE_FNS, Batch, image_cos, text_cos
from clipcbm.pipeline.attribution.maps import AttributionInputError, grid_to_crop
from clipcbm.pipeline.preprocess import normalize_batch

METRICS = ("vdrop", "vincr", "tdrop", "tincr", "deletion_image", "insertion_image",
           "deletion_text", "insertion_text")  # fmt: skip


def unit_range(x: torch.Tensor) -> torch.Tensor:
    """Per-row min-max to [0, 1] over all but the first dim (constant rows -> 0)."""
    flat = x.flatten(1).float()
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(x)


def _auc(curve: torch.Tensor) -> torch.Tensor:
    """(B, K) values at fractions 0..1 -> (B,) trapezoid mean."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[1] - 1), dim=1)


def image_curves(model, pixels, text_emb, maps, steps: int) -> dict[str, torch.Tensor]:
    """Deletion and insertion AUCs (B,) for (B, c, c) maps."""
    b = pixels.shape[0]
    rank = maps.flatten(1).argsort(1, descending=True).argsort(1).view_as(maps)  # 0 = top pixel
    n = rank[0].numel()
    out = {}
    for name, keep_top in (("deletion_image", False), ("insertion_image", True)):
        vals = []
        for k in range(steps):
            cut = round(n * k / (steps - 1))
            top = (rank < cut).unsqueeze(1)  # (B, 1, c, c)
            keep = top if keep_top else ~top
            vals.append(image_cos(model, pixels * keep.to(pixels.dtype), text_emb))
        out[name] = _auc(torch.stack(vals, 1).view(b, steps))
    return out


def _inner(mask):
    """(B, T) bool: real tokens other than BOS (first) and EOS (last real)."""
    inner = mask.bool().clone()
    inner[:, 0] = False
    inner[torch.arange(len(mask)), mask.sum(1) - 1] = False
    return inner


def text_curves(model, ids, mask, image_emb, maps, steps: int) -> dict[str, torch.Tensor]:
    inner = _inner(mask)
    score = maps.float().masked_fill(~inner, -float("inf"))
    rank = score.argsort(1, descending=True).argsort(1)
    n = inner.sum(1, keepdim=True)
    out = {}
    for name, keep_top in (("deletion_text", False), ("insertion_text", True)):
        vals = []
        for k in range(steps):
            top = (rank < torch.round(n * k / (steps - 1))) & inner
            drop = ~top & inner if keep_top else top
            vals.append(text_cos(model, ids, mask * (~drop).long(), image_emb))
        out[name] = _auc(torch.stack(vals, 1))
    return out


def confidence(model, b: Batch, img_maps, txt_maps) -> dict[str, torch.Tensor]:
    before_i = image_cos(model, b.pixels, b.text_emb)
    after_i = image_cos(model, b.pixels * unit_range(img_maps).unsqueeze(1), b.text_emb)
    inner = _inner(b.mask)
    masked = txt_maps.float().masked_fill(~inner, float("nan"))
    med = masked.nanquantile(0.5, dim=1, keepdim=True)
    drop = inner & ~(masked > med)
    before_t = text_cos(model, b.ids, b.mask, b.image_emb)
    after_t = text_cos(model, b.ids, b.mask * (~drop).long(), b.image_emb)
    return {
        "vdrop": (before_i - after_i).clamp_min(0) * 100,
        "vincr": (after_i > before_i).float() * 100,
        "tdrop": (before_t - after_t).clamp_min(0) * 100,
        "tincr": (after_t > before_t).float() * 100,
    }


def score_maps(model, b: Batch, img_maps, txt_maps, curve_steps: int) -> dict[str, np.ndarray]:
    """Every metric (B,) for one method's maps on one batch."""
    with torch.no_grad():
        out = confidence(model, b, img_maps, txt_maps)
        out |= image_curves(model, b.pixels, b.text_emb, img_maps, curve_steps)
        out |= text_curves(model, b.ids, b.mask, b.image_emb, txt_maps, curve_steps)
    return {k: v.float().cpu().numpy() for k, v in out.items()}


def make_batch(model, spec, device, dtype, crops, ids_list) -> Batch:
    from clipcbm.pipeline.encoder import projected

    pixels = normalize_batch(torch.from_numpy(np.stack(crops)), spec).to(device, dtype)
    t = max(len(i) for i in ids_list)
    pad = model.config.text_config.pad_token_id or 0
    ids = torch.full((len(ids_list), t), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, i in enumerate(ids_list):
        ids[r, : len(i)], mask[r, : len(i)] = torch.as_tensor(i), 1
    ids, mask = ids.to(device), mask.to(device)
    with torch.no_grad():
        ie = F.normalize(projected(model.get_image_features(pixel_values=pixels)).float(), dim=-1)
        te = projected(model.get_text_features(input_ids=ids, attention_mask=mask)).float()
    return Batch(pixels, ids, mask, ie, F.normalize(te, dim=-1))


def _load_pairs(folder: Path):
    import pandas as pd

    if not (folder / "run.json").is_file() or not (folder / "pairs.csv").is_file():
        raise AttributionInputError(
            f"{folder} is not an `attribute` output (no run.json / pairs.csv); run "
            "`clipcbm attribute --out DIR` first"
        )
    info = json.loads((folder / "run.json").read_text())
    rows = pd.read_csv(folder / "pairs.csv", keep_default_na=False)
    pairs = []
    for rel in rows["dir"]:
        d = folder / str(rel)
        with np.load(d / "maps.npz") as z:
            grid, text, ids = z["grid"], z["text"], z["ids"]
        pairs.append((np.asarray(Image.open(d / "input.png").convert("RGB")), grid, text, ids))
    return info, pairs


def run(cfg):
    import pandas as pd

    from clipcbm.pipeline.attribution.maps import load_model

    folder = Path(cfg.input)
    info, pairs = _load_pairs(folder)
    mcfg = info["config"]
    enc, spec = load_model(mcfg["model"], mcfg.get("revision"), cfg.device, "fp32")
    model = enc.model
    methods = {"m2ib": None} | {n: BASELINE_FNS[n] for n in cfg.baselines}
    records, seconds = [], {n: 0.0 for n in methods}
    for start in range(0, len(pairs), cfg.batch_size):
        chunk = pairs[start : start + cfg.batch_size]
        b = make_batch(model, spec, enc.device, torch.float32, [c[0] for c in chunk],
                       [c[3] for c in chunk])  # fmt: skip
        for name, fn in methods.items():
            t0 = time.perf_counter()
            if fn is None:
                img = torch.stack([grid_to_crop(torch.from_numpy(c[1]), spec.crop) for c in chunk])
                txt = torch.zeros(b.ids.shape)
                for r, c in enumerate(chunk):
                    txt[r, : len(c[2])] = torch.from_numpy(c[2])
            else:
                img, txt = fn(model, b, cfg)
            seconds[name] += time.perf_counter() - t0
            scores = score_maps(model, b, img.to(enc.device), txt.to(enc.device), cfg.curve_steps)
            for r in range(len(chunk)):
                records.append({"pair": start + r, "method": name,
                                **{k: float(v[r]) for k, v in scores.items()}})  # fmt: skip
    table = pd.DataFrame(records)
    means = table.groupby("method", sort=False)[list(METRICS)].mean()
    n = len(pairs)
    means["pairs_per_s"] = [
        info.get("pairs_per_s") if m == "m2ib" else n / max(seconds[m], 1e-9) for m in means.index
    ]
    out = Path(cfg.out or folder)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "eval.csv", table.to_csv(index=False))
    atomic.write_text(out / "eval.md", markdown(means))
    summary = {"pairs": n, "device": str(enc.device), "methods": means.to_dict(orient="index")}
    atomic.write_text(out / "eval.json", json.dumps(summary, indent=2))
    return EvalResult(out, n, means)


def markdown(means) -> str:
    cols = [*METRICS, "pairs_per_s"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m, row in means.iterrows():
        cells = ["" if row[c] is None or np.isnan(row[c]) else f"{row[c]:.3f}" for c in cols]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class EvalResult:
    out: Path
    pairs: int
    means: object

    def summary(self) -> str:
        files = f"{self.out}/eval.csv, eval.md, eval.json"
        return f"{markdown(self.means)}wrote {files} ({self.pairs} pairs)"


# ---- standard errors over pairs ------------------------------------------------------------


def mean_se(x) -> tuple[float, float]:
    """Mean and standard error (sample std, ddof 1, / sqrt n) over the finite values of x."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(x.mean()), se


def binomial_se(p: float, n: int) -> float:
    """sqrt(p (1 - p) / n): the standard error of a proportion of n independent trials."""
    return float(np.sqrt(p * (1.0 - p) / n)) if n > 0 else float("nan")


def bootstrap_se(x, *, seed: int = 0, resamples: int = 2000) -> float:
    """Standard error of the mean of x by the bootstrap over its (finite) entries, seeded."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return float("nan")
    idx = np.random.default_rng(seed).integers(0, len(x), (resamples, len(x)))
    return float(x[idx].mean(1).std(ddof=1))


# ---- map similarity ------------------------------------------------------------------------


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ranks 0..n-1 of (B, N), ties sharing their average rank."""
    order = x.argsort(dim=1, stable=True)
    sorted_x = x.gather(1, order)
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks.scatter_(1, order, torch.arange(x.shape[1], dtype=torch.float64).expand_as(x).clone())
    for r in range(x.shape[0]):  # average over runs of equal values
        vals, counts = torch.unique_consecutive(sorted_x[r], return_counts=True)
        if len(vals) == x.shape[1]:
            continue
        ends = counts.cumsum(0)
        avg = (ends - 1 + ends - counts).double() / 2  # mean of ranks start..end-1
        ranks[r, order[r]] = avg.repeat_interleave(counts)
    return ranks


def spearman_rows(
    a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None
) -> np.ndarray:
    """Spearman ρ per row of two (B, ...) maps (average ranks for ties); NaN where a map is
    constant. valid (B, N) bool: only those entries of each row count (e.g. real tokens)."""
    a, b = a.detach().flatten(1).double().cpu(), b.detach().flatten(1).double().cpu()
    out = np.full(a.shape[0], np.nan)
    for r in range(a.shape[0]):
        keep = slice(None) if valid is None else valid[r].flatten().bool().cpu()
        ra, rb = average_ranks(a[r : r + 1, keep])[0], average_ranks(b[r : r + 1, keep])[0]
        ra, rb = ra - ra.mean(), rb - rb.mean()
        den = float(ra.norm() * rb.norm())
        if len(ra) > 1 and den > 1e-12:
            out[r] = float((ra * rb).sum()) / den
    return out


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_maps(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """SSIM per pair of (B, H, W) maps, each min-max normalised to [0, 1] first (Gaussian
    window 11, σ 1.5, K1 0.01, K2 0.03, data range 1; valid region only)."""
    x, y = unit_range(a.detach().cpu()).double(), unit_range(b.detach().cpu()).double()
    x, y = x.unsqueeze(1), y.unsqueeze(1)
    w = _gaussian_window(min(11, x.shape[-1], x.shape[-2]))
    c1, c2 = 0.01**2, 0.03**2

    def filt(z):
        return F.conv2d(z, w)

    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).numpy()


# ---- cascading / independent model randomisation ------------------------------------------


def randomisation_steps(model) -> list[tuple[str, list[str]]]:
    """The groups a cascade re-initialises, in order (top, the output, first): [(step name,
    [module paths of the CLIPModel])]. Blocks are counted from the top of each tower, so towers
    of different depth line up at their last block."""
    vis, txt = model.vision_model, model.text_model
    vn, tn = len(vis.encoder.layers), len(txt.encoder.layers)
    steps = [("projection", ["visual_projection", "vision_model.post_layernorm",
                             "text_projection", "text_model.final_layer_norm"])]  # fmt: skip
    for i, (v, t) in enumerate(zip_longest(range(vn - 1, -1, -1), range(tn - 1, -1, -1))):
        paths = ([] if v is None else [f"vision_model.encoder.layers.{v}"]) + (
            [] if t is None else [f"text_model.encoder.layers.{t}"]
        )
        steps.append((f"block {i + 1} from top", paths))
    steps.append(("embeddings", ["vision_model.embeddings", "vision_model.pre_layrnorm",
                                 "text_model.embeddings"]))  # fmt: skip
    return steps


def fresh_init(model, seed: int):
    """A model of the same class and config, initialised by its constructor under `seed` (the
    global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return type(model)(copy.deepcopy(model.config)).eval()


def _reinit(target, fresh, paths: list[str]) -> None:
    with torch.no_grad():
        for path in paths:
            src, dst = fresh.get_submodule(path), target.get_submodule(path)
            for p, q in zip(dst.parameters(), src.parameters(), strict=True):
                p.copy_(q.to(p.device, p.dtype))


def randomised_models(model, *, seed: int = 0, mode: str = "cascade") -> Iterator[tuple]:
    """Yield (k, step name, model) for k = 0..L: k = 0 is an unchanged deep copy; in "cascade"
    mode step k has groups 1..k of `randomisation_steps` re-initialised (one deep copy, changed
    in place: use each model before asking for the next), in "independent" mode group k alone.
    The new weights are those a fresh model built with `seed` has, so the same seed gives the
    same randomised models; `model` itself is never modified."""
    if mode not in ("cascade", "independent"):
        raise ValueError(f"mode must be 'cascade' or 'independent', got {mode!r}")
    fresh = fresh_init(model, seed)
    work = copy.deepcopy(model)
    yield 0, "original", work
    for k, (name, paths) in enumerate(randomisation_steps(model), start=1):
        if mode == "independent":
            work = copy.deepcopy(model)
        _reinit(work, fresh, paths)
        yield k, name, work


MapFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (model, batch, generator) -> img, txt


def _maps(model, batches, fn: MapFn, map_seed: int):
    gen = torch.Generator().manual_seed(map_seed)  # the same noise at every step
    img, txt = [], []
    for b in batches:
        i, t = fn(model, b, gen)
        img.append(i.detach().float().cpu())
        txt.append(t.detach().float().cpu())
    return img, txt


def randomisation_curves(model, batches: list[Batch], methods: dict[str, MapFn], *,
                         seed: int = 0, mode: str = "cascade", map_seed: int = 0,
                         seed_floor: bool = False, log=None) -> dict:  # fmt: skip
    """Per method, per step k = 0..L: per-pair Spearman ρ between the original model's maps
    and the step-k model's maps, image (all pixels; also of |map|) and text (real tokens other
    than BOS/EOS), and the image maps' SSIM. Batches hold the original model's targets. Each
    method's maps are drawn with a generator seeded `map_seed` at every step (stochastic
    methods see the same noise). seed_floor: also ρ between two map seeds on the original
    model (how much of a fall is the method's own noise).

    Returns {"steps": [names], "randomised": [[paths]], "per_pair": {method: {metric:
    (L+1, pairs) array}}, "seed_floor": {method: {metric: (pairs,)}}}."""
    inner = _cat_text([_inner(b.mask).cpu().float() for b in batches]).bool()
    names, groups, ref = [], [], {}
    per_pair = {m: {"image_spearman": [], "image_spearman_abs": [], "image_ssim": [],
                    "text_spearman": []} for m in methods}  # fmt: skip

    def compare(a_img, a_txt, b_img, b_txt):
        ai, bi = torch.cat(a_img), torch.cat(b_img)
        at, bt = _cat_text(a_txt), _cat_text(b_txt)
        return {
            "image_spearman": spearman_rows(ai, bi),
            "image_spearman_abs": spearman_rows(ai.abs(), bi.abs()),
            "image_ssim": ssim_maps(ai, bi),
            "text_spearman": spearman_rows(at, bt, inner[:, : at.shape[1]]),
        }

    all_steps = dict(randomisation_steps(model))
    for k, name, m in randomised_models(model, seed=seed, mode=mode):
        t0 = time.perf_counter()
        names.append(name)
        groups.append(all_steps.get(name, []))
        for method, fn in methods.items():
            img, txt = _maps(m, batches, fn, map_seed)
            if k == 0:
                ref[method] = (img, txt)
            for key, v in compare(*ref[method], img, txt).items():
                per_pair[method][key].append(v)
        if log:
            log(f"randomisation ({mode}) step {k} {name}: {time.perf_counter() - t0:.1f} s")
    out = {
        "steps": names,
        "randomised": groups,
        "per_pair": {m: {k: np.stack(v) for k, v in d.items()} for m, d in per_pair.items()},
    }
    if seed_floor:
        out["seed_floor"] = {}
        for method, fn in methods.items():
            img, txt = _maps(model, batches, fn, map_seed + 1)
            out["seed_floor"][method] = compare(*ref[method], img, txt)
    return out


def _cat_text(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate (B_i, T_i) text maps along pairs, right-padding with 0 to the longest T."""
    t = max(p.shape[1] for p in parts)
    return torch.cat([F.pad(p, (0, t - p.shape[1])) for p in parts])


def summarise_curves(curves: dict) -> dict:
    """{method: {metric: {"mean": [L+1], "se": [L+1]}}} of `randomisation_curves`'s per-pair
    values (finite values only; "n" = pairs with a defined value at each step)."""
    out = {}
    for method, d in curves["per_pair"].items():
        out[method] = {}
        for key, arr in d.items():
            stats = [mean_se(row) for row in arr]
            out[method][key] = {"mean": [s[0] for s in stats], "se": [s[1] for s in stats],
                                "n": [int(np.isfinite(row).sum()) for row in arr]}  # fmt: skip
    return out
