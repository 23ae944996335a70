"""The evaluation commands: `cms-eval`, `evaluate`, `explain` (configs + one run() each).

- cms-eval: CMS (thesis §4.2, SPEC §3) beside zero-shot CLIP on the same split(s); per-image
  predictions with the top contributing concepts, per-class accuracies, metrics JSON.
- evaluate: a trained head (`heads.io.artifact.load_head`, refused on another cache's
  fingerprint) on one split: top-1/top-5, per-class accuracy, confusion matrix, and for a
  concept bottleneck NEC, accuracy at NEC = 5 / averaged over 5..30, activation sparsity
  (SPEC §2 "Metrics"); zero-shot on the same split for reference.
- explain: the top concepts of one prediction (a cbm head, or CMS without --head) as a
  table, a CSV and a bar chart PNG.

All tables are written with pandas (CSV) and metrics as flat JSON dicts, so runs compare.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clipcbm.cache import open_cache, remote_bars
from clipcbm.core.device import resolve_device
from clipcbm.heads.baselines.cms import build_scorer, cms_predict, resolve_normalize
from clipcbm.heads.eval.config import CmsEvalConfig, EvaluateConfig, ExplainConfig  # noqa: F401
from clipcbm.heads.eval.evaluate import evaluate, per_class_frame, zero_shot_scorer
from clipcbm.heads.eval.explain import Explanation, explain_cbm, explain_cms_row
from clipcbm.heads.eval.metrics import classification_metrics
from clipcbm.heads.eval.plots import plot_confusion, plot_contributions
from clipcbm.heads.features import TextTensors
from clipcbm.heads.io.artifact import load_head
from clipcbm.heads.io.evaldata import (
    EvalInputError,
    cache_settings,
    check_disjoint,
    check_split_name,
    claim_results,
    load_split,
    locate_row,
    percent_table,
    write_csv,
    write_json,
)
from clipcbm.heads.io.output import result_files

log = logging.getLogger(__name__)

PCT_COLUMNS = ("top1", "top5", "mean_per_class_acc")


def _jsonable_config(cfg) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}


# ------------------------------------------------------------------ cms-eval


@dataclass(frozen=True)
class CmsEvalResult:
    table: pd.DataFrame  # one row per (split, method): n, top1, top5, mean_per_class_acc
    metrics: dict  # what metrics.json holds
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        return percent_table(self.table, PCT_COLUMNS)


def _cms_predictions_frame(data, classes, concepts, out, zs_pred) -> pd.DataFrame:
    cms_pred, zs = out.pred.numpy(), zs_pred.numpy()
    names = np.asarray(classes, dtype=object)
    df = pd.DataFrame(
        {
            "id": data.ids,
            "label": data.labels,
            "label_name": names[data.labels],
            "cms_pred": cms_pred,
            "cms_pred_name": names[cms_pred],
            "zs_pred": zs,
            "zs_pred_name": names[zs],
            "cms_score": out.pred_score.numpy(),
        }
    )
    con = np.asarray(concepts, dtype=object)
    for r in range(out.top_concepts.shape[1]):
        df[f"concept_{r + 1}"] = con[out.top_concepts[:, r].numpy()]
        df[f"term_{r + 1}"] = out.top_terms[:, r].numpy()
    return df


def _cms_one_split(cfg, cache, split, normalize, device, text):
    data = load_split(cache, split)
    t0 = time.perf_counter()
    out = cms_predict(
        data.image_emb,
        text.concept_emb,
        text.class_emb,
        normalize=normalize,
        chunk_size=cfg.chunk_size,
        n_concepts=cfg.top_concepts,
        device=device,
        progress=cfg.progress,
    )
    seconds = time.perf_counter() - t0
    zs = evaluate(zero_shot_scorer(text), data.image_emb, data.labels, chunk_rows=cfg.chunk_size)
    zs_pred = torch.from_numpy(zs.pred)
    n_classes = len(cache.classes)
    metrics = {  # flat keys stay the same across normalisations, so runs line up in a table
        "zero_shot": zs.metrics,
        "cms": classification_metrics(out.topk, data.labels, n_classes),
    }
    flat = {f"{split}/{m}/{k}": v for m, d in metrics.items() for k, v in d.items()}
    flat[f"{split}/cms/seconds"] = seconds
    flat[f"{split}/agreement"] = float((out.pred == zs_pred).double().mean())
    label = {"zero_shot": "zero-shot", "cms": f"cms ({normalize})"}
    rows = [{"split": split, "method": label[m], **d} for m, d in metrics.items()]
    pc = per_class_frame(cache.classes, data.labels, {"zs_acc": zs_pred, "cms_acc": out.pred})
    preds = _cms_predictions_frame(data, cache.classes, cache.concepts, out, zs_pred)
    return rows, flat, preds, pc


def run_cms_eval(cfg: CmsEvalConfig) -> CmsEvalResult:
    """CMS and zero-shot on each split of cfg.splits; writes CSVs + metrics.json to out_dir."""
    device = str(resolve_device(cfg.device))
    normalize = resolve_normalize(cfg.normalize)
    out_dir = cfg.out_dir()
    rows, flat, tables = [], {}, {}
    with open_cache(cfg.cache, verify=cfg.verify, progress=remote_bars(cfg.progress)) as cache:
        for split in cfg.splits:  # fail before any work on a typo
            check_split_name(cache, split)
        settings = {**cache_settings(cache), "normalize": normalize,
                    "splits": list(cfg.splits), "top_concepts": cfg.top_concepts}  # fmt: skip
        claim_results(out_dir / "metrics.json", settings, overwrite=cfg.overwrite)
        text = TextTensors.from_cache(cache, device)  # read once: CMS and zero-shot, every split
        for split in cfg.splits:
            r, f, preds, pc = _cms_one_split(cfg, cache, split, normalize, device, text)
            rows += r
            flat.update(f)
            tables[f"predictions_{split}"], tables[f"per_class_{split}"] = preds, pc
        metrics = {
            "task": "cms-eval",
            "cache": str(cfg.cache),
            "cache_fingerprint": cache.fingerprint,
            "n_concepts": len(cache.concepts),
            "n_classes": len(cache.classes),
            "normalize": normalize,
            "device": device,
            "config": _jsonable_config(cfg),
            "settings": settings,
            "metrics": flat,
        }
    table = pd.DataFrame(rows)
    with result_files(out_dir, "the cms-eval results") as stage:  # all files, or none
        files = {name: write_csv(stage / f"{name}.csv", df) for name, df in tables.items()}
        files["metrics"] = write_json(stage / "metrics.json", metrics)
        files["table"] = write_csv(stage / "summary.csv", table)
    return CmsEvalResult(table, metrics, stage.final(files))


# ------------------------------------------------------------------ evaluate


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict  # flat metric -> value (also in metrics.json under "metrics")
    per_class: pd.DataFrame  # class_index, class, n, accuracy
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        shown = [v if isinstance(v, int) else f"{v:.4f}" for v in self.metrics.values()]
        return pd.DataFrame({"metric": list(self.metrics), "value": shown}).to_string(index=False)


def run_evaluate(cfg: EvaluateConfig) -> EvaluateResult:
    """Metrics, per-class table, confusion matrix and predictions of a head on one split."""
    device = str(resolve_device(cfg.device))
    out_dir = cfg.out_dir()
    with open_cache(cfg.cache, verify=cfg.verify, progress=remote_bars(cfg.progress)) as cache:
        check_split_name(cache, cfg.split)
        head = load_head(cfg.head, cache, device=device)  # HeadCacheMismatchError on mismatch
        fit_split = head.config.get("hyperparameters", {}).get("train_split", "train")
        if fit_split in cache.splits:
            check_disjoint(cache, fit_split, cfg.split, allow=cfg.allow_overlap)
        settings = {"head": str(cfg.head.resolve()), "split": cfg.split,
                    "head_weights_sha256": head.config.get("weights_sha256"),
                    **cache_settings(cache)}  # fmt: skip
        claim_results(out_dir / f"metrics_{cfg.split}.json", settings, overwrite=cfg.overwrite)
        data = load_split(cache, cfg.split)
        scorer = head.scorer(cache)
        x, y = data.image_emb, data.labels
        ev = evaluate(scorer, x, y, chunk_rows=cfg.chunk_size, progress=cfg.progress)
        zs = evaluate(zero_shot_scorer(scorer.text), x, y, chunk_rows=cfg.chunk_size).metrics
        metrics = {**ev.metrics, "zero_shot_top1": zs["top1"], "zero_shot_top5": zs["top5"]}
        record = {
            "task": "evaluate",
            "head": str(cfg.head),
            "head_kind": head.kind,
            "split": cfg.split,
            "cache": str(cfg.cache),
            "cache_fingerprint": cache.fingerprint,
            "device": device,
            "config": _jsonable_config(cfg),
            "settings": settings,
            "metrics": metrics,
        }
        per_class = ev.per_class(cache.classes, y)
        classes = cache.classes
    with result_files(out_dir, "the evaluate results") as stage:  # all files, or none
        files = {
            "metrics": write_json(stage / f"metrics_{cfg.split}.json", record),
            "per_class": write_csv(stage / f"per_class_{cfg.split}.csv", per_class),
            "predictions": write_csv(
                stage / f"predictions_{cfg.split}.csv", ev.predictions(data.ids, y)
            ),
            "confusion_csv": write_csv(
                stage / f"confusion_{cfg.split}.csv",
                pd.DataFrame(ev.confusion, index=classes, columns=classes)
                .rename_axis("true\\pred")
                .reset_index(),
            ),
            "confusion_png": plot_confusion(
                ev.confusion,
                classes,
                stage / f"confusion_{cfg.split}.png",
                title=f"{cfg.head.name} on {cfg.split} (top-1 {100 * ev.metrics['top1']:.2f}%)",
            ),
        }
    return EvaluateResult(metrics, per_class, stage.final(files))


# ------------------------------------------------------------------ explain

DEFAULT_TOP_K = 10


@dataclass(frozen=True)
class ExplainResult:
    explanation: Explanation
    id: str  # the image's id in the cache
    label: str  # true class name
    pred: str  # predicted class name
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        ex = self.explanation
        what = "logit" if ex.method == "cbm" else "cos(V, T)"
        head = f"image {self.id} (true: {self.label}) -> {self.pred} ({what} {ex.score:.4f}"
        head += f", bias {ex.offset:.4f})" if ex.method == "cbm" else ")"
        return head + "\n" + self.explanation.table.to_string(index=False, float_format="%.4f")


def _explain_head(cfg, cache, data, pos, device, top_k: int) -> Explanation:
    head = load_head(cfg.head, cache, device=device)
    if head.kind == "features":  # a final layer over named SAE latents (or adapter features)
        sc = head.scorer(cache)
        a = sc.text.transform(sc.text.class_emb.new_tensor(data.image_emb[pos : pos + 1]))[0]
        fc = head.module
        names = sc.text.transform.names
        return explain_cbm(a, fc.weight, fc.bias, names, k=min(top_k, len(names)))
    if head.kind != "cbm":
        raise EvalInputError(
            f"explain needs a concept-bottleneck head (kind 'cbm', or a features head on an "
            f"SAE); {cfg.head} is kind {head.kind!r}, which has no concepts. Use such a head, "
            "or omit --head for CMS."
        )
    a = head.scorer(cache).activations(data.image_emb[pos : pos + 1])[0]  # (|D|,)
    fc = head.module.fc
    return explain_cbm(a, fc.weight, fc.bias, cache.concepts, k=top_k)


def run_explain(cfg: ExplainConfig) -> ExplainResult:
    """Explain the prediction for row cfg.index of cfg.split; writes the PNG and a CSV."""
    device = str(resolve_device(cfg.device))
    with open_cache(cfg.cache, verify=cfg.verify) as cache:
        if cfg.top_k is not None and cfg.top_k > len(cache.concepts):
            raise EvalInputError(
                f"--top-k {cfg.top_k} is more than the cache's {len(cache.concepts)} concepts; "
                f"give --top-k {len(cache.concepts)} or less"
            )
        top_k = cfg.top_k or min(DEFAULT_TOP_K, len(cache.concepts))
        data = load_split(cache, cfg.split)
        pos = locate_row(data, cfg.index)
        if cfg.head is not None:
            ex = _explain_head(cfg, cache, data, pos, device, top_k)
        else:
            scorer = build_scorer(
                data.image_emb,
                cache.concept_emb(),
                cache.class_emb(),
                normalize=cfg.normalize,
                chunk_size=cfg.chunk_size,
                device=device,
            )
            ex = explain_cms_row(
                scorer, torch.as_tensor(data.image_emb[pos]), cache.concepts, top_k
            )
        classes = cache.classes
    png = cfg.out_path()
    label, pred = classes[int(data.labels[pos])], classes[ex.pred]
    title = f"{data.ids[pos]}: predicted {pred} (true {label}) — {ex.method}"
    what = f"the explanation {png.name} (+ .csv)"
    with result_files(png.parent, what) as stage:  # both files, or none
        files = {
            "png": plot_contributions(ex.table, title, stage / png.name),
            "csv": write_csv(stage / png.with_suffix(".csv").name, ex.table),
        }
    return ExplainResult(ex, str(data.ids[pos]), label, pred, stage.final(files))
