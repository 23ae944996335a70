"""`fit-head --features sae|adapter`: a final layer over the features of a fitted transform.

With an SAE (`fit-sae`) this is Discover-then-Name (Rao et al. 2024): the bottleneck is the
SAE's latents, each named by its nearest text embedding, and the final layer maps latent codes
to classes — dense (logistic regression, L2 chosen on validation, as the probe) or sparse
(`--final-layer elastic-net`, stopped at `--nec` non-zero weights per class, as the CBM's
final layer). With a contrastive adapter (`fit-adapter`) it is a linear probe on the adapter's
projection. The transform is frozen; its directory, weights sha256 and model fingerprint are
recorded in the head, and a head is refused on a cache of another model.
"""

from __future__ import annotations

import torch
from torch import nn

from clipcbm.heads.baselines.probe import fit_logreg
from clipcbm.heads.cbm.final_layer import fit_sparse_linear
from clipcbm.heads.chunks import iter_chunks
from clipcbm.heads.io.data import HeadData


def features_of(data: HeadData, rows) -> torch.Tensor:
    """Transform features (n, F) of train rows `rows`, chunk by chunk."""
    x = data.train.x[rows]
    return torch.cat([data.text.transform(x[sl]) for sl in iter_chunks(len(x))])


def transform_record(tr) -> dict:
    """What a head records of the transform it reads (checked again on load)."""
    return {"kind": tr.kind, "path": str(tr.path), "sha256": tr.sha256,
            "model_fingerprint": tr.model_fingerprint, "n_features": tr.out_dim}  # fmt: skip


def fit_features_head(data: HeadData, config, device) -> tuple[nn.Linear, dict]:
    tr = data.text.transform
    if config.final_layer == "dense":
        layer, info = fit_logreg(data, "features", config, device)
    else:
        y_fit, y_val = data.train.y[data.train_idx], data.train.y[data.val_idx]
        a_fit, a_val = features_of(data, data.train_idx), features_of(data, data.val_idx)
        w, b, en = fit_sparse_linear(a_fit, y_fit, a_val, y_val, data.n_classes, config)
        layer = nn.Linear(tr.out_dim, data.n_classes).to(device)
        with torch.no_grad():
            layer.weight.copy_(w.to(layer.weight))
            layer.bias.copy_(b.to(layer.bias))
        info = {"elastic_net": en}
    info["transform"] = transform_record(tr)
    info["final_layer"] = config.final_layer
    return layer, info
