"""`--final-layer elastic-net`: the field's sparse final layer (Label-free CBM, VLG-CBM).

After the CBL is trained, W_F (+ b) is refitted on the fit rows' bottleneck activations along
an elastic-net path (heads.cbm.elastic_net: full-batch proximal gradient in torch, the
objective of GLM-SAGA, alpha = 0.99, standardised inputs folded back) and stopped at
`--nec` non-zero weights per class, choosing among the path points within that budget the one
with the best validation top-1. Accuracy at NEC = 5 is then a trained number, not a truncation.
"""

from __future__ import annotations

import logging

import torch

from heads.cbm.elastic_net import fit_elastic_net
from heads.features import FEATURES

log = logging.getLogger(__name__)


def _activations(model, data, rows) -> torch.Tensor:
    x = data.train.x[rows]
    with torch.no_grad():
        return torch.cat(
            [model.activations(FEATURES["cbm"](x[s : s + 8192], data.text)) for s in
             range(0, len(x), 8192)]
        )  # fmt: skip


def fit_sparse_final_layer(model, data, config) -> dict:
    """Replace model.fc by the elastic-net path's point at config.nec; returns the path info."""
    a_fit = _activations(model, data, data.train_idx)
    a_val = _activations(model, data, data.val_idx)
    path = fit_elastic_net(
        a_fit, data.train.y[data.train_idx], n_classes=data.n_classes, target_nec=config.nec,
        x_val=a_val, y_val=data.train.y[data.val_idx], progress=config.progress,
        seed=config.seed,
    )  # fmt: skip
    with torch.no_grad():
        model.fc.weight.copy_(path.weight.to(model.fc.weight))
        model.fc.bias.copy_(path.bias.to(model.fc.bias))
    log.info("elastic-net final layer: lambda %.3g, NEC %.2f", path.lam, path.nec)
    return {"lam": path.lam, "nec": path.nec, "path": path.path}
