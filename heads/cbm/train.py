"""`fit-head`: train a CBM head (l1 | contrastive | sparse) or a baseline over a cache.

SPEC §2: CBL (|D| x |D|) + FC (|C| x |D|), two optimizers (one owns W_CBL and alpha_c, one
owns W_F), couplings `sequential` (W_CBL gets only grad L_CBL, FC trains on stopgrad(a)) and
`joint` (W_CBL gets grad L_CBL + grad CE). For l1, CE reaches W_CBL in both couplings.
Whole arrays live in memory on the device; psi is one matmul per batch; early stopping on the
seeded validation split restores the best weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from clipcbm.cache import open_cache, remote_bars
from clipcbm.core.device import resolve_device
from clipcbm.core.outputs import owned_output
from clipcbm.core.progress import bar as progress_bar
from clipcbm.heads.baselines.features_head import fit_features_head
from clipcbm.heads.baselines.probe import BASELINE_TRAINERS
from clipcbm.heads.cbm.config import FitHeadConfig, resolve_topk
from clipcbm.heads.cbm.final_layer import fit_anchored_final_layer, fit_sparse_final_layer
from clipcbm.heads.cbm.init import (
    FC_INITS,
    ZERO_SHOT_ROWS,
    class_links,
    init_bytes,
    init_final_layer,
)
from clipcbm.heads.cbm.losses import CBL_LOSSES, tau_schedule
from clipcbm.heads.cbm.model import ConceptBottleneck
from clipcbm.heads.chunks import CHUNK_ROWS
from clipcbm.heads.errors import HeadsConfigError, InsufficientMemoryError, OutputExistsError
from clipcbm.heads.eval.evaluate import Scorer, evaluate, top1, zero_shot_scorer
from clipcbm.heads.features import FEATURES
from clipcbm.heads.io.artifact import HEAD_DIR, Head, save_head
from clipcbm.heads.io.data import HeadData, load_data
from clipcbm.heads.memory import available_bytes, gib

log = logging.getLogger(__name__)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
DETACH_A = {"sequential": True, "joint": False}  # does the FC see stopgrad(a)?
CE_ALWAYS_REACHES_CBL = {"l1"}  # l1-CBM: L = CE + penalty, CE trains W_CBL in both couplings


@dataclass
class StepState:
    """Per-step inputs of the CBL losses (see losses.CBL_LOSSES)."""

    lam: float
    tau: float
    generator: torch.Generator
    hard: bool
    variant: str
    aggregate: str = "mean-in-log"  # multi-positive aggregation (--positives class)
    links: torch.Tensor | None = None  # (|C|, |D|) bool class -> positive concepts, or None
    labels: torch.Tensor | None = None  # (B,) the batch's classes


@dataclass
class FitHeadResult:
    out_dir: Path  # head directory (model.safetensors + config.json)
    kind: str  # cbm | probe | zs-probe
    loss: str
    device: str  # resolved device
    metrics: dict  # {"val": {...}, "test": {...}, "zero_shot": {...}, ...}
    history: list = field(default_factory=list)  # per-check dicts: step, val_top1, losses (cbm)
    best_step: int | None = None  # the step whose weights were kept (cbm heads)
    seconds: float = 0.0  # wall time of the whole run


@contextlib.contextmanager
def flush_denormals():
    """Flush subnormal floats to zero while fitting (CPU).

    Adam's second-moment state of weights whose gradient is ~0 (e.g. the off-diagonal W_CBL of
    an identity start) goes subnormal, and subnormal arithmetic is ~30x slower on x86 CPUs
    (measured: l1 head 60 ms -> 1.8 ms per step). torch has no getter, so the default (off)
    is restored afterwards.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def make_optimizers(model: ConceptBottleneck, config: FitHeadConfig):
    """(opt_cbl over W_CBL + alpha_tilde, opt_fc over W_F + bias), each with its own lr."""
    # fused kernels: one pass over the 22.6M ImageNet-sized W_CBL instead of several
    # (measured on 2 CPU cores: 0.30 s -> 0.03 s per step)
    cls = functools.partial(OPTIMIZERS[config.optimizer], fused=True)
    wd = config.weight_decay
    opt_cbl = cls(
        [
            {"params": [model.cbl.weight], "weight_decay": wd},
            {"params": [model.alpha_tilde], "weight_decay": 0.0},
        ],
        lr=config.lr_cbl,
    )
    opt_fc = cls(model.fc.parameters(), lr=config.lr_fc, weight_decay=wd)
    return opt_cbl, opt_fc


def train_step(model, opts, xb, yb, data: HeadData, config, state: StepState):
    """One step of both optimizers; returns (L_CBL, CE) as detached tensors."""
    psi = FEATURES["cbm"](xb, data.text)
    pre = model.cbl(psi)  # (B, |D|) W_CBL psi: the CBL losses shape it
    a = model.bottleneck(pre)  # what the final layer sees (sparse with --topk)
    state.labels = yb
    l_cbl = CBL_LOSSES[config.loss](pre, model, state)
    detach = DETACH_A[config.coupling] and config.loss not in CE_ALWAYS_REACHES_CBL
    ce = F.cross_entropy(model.fc(a.detach() if detach else a), yb)
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    (l_cbl + ce).backward()
    for opt in opts:
        opt.step()
    return l_cbl.detach(), ce.detach()


MIN_STEPS = 200


@dataclass(frozen=True)
class Schedule:
    """The step budget of one fit, derived from the data size (SPEC-free defaults).

    steps: total optimizer steps (--max-steps, at most 50 epochs, at least MIN_STEPS); batch:
    images per step (never more than a tenth of the fit
    rows, so a tiny split still gets >= 10 steps per epoch); eval_every: steps between
    validation checks (the first check is step 0, before any update); patience: checks without
    a gain before stopping, never before min_steps.
    """

    steps: int
    batch: int
    eval_every: int
    warmup: int
    min_steps: int

    @classmethod
    def for_data(cls, n_fit: int, config: FitHeadConfig) -> Schedule:
        batch = max(1, min(config.batch_size, max(8, n_fit // 10)))
        per_epoch = -(-n_fit // batch)
        # a tiny split needs no 2,000 steps: at most 50 passes, at least 200 steps
        steps = min(config.max_steps, max(MIN_STEPS, 50 * per_epoch))
        if config.epochs is not None:
            steps = min(steps, config.epochs * per_epoch)
        steps = max(steps, 1)
        eval_every = max(1, min(per_epoch, steps // 40))
        return cls(steps, batch, eval_every, int(config.warmup * steps), steps // 4)


def lr_factor(step: int, sched: Schedule) -> float:
    """Linear warm-up over sched.warmup steps, then cosine decay to 0 at sched.steps."""
    if step < sched.warmup:
        return (step + 1) / sched.warmup
    frac = (step - sched.warmup) / max(1, sched.steps - sched.warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def _batches(idx: torch.Tensor, batch: int, gen: torch.Generator):
    """Endless seeded shuffled passes over idx, `batch` rows at a time."""
    while True:
        perm = idx[torch.randperm(len(idx), generator=gen).to(idx.device)]
        for s in range(0, len(perm), batch):
            yield perm[s : s + batch]


TRAIN_COPIES = 7  # W_CBL-sized arrays while training: weights, gradient, Adam's two moments, the
# start and the best weights, + ~1 of allocator slack (measured: 7.4 x 137 MiB at |D| = 6,000)


def fit_cbm_bytes(data: HeadData, config: FitHeadConfig) -> dict[str, int]:
    """What `fit_cbm` will allocate at its peak (bytes), by phase: "cbl" (one W_CBL, fp32
    |D| x |D|), "init" (the model + the --fc-init start), "train" (the model, its copies and
    optimizer state, + a batch or an evaluation chunk of activations), "need" (the larger)."""
    d, c = len(data.text.concept_emb), data.n_classes
    topk = resolve_topk(config, d)
    params = 4 * (d * d + c * d + c + 1)
    n_fit = len(data.train_idx)
    batch = Schedule.for_data(n_fit, config).batch
    n_eval = max(len(data.val_idx), len(data.test.y) if data.test is not None else 0)
    step = 48 * batch * d  # ~12 fp32 (B, |D|) arrays: psi, a, TopK, noise, softmaxes, grads
    chunk = 4 * min(CHUNK_ROWS, n_eval) * d * (6 if topk else 4)  # psi, a (+ TopK) + sparsity
    parts = {"cbl": 4 * d * d,
             "init": params + init_bytes(config.fc_init, n_fit, d, c, topk),
             "train": TRAIN_COPIES * params + max(step, chunk)}  # fmt: skip
    parts["need"] = max(parts["init"], parts["train"])
    return parts


def check_fit_memory(data: HeadData, config: FitHeadConfig, device) -> None:
    """Refuse, before the first allocation, a concept bottleneck that cannot fit in the memory
    `device` has available (an HeadsError naming the need, the memory and what to do)."""
    parts = fit_cbm_bytes(data, config)
    have = available_bytes(device)
    if have is None or parts["need"] <= have:
        return
    d, n_fit = len(data.text.concept_emb), len(data.train_idx)
    why = (f"its |D| x |D| concept layer W_CBL is {gib(parts['cbl'])} (|D| = {d:,} concepts) "
           f"and training holds about {TRAIN_COPIES} of it (weights, gradient, Adam's two "
           "moments, the start and the best weights)")  # fmt: skip
    todo = ("Use fewer concepts (memory grows with |D|^2: build a smaller list with `clipcbm "
            "concepts` and a stricter filter, e.g. a lower --concept-sim, then re-run `embed "
            "--concepts`)")  # fmt: skip
    if parts["init"] >= parts["train"]:
        why += (f"; the --fc-init {config.fc_init} start alone needs {gib(parts['init'])} on "
                f"{min(n_fit, ZERO_SHOT_ROWS):,} fit rows")  # fmt: skip
        alt = []
        for how in (h for h in FC_INITS if h != config.fc_init):
            other = fit_cbm_bytes(data, dataclasses.replace(config, fc_init=how))["need"]
            if other <= have:
                alt.append(f"--fc-init {how} (about {gib(other)})")
        if alt:
            todo += f", or {' or '.join(alt)}"
        todo += ", or a cache with fewer train rows"
    raise InsufficientMemoryError(
        f"fit-head needs about {gib(parts['need'])} of {torch.device(device).type} memory, but "
        f"only {gib(have)} is available: {why}. {todo}; or run on a device with more memory "
        "(--device)."
    )


def fit_cbm(data: HeadData, config: FitHeadConfig, device) -> tuple[ConceptBottleneck, dict]:
    """Train a ConceptBottleneck with early stopping on val top-1; best weights restored.

    The start (step 0, after the final-layer init) is evaluated too, so the kept head is never
    worse on validation than where it started (with --fc-init zero-shot: the zero-shot
    classifier).
    """
    topk = resolve_topk(config, len(data.text.concept_emb))
    check_fit_memory(data, config, device)  # before W_CBL (|D|^2) is allocated
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ConceptBottleneck(
            len(data.text.concept_emb), data.n_classes, cbl_init=config.cbl_init, topk=topk
        ).to(device)
    init_info = init_final_layer(model, data, config.fc_init)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opts = make_optimizers(model, config)
    sched = Schedule.for_data(len(data.train_idx), config)
    lr_scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: lr_factor(t, sched)) for o in opts]
    shuffle_gen = torch.Generator().manual_seed(config.seed + 1)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 2)
    state = StepState(config.lam, config.tau_max, noise_gen, config.hard, config.variant,
                      config.aggregate)  # fmt: skip
    state.links = class_links(data, config)
    scorer = Scorer("cbm", model, data.text)
    val_x, val_y = data.train.x[data.val_idx], data.train.y[data.val_idx]
    best, best_step = top1(scorer, val_x, val_y), 0
    best_state = start_state = init  # the step-0 weights (one |D| x |D| copy, not two)
    history = [{"step": 0, "val_top1": best}]
    bad, sums, n, t0 = 0, torch.zeros(2, device=device), 0, time.perf_counter()
    batches = _batches(data.train_idx, sched.batch, shuffle_gen)
    bar = progress_bar(range(1, sched.steps + 1), desc=f"fit-head {config.loss}",
                       enabled=config.progress)  # fmt: skip
    for step in bar:
        rows = next(batches)
        state.tau = tau_schedule(step - 1, sched.steps, config.tau_max, config.tau_min)
        l_cbl, ce = train_step(model, opts, data.train.x[rows], data.train.y[rows], data,
                               config, state)  # fmt: skip
        for ls in lr_scheds:
            ls.step()
        sums += torch.stack([l_cbl, ce])
        n += 1
        if step % sched.eval_every and step != sched.steps:
            continue
        val_top1 = top1(scorer, val_x, val_y)
        l_cbl, ce = (sums / n).tolist()
        rec = {"step": step, "loss_cbl": l_cbl, "loss_ce": ce, "val_top1": val_top1,
               "tau": state.tau, "seconds": time.perf_counter() - t0}  # fmt: skip
        history.append(rec)
        sums, n = torch.zeros(2, device=device), 0
        log.debug("step %d: L_CBL %.4f  CE %.4f  val top-1 %.4f", step, l_cbl, ce, val_top1)
        bar.set_postfix(ce=f"{ce:.3f}", val=f"{val_top1:.3f}")
        if val_top1 > best:
            best, best_step, bad = val_top1, step, 0
            best_state = None  # drop the previous best before copying (no third W_CBL)
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= config.patience and step >= sched.min_steps:
                log.info("early stop at step %d (best val top-1 %.4f at step %d)",
                         step, best, best_step)  # fmt: skip
                break
    # a zero-shot start is a classifier worth keeping: leave it only on evidence, a validation
    # gain above one standard error of its accuracy (11 validation rows: ~13 points; 5,000
    # rows: ~0.6), so selection noise on a tiny split cannot trade it for a worse head
    start = history[0]["val_top1"]
    margin = _start_margin(start, len(val_y)) if config.fc_init == "zero-shot" else 0.0
    if best_step > 0 and best <= start + margin:
        log.info("kept the step-0 start: best val top-1 %.4f (step %d) is within %.4f of it",
                 best, best_step, margin)  # fmt: skip
        best, best_step, best_state = start, 0, start_state
    model.zero_grad(set_to_none=True)  # the last gradients (a W_CBL-sized array) are done
    model.load_state_dict(best_state)
    info = {"history": history, "best_val_top1": best, "best_step": best_step,
            "start_margin": margin,
            "steps_run": history[-1]["step"], "schedule": asdict(sched), "topk": topk,
            "fc_init": init_info}  # fmt: skip
    info["weight_change"] = _weight_change(init, model.state_dict())
    prior = None
    if config.final_fit == "anchored":
        info["final_fit"] = _anchored_refit(model, data, config, init, best_step)
        prior = (model.fc.weight.detach().clone(), model.fc.bias.detach().clone())
    if config.final_layer == "elastic-net":
        info["elastic_net"] = fit_sparse_final_layer(model, data, config, prior)
    return model, info


def _anchored_refit(model, data, config, init: dict, best_step: int) -> dict:
    """`--final-fit anchored` on the kept CBL: the anchor is the start of the final layer for
    THIS concept layer -- the step-0 W_F when the CBL is still the step-0 one, else --fc-init
    run again on the trained CBL (so a zero-shot start stays the zero-shot classifier)."""
    if best_step > 0:
        fc_init = init_final_layer(model, data, config.fc_init)
        anchor = (model.fc.weight.detach().clone(), model.fc.bias.detach().clone())
    else:
        fc_init = None
        anchor = (init["fc.weight"], init["fc.bias"])
    labels_used = best_step > 0 or config.fc_init == "prior"
    info = fit_anchored_final_layer(model, data, config, anchor, labels_used=labels_used)
    info["anchor"] = "step-0 final layer" if fc_init is None else {"re-init": fc_init}
    return info


def _start_margin(acc: float, n_val: int) -> float:
    """One standard error of a validation accuracy `acc` measured on n_val rows."""
    return math.sqrt(max(acc * (1.0 - acc), 0.0) / max(n_val, 1))


def _weight_change(before: dict, after: dict) -> dict:
    """Frobenius norm ||W_after - W_before|| per layer weight (proves both layers trained)."""
    keys = {"cbl": "cbl.weight", "fc": "fc.weight"}
    return {name: (after[k] - before[k]).norm().item() for name, k in keys.items()}


TRAINERS = {"cbm": fit_cbm, "features": fit_features_head, **BASELINE_TRAINERS}


def evaluate_module(module, kind: str, data: HeadData) -> dict:
    """Every metric of the one evaluation path (heads.eval.evaluate) on the validation rows and
    the test split; for a CBM also NEC, accuracy at NEC = 5 and activation sparsity."""
    return {
        name: evaluate(Scorer(kind, module, data.text), x, y.cpu().numpy()).metrics
        for name, (x, y) in data.eval_splits().items()
    }


def zero_shot_metrics(data: HeadData) -> dict:
    """Zero-shot top-1/top-5 on the same rows, through the same path."""
    scorer = zero_shot_scorer(data.text)
    return {name: evaluate(scorer, x, y.cpu().numpy()).metrics
            for name, (x, y) in data.eval_splits().items()}  # fmt: skip


def _head_config(config, cache, data: HeadData, device, metrics, info) -> dict:
    return {
        "kind": config.kind,
        "loss": config.loss,
        "hyperparameters": config.to_json(),
        "seed": config.seed,
        "device": str(device),
        "n_concepts": len(cache.concepts),
        "n_classes": len(cache.classes),
        "embed_dim": int(cache.embed_dim),
        "topk": info.get("topk", 0),  # rebuilds the CBM's TopK bottleneck on load (0 = off)
        "transform": info.get("transform"),  # features heads: the SAE / adapter they read
        "cache_fingerprint": cache.fingerprint,
        "cache_path": str(cache.path),
        "validation": {
            "split": config.train_split,
            "fraction": config.val_fraction,
            "seed": data.val_seed,
            "method": "numpy default_rng(seed).permutation(n_valid)[:round(fraction*n_valid)]",
            "indices": data.val_rows(),  # positions in the cache's train split
        },
        "test_split": config.test_split if data.test is not None else None,
        "metrics": metrics,
        "fit": info,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def save_fitted(config, cache, data, device, module, info, metrics) -> Path:
    """Write the head directory of a fit (config.json with metrics, weights) atomically."""
    head_cfg = _head_config(config, cache, data, device, metrics, info)
    return save_head(config.out_dir(), Head(kind=config.kind, config=head_cfg, module=module),
                     head_cfg)  # fmt: skip


def heldout_estimate(info: dict, metrics: dict) -> dict:
    """The head's honest accuracy estimate on rows it was not fitted on: when the kept final
    layer was refitted on train + validation (the probe, `--final-fit anchored`), the
    validation rows are in its fit and `metrics.val` is in-sample, so the estimate is the
    cross-validated top-1 at the chosen C; otherwise the validation top-1."""
    cv = info if "cv_top1_per_C" in info else info.get("final_fit")
    en = info.get("elastic_net")
    if cv is not None and en is None and "fit_rows_only" in cv:
        return {"top1": cv["fit_rows_only"]["top1"], "val_in_fit": True,
                "how": "validation rows, the chosen C refitted on the fit rows only (the concept "
                "layer or the start used the fit rows' labels: cross-validation over them is "
                "optimistic)"}  # fmt: skip
    if cv is not None and en is None and cv["cv_top1_per_C"].get(repr(cv["C"])) is not None:
        return {"top1": cv["cv_top1_per_C"][repr(cv["C"])], "how": cv["selection"],
                "val_in_fit": True}  # fmt: skip
    val = metrics.get("val", {}).get("top1")
    in_fit = cv is not None and (en is None or en.get("chosen") != "elastic-net path")
    return {"top1": val, "how": "validation rows", "val_in_fit": in_fit}


def fit(data: HeadData, config: FitHeadConfig, device) -> tuple:
    """Fit the head `config` describes on in-memory data: (module, info, metrics).

    metrics: the one evaluation path on the validation rows and the test split, plus
    zero-shot on the same rows (`compare` calls this directly, e.g. with random concepts).
    """
    with flush_denormals():
        module, info = TRAINERS[config.kind](data, config, device)
    metrics = evaluate_module(module, config.kind, data)
    metrics["zero_shot"] = zero_shot_metrics(data)
    metrics["heldout"] = heldout_estimate(info, metrics)
    if config.kind == "zs-probe":
        metrics["note"] = info["note"]
    return module, info, metrics


def run(config: FitHeadConfig) -> FitHeadResult:
    """Fit the head `config` describes, write its directory, return its metrics. The output is
    locked for the run and replaced only if it is a head (core.outputs)."""
    with owned_output(config.out_dir(), HEAD_DIR.ownership, overwrite=config.overwrite,
                      exists_error=OutputExistsError):  # fmt: skip
        return _run(config)


def _run(config: FitHeadConfig) -> FitHeadResult:
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    out = config.out_dir()
    with open_cache(
        config.cache, verify=config.verify, progress=remote_bars(config.progress)
    ) as cache:
        data = load_data(cache, config, device)
        n_concepts = len(data.text.concept_emb)
        if config.topk is not None and config.topk >= n_concepts:
            raise HeadsConfigError(
                f"topk must be an integer in [0, |D|) = [0, {n_concepts}) (0 keeps every "
                f"activation), got {config.topk}; this cache has |D| = {n_concepts} concepts"
            )
        log.info("fit-head %s on %s: %d fit rows, %d val rows, |D|=%d, |C|=%d, device %s",
                 config.loss, cache.path, len(data.train_idx), len(data.val_idx),
                 len(cache.concepts), data.n_classes, device)  # fmt: skip
        module, info, metrics = fit(data, config, device)
        save_fitted(config, cache, data, device, module, info, metrics)
    seconds = time.perf_counter() - t0
    log.info("wrote %s in %.1f s: val top-1 %.4f", out, seconds, metrics["val"]["top1"])
    return FitHeadResult(
        out_dir=out,
        kind=config.kind,
        loss=config.loss,
        device=str(device),
        metrics=metrics,
        history=info.get("history", []),
        best_step=info.get("best_step"),
        seconds=seconds,
    )
