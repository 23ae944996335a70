"""`attribute`: M2IB image and text maps for many (image, text) pairs, fitted in batches.

Pairs come from one image file or a cache's dataset split, texts from --text, a CSV column
(e.g. `explain`'s `concept`) or the cache row's class. Images go through the model's own
preprocessing (`pipeline.preprocess`: resize the short side, centre crop); the patch map is
upsampled bilinearly to the crop, then placed back into the crop's window of the input image,
so `image` has the input's (H, W) (pixels outside the centre crop, never seen by CLIP, are 0).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipcbm.core import atomic
from clipcbm.core.outputs import Ownership, owned_output
from clipcbm.pipeline.attribution.bottleneck import (
    attribute_images,
    attribute_texts,
    layer_index,
    pair_generators,
)
from clipcbm.pipeline.attribution.config import AttributeConfig
from clipcbm.pipeline.encoder import check_context
from clipcbm.pipeline.errors import OutputExistsError, PipelineError
from clipcbm.pipeline.preprocess import PreprocessSpec, crop_uint8, normalize_batch, resized_size

log = logging.getLogger(__name__)
DEFAULT_TEMPLATE = "a photo of a {}."


class AttributionInputError(PipelineError, ValueError):
    """A pair that cannot be explained: empty text, no texts in a CSV, ... (too long text:
    `pipeline.encoder.TextTooLongError`)."""


@dataclass
class Pair:
    image: Image.Image  # RGB, any size
    source: str  # where the image came from (path or cache split/id)
    text: str


@dataclass
class Prepared:
    crop: np.ndarray  # (c, c, 3) uint8, what CLIP sees
    size: tuple[int, int]  # (W, H) of the input image
    window: tuple[float, float, float, float]  # crop box (left, top, right, bottom) in input px
    ids: list[int]  # token ids with BOS/EOS
    tokens: list[str]


def load_model(model: str, revision, device: str, dtype: str):
    """(ClipEncoder, PreprocessSpec) of a local directory or hub id; CLIP frozen."""
    try:  # transformers 5: the Pillow processor by name (no "torchvision missing" notice)
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as Processor

    from clipcbm.pipeline.encoder import ClipEncoder, EncoderError
    from clipcbm.pipeline.hub import pretrained_kwargs

    enc = ClipEncoder.load(model, device=device, dtype=dtype, revision=revision)
    try:
        proc = Processor.from_pretrained(
            model, revision=revision, **pretrained_kwargs(model, revision)
        )
    except (OSError, ValueError) as e:
        raise EncoderError(f"could not read the image processor of {model!r}: {e}") from e
    return enc, PreprocessSpec.from_image_processor(proc)


def token_ids(tokenizer, text: str, max_len: int, truncate: bool) -> list[int]:
    """BOS + text tokens + EOS; empty text and (unless truncate) too-long text are errors
    (`check_context`, the rule `embed` applies to concepts)."""
    if not text or not text.strip():
        raise AttributionInputError(f"empty text {text!r}: give a caption or concept to explain")
    ids = tokenizer(text, verbose=False)["input_ids"]
    if check_context([text], [len(ids)], max_len, truncate=truncate):  # embed's rule and message
        ids = ids[: max_len - 1] + ids[-1:]
    return ids


def crop_window(width: int, height: int, spec: PreprocessSpec) -> tuple[float, ...]:
    """The centre crop's box in input-image pixels (left, top, right, bottom)."""
    w, h = resized_size(width, height, spec.resize)
    top, left = (h - spec.crop) // 2, (w - spec.crop) // 2
    sx, sy = width / w, height / h
    return (left * sx, top * sy, (left + spec.crop) * sx, (top + spec.crop) * sy)


def prepare(pair: Pair, spec: PreprocessSpec, tokenizer, max_len: int, truncate: bool) -> Prepared:
    ids = token_ids(tokenizer, pair.text, max_len, truncate)
    size = pair.image.size
    return Prepared(
        crop_uint8(pair.image, spec),
        size,
        crop_window(*size, spec),
        ids,
        tokenizer.convert_ids_to_tokens(ids),
    )


def grid_to_crop(grid: torch.Tensor, crop: int) -> torch.Tensor:
    """(gh, gw) patch map -> (crop, crop), bilinear (as the published code)."""
    x = grid[None, None].float()
    return F.interpolate(x, size=(crop, crop), mode="bilinear", align_corners=False)[0, 0]


def to_input_resolution(grid: np.ndarray, p: Prepared) -> np.ndarray:
    """(gh, gw) patch map -> (H, W) map of the input image (0 outside the centre crop)."""
    width, height = p.size
    left, top, right, bottom = p.window
    x0, y0 = max(0, round(left)), max(0, round(top))
    x1, y1 = min(width, round(right)), min(height, round(bottom))
    out = np.zeros((height, width), dtype=np.float32)
    g = torch.from_numpy(np.asarray(grid, dtype=np.float32))[None, None]
    out[y0:y1, x0:x1] = F.interpolate(
        g, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    return out


def fit_batch(enc, spec: PreprocessSpec, batch: list[Prepared], cfg: AttributeConfig, first: int):
    """M2IB on both towers for pairs first, first+1, ...: [(grid (gh, gw), text (T,), cos)].

    Each pair's noise comes from its own generator (run seed, pair index), so its maps do not
    depend on --batch-size or on the other pairs of its batch.
    """
    model, dev = enc.model, enc.device
    pixels = normalize_batch(torch.from_numpy(np.stack([p.crop for p in batch])), spec)
    pixels = pixels.to(dev, enc.dtype)
    t = max(len(p.ids) for p in batch)
    pad = model.config.text_config.pad_token_id or 0
    ids = torch.full((len(batch), t), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), t), dtype=torch.long)
    for i, p in enumerate(batch):
        ids[i, : len(p.ids)], mask[i, : len(p.ids)] = torch.tensor(p.ids), 1
    ids, mask = ids.to(dev), mask.to(dev)
    with torch.no_grad():
        img_emb = enc.encode_images(pixels)[0]
        txt_emb = _text_emb(model, ids, mask)
    scale = 1024.0 if enc.dtype in (torch.float16, torch.bfloat16) else 1.0
    gens = [pair_generators(cfg.seed, first, len(batch), tower, dev) for tower in (0, 1)]
    vis = attribute_images(model, pixels, txt_emb, cfg.settings("vision"), generator=gens[0],
                           loss_scale=scale).cpu()  # fmt: skip
    txt = attribute_texts(model, ids, mask, img_emb, cfg.settings("text"), generator=gens[1],
                          loss_scale=scale).cpu()  # fmt: skip
    patch = int(model.config.vision_config.patch_size)
    gh, gw = pixels.shape[-2] // patch, pixels.shape[-1] // patch
    cos = (img_emb * txt_emb).sum(-1).cpu()
    return [
        (vis[i, 1:].view(gh, gw).numpy(), txt[i, : len(p.ids)].numpy(), float(cos[i]))
        for i, p in enumerate(batch)
    ]


def _text_emb(model, ids, mask) -> torch.Tensor:
    from clipcbm.pipeline.encoder import projected, unit_rows

    return unit_rows(projected(model.get_text_features(input_ids=ids, attention_mask=mask)))[0]


def save_pair(folder: Path, p: Prepared, image: np.ndarray, grid, text, pictures: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    heat = to_input_resolution(grid, p)
    np.savez(
        folder / "maps.npz",
        image=heat,
        text=np.asarray(text, dtype=np.float32),
        grid=np.asarray(grid, dtype=np.float32),
        ids=np.asarray(p.ids, dtype=np.int64),
    )
    (folder / "tokens.json").write_text(json.dumps(p.tokens, ensure_ascii=False))
    Image.fromarray(p.crop).save(folder / "input.png")
    if pictures:
        from clipcbm.pipeline.attribution.render import save_pictures

        save_pictures(folder, image, heat, p.tokens, text)


def _is_attribution_dir(d: Path) -> bool:
    info = json.loads((d / "run.json").read_text()) if (d / "run.json").is_file() else None
    if not isinstance(info, dict):
        return False
    legacy = {"config", "model", "vision_layer_index"} <= set(info)  # before the marker
    return info.get("artifact") == ARTIFACT or legacy


ARTIFACT = "clipcbm-attribution"  # run.json "artifact": the marker --overwrite recognises
# what `--overwrite` may replace (core.outputs): a directory `attribute` wrote, only its files
OWNERSHIP = Ownership(
    "an attribution directory", "attribute", _is_attribution_dir,
    frozenset({"run.json", "pairs.csv", "pairs", "maps.npz", "tokens.json", "input.png",
               "overlay.png", "text.png"}),
)  # fmt: skip


def run(cfg: AttributeConfig):
    """The `attribute` command (the output is locked for the run and replaced only if it is an
    attribution directory: core.outputs)."""
    with owned_output(cfg.out, OWNERSHIP, overwrite=cfg.overwrite,
                      exists_error=OutputExistsError):  # fmt: skip
        return _run(cfg)


def _run(cfg: AttributeConfig):
    from clipcbm.pipeline.attribution.pairs import collect_pairs, with_cache_model

    cfg = with_cache_model(cfg)  # --cache: the cache's model; another one is refused
    out = Path(cfg.out)
    enc, spec = load_model(cfg.model, cfg.revision, cfg.device, cfg.dtype)
    pairs = collect_pairs(cfg)
    max_len = int(enc.model.config.text_config.max_position_embeddings)
    prepared = [prepare(p, spec, enc.tokenizer, max_len, cfg.truncate) for p in pairs]
    rows, single = [], len(pairs) == 1
    t0 = time.perf_counter()
    with atomic.directory(out) as tmp:
        for start in _progress(range(0, len(pairs), cfg.batch_size), cfg.progress):
            chunk = prepared[start : start + cfg.batch_size]
            for j, (grid, text, cos) in enumerate(fit_batch(enc, spec, chunk, cfg, start)):
                i = start + j
                rel = "." if single else f"pairs/{i:05d}"
                image = np.asarray(pairs[i].image.convert("RGB"))
                save_pair(tmp / rel, chunk[j], image, grid, text, cfg.pictures)
                rows.append(_row(i, rel, pairs[i], chunk[j], grid, text, cos))
        seconds = time.perf_counter() - t0
        _write_tables(tmp, cfg, enc, rows, seconds)
    return AttributeResult(out, len(rows), seconds, str(enc.device))


def _row(i, rel, pair: Pair, p: Prepared, grid, text, cos) -> dict:
    inner = np.asarray(text)[1:-1]
    top = p.tokens[1 + int(np.argmax(inner))] if inner.size else ""
    return {
        "index": i,
        "dir": rel,
        "source": pair.source,
        "text": pair.text,
        "n_tokens": len(p.ids),
        "width": p.size[0],
        "height": p.size[1],
        "cos": cos,
        "image_kl_sum": float(np.sum(grid)),
        "text_kl_sum": float(np.sum(text)),
        "top_token": top,
    }


def _write_tables(folder: Path, cfg, enc, rows, seconds) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_csv(folder / "pairs.csv", index=False)
    m = enc.model
    info = {
        "artifact": ARTIFACT,
        "config": {k: _plain(v) for k, v in dataclasses.asdict(cfg).items()},
        "model": {"id": cfg.model, "revision": cfg.revision, "commit": enc.commit},
        "device": str(enc.device),
        "dtype": str(enc.dtype).removeprefix("torch."),
        "vision_layer_index": layer_index(cfg.vision_layer, len(m.vision_model.encoder.layers)),
        "text_layer_index": layer_index(cfg.text_layer, len(m.text_model.encoder.layers)),
        "pairs": len(rows),
        "seconds": seconds,
        "pairs_per_s": len(rows) / seconds if seconds > 0 else None,
    }
    atomic.write_text(folder / "run.json", json.dumps(info, indent=2))


def _plain(v):
    return str(v) if isinstance(v, Path) else v


def _progress(it, on: bool):
    from clipcbm.core.progress import bar

    return bar(it, desc="M2IB batches", enabled=on)


@dataclass
class AttributeResult:
    out: Path
    pairs: int
    seconds: float
    device: str

    def summary(self) -> str:
        rate = self.pairs / self.seconds if self.seconds > 0 else float("nan")
        return (
            f"wrote {self.out}: {self.pairs} pair(s), {self.seconds:.1f} s "
            f"({rate:.2f} pairs/s on {self.device})"
        )
