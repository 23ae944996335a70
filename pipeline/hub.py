"""Where a model comes from: a local directory, the Hugging Face cache, or the Hub — decided once.

Offline, `from_pretrained` on a hub id retries for 30-80 s (printing warnings) before failing.
`pretrained_kwargs(model, revision)` decides up front: a local directory loads as is; with
`HF_HUB_OFFLINE`/`TRANSFORMERS_OFFLINE` set, or when the Hub's host name does not resolve
(checked once per process, 3 s at most), a model already in the local cache loads with
`local_files_only=True` and any other is one clear `ModelUnavailableError`.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from clipcbm.pipeline.errors import PipelineError

RESOLVE_TIMEOUT_S = 3.0
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class ModelUnavailableError(PipelineError):
    """The model is neither a local directory nor reachable (offline, not cached)."""


def _env_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in OFFLINE_ENV)  # fmt: skip


def hub_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""


@functools.cache
def host_resolves(host: str, timeout_s: float = RESOLVE_TIMEOUT_S) -> bool:
    """Does `host` resolve? getaddrinfo has no timeout, so it runs in a daemon thread."""
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=lookup, daemon=True)
    t.start()
    t.join(timeout_s)
    return bool(result and result[0])


def _cached(model: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(model, "config.json", revision=revision)
    return isinstance(hit, str)


def pretrained_kwargs(
    model: str, revision: str | None = None, flag: str = "--model /path/to/clip"
) -> dict:
    """Extra `from_pretrained` kwargs for `model` ({} or {"local_files_only": True}), or a
    ModelUnavailableError naming what to do when it cannot be loaded (`flag`: the option and
    an example value the message suggests, e.g. "--sim-model /path/to/model")."""
    if Path(model).expanduser().is_dir():
        return {}
    if model.startswith(("/", "./", "../", "~")):
        raise ModelUnavailableError(
            f"model directory {model} does not exist; pass a directory written by "
            "save_pretrained, or a Hugging Face model id"
        )
    offline = _env_offline()
    why = "HF_HUB_OFFLINE is set" if offline else ""
    if not offline and not host_resolves(hub_host()):
        offline, why = True, f"{hub_host()} cannot be resolved (no network?)"
    if not offline:
        return {}
    if _cached(model, revision):
        return {"local_files_only": True}
    raise ModelUnavailableError(
        f"cannot load model {model!r}: {why} and it is not in the local Hugging Face cache. "
        f"Pass {flag} (a directory written by save_pretrained), or run once "
        "with network access to cache it."
    )
