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
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core import atomic
from pipeline.attribution.baselines import BASELINE_FNS, Batch, image_cos, text_cos
from pipeline.attribution.maps import AttributionInputError, grid_to_crop
from pipeline.preprocess import normalize_batch

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
    from pipeline.encoder import projected

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
            "`cli.py attribute --out DIR` first"
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

    from pipeline.attribution.maps import load_model

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
