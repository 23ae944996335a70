"""`fit-sae`: train a TopK sparse autoencoder on a cache's image embeddings (stage two).

The recipe (Gao et al. 2024, with the seed report's gaps closed): input centred by the training
split's mean; tied initialisation (W_enc = W_dec.T, unit random decoder rows); Adam
(eps 6.25e-10) with linear warm-up then cosine decay; the decoder rows renormalised after every
step, with the gradient component parallel to each row removed before it; AuxK for dead
latents (a latent is dead when it has not fired for `dead_steps` steps); BatchTopK as an
option. The loss is the batch's FVU against the training split's variance, plus
aux_coef x the AuxK loss. Seeded; CPU or GPU; the split whole in memory or streamed in blocks.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from clipcbm.cache import open_cache, remote_bars
from clipcbm.cache.layout import model_fingerprint
from clipcbm.core.device import resolve_device
from clipcbm.core.outputs import owned_output
from clipcbm.core.progress import bar as progress_bar
from clipcbm.heads.errors import HeadCacheMismatchError, HeadsConfigError, OutputExistsError
from clipcbm.heads.eval.evaluate import zero_shot_scorer
from clipcbm.heads.features import TextTensors
from clipcbm.heads.sae.artifact import OWNERSHIP, save_sae
from clipcbm.heads.sae.config import FitSaeConfig
from clipcbm.heads.sae.data import TrainRows, carve_holdout, load_heldout, load_train_rows
from clipcbm.heads.sae.metrics import evaluate_sae
from clipcbm.heads.sae.model import TopKSAE, aux_loss, default_k_aux
from clipcbm.heads.sae.naming import cache_candidates, name_latents, vocab_candidates

log = logging.getLogger(__name__)

ADAM_EPS = 6.25e-10  # Gao et al.: a small eps matters for rarely-updated latents
THRESHOLD_EMA = 0.99  # BatchTopK inference threshold: EMA of the smallest kept activation


@dataclass(frozen=True)
class Schedule:
    """steps, batch (rows), warmup (steps), dead_steps, per_epoch (steps per pass)."""

    steps: int
    batch: int
    warmup: int
    dead_steps: int
    per_epoch: int

    @classmethod
    def for_rows(cls, n: int, cfg: FitSaeConfig) -> Schedule:
        batch = max(1, min(cfg.batch_size, max(8, n // 10)))  # >= 10 steps per pass
        per_epoch = max(1, n // batch)
        steps = cfg.max_steps
        if cfg.epochs is not None:
            steps = min(steps, max(1, math.ceil(cfg.epochs * per_epoch)))
        dead = cfg.dead_steps if cfg.dead_steps is not None else min(max(per_epoch, 10), 1000)
        return cls(steps, batch, int(cfg.warmup * steps), dead, per_epoch)

    def lr_factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        frac = (step - self.warmup) / max(1, self.steps - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def _has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


def resolve_select_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto -> bf16 where bf16 matmuls are native (CUDA with bf16, CPUs with AMX), else fp32."""
    if name != "auto":
        return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if _has_amx() else torch.float32


@dataclass
class Trained:
    sae: TopKSAE
    schedule: Schedule
    history: list = field(default_factory=list)
    dead_train: int = 0  # latents dead (by the window) at the end of training
    seconds: float = 0.0


def _step(sae, opt, x, rows: TrainRows, k_aux, cfg, select_dtype, last_fired, step, sched):
    """One optimizer step; returns (fvu, aux, n_dead) as tensors / int."""
    pattern, z, x_hat, _ = sae.train_forward(x, select_dtype)
    err = x - x_hat
    fvu = err.pow(2).sum() / (len(x) * rows.total_var)
    dead = torch.nonzero(step - last_fired > sched.dead_steps).flatten()
    aux = (aux_loss(sae, x - sae.b_dec, err.detach(), dead, k_aux, select_dtype)
           if k_aux and cfg.aux_coef > 0 else fvu.new_zeros(()))  # fmt: skip
    opt.zero_grad(set_to_none=True)
    (fvu + cfg.aux_coef * aux).backward()
    sae.remove_parallel_grad()
    opt.step()
    sae.normalize_decoder()
    with torch.no_grad():
        live = z > 0
        last_fired[pattern.col[live]] = step
        if sae.selection == "batchtopk" and bool(live.any()):
            low = z[live].min()
            t = sae.threshold
            t.copy_(low if step == 1 else THRESHOLD_EMA * t + (1 - THRESHOLD_EMA) * low)
    return fvu.detach(), aux.detach(), len(dead)


def train_sae(rows: TrainRows, cfg: FitSaeConfig, device, select_dtype) -> Trained:
    """Train on `rows` as `cfg` says (the model starts from the seeded tied init)."""
    e = int(rows.mean.shape[0])
    sae = TopKSAE(e, cfg.expansion * e, cfg.k, cfg.selection)
    sae.tied_init(rows.mean.cpu() if cfg.center else None, torch.Generator().manual_seed(cfg.seed))
    sae.centring_mean = rows.mean
    sae.to(device).train()
    k_aux = default_k_aux(e, sae.n_latents) if cfg.k_aux is None else cfg.k_aux
    sched = Schedule.for_rows(rows.n, cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, eps=ADAM_EPS,
                           fused=device.type in ("cpu", "cuda"))  # fmt: skip
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, sched.lr_factor)
    last_fired = torch.zeros(sae.n_latents, dtype=torch.long, device=device)
    batches = rows.batches(sched.batch, torch.Generator().manual_seed(cfg.seed + 1))
    log_every = max(1, sched.steps // 100)
    out = Trained(sae, sched)
    bar = progress_bar(range(1, sched.steps + 1), desc="fit-sae", enabled=cfg.progress)
    sums, n, t0 = torch.zeros(2, device=device), 0, time.perf_counter()
    for step in bar:
        fvu, aux, n_dead = _step(sae, opt, next(batches), rows, k_aux, cfg, select_dtype,
                                 last_fired, step, sched)  # fmt: skip
        lr_sched.step()
        sums += torch.stack([fvu, aux])
        n += 1
        if step % log_every and step != sched.steps:
            continue
        f, a = (sums / n).tolist()
        rec = {"step": step, "fvu": f, "aux": a, "loss": f + cfg.aux_coef * a, "dead": n_dead,
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}  # fmt: skip
        out.history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", fvu=f"{f:.4f}", dead=n_dead)
        log.debug("step %d: fvu %.4f aux %.4f dead %d", step, f, a, n_dead)
        sums, n = torch.zeros(2, device=device), 0
    out.seconds = time.perf_counter() - t0
    out.dead_train = int((sched.steps - last_fired > sched.dead_steps).sum())
    sae.eval()
    return out


@dataclass
class FitSaeResult:
    out_dir: Path
    device: str
    metrics: dict  # held-out: fvu, cosine, l0, dead_fraction, ... (metrics.json)
    steps: int
    seconds: float  # training loop only
    samples_per_s: float
    n_train: int
    n_latents: int
    dead_train: int
    history: list = field(default_factory=list)


def _candidates(cfg: FitSaeConfig, cache):
    if cfg.vocab is None:
        return cache_candidates(cache), {"source": "cache concepts + classes"}
    from clipcbm.cache.vocab import open_vocab

    vocab = open_vocab(cfg.vocab)
    if vocab.model_fingerprint != model_fingerprint(cache.metadata):
        raise HeadCacheMismatchError(
            f"vocabulary {cfg.vocab} was embedded with {vocab.model.get('id')!r}, not the model "
            f"of cache {cache.path}; embed it again with `embed-text --model` of that cache"
        )
    return vocab_candidates(vocab), {"source": str(cfg.vocab), "n": len(vocab.texts)}


def _check_sizes(cfg: FitSaeConfig, e: int) -> None:
    f = cfg.expansion * e
    if cfg.k > f:
        raise HeadsConfigError(f"k = {cfg.k} is more than the {f} latents (expansion "
                               f"{cfg.expansion} x E = {e}); lower --k")  # fmt: skip
    if cfg.k_aux is not None and cfg.k_aux > f:
        raise HeadsConfigError(f"k_aux = {cfg.k_aux} is more than the {f} latents; lower it")


def _info(cfg, cache, rows, trained, heldout, select_dtype, device, names_info) -> dict:
    sae, sched = trained.sae, trained.schedule
    model = cache.metadata.get("model")
    return {
        "expansion": cfg.expansion, "k": cfg.k, "selection": cfg.selection,
        "k_aux": default_k_aux(sae.embed_dim, sae.n_latents) if cfg.k_aux is None else cfg.k_aux,
        "aux_coef": cfg.aux_coef, "threshold": float(sae.threshold),
        "center": cfg.center, "centring_mean": rows.mean.cpu().tolist(),
        "total_var": rows.total_var, "seed": cfg.seed, "embed_dim": sae.embed_dim,
        "n_latents": sae.n_latents, "schedule": asdict(sched), "device": str(device),
        "select_dtype": str(select_dtype).removeprefix("torch."), "streamed": rows.streamed,
        "n_train": rows.n, "train_split": cfg.train_split, "heldout": heldout,
        "cache_path": str(cache.path), "cache_fingerprint": cache.fingerprint,
        "model_fingerprint": model_fingerprint(cache.metadata),
        "model_id": model.get("id") if isinstance(model, dict) else model,
        "names": names_info, "history": trained.history, "seconds": trained.seconds,
        "samples_per_s": sched.steps * sched.batch / max(trained.seconds, 1e-9),
        "dead_train": trained.dead_train, "hyperparameters": cfg.to_json(),
        "torch_version": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip


def run(cfg: FitSaeConfig) -> FitSaeResult:
    """Train, evaluate on the held-out rows, name the latents, write the SAE directory (locked
    for the run; replaced only if it is an SAE directory: core.outputs)."""
    with owned_output(cfg.out_dir(), OWNERSHIP, overwrite=cfg.overwrite,
                      exists_error=OutputExistsError):  # fmt: skip
        return _run(cfg)


def _run(cfg: FitSaeConfig) -> FitSaeResult:
    device = resolve_device(cfg.device)
    out = cfg.out_dir()
    select_dtype = resolve_select_dtype(cfg.select_dtype, device)
    with open_cache(cfg.cache, verify=cfg.verify, progress=remote_bars(cfg.progress)) as cache:
        _check_sizes(cfg, int(cache.embed_dim))
        if cfg.train_split not in cache.splits:
            raise HeadsConfigError(f"split {cfg.train_split!r} is not in cache {cache.path}; it "
                                   f"has {cache.splits}. Pass --train-split.")  # fmt: skip
        cand, names_info = _candidates(cfg, cache)
        carve = cfg.eval_split in (None, cfg.train_split) or cfg.eval_split not in cache.splits
        mask = carve_holdout(cache, cfg.train_split, cfg.val_fraction, cfg.seed) if carve else None
        held = (
            load_heldout(cache, cfg.train_split, mask)
            if carve
            else load_heldout(cache, cfg.eval_split)
        )
        heldout = {"split": held.split, "carved": carve, "n": len(held.labels),
                   "fraction": cfg.val_fraction if carve else None}  # fmt: skip
        rows = load_train_rows(
            cache, cfg.train_split, mask, device=device, stream=cfg.stream,
            block_rows=cfg.stream_rows, buffer_blocks=cfg.stream_buffer,
        )  # fmt: skip
        log.info("fit-sae on %s: %d train rows, %d held-out (%s), E=%d, F=%d, k=%d, device %s",
                 cache.path, rows.n, len(held.labels), held.split, cache.embed_dim,
                 cfg.expansion * cache.embed_dim, cfg.k, device)  # fmt: skip
        trained = train_sae(rows, cfg, device, select_dtype)
        scorer = zero_shot_scorer(TextTensors.from_cache(cache, device))
        ev = evaluate_sae(trained.sae, held.x, held.labels, scorers={"zero_shot": scorer},
                          chunk_rows=cfg.chunk_size, device=device)  # fmt: skip
        metrics = {**ev.metrics, "split": held.split}
        names = name_latents(trained.sae.W_dec.detach(), cand)
        names["alive"] = ev.fired
        info = _info(cfg, cache, rows, trained, heldout, select_dtype, device, names_info)
        save_sae(out, trained.sae, info, metrics, names)
    sched = trained.schedule
    return FitSaeResult(out, str(device), metrics, sched.steps, trained.seconds,
                        info["samples_per_s"], rows.n, trained.sae.n_latents,
                        trained.dead_train, trained.history)  # fmt: skip
