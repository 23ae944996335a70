"""`compare`: every head at its defaults and every baseline on one cache, in one table.

The table a researcher puts in a paper: each method is fitted on the same train split (the
same seeded validation hold-out) and scored on the same test split through the one
evaluation path (`heads.eval.evaluate`). Methods (a registry; `--method` picks a subset):

- zero-shot      argmax_m α<i, c_m> (no training)
- cms            Concept Matrix Search (thesis §4.2), no normalisation
- description    DescriptionCLS-style (Menon & Vondrick): class score = mean cosine to the
                 class's linked concepts; needs the cache's concept->class links. The paper
                 embeds "{class}, which {descriptor}"; stage two has only the cached concept
                 embeddings, so each descriptor's own embedding stands in for that prompt.
- probe          true linear probe (multinomial logistic regression on i)
- l1, contrastive, sparse     the CBM heads at `fit-head`'s defaults
- sparse-elastic-net          the default sparse head with its final layer refitted along an
                              elastic-net path at NEC = 5
- l1-elastic-net              the default l1 head (dense bottleneck) with the elastic-net final
                              layer at NEC = 5: compare with l1's acc_nec5 (its truncation)
- lf-cbm-scores               Label-free CBM's procedure (heads.baselines.lfcbm): cos³
                              projection from the image embedding, cut-off, elastic-net final
                              layer at NEC = 5. On a CLIP backbone its target I D^T is linear
                              in the image embedding, so W_c = D reaches cos³ = 1 for every
                              concept and the cut-off removes only what the optimiser missed:
                              the row is an elastic-net layer on the concept scores (named for
                              that; `--method label-free-cbm` still selects it)
- sklearn-probe               reference: scikit-learn's LogisticRegression probe under the
                              standard protocol (heads.baselines.sklearn_probe), where
                              scikit-learn is installed; left out with a log line otherwise
- random-concepts             control: the default sparse head on random unit vectors in place
                              of the concept embeddings (same |D|); if it matches the real
                              concepts, the concepts explain nothing

Writes `results.csv`, `results.md` (columns method, top1, top5, acc_nec5, act_sparsity, nec,
faithfulness (CBM heads: mean per-concept rank correlation of activation and raw cosine on
test), seconds, val_top1) and `results.png` (one row per method: test top-1, NEC and
sparsity) to `--out`
(default runs/compare/<cache-stem>); head directories under `<out>/heads/`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from clipcbm.cache import open_cache, remote_bars
from clipcbm.core import atomic
from clipcbm.core.device import resolve_device
from clipcbm.core.outputs import Ownership, check_output_path, check_replaceable
from clipcbm.heads.baselines import sklearn_probe
from clipcbm.heads.baselines.cms import cms_predict
from clipcbm.heads.baselines.lfcbm import PROJ_STEPS, fit_label_free_cbm
from clipcbm.heads.cbm.config import FitHeadConfig
from clipcbm.heads.cbm.positives import links_from_concept_classes
from clipcbm.heads.cbm.train import fit, save_fitted
from clipcbm.heads.chunks import SOLVER_GIB, iter_chunks
from clipcbm.heads.errors import HeadsConfigError, OutputExistsError
from clipcbm.heads.eval.config import METHODS, CompareConfig, Method
from clipcbm.heads.eval.evaluate import Scorer, evaluate, zero_shot_scorer
from clipcbm.heads.eval.metrics import classification_metrics, ranked
from clipcbm.heads.eval.plots import new_figure, save_figure
from clipcbm.heads.features import TextTensors
from clipcbm.heads.io.data import checked_transform, load_data
from clipcbm.heads.io.output import removed_on_write_error, result_files

log = logging.getLogger(__name__)

COLUMNS = (
    "method",
    "top1",
    "top5",
    "acc_nec5",
    "act_sparsity",
    "nec",
    "faithfulness",
    "seconds",
    "val_top1",
)


@dataclass(frozen=True)
class CompareResult:
    table: pd.DataFrame
    files: dict


def _row(name: str, metrics: dict, seconds: float, val: dict | None = None) -> dict:
    row = {c: metrics.get(c, math.nan) for c in COLUMNS[1:7]}
    return {"method": name, **row, "seconds": seconds, "val_top1": (val or {}).get("top1")}


def _random_text(text: TextTensors, seed: int) -> TextTensors:
    g = torch.Generator().manual_seed(seed + 11)
    r = torch.randn(text.concept_emb.shape, generator=g).to(text.concept_emb)
    return dataclasses.replace(text, concept_emb=r / r.norm(dim=1, keepdim=True))


def _description(cache, data) -> dict | None:
    if not any(data.concept_classes):
        return None
    links = links_from_concept_classes(data.concept_classes, data.classes).float()
    links = links.to(data.text.concept_emb.device)
    n_linked = links.sum(1, keepdim=True)
    if bool((n_linked == 0).any()):
        log.info("description: %d class(es) have no linked concept; they score 0",
                 int((n_linked == 0).sum()))  # fmt: skip
    weights = links / n_linked.clamp_min(1)  # (|C|, |D|) mean over the class's descriptors
    x = data.test.x
    top = torch.cat([ranked((x[sl] @ data.text.concept_emb.T) @ weights.T, 5).cpu()
                     for sl in iter_chunks(len(x))])  # fmt: skip  # (N, 5), chunked
    return classification_metrics(top, data.test.y.cpu().numpy(), data.n_classes)


def _sklearn_probe(cfg, data) -> dict:
    """The scikit-learn reference probe on all train rows, scored through the one path."""
    # float64 inside scikit-learn: the same row cap as our probe, at twice the bytes a row
    rows = torch.cat(data.solver_rows(data.train.x.shape[1], SOLVER_GIB / 2))
    x, y = data.train.x[rows].cpu().numpy(), data.train.y[rows].cpu().numpy()
    budget = {} if cfg.probe_max_iter is None else {"max_iter": cfg.probe_max_iter}
    coef, intercept, info = sklearn_probe.fit_sklearn_probe(x, y, cfg.seed, **budget)
    layer = torch.nn.Linear(coef.shape[1], data.n_classes).to(data.test.x.device)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(-1e9)  # a class absent from train is never predicted
        present = torch.as_tensor(info["classes"], device=layer.weight.device)
        layer.weight[present] = torch.as_tensor(coef, dtype=torch.float32).to(layer.weight)
        layer.bias[present] = torch.as_tensor(intercept, dtype=torch.float32).to(layer.bias)
    log.info("sklearn-probe: C %g (%s), %d convergence warnings%s", info["C"], info["choice"],
             info["convergence_warnings"],
             f", tol lowered to {info['tol']:g} (lbfgs took no step at 1e-4)"
             if info["tol_lowered"] else "")  # fmt: skip
    return evaluate(Scorer("probe", layer, data.text), data.test.x,
                    data.test.y.cpu().numpy()).metrics  # fmt: skip


def _training_free(cfg, name, cache, data) -> dict | None:
    x, y = data.test.x, data.test.y.cpu().numpy()
    if name == "zero-shot":
        return evaluate(zero_shot_scorer(data.text), x, y).metrics
    if name == "cms":
        out = cms_predict(x.cpu(), cache.concept_emb(), cache.class_emb(), device=x.device)
        return classification_metrics(out.topk, y, data.n_classes)
    if name == "lf-cbm-scores":
        budget = {} if cfg.path_max_iter is None else {"path_max_iter": cfg.path_max_iter}
        return fit_label_free_cbm(data, seed=cfg.seed, steps=min(PROJ_STEPS, cfg.max_steps),
                                  **budget).metrics  # fmt: skip
    if name == "sklearn-probe":
        return _sklearn_probe(cfg, data) if sklearn_probe.available() else None
    return _description(cache, data)


def transform_methods(cfg: CompareConfig) -> list[tuple[str, Method, str, Path]]:
    """The rows `--sae DIR` / `--adapter DIR` add: final layers over the transform's features."""
    out = []
    if cfg.sae is not None:
        for fl, extra in (("dense", {}), ("elastic-net", {"nec": 5.0})):
            head = {"features": "sae", "sae": cfg.sae, "final_layer": fl, **extra}
            out.append((f"sae-{fl}", Method(f"final layer ({fl}) on SAE latents", head), "sae",
                        cfg.sae))  # fmt: skip
    if cfg.adapter is not None:
        head = {"features": "adapter", "adapter": cfg.adapter}
        out.append(("adapter-probe", Method("linear probe on the adapter", head), "adapter",
                    cfg.adapter))  # fmt: skip
    return out


def _fit_method(cfg, name, method, cache, data, device) -> tuple[dict, dict]:
    budget = {
        k: v
        for k, v in (("probe_max_iter", cfg.probe_max_iter), ("path_max_iter", cfg.path_max_iter))
        if v is not None
    }
    head_cfg = FitHeadConfig(
        cache=cfg.cache, out=cfg.out_dir() / "heads" / name, seed=cfg.seed, device=cfg.device,
        progress=cfg.progress, overwrite=True, max_steps=cfg.max_steps, verify=cfg.verify,
        allow_overlap=cfg.allow_overlap, val_fraction=cfg.val_fraction, **budget, **method.head,
    )  # fmt: skip
    if method.random_concepts:
        data = dataclasses.replace(data, text=_random_text(data.text, cfg.seed))
    module, info, metrics = fit(data, head_cfg, device)
    if not method.random_concepts:  # a head on random concepts has no cache to belong to
        save_fitted(head_cfg, cache, data, device, module, info, metrics)
    return metrics["test"], metrics["val"]


# what `--overwrite` may replace (core.outputs): a folder compare wrote, holding only its files
OWNERSHIP = Ownership(
    "a compare directory", "compare",
    lambda d: (d / "results.csv").is_file() or (d / "heads").is_dir(),
    frozenset({"results.csv", "results.md", "results.png", "heads"}),
)  # fmt: skip


def run_compare(cfg: CompareConfig) -> CompareResult:
    """Fit / score every method of cfg.methods; write the table, markdown and figure."""
    out = cfg.out_dir()
    check_replaceable(check_output_path(out), OWNERSHIP, overwrite=cfg.overwrite,
                      exists_error=OutputExistsError)  # fmt: skip
    with removed_on_write_error(out):  # a full disk at the 3rd head leaves no half comparison
        return _run_compare(cfg, out)


def _run_compare(cfg: CompareConfig, out: Path) -> CompareResult:
    device = resolve_device(cfg.device)
    rows = []
    with open_cache(cfg.cache, verify=cfg.verify, progress=remote_bars(cfg.progress)) as cache:
        data = load_data(cache, FitHeadConfig(cache=cfg.cache, seed=cfg.seed,
                                              val_fraction=cfg.val_fraction,
                                              allow_overlap=cfg.allow_overlap), device)  # fmt: skip
        if data.test is None:
            raise HeadsConfigError(f"cache {cfg.cache} has no test split; compare reports on it")
        for name in cfg.methods:
            method, t0 = METHODS[name], time.perf_counter()
            if method.head is None:
                test, val = _training_free(cfg, name, cache, data), None
                if test is None:
                    why = ("scikit-learn is not installed (pip install scikit-learn)"
                           if name == "sklearn-probe" else "the cache has no concept->class "
                           "links")  # fmt: skip
                    log.info("%s skipped: %s", name, why)
                    continue
            else:
                test, val = _fit_method(cfg, name, method, cache, data, device)
            rows.append(_row(name, test, time.perf_counter() - t0, val))
            log.info("%s: test top-1 %.4f (%.1f s)", name, test["top1"], rows[-1]["seconds"])
        for name, method, kind, path in transform_methods(cfg):
            t0 = time.perf_counter()
            tr = checked_transform(kind, path, cache, device)
            tdata = dataclasses.replace(data, text=dataclasses.replace(data.text, transform=tr))
            test, val = _fit_method(cfg, name, method, cache, tdata, device)
            rows.append(_row(name, test, time.perf_counter() - t0, val))
            log.info("%s: test top-1 %.4f (%.1f s)", name, test["top1"], rows[-1]["seconds"])
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return CompareResult(table, write_tables(table, out, cfg.cache))


def markdown(table: pd.DataFrame) -> str:
    """The table as markdown: accuracies and sparsity in %, NEC and seconds as numbers."""

    def cell(col, v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        if col in ("top1", "top5", "acc_nec5", "act_sparsity", "val_top1"):
            return f"{100 * v:.1f}"
        if col == "nec":
            return f"{v:.1f}"
        if col == "faithfulness":
            return f"{v:.2f}"
        return f"{v:.1f}" if col == "seconds" else str(v)

    head = ["method", "top-1 %", "top-5 %", "acc@NEC=5 %", "act. sparsity %", "NEC",
            "faithfulness", "seconds", "val top-1 %"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(cell(c, r[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


PLOT_PANELS = (  # (column, x label, scale to the axis unit, log x axis, fixed x range)
    ("top1", "test top-1 %", 100.0, False, None),
    ("nec", "NEC (non-zero weights per class)", 1.0, True, None),
    ("act_sparsity", "activation sparsity %", 100.0, False, (-2.0, 112.0)),  # room for text
)
PLOT_LABEL_CHARS = 22  # longer method names wrap onto a second line


def _plot(table: pd.DataFrame, path: Path, title: str) -> Path:
    """One row per method (the y axis carries the names, top to bottom in table order) and one
    panel per measure: test top-1, NEC (log) and activation sparsity, each value written beside
    its dot; a method without the measure shows "n/a". The height grows with the row count, so
    labels never overlap."""
    names = [textwrap.fill(str(m), PLOT_LABEL_CHARS) for m in table["method"]]
    lines = max((name.count("\n") + 1 for name in names), default=1)
    row_inches = max(0.34, 0.15 * lines + 0.1)  # a wrapped name needs a taller row
    fig, axes = new_figure((11, 1.1 + row_inches * max(len(table), 1)), ncols=len(PLOT_PANELS))
    y = list(range(len(table)))[::-1]
    for ax, (col, label, scale, log_x, xlim) in zip(axes, PLOT_PANELS, strict=True):
        values = [None if _missing(v) else scale * float(v) for v in table[col]]
        shown = [(yi, v) for yi, v in zip(y, values, strict=True) if v is not None]
        if log_x:
            ax.set_xscale("log")
        if shown:
            ax.scatter([v for _, v in shown], [yi for yi, _ in shown], s=18, zorder=3)
        for yi, v in zip(y, values, strict=True):
            if v is None:
                at = {"xy": (0.02, yi), "xycoords": ("axes fraction", "data"), "text": "n/a"}
            else:
                at = {"xy": (v, yi), "text": f"{v:.0f}" if log_x and v >= 100 else f"{v:.1f}"}
            ax.annotate(**at, xytext=(4, 0), textcoords="offset points", va="center",
                        fontsize=7, color="0.25")  # fmt: skip
        ax.set_yticks(y, names if ax is axes[0] else [""] * len(y), fontsize=8)
        ax.set_ylim(-0.6, len(table) - 0.4)
        ax.grid(axis="y", color="0.9", linewidth=0.6)
        if xlim is not None:
            ax.set_xlim(*xlim)
        else:
            ax.margins(x=0.18)  # room for the value written right of the last dot
        ax.set_xlabel(label, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=110)


def write_tables(table: pd.DataFrame, out: Path, cache_path) -> dict:
    with result_files(out, "the compare table") as stage:  # all three files, or none
        files = {
            "csv": atomic.write_text(stage / "results.csv", table.to_csv(index=False)),
            "md": atomic.write_text(stage / "results.md", markdown(table)),
        }
        files["png"] = _plot(table, stage / "results.png", f"compare on {Path(cache_path).name}")
    return stage.final(files)


def describe(cfg: CompareConfig, result: CompareResult) -> str:
    files = " ".join(str(p) for p in result.files.values())
    return markdown(result.table) + f"wrote {files}"


__all__ = ["METHODS", "CompareConfig", "CompareResult", "markdown", "run_compare"]
