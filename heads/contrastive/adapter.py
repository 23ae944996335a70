"""`fit-adapter`: a projection (linear or 2-layer MLP) trained on cached views (seed 002).

The encoder is frozen CLIP, so what SimCLR trains end to end reduces here to a projection
g: E -> F over the cached embeddings of augmented views (`/{split}/view_emb`, (N, V, E)). Each
step takes B images, draws M + 1 distinct views of each (seeded), projects and L2-normalises
them and applies one of `heads.contrastive.LOSSES`. Options of the seed's experiments:
positives from the class (labels), oracle false-negative removal (labels), and false-positive
addition (the positives of a fraction of the images are views of an other-class image).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipcbm.core.device import resolve_device
from clipcbm.core.outputs import owned_output
from clipcbm.core.progress import bar as progress_bar
from clipcbm.heads.contrastive.config import FitAdapterConfig
from clipcbm.heads.contrastive.losses import LOSSES
from clipcbm.heads.errors import HeadDataError, OutputExistsError

log = logging.getLogger(__name__)


class Projection(nn.Module):
    """x (B, E) -> unit rows (B, F): linear, or Linear -> ReLU -> Linear (SimCLR's head)."""

    def __init__(self, in_dim: int, out_dim: int, arch: str = "mlp", hidden: int = 512):
        super().__init__()
        if arch == "linear":
            self.net = nn.Linear(in_dim, out_dim)
        elif arch == "mlp":
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
            )
        else:
            raise ValueError(f"arch must be 'linear' or 'mlp', got {arch!r}")
        self.arch, self.in_dim, self.out_dim, self.hidden = arch, in_dim, out_dim, hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


@dataclass
class AdapterResult:
    out_dir: Path
    module: Projection
    device: str
    seconds: float
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)


def _partners(labels: torch.Tensor, rows: torch.Tensor, same: bool, g: torch.Generator):
    """For each row, a random row of the same class (same=True) or of another class."""
    n = len(labels)
    if same:
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels)
        starts = torch.cumsum(counts, 0) - counts
        y = labels[rows]
        pick = starts[y] + (torch.rand(len(rows), generator=g) * counts[y]).long()
        return order[pick]
    out = torch.randint(n, (len(rows),), generator=g)
    for _ in range(100):  # rejection: redraw the ones that landed in the row's own class
        clash = labels[out] == labels[rows]
        if not bool(clash.any()):
            break
        out[clash] = torch.randint(n, (int(clash.sum()),), generator=g)
    return out


def sample_views(
    view_emb: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, m: int,
    cfg: FitAdapterConfig, g: torch.Generator,
) -> torch.Tensor:  # fmt: skip
    """(B, M + 1, E) views of the images `rows`: view 0 is the anchor's, 1..M its positives."""
    v = view_emb.shape[1]
    pick = torch.rand(len(rows), v, generator=g).argsort(1)[:, : m + 1]  # distinct views
    src = rows[:, None].expand(-1, m + 1).clone()
    if cfg.positives_from == "class":
        src[:, 1:] = _partners(labels, rows, True, g)[:, None]
    if cfg.false_positive_rate > 0:
        noisy = torch.rand(len(rows), generator=g) < cfg.false_positive_rate
        if bool(noisy.any()):
            src[noisy, 1:] = _partners(labels, rows[noisy], False, g)[:, None]
    return view_emb[src, pick]


def check_views(view_emb: np.ndarray, labels: np.ndarray, cfg: FitAdapterConfig) -> None:
    n, v, _ = view_emb.shape
    if v < cfg.positives + 1:
        raise HeadDataError(
            f"--positives {cfg.positives} needs M + 1 = {cfg.positives + 1} views per image; "
            f"cache {cfg.cache} has V = {v}; lower --positives or re-embed with --views "
            f"{cfg.positives + 1}"
        )
    if n < 2:
        raise HeadDataError(f"split {cfg.split!r} has {n} valid row(s); need at least 2 images")
    if not np.isfinite(view_emb).all():
        raise HeadDataError(
            f"split {cfg.split!r} of {cfg.cache} has non-finite view embeddings; re-run `embed`"
        )
    needs_labels = cfg.false_positive_rate > 0 or cfg.loss == "supcon" or cfg.remove_false_negatives
    if needs_labels and len(np.unique(labels)) < 2:
        raise HeadDataError(
            f"split {cfg.split!r} has a single class; supcon, false-negative removal and "
            "false-positive addition need at least 2 classes"
        )


def train_projection(
    view_emb: np.ndarray, labels: np.ndarray, cfg: FitAdapterConfig, device
) -> tuple[Projection, list[dict]]:
    """Fit a Projection on views (N, V, E) with labels (N,); returns it and the loss history."""
    check_views(view_emb, labels, cfg)
    n, _, e = view_emb.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Projection(e, cfg.dim, cfg.arch, cfg.hidden).to(device)
    g = torch.Generator().manual_seed(cfg.seed)
    views = torch.from_numpy(np.ascontiguousarray(view_emb, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps))
    )
    loss_fn = LOSSES[cfg.loss]
    use_labels = cfg.loss == "supcon" or cfg.remove_false_negatives
    b = min(cfg.batch_size, n)
    perm, pos = torch.randperm(n, generator=g), 0
    every = max(1, cfg.steps // 50)
    history: list[dict] = []
    bar = progress_bar(range(cfg.steps), desc="fit-adapter", enabled=cfg.progress)
    model.train()
    for step in bar:
        if pos + b > n:  # a new epoch: reshuffle, drop the ragged tail
            perm, pos = torch.randperm(n, generator=g), 0
        rows = perm[pos : pos + b]
        pos += b
        x = sample_views(views, y, rows, cfg.positives, cfg, g).to(device)  # (B, M+1, E)
        z = model(x.reshape(-1, e)).reshape(b, cfg.positives + 1, -1)
        loss = loss_fn(
            z, t=cfg.t, tau_plus=cfg.tau_plus, aggregate=cfg.aggregate,
            labels=y[rows].to(device) if use_labels else None,
        )  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % every == 0 or step == cfg.steps - 1:
            history.append({"step": step, "loss": float(loss.detach())})
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    model.eval()
    return model, history


def run(cfg: FitAdapterConfig) -> AdapterResult:
    """The `fit-adapter` command: read the views, train, save the adapter directory (locked for
    the run; replaced only if it is an adapter directory: core.outputs)."""
    from clipcbm.heads.contrastive.artifact import ADAPTER_DIR

    with owned_output(cfg.out_dir(), ADAPTER_DIR.ownership, overwrite=cfg.overwrite,
                      exists_error=OutputExistsError):  # fmt: skip
        return _run(cfg)


def _run(cfg: FitAdapterConfig) -> AdapterResult:
    from clipcbm.cache import open_cache, remote_bars
    from clipcbm.cache.layout import model_fingerprint
    from clipcbm.heads.contrastive.artifact import save_adapter
    from clipcbm.heads.io.evaldata import load_split

    out = cfg.out_dir()
    device = resolve_device(cfg.device)
    hint = "Pass --split with one of those."
    with open_cache(cfg.cache, verify=cfg.verify, progress=remote_bars(cfg.progress)) as cache:
        split = load_split(cache, cfg.split, error=HeadDataError, hint=hint)
        if not cache.views:
            raise HeadDataError(
                f"cache {cfg.cache} has no augmented views; write one with `clipcbm embed "
                f"... --views {cfg.positives + 1} --augment simclr`"
            )
        view_emb = cache.view_emb(cfg.split)[split.rows]
        meta = {
            "model_fingerprint": model_fingerprint(cache.metadata),
            "cache_fingerprint": cache.fingerprint,
            "embed_dim": cache.embed_dim,
            "cache_views": cache.views,
        }
    t0 = time.perf_counter()
    model, history = train_projection(view_emb, split.labels, cfg, device)
    seconds = time.perf_counter() - t0
    record = {
        **meta,
        "arch": cfg.arch,
        "in_dim": int(view_emb.shape[2]),
        "out_dim": cfg.dim,
        "hidden": cfg.hidden,
        "train": cfg.to_json(),
        "train_rows": len(split),
        "device": str(device),
        "seconds": seconds,
        "history": history,
    }
    save_adapter(out, model, record)
    log.info("fit-adapter: %d steps in %.1f s, final loss %.4f", cfg.steps, seconds,
             history[-1]["loss"])  # fmt: skip
    return AdapterResult(out, model, str(device), seconds, history, record)
