"""Reconstruction metrics of an SAE with pinned definitions, the k-sweep, and accuracy kept.

Over the N evaluated rows x_i (unit CLIP embeddings) and their reconstructions x̂_i, with
x̄ = the mean of those same rows and μ = the SAE's centring mean (of its training split):

    fvu            Σ‖x_i − x̂_i‖² / Σ‖x_i − x̄‖²      (1 for predicting x̄, 0 for x̂ = x)
    mse            Σ‖x_i − x̂_i‖² / N
    cosine         mean_i cos(x_i, x̂_i)               (uncentred, as MSAE reports it)
    cosine_centred mean_i cos(x_i − μ, x̂_i − μ)       (CLIP rows share a large mean direction)
    nmae           mean_i [mean_d |x_id − x̂_id| / mean_d |x_id|]
    l0             mean_i #{j : z_ij > 0}             (a count of active latents)
    dead_fraction  #{j : z_ij = 0 for every i} / F    (never fired on these rows)

Every sum is accumulated in fp64 over chunks of rows (`ReconstructionMeter`), so results do not
depend on the chunk size. The k-sweep re-applies TopK with each k to the same full
pre-activations of one trained model. Accuracy kept: the zero-shot classifier (and a head, when
given) scores x̂ renormalised to unit length, as the cache's rows are, against the same rows'
x; `accuracy_kept` = top-1(x̂) / top-1(x).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from clipcbm.heads.chunks import CHUNK_ROWS, iter_chunks
from clipcbm.heads.eval.evaluate import Scorer, top1


@dataclass
class ReconstructionMeter:
    """Running fp64 sums of one reconstruction over chunks; `result()` gives the metrics."""

    n_latents: int
    mean: torch.Tensor | None = None  # μ for cosine_centred (E,), or None
    n: int = 0
    sums: dict = field(default_factory=dict)
    fired: torch.Tensor | None = None

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, active: torch.Tensor,
               fired: torch.Tensor) -> None:  # fmt: skip
        """x, x_hat: (B, E); active: (B,) latents > 0 per row; fired: (F,) bool in the chunk."""
        x, x_hat = x.double(), x_hat.double()
        err = x - x_hat
        mu = self.mean.double() if self.mean is not None else torch.zeros_like(x[0])
        add = {
            "x": x.sum(0),
            "x2": x.pow(2).sum(),
            "err2": err.pow(2).sum(),
            "cos": torch.nn.functional.cosine_similarity(x, x_hat, dim=1, eps=1e-12).sum(),
            "cos_c": torch.nn.functional.cosine_similarity(
                x - mu, x_hat - mu, dim=1, eps=1e-12
            ).sum(),  # fmt: skip
            "nmae": (err.abs().mean(1) / x.abs().mean(1).clamp_min(1e-12)).sum(),
            "l0": active.double().sum(),
        }
        for k, v in add.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.cpu()
        self.n += len(x)
        f = fired.cpu()
        self.fired = f if self.fired is None else self.fired | f

    def result(self) -> dict:
        if self.n == 0:
            raise ValueError("ReconstructionMeter has seen no rows")
        s, n = self.sums, self.n
        xbar = s["x"] / n
        total = float(s["x2"] - n * (xbar @ xbar))  # Σ‖x − x̄‖²
        return {
            "n": n,
            "fvu": float(s["err2"]) / total if total > 0 else float("nan"),
            "mse": float(s["err2"]) / n,
            "cosine": float(s["cos"]) / n,
            "cosine_centred": float(s["cos_c"]) / n,
            "nmae": float(s["nmae"]) / n,
            "l0": float(s["l0"]) / n,
            "dead_fraction": 1.0 - float(self.fired.sum()) / self.n_latents,
        }


def reconstruct(sae, pre: torch.Tensor, k: int | None = None):
    """Pre-activations (B, F) -> (x̂ (B, E), active (B,), fired (F,)) under the model's rule
    (k=None) or TopK with `k` (the k-sweep)."""
    if k is None and sae.selection == "batchtopk":
        z = sae.codes(pre)
        return sae.decode(z), (z > 0).sum(1), (z > 0).any(0)
    values, indices = sae.topk_codes(pre, sae.k if k is None else k)
    fired = torch.zeros(sae.n_latents, dtype=torch.bool, device=pre.device)
    fired[indices[values > 0]] = True
    return sae.decode_topk(values, indices), (values > 0).sum(1), fired


@dataclass
class AccuracyKept:
    """Top-1 hits of one scorer on x and on unit(x̂), accumulated over chunks."""

    scorer: Scorer
    hits: list = field(default_factory=lambda: [0.0, 0.0])

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, y: np.ndarray) -> None:
        unit = x_hat / x_hat.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.hits[0] += top1(self.scorer, x, y) * len(y)
        self.hits[1] += top1(self.scorer, unit, y) * len(y)

    def result(self, n: int, prefix: str) -> dict:
        orig, recon = self.hits[0] / n, self.hits[1] / n
        return {f"{prefix}top1": orig, f"{prefix}top1_recon": recon,
                f"{prefix}accuracy_kept": recon / orig if orig > 0 else float("nan")}  # fmt: skip


@dataclass(frozen=True)
class SaeEvaluation:
    metrics: dict  # flat: fvu, mse, cosine, cosine_centred, nmae, l0, dead_fraction, n, ...
    sweep: pd.DataFrame  # one row per k: k, fvu, mse, cosine, ..., dead_fraction
    fired: np.ndarray  # (F,) bool: the latent fired on at least one evaluated row


def evaluate_sae(sae, x: np.ndarray, labels: np.ndarray | None = None, *,
                 scorers: dict[str, Scorer] | None = None, ks: Iterable[int] = (),
                 chunk_rows: int = CHUNK_ROWS, device="cpu",
                 progress: Callable | None = None) -> SaeEvaluation:  # fmt: skip
    """Metrics of `sae` on rows x (N, E) (+ accuracy kept per scorer) and the k-sweep.

    scorers: {"zero_shot": Scorer, "head": Scorer}: accuracy kept (needs labels); ks: the sweep
    (values above F are skipped). The pre-activations of each chunk are computed once.
    """
    ks = [k for k in ks if k <= sae.n_latents]
    mean = getattr(sae, "centring_mean", None)
    main = ReconstructionMeter(sae.n_latents, mean)
    sweep = {k: ReconstructionMeter(sae.n_latents, mean) for k in ks}
    kept = {name: AccuracyKept(s) for name, s in (scorers or {}).items()}
    chunks = list(iter_chunks(len(x), chunk_rows))
    with torch.no_grad():
        for sl in progress(chunks) if progress else chunks:
            xb = torch.from_numpy(np.ascontiguousarray(x[sl])).float().to(device)
            pre = sae.pre_activations(xb)
            x_hat, active, fired = reconstruct(sae, pre)
            main.update(xb, x_hat, active, fired)
            for acc in kept.values():
                acc.update(xb, x_hat, labels[sl])
            for k, meter in sweep.items():
                meter.update(xb, *reconstruct(sae, pre, k))
    metrics = main.result()
    for name, acc in kept.items():
        metrics.update(acc.result(len(x), "" if name == "zero_shot" else f"{name}_"))
    if "zero_shot" in kept:  # the zero-shot numbers under their own names too
        metrics["zero_shot_top1"] = metrics.pop("top1")
        metrics["zero_shot_top1_recon"] = metrics.pop("top1_recon")
    table = pd.DataFrame([{"k": k, **m.result()} for k, m in sweep.items()])
    return SaeEvaluation(metrics, table, main.fired.numpy().astype(bool))


def plot_sweep(table: pd.DataFrame, trained_k: int, path, title: str):
    """FVU and cosine against k (log2 axis), the trained k marked; a PNG at `path`."""
    from clipcbm.heads.eval.plots import new_figure, save_figure

    fig, (ax1, ax2) = new_figure((9, 3.6), ncols=2)
    for ax, col, label in ((ax1, "fvu", "FVU (held-out)"), (ax2, "cosine", "cosine(x, x̂)")):
        ax.plot(table["k"], table[col], marker="o")
        ax.axvline(trained_k, color="0.5", linestyle="--", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (TopK re-applied to the pre-activations)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax1.set_yscale("log")
    fig.suptitle(f"{title} (trained k = {trained_k}, dashed)", fontsize=10)
    return save_figure(fig, path, dpi=110)
