"""SAE directories on disk, in SAELens's file names and tensor layout, and their loaders.

    <dir>/sae_weights.safetensors  W_enc (E, F), b_enc (F,), W_dec (F, E), b_dec (E,) fp32
                                   (+ threshold (F,) for a BatchTopK SAE, JumpReLU-style)
    <dir>/cfg.json                 SAELens keys (architecture, d_in, d_sae, k,
                                   apply_b_dec_to_input, normalize_activations, dtype, device,
                                   metadata) and ours under "clipcbm": expansion, k, k_aux,
                                   selection, centring mean, seed, cache fingerprint,
                                   model_fingerprint, weights sha256, metrics, training record
    <dir>/metrics.json             the held-out metrics (fvu, cosine, l0, dead_fraction, ...)
    <dir>/names.csv                latent, name, cosine, runner_up, runner_up_cosine, source,
                                   alive

SAELens's forward with these tensors is exactly ours: z = TopK(ReLU)((x − b_dec) @ W_enc +
b_enc), x̂ = z @ W_dec + b_dec. An SAE is refused on a cache of another model
(`cache.layout.model_fingerprint`), and damaged files are clear errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clipcbm.cache.layout import model_fingerprint
from clipcbm.core import atomic
from clipcbm.core.outputs import Ownership
from clipcbm.heads.errors import HeadCacheMismatchError, HeadFormatError
from clipcbm.heads.io.evaldata import write_json
from clipcbm.heads.io.output import write_errors
from clipcbm.heads.sae.model import TopKSAE
from clipcbm.heads.sae.naming import display_names
from clipcbm.heads.transforms import FeatureTransform

WEIGHTS = "sae_weights.safetensors"  # SAELens's SAE_WEIGHTS_FILENAME
CONFIG = "cfg.json"  # SAELens's SAE_CFG_FILENAME
METRICS = "metrics.json"
NAMES = "names.csv"
FORMAT = "clipcbm-sae"
FORMAT_VERSION = 1
TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")


def saelens_config(sae: TopKSAE, info: dict) -> dict:
    """The SAELens-v6-style part of cfg.json (what an SAELens user reads first)."""
    return {
        "architecture": "jumprelu" if sae.selection == "batchtopk" else "topk",
        "d_in": sae.embed_dim,
        "d_sae": sae.n_latents,
        "k": sae.k,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "dtype": "float32",
        "device": "cpu",
        "metadata": {
            "model_name": info.get("model_id"),
            "hook_name": "clip.image_embeds (projected, L2-normalised)",
            "dataset_path": info.get("cache_path"),
            "model_class_name": "CLIPModel",
        },
    }


def _is_sae_dir(d: Path) -> bool:
    cfg = json.loads((d / CONFIG).read_text()) if (d / CONFIG).is_file() else None
    ours = cfg.get("clipcbm") if isinstance(cfg, dict) else None
    return isinstance(ours, dict) and ours.get("format") == FORMAT and (d / WEIGHTS).is_file()


# what `--overwrite` may replace (core.outputs): a directory fit-sae wrote, holding only its files
OWNERSHIP = Ownership("an SAE directory", "fit-sae", _is_sae_dir,
                      frozenset({WEIGHTS, CONFIG, METRICS, NAMES}))  # fmt: skip


def save_sae(out_dir, sae: TopKSAE, info: dict, metrics: dict, names: pd.DataFrame | None) -> Path:
    """Write the SAE directory atomically (a temporary sibling renamed into place)."""
    tensors = {n: getattr(sae, n).detach().float().cpu().contiguous() for n in TENSORS}
    if sae.selection == "batchtopk":
        tensors["threshold"] = sae.threshold.detach().float().cpu().expand(sae.n_latents).clone()
    ours = {**info, "format": FORMAT, "format_version": FORMAT_VERSION, "metrics": metrics}
    need = sum(t.numel() * t.element_size() for t in tensors.values())
    with write_errors(out_dir, "the SAE", need), atomic.directory(out_dir) as tmp:
        save_file(tensors, tmp / WEIGHTS, metadata={"format": FORMAT})
        ours["weights_sha256"] = atomic.sha256_file(tmp / WEIGHTS)
        write_json(tmp / CONFIG, {**saelens_config(sae, info), "clipcbm": ours})  # NaN -> null
        write_json(tmp / METRICS, metrics)
        if names is not None:
            atomic.write_text(tmp / NAMES, names.to_csv(index=False))
    return Path(out_dir)


def _read_config(d: Path) -> dict:
    if not d.is_dir():
        raise HeadFormatError(f"SAE directory {d} does not exist; pass the --out of `fit-sae`")
    for name in (WEIGHTS, CONFIG):
        if not (d / name).is_file():
            raise HeadFormatError(
                f"{d} is not an SAE directory: {name} is missing (expected {WEIGHTS} + "
                f"{CONFIG}, as written by `clipcbm fit-sae`)"
            )
    try:
        cfg = json.loads((d / CONFIG).read_text())
        ours = cfg["clipcbm"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise HeadFormatError(f"{d / CONFIG} is not an SAE config of fit-sae ({e!r})") from e
    if ours.get("format") != FORMAT:
        raise HeadFormatError(f"{d / CONFIG} is not a {FORMAT} config")
    version = ours.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise HeadFormatError(
            f"{d} was written in SAE format version {version!r}, newer than this version "
            f"reads ({FORMAT_VERSION}); upgrade clipcbm to load it"
        )
    if atomic.sha256_file(d / WEIGHTS) != ours.get("weights_sha256"):
        raise HeadFormatError(
            f"{d / WEIGHTS} does not match the sha256 recorded in {CONFIG}: the weights are "
            "damaged or belong to another run — fit the SAE again"
        )
    return cfg


def load_sae(sae_dir, device="cpu") -> tuple[TopKSAE, dict]:
    """(model on `device` in eval mode, cfg.json as a dict); damage is a HeadFormatError."""
    d = Path(sae_dir)
    cfg = _read_config(d)
    ours = cfg["clipcbm"]
    sae = TopKSAE(int(cfg["d_in"]), int(cfg["d_sae"]), int(cfg["k"]), ours["selection"])
    try:
        tensors = load_file(d / WEIGHTS, device="cpu")
        sae.load_state_dict({n: tensors[n] for n in TENSORS}, strict=False)
    except (SafetensorError, RuntimeError, OSError, KeyError) as e:
        raise HeadFormatError(
            f"{d / WEIGHTS} cannot be loaded as this SAE ({e}); fit it again"
        ) from e
    if "threshold" in tensors:
        sae.threshold.fill_(float(tensors["threshold"][0]))
    sae.centring_mean = torch.tensor(ours["centring_mean"], dtype=torch.float32)
    sae.to(device).eval()
    sae.centring_mean = sae.centring_mean.to(device)
    return sae, cfg


def load_names(sae_dir) -> pd.DataFrame | None:
    path = Path(sae_dir) / NAMES
    return pd.read_csv(path, keep_default_na=False) if path.is_file() else None


def check_model(cfg: dict, cache, what: str = "SAE") -> None:
    """Refuse a cache whose embedding space (model fingerprint) is not the SAE's."""
    ours = cfg["clipcbm"]
    have = model_fingerprint(cache.metadata)
    if int(cache.embed_dim) != int(cfg["d_in"]) or have != ours["model_fingerprint"]:
        raise HeadCacheMismatchError(
            f"the {what} was fitted on embeddings of another model (model fingerprint "
            f"{ours['model_fingerprint'][:12]}..., E={cfg['d_in']}); cache {cache.path} has "
            f"{have[:12]}..., E={cache.embed_dim}. Use a cache embedded with "
            f"{ours.get('model_id')!r}, or fit an SAE on this one"
        )


def load_feature_transform(path: Path, device) -> FeatureTransform:
    """`fit-head --features sae`: unit image embeddings (B, E) -> SAE codes (B, F)."""
    sae, cfg = load_sae(path, device)
    names = load_names(path)
    alive = names["alive"].to_numpy(bool) if names is not None and "alive" in names else None
    ours = cfg["clipcbm"]

    def fn(x: torch.Tensor) -> torch.Tensor:
        return sae.codes(sae.pre_activations(x.to(sae.W_enc.device)))

    return FeatureTransform(
        kind="sae",
        path=Path(path),
        sha256=ours["weights_sha256"],
        model_fingerprint=ours["model_fingerprint"],
        names=display_names(names, sae.n_latents, alive),
        fn=fn,
        in_dim=sae.embed_dim,
    )


def alive_mask(names: pd.DataFrame | None, n_latents: int) -> np.ndarray:
    if names is None or "alive" not in names:
        return np.ones(n_latents, bool)
    return names["alive"].to_numpy(bool)
