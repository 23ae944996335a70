"""clipcbm: interpretable image classification on frozen CLIP.

The one top-level import name this distribution installs. Its stages are subpackages
(`clipcbm.pipeline`, `clipcbm.cache`, `clipcbm.heads`, `clipcbm.core`); the notebook API
(`clipcbm.api`) is re-exported here and imported on first use, so `import clipcbm.cache` stays
light (no torch).
"""

from __future__ import annotations

__version__ = "0.1.0"

API = (
    "open_cache", "fit_head", "load_head", "evaluate", "explain", "compare", "cms_eval", "FitHead",
    "FitHeadConfig", "EvaluateConfig", "ExplainConfig", "CompareConfig", "CmsEvalConfig",
)  # fmt: skip
__all__ = [*API, "__version__"]


def __getattr__(name: str):
    if name in API:
        from clipcbm import api

        return getattr(api, name)
    raise AttributeError(f"module 'clipcbm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
