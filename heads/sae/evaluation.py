"""`sae-eval`: an SAE's reconstruction metrics and k-sweep on a split of a cache of its model.

Writes `metrics.json` (the keys of fit-sae's metrics.json: fvu, cosine, l0, dead_fraction, ...
plus accuracy kept by zero-shot and, with --head, by that head), `ksweep.csv` and `ksweep.png`
(TopK with k = 8 ... 512 re-applied to the same pre-activations) to --out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from clipcbm.cache import open_cache, remote_bars
from clipcbm.core import atomic
from clipcbm.core.device import resolve_device
from clipcbm.core.location import location_name
from clipcbm.core.progress import bar as progress_bar
from clipcbm.heads.eval.evaluate import zero_shot_scorer
from clipcbm.heads.features import TextTensors
from clipcbm.heads.io.artifact import load_head
from clipcbm.heads.io.evaldata import write_json
from clipcbm.heads.io.output import result_files
from clipcbm.heads.sae.artifact import check_model, load_sae
from clipcbm.heads.sae.config import SaeEvalConfig
from clipcbm.heads.sae.data import load_heldout
from clipcbm.heads.sae.metrics import evaluate_sae, plot_sweep

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SaeEvalResult:
    out_dir: Path
    metrics: dict
    sweep: pd.DataFrame
    files: dict

    def summary(self) -> str:
        m = self.metrics
        lines = [
            f"split {m['split']} ({m['n']} rows): FVU {m['fvu']:.4f}  cosine {m['cosine']:.4f}  "
            f"L0 {m['l0']:.1f}  dead {100 * m['dead_fraction']:.2f} %  zero-shot kept "
            f"{m['accuracy_kept']:.4f} ({m['zero_shot_top1_recon']:.4f} / "
            f"{m['zero_shot_top1']:.4f})"
        ]
        if "head_accuracy_kept" in m:
            lines.append(f"head kept {m['head_accuracy_kept']:.4f} ({m['head_top1_recon']:.4f} "
                         f"/ {m['head_top1']:.4f})")  # fmt: skip
        cols = ["k", "fvu", "cosine", "l0", "dead_fraction"]
        if len(self.sweep):
            lines.append(self.sweep[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        return "\n".join(lines)


def run_sae_eval(cfg: SaeEvalConfig) -> SaeEvalResult:
    device = resolve_device(cfg.device)
    sae, sae_cfg = load_sae(cfg.sae, device)
    with open_cache(cfg.cache, verify=cfg.verify, progress=remote_bars(cfg.progress)) as cache:
        check_model(sae_cfg, cache)
        held = load_heldout(cache, cfg.split)
        scorers = {"zero_shot": zero_shot_scorer(TextTensors.from_cache(cache, device))}
        if cfg.head is not None:
            scorers["head"] = load_head(cfg.head, cache, device).scorer(cache)
        ev = evaluate_sae(
            sae, held.x, held.labels, scorers=scorers, ks=cfg.ks, chunk_rows=cfg.chunk_size,
            device=device,
            progress=(lambda c: progress_bar(c, desc="sae-eval")) if cfg.progress else None,
        )  # fmt: skip
        fingerprint = cache.fingerprint
    ours = sae_cfg["clipcbm"]
    metrics = {**ev.metrics, "split": cfg.split}
    if cfg.split == ours["train_split"] and ours["cache_fingerprint"] == fingerprint:
        log.warning("split %r is the SAE's training split: these are training numbers", cfg.split)
        metrics["note"] = "training split of the SAE (not held-out)"
    out = cfg.out_dir()
    record = {"metrics": metrics, "sae": str(cfg.sae), "cache": str(cfg.cache),
              "cache_fingerprint": fingerprint, "sae_weights_sha256": ours["weights_sha256"],
              "head": str(cfg.head) if cfg.head else None, "ks": list(cfg.ks),
              "device": str(device), "torch_version": torch.__version__}  # fmt: skip
    with result_files(out, "the sae-eval results") as stage:  # all files, or none
        files = {
            "metrics": write_json(stage / "metrics.json", {**metrics, "record": record}),
            "csv": atomic.write_text(stage / "ksweep.csv", ev.sweep.to_csv(index=False)),
        }
        if len(ev.sweep):
            title = f"{Path(cfg.sae).name} on {location_name(cfg.cache)}/{cfg.split}"
            files["png"] = plot_sweep(ev.sweep, sae.k, stage / "ksweep.png", title)
    return SaeEvalResult(out, metrics, ev.sweep, stage.final(files))
