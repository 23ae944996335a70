"""Starts of a concept bottleneck: the final layer's init and the class-concept links.

`--fc-init` (the heads issue: never start below the baseline):
- zero-shot: W_F, b solve the ridge least squares  min ||A W_F^T + b - Z||^2 + rho ||W_F||^2
  over the fit rows and `pseudo_rows` more (below), where A = the step-0 activations (W_CBL
  psi, through the bottleneck) and Z = alpha * I C^T the zero-shot logits.
  Pseudo-rows: with a few shots the fit rows alone do not pin W_F down (10 rows, 120 concepts:
  the ridge reproduces zero-shot on those rows and not on new ones; measured 26 % against
  zero-shot's 62 % on test). So M = clamp(2 |D|, 1,024, 8,192) unlabelled rows are drawn
  (seeded) from a Gaussian with the fit rows' mean and their Ledoit-Wolf-shrunk covariance,
  then unit-normalised like the cache's rows; the fit rows count as M more. The pseudo-rows
  need no label: the target is the zero-shot logits, known for any embedding.
  With the identity CBL and no TopK, A = alpha I D^T,
  so the solution is the data-weighted form of W_F D ~ C; where span(D) contains the class
  embeddings it is exact and step 0 predicts exactly what zero-shot predicts. We report the
  relative residual ||A W^T + b - Z|| / ||Z - mean Z|| and the step-0 agreement with zero-shot.
  With fewer fit rows N than concepts the same ridge problem is solved in its dual form (an
  N x N system instead of |D| x |D|: `ridge_weights`); its memory (`init_bytes`) is checked
  against what the device has before anything is allocated (`heads.memory.require`).
- prior: W_F = T, the class-concept cosine matrix cos(c_m, d_j) (CMS-like, interpretable:
  class m weighs each concept by how close it is to the class name), scaled so the logits have
  the zero-shot logits' spread; b = 0.
- zero: W_F = 0, b = 0 (the SPEC's start).

Links (`--positives class`): concept j is a positive of class m when the concept set links
it to m (`/text/concept_classes`), else the m nearest concepts to the class embedding.
"""

from __future__ import annotations

import logging
import math

import torch

from clipcbm.heads.cbm.positives import links_from_concept_classes, nearest_concept_links
from clipcbm.heads.features import FEATURES
from clipcbm.heads.memory import require
from clipcbm.heads.psi import class_logits

log = logging.getLogger(__name__)

RIDGE = 1e-3  # rho relative to the mean diagonal of A^T A (scale-free)


ZERO_SHOT_ROWS = 50_000  # the zero-shot init fits on at most this many (seeded) rows
PRIOR_ROWS = 10_000  # the prior init scales its logits on at most this many


def _fit_rows(data, max_rows: int = ZERO_SHOT_ROWS) -> torch.Tensor:
    """The fit rows the init sees (a seeded subset when there are more than max_rows)."""
    idx = data.train_idx
    if len(idx) > max_rows:
        g = torch.Generator().manual_seed(data.val_seed + 3)
        idx = idx[torch.randperm(len(idx), generator=g)[:max_rows].to(idx.device)]
    return data.train.x[idx]


PSEUDO_MIN, PSEUDO_MAX = 1_024, 8_192


def n_pseudo_rows(n_concepts: int) -> int:
    """How many pseudo-rows the zero-shot init adds: 2 |D|, clamped to [1,024, 8,192]."""
    return min(PSEUDO_MAX, max(PSEUDO_MIN, 2 * n_concepts))


def ledoit_wolf_shrinkage(xc: torch.Tensor) -> float:
    """Ledoit-Wolf (2004) shrinkage beta in [0, 1] of the covariance of centred rows xc (N, E)
    toward (tr S / E) I: beta = min(1, sum_i ||x_i x_i^T - S||^2 / N^2 / ||S - mu I||^2)."""
    n, e = xc.shape
    s = xc.T @ xc / n
    mu = float(s.diagonal().sum()) / e
    b2 = (float(xc.pow(2).sum(1).pow(2).sum()) - n * float(s.pow(2).sum())) / n**2
    d2 = float(s.pow(2).sum()) - 2 * mu * float(s.diagonal().sum()) + e * mu * mu
    return 1.0 if d2 <= 0 else min(1.0, max(0.0, b2 / d2))


def pseudo_rows(x: torch.Tensor, m: int, seed: int) -> tuple[torch.Tensor, float]:
    """(m unit rows drawn from N(mean x, (1 - beta) S + beta (tr S / E) I), beta): S the rows'
    covariance, beta its Ledoit-Wolf shrinkage; seeded, on x's device, fp32."""
    xd = x.double()
    mean = xd.mean(0)
    xc = xd - mean
    n, e = xc.shape
    beta = ledoit_wolf_shrinkage(xc) if n > 1 else 1.0
    iso = max(float(xc.pow(2).sum()) / max(n, 1) / e, 0.1 / e)  # tr S / E (>0 for one row)
    g = torch.Generator().manual_seed(seed)
    draw = torch.randn(m, n, generator=g, dtype=torch.float64).to(x.device) @ xc / math.sqrt(n)
    noise = torch.randn(m, e, generator=g, dtype=torch.float64).to(x.device)
    rows = mean + math.sqrt(1.0 - beta) * draw + math.sqrt(beta * iso) * noise
    return torch.nn.functional.normalize(rows, dim=1).float(), beta


def use_dual(n_rows: int, n_concepts: int) -> bool:
    """The ridge system is solved in the smaller of its two forms: N x N when N < |D|."""
    return n_rows < n_concepts


def ridge_weights(ac: torch.Tensor, zc: torch.Tensor, dual: bool) -> tuple[torch.Tensor, float]:
    """(W (|C|, |D|), rho) of min ||ac W^T - zc||^2 + rho ||W||^2 over centred rows ac (N, |D|),
    zc (N, |C|), rho = RIDGE * the mean diagonal of ac^T ac (= ||ac||_F^2 / |D|).

    primal: W^T = (ac^T ac + rho I)^-1 ac^T zc, a |D| x |D| system;
    dual:   W^T = ac^T (ac ac^T + rho I)^-1 zc, an N x N system -- the same W, since
            (A^T A + rho I) A^T = A^T (A A^T + rho I) gives (A^T A + rho I)^-1 A^T =
            A^T (A A^T + rho I)^-1 for every rho > 0 (equal up to float error, tested).
    The ridge is added to the diagonal in place (no identity matrix of either size)."""
    if dual:
        gram = ac @ ac.T  # (N, N)
        rho = RIDGE * float((gram.diagonal().sum() / ac.shape[1]).clamp_min(1e-12))
        gram.diagonal().add_(rho)
        return (ac.T @ torch.linalg.solve(gram, zc)).T, rho
    gram = ac.T @ ac  # (|D|, |D|)
    rho = RIDGE * float(gram.diagonal().mean().clamp_min(1e-12))
    gram.diagonal().add_(rho)
    return torch.linalg.solve(gram, ac.T @ zc).T, rho


def _activation_bytes(n_rows: int, n_concepts: int, topk: int) -> int:
    """Peak of `model.activations(psi)` over n_rows rows: psi and W_CBL psi (fp32), plus the
    zeros and the scattered copy of a TopK bottleneck."""
    return 4 * n_rows * n_concepts * (4 if topk else 2)


def init_bytes(how: str, n_rows: int, n_concepts: int, n_classes: int, topk: int = 0) -> int:
    """Memory the final-layer init `how` allocates on top of the model, at its peak (bytes).

    zero-shot on N = min(n_rows, 50,000) rows: the activations (fp32, then fp64 and centred in
    place: 8 N |D|) and the ridge system of `ridge_weights` in fp64 (the gram and solve's
    factorised copy: 16 min(N, |D|)^2); prior: the activations of <= 10,000 rows; zero: none."""
    if how == "zero":
        return 0
    n = min(n_rows, ZERO_SHOT_ROWS if how == "zero-shot" else PRIOR_ROWS)
    if how == "zero-shot":
        n += n_pseudo_rows(n_concepts)
    d, c = n_concepts, n_classes
    acts = _activation_bytes(n, d, topk)
    small = 8 * (4 * n * c + 3 * d * c)  # z, zc, fit, fit - z; rhs, W, its float copy
    if how == "prior":
        return acts + small
    m = n if use_dual(n, d) else d
    return max(acts, 12 * n * d, 8 * n * d + 16 * m * m) + small


def _zero_shot_init(model, data) -> dict:
    real = _fit_rows(data)
    d = model.n_concepts
    require(init_bytes("zero-shot", len(real), d, data.n_classes, model.topk), real.device,
            f"--fc-init zero-shot (the ridge fit on {len(real):,} fit rows + "
            f"{n_pseudo_rows(d):,} pseudo-rows x {d:,} concepts)",
            "Use --fc-init prior or --fc-init zero (they solve no ridge system), fewer concepts "
            "(`clipcbm concepts` with a stricter filter, then `embed --concepts`) or a smaller "
            "train split.")  # fmt: skip
    fake, beta = pseudo_rows(real, n_pseudo_rows(d), data.val_seed + 5)
    x = torch.cat([real, fake])
    dual = use_dual(len(x), d)
    with torch.no_grad():
        a = model.activations(FEATURES["cbm"](x, data.text)).double()  # (N, |D|)
        z = class_logits(x, data.text.class_emb, data.text.logit_scale).double()  # (N, |C|)
        a_mean, z_mean = a.mean(0), z.mean(0)
        ac, zc = a.sub_(a_mean), z - z_mean  # centred in place: one N x |D| array, not two
        w, rho = ridge_weights(ac, zc, dual)  # (|C|, |D|)
        b = z_mean - w @ a_mean
        fit = ac @ w.T + z_mean  # = a @ w.T + b
        resid = float((fit - z).norm() / zc.norm().clamp_min(1e-12))
        agree = float((fit[: len(real)].argmax(1) == z[: len(real)].argmax(1)).double().mean())
        model.fc.weight.copy_(w.float())
        model.fc.bias.copy_(b.float())
    log.info("fc-init zero-shot: relative residual %.4f, step-0 agreement with zero-shot %.4f "
             "on %d fit rows (+ %d pseudo-rows, shrinkage %.3f)", resid, agree, len(real),
             len(fake), beta)  # fmt: skip
    return {"method": "zero-shot", "relative_residual": resid, "agreement": agree,
            "rows": len(real), "pseudo_rows": len(fake), "shrinkage": beta, "ridge": rho,
            "form": "dual" if dual else "primal"}  # fmt: skip


def _prior_init(model, data) -> dict:
    t = data.text.class_emb @ data.text.concept_emb.T  # (|C|, |D|) cos(c_m, d_j)
    x = _fit_rows(data, PRIOR_ROWS)
    with torch.no_grad():
        a = model.activations(FEATURES["cbm"](x, data.text))
        z = class_logits(x, data.text.class_emb, data.text.logit_scale)
        raw = a @ t.T
        scale = float(z.std(1).mean() / raw.std(1).mean().clamp_min(1e-12))
        model.fc.weight.copy_(t * scale)
        model.fc.bias.zero_()
    return {"method": "prior", "scale": scale}


def _zero_init(model, data) -> dict:
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
    return {"method": "zero"}


FC_INITS = {"zero-shot": _zero_shot_init, "prior": _prior_init, "zero": _zero_init}


def init_final_layer(model, data, how: str) -> dict:
    """Set W_F, b of `model` by FC_INITS[how]; returns what was done (recorded in the head)."""
    return FC_INITS[how](model, data)


def class_links(data, config) -> torch.Tensor | None:
    """(|C|, |D|) bool positives per class for --positives class, else None."""
    if config.positives != "class" or config.loss not in ("contrastive", "sparse"):
        return None
    n_c, n_d = data.n_classes, len(data.text.concept_emb)
    links = None
    if config.positives_per_class == 0 and any(data.concept_classes):
        links = links_from_concept_classes(data.concept_classes, data.classes)
        if not bool(links.any(1).all()):
            log.info("%d class(es) have no linked concept; they get their nearest ones",
                     int((~links.any(1)).sum()))  # fmt: skip
    m = config.positives_per_class or max(1, min(32, n_d // n_c))
    near = nearest_concept_links(data.text.class_emb.cpu(), data.text.concept_emb.cpu(), m)
    links = near if links is None else torch.where(links.any(1, keepdim=True), links, near)
    return links.to(data.text.concept_emb.device)
