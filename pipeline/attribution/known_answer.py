"""A CLIP whose right answer is known: a tiny CLIP trained on CPU on synthetic shape scenes.

Each scene is one coloured shape (4 colours x 4 shapes) at a random place on a textured
background; its caption names the colour and the shape inside a random filler template. After
training (contrastive, same-class pairs count as positives) an attribution map should put its
maximum inside the shape's box (pointing game; chance = box area / image area) and rank the
colour and shape words above the filler words (word AUC; chance 0.5). The model-randomisation
check (Adebayo et al. 2018) re-initialises the weights: the maps must change (rank correlation
with the trained model's maps near zero).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 230),
           "yellow": (235, 210, 40)}  # fmt: skip
SHAPES = ("square", "circle", "triangle", "cross")
TEMPLATES = ("a picture of a {} {}", "there is one {} {} here", "this photo shows the {} {}",
             "look at that {} {} now")  # fmt: skip


@dataclass
class Scene:
    image: np.ndarray  # (S, S, 3) uint8
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) of the shape
    colour: str
    shape: str
    caption: str

    @property
    def label(self) -> int:
        return list(COLOURS).index(self.colour) * len(SHAPES) + SHAPES.index(self.shape)


def _shape_mask(shape: str, n: int) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    c = n / 2
    if shape == "square":
        return np.ones((n, n), bool)
    if shape == "circle":
        return (xx - c) ** 2 + (yy - c) ** 2 <= c * c
    if shape == "triangle":
        return np.abs(xx - c) <= yy / 2
    return (np.abs(xx - c) < n / 6) | (np.abs(yy - c) < n / 6)  # cross


def make_scene(rng: np.random.Generator, size: int = 64, template: int | None = None) -> Scene:
    """One scene: a textured grey background (noise + stripes) and one shape, 25-40% of the side."""
    bg = rng.normal(120, 25, (size, size, 1)) + rng.normal(0, 10, (size, size, 3))
    freq, phase = rng.uniform(0.2, 0.6), rng.uniform(0, 2 * math.pi)
    bg += 20 * np.sin(freq * np.arange(size) + phase)[None, :, None]
    n = int(rng.integers(size * 25 // 100, size * 40 // 100 + 1))
    x0, y0 = (int(v) for v in rng.integers(0, size - n + 1, 2))
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    region = bg[y0 : y0 + n, x0 : x0 + n]
    region[_shape_mask(shape, n)] = COLOURS[colour]
    t = TEMPLATES[int(rng.integers(len(TEMPLATES)))] if template is None else TEMPLATES[template]
    img = bg.clip(0, 255).astype(np.uint8)
    return Scene(img, (x0, y0, x0 + n, y0 + n), colour, shape, t.format(colour, shape))


def build_model(tokenizer, size: int = 64, seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=16,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.eos_token_id)  # fmt: skip
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, image_size=size, patch_size=8)  # fmt: skip
    torch.manual_seed(seed)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))


def tokenize(tokenizer, captions, device="cpu"):
    tok = tokenizer(list(captions), padding=True, return_tensors="pt")
    return tok["input_ids"].to(device), tok["attention_mask"].to(device)


def pixels_of(images, spec) -> torch.Tensor:
    from clipcbm.pipeline.preprocess import normalize_batch

    return normalize_batch(torch.from_numpy(np.stack(images)), spec)


def train(model, tokenizer, spec, *, steps=600, batch=64, lr=2e-3, seed=0, log=None):
    """Contrastive training on fresh scenes; same-class pairs are positives (soft targets)."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        scenes = [make_scene(rng) for _ in range(batch)]
        labels = torch.tensor([s.label for s in scenes])
        ids, mask = tokenize(tokenizer, [s.caption for s in scenes])
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels_of(
            [s.image for s in scenes], spec))  # fmt: skip
        target = (labels[:, None] == labels[None]).float()
        target = target / target.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(out.logits_per_image, target)
                      + F.cross_entropy(out.logits_per_text, target))  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"step {step}: loss {loss.item():.3f}")
    return model.eval().requires_grad_(False)


@torch.no_grad()
def retrieval_accuracy(model, tokenizer, spec, scenes) -> float:
    """Top-1 of each image among the 16 class captions (first template)."""
    from clipcbm.pipeline.encoder import projected

    names = [TEMPLATES[0].format(c, s) for c in COLOURS for s in SHAPES]
    ids, mask = tokenize(tokenizer, names)
    t = F.normalize(projected(model.get_text_features(input_ids=ids, attention_mask=mask)), dim=-1)
    px = pixels_of([s.image for s in scenes], spec)
    i = F.normalize(projected(model.get_image_features(pixel_values=px)), dim=-1)
    pred = (i @ t.T).argmax(1)
    return float((pred == torch.tensor([s.label for s in scenes])).float().mean())


def pointing_hits(maps: torch.Tensor, scenes) -> np.ndarray:
    """(B, S, S) maps -> (B,) bool: the map's maximum lies inside the shape's box."""
    flat = maps.flatten(1).argmax(1)
    ys, xs = flat // maps.shape[-1], flat % maps.shape[-1]
    return np.array([
        s.box[0] <= int(x) < s.box[2] and s.box[1] <= int(y) < s.box[3]
        for s, x, y in zip(scenes, xs, ys, strict=True)
    ])  # fmt: skip


def word_scores(tokens: list[str], scores: np.ndarray) -> list[tuple[str, float]]:
    """Per word (BPE tokens up to one ending in </w>): the max of its tokens' scores."""
    words, cur, best = [], "", -np.inf
    for tok, s in zip(tokens[1:-1], scores[1:-1], strict=True):
        cur, best = cur + tok.replace("</w>", ""), max(best, float(s))
        if tok.endswith("</w>"):
            words.append((cur, best))
            cur, best = "", -np.inf
    return words


def word_auc(tokens, scores, scene: Scene) -> float:
    """P(a colour/shape word scores above a filler word), ties count half."""
    words = word_scores(tokens, scores)
    key = [s for w, s in words if w in (scene.colour, scene.shape)]
    filler = [s for w, s in words if w not in (scene.colour, scene.shape)]
    pairs = [(k > f) + 0.5 * (k == f) for k in key for f in filler]
    return float(np.mean(pairs)) if pairs else float("nan")


def spearman(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise Spearman correlation of (B, N) maps (ranks by argsort, no tie correction)."""
    ra = a.flatten(1).argsort(1).argsort(1).float()
    rb = b.flatten(1).argsort(1).argsort(1).float()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return ((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)).numpy()


def method_maps(name, model, batch, settings, spec, eval_cfg, gen):
    """Image (B, S, S) and text (B, T) maps of one method, and the seconds they took."""
    from clipcbm.pipeline.attribution.baselines import BASELINE_FNS
    from clipcbm.pipeline.attribution.bottleneck import attribute_images, attribute_texts
    from clipcbm.pipeline.attribution.maps import grid_to_crop

    t0 = time.perf_counter()
    if name == "m2ib":
        vis = attribute_images(model, batch.pixels, batch.text_emb, settings, generator=gen)
        txt = attribute_texts(model, batch.ids, batch.mask, batch.image_emb, settings,
                              generator=gen)  # fmt: skip
        p = int(model.config.vision_config.patch_size)
        g = batch.pixels.shape[-1] // p
        img = torch.stack([grid_to_crop(v[1:].view(g, g), spec.crop) for v in vis])
    else:
        img, txt = BASELINE_FNS[name](model, batch, eval_cfg)
    return img.float(), txt.float(), time.perf_counter() - t0
