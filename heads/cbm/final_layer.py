"""Refits of a CBM's final layer W_F (+ b) on the trained CBL's activations.

`--final-fit anchored` (the default, `fit_anchored_final_layer`): W_F, b are the convex
multinomial logistic regression

    min  mean_i CE(W a_i + b, y_i) + l2 / 2 ||[W | b] - [W0 | b0]||^2

over all train rows (fit + validation), where [W0 | b0] is the start (`--fc-init`: with
zero-shot, the zero-shot classifier reproduced through the concepts). l2 = mean ||a||^2 /
(C N) with C from --anchor-c-grid chosen by cross-validation (heads.baselines.probe.cv_fit),
so the head moves away from its start only as far as held-out rows support: with one shot per
class, the strongest pull usually wins and the head is its start; with thousands of rows, a
weak pull and the head is a probe on the concept activations. An infinite l2 returns the start
exactly; l2 = 0 is the unpenalised fit (tested).

`--final-layer elastic-net`: the field's sparse final layer (Label-free CBM, VLG-CBM).

After the CBL is trained, W_F (+ b) is refitted on the fit rows' bottleneck activations along
an elastic-net path (heads.cbm.elastic_net: full-batch proximal gradient in torch, the
objective of GLM-SAGA, alpha = 0.99, standardised inputs folded back) and stopped at
`--nec` non-zero weights per class, choosing among the path points within that budget the one
with the best validation top-1; the chosen support is then refitted without the shrinkage
(relaxed lasso) when that does not lower validation top-1. Accuracy at NEC = 5 is then a
trained number, not a truncation.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from clipcbm.heads.cbm.elastic_net import fit_elastic_net
from clipcbm.heads.chunks import iter_chunks
from clipcbm.heads.eval.metrics import truncate_rows
from clipcbm.heads.features import FEATURES

log = logging.getLogger(__name__)


def _activations(model, data, rows) -> torch.Tensor:
    """Bottleneck activations (n, |D|) of train rows `rows`, chunk by chunk, no grad."""
    x = data.train.x[rows]
    with torch.no_grad():
        return torch.cat(
            [model.activations(FEATURES["cbm"](x[sl], data.text)) for sl in iter_chunks(len(x))]
        )


def _refit_on_support(a, y, weight, bias, l2: float = 1e-4, iters: int = 200):
    """The selected support with the shrinkage taken out (relaxed lasso): CE + l2/2 ||W||^2 over
    the non-zero entries only, from the path's weights, by full-batch L-BFGS (zeros stay zero)."""
    mask = weight != 0
    mu, sd = a.mean(0), a.std(0).clamp_min(1e-6)
    z = (a - mu) / sd  # standardised, as the path was fitted (scale-free l2)
    w = (weight * sd).clone().requires_grad_(True)
    b = (bias + weight @ mu).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        wm = w * mask
        loss = F.cross_entropy(z @ wm.T + b, y) + 0.5 * l2 * wm.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        wm = (w * mask) / sd
        return wm, b - wm @ mu


def _top1(a, y, weight, bias) -> float:
    return float(((a @ weight.T + bias).argmax(1) == y).double().mean())


def fit_sparse_linear(a_fit, y_fit, a_val, y_val, n_classes: int, config) -> tuple:
    """An elastic-net path on features a (n, F) stopped at config.nec non-zero weights per
    class, the chosen support refitted without the shrinkage when that does not lower
    validation top-1: (weight (|C|, F), bias (|C|,), info)."""
    path = fit_elastic_net(
        a_fit, y_fit, n_classes=n_classes, target_nec=config.nec, x_val=a_val, y_val=y_val,
        progress=config.progress, seed=config.seed, max_iter=config.path_max_iter,
    )  # fmt: skip
    w0, b0 = path.weight.to(a_fit), path.bias.to(a_fit)
    w1, b1 = _refit_on_support(a_fit, y_fit, w0, b0)
    val0, val1 = _top1(a_val, y_val, w0, b0), _top1(a_val, y_val, w1, b1)
    refit = val1 >= val0
    w, b = (w1, b1) if refit else (w0, b0)
    log.info("elastic-net final layer: lambda %.3g, NEC %.2f, val top-1 %.4f shrunk / %.4f "
             "refitted on the support (%s kept)", path.lam, path.nec, val0, val1,
             "refit" if refit else "shrunk")  # fmt: skip
    info = {"lam": path.lam, "nec": path.nec, "path": path.path, "val_top1_shrunk": val0,
            "val_top1_refit": val1, "refit_kept": refit}  # fmt: skip
    return w, b, info


def fit_anchored_final_layer(model, data, config, anchor: tuple, *,
                             labels_used: bool = False) -> dict:  # fmt: skip
    """Replace model.fc by the anchored logistic regression toward anchor = (W0, b0) on all
    train rows (see the module docstring); returns what was chosen.

    labels_used: the concept layer or the anchor was fitted on the fit rows' labels (SGD moved
    the CBL, or `--fc-init prior`). Cross-validating over those rows is then optimistic, so the
    held-out estimate is `info["fit_rows_only"]`: the chosen C refitted on the fit rows alone
    and scored on the validation rows (which neither the CBL nor the anchor was fitted on)."""
    from clipcbm.heads.baselines.logreg import (
        fit_logreg_path,  # heads.baselines imports this module
    )
    from clipcbm.heads.baselines.probe import cv_fit, l2_for_c

    fit_idx, val_idx = data.solver_rows(model.fc.in_features, config.solver_gib)
    rows = torch.cat([fit_idx, val_idx])
    a = _activations(model, data, rows)
    w0, b0 = anchor
    start = torch.cat([w0, b0[:, None]], 1).to(a.device, torch.float64)
    y, n_fit = data.train.y[rows], len(fit_idx)
    w, b, info = cv_fit(a, y, n_fit, n_classes=data.n_classes,
                        c_grid=config.anchor_c_grid, config=config, anchor=start)  # fmt: skip
    if labels_used and n_fit < len(rows) and not info["selection"].startswith("hold-out"):
        (l2,) = l2_for_c((info["C"],), a[:n_fit], n_fit)
        est = fit_logreg_path(a[:n_fit], y[:n_fit], a[n_fit:], y[n_fit:],
                              n_classes=data.n_classes, l2_grid=(l2,),
                              max_iter=config.probe_max_iter, anchor=start)  # fmt: skip
        info["fit_rows_only"] = {"top1": est.val_top1_per_l2[l2], "val_rows": len(rows) - n_fit}
    info["solver_rows"] = data.solver_rows_info(fit_idx, val_idx)
    with torch.no_grad():
        info["moved"] = float(torch.cat([w - w0, (b - b0)[:, None]], 1).norm()
                              / start.norm().clamp_min(1e-12))  # fmt: skip
        model.fc.weight.copy_(w.to(model.fc.weight))
        model.fc.bias.copy_(b.to(model.fc.bias))
    log.info("anchored final layer: C %g by %s (CV top-1 %.4f), moved %.3f of the start's norm",
             info["C"], info["selection"], info["cv_top1_per_C"][repr(info["C"])],
             info["moved"])  # fmt: skip
    return info


def fit_sparse_final_layer(model, data, config, prior: tuple | None = None) -> dict:
    """Replace model.fc by the elastic-net path's point at config.nec; returns the path info.

    The path point's weights are shrunk by the penalty; they are refitted on their own support
    (same zeros, so the same NEC) and the refit is kept when its validation top-1 is at least
    the shrunk layer's.

    prior = (W, b): the anchored dense layer (`--final-fit anchored`). Its NEC-truncation (the
    round(nec) largest |w| of each class, as acc@NEC reads a dense layer) is a second candidate:
    with a few shots the path, fitted from zero on a handful of rows, forgets the zero-shot
    start that the anchored layer keeps. The prior replaces the path only when its validation
    top-1 is strictly higher (ties keep the path, the field's layer: over a TopK bottleneck the
    truncated prior can leave an image with none of its class's 5 concepts active);
    `info["chosen"]` says which.
    """
    fit_idx, val_idx = data.solver_rows(model.fc.in_features, config.solver_gib)
    a_fit = _activations(model, data, fit_idx)
    a_val = _activations(model, data, val_idx)
    y_fit, y_val = data.train.y[fit_idx], data.train.y[val_idx]
    w, b, info = fit_sparse_linear(a_fit, y_fit, a_val, y_val, data.n_classes, config)
    info["solver_rows"] = data.solver_rows_info(fit_idx, val_idx)
    info["chosen"] = "elastic-net path"
    if prior is not None:
        wp = truncate_rows(prior[0].to(a_fit), max(1, round(config.nec)))
        bp = prior[1].to(a_fit)
        path_val, prior_val = _top1(a_val, y_val, w, b), _top1(a_val, y_val, wp, bp)
        info.update(val_top1_path=path_val, val_top1_prior=prior_val)
        if prior_val > path_val:
            w, b, info["chosen"] = wp, bp, "the anchored layer truncated to NEC"
        log.info("elastic-net final layer: kept %s (val top-1 path %.4f, truncated prior %.4f)",
                 info["chosen"], path_val, prior_val)  # fmt: skip
    with torch.no_grad():
        model.fc.weight.copy_(w.to(model.fc.weight))
        model.fc.bias.copy_(b.to(model.fc.bias))
    return info
