"""PNG figures: explanation bar charts, confusion matrices, comparison plots.

Figures are `matplotlib.figure.Figure` objects drawn on an Agg canvas and written atomically;
pyplot and the global backend are never touched, so importing this module inside a notebook
does not change the notebook's backend.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clipcbm.core import atomic

MAX_TICK_LABELS = 40  # above this many classes the axes carry no class names
MAX_LABEL_CHARS = 40  # longer concept names are cut with an ellipsis


def _short(text: str) -> str:
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"


def new_figure(figsize, ncols: int = 1):
    """A Figure on its own Agg canvas and its axes (one, or `ncols` side by side); no pyplot."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, (fig.add_subplot() if ncols == 1 else fig.subplots(1, ncols))


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Write `fig` as a PNG at `path`, atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic.write_bytes(path, buf.getvalue())


def _figure(path: Path, figsize):
    return new_figure(figsize)


def _save(fig, ax, path: Path, title: str, dpi: int) -> Path:
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path, dpi)


def plot_contributions(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Horizontal bars of `contribution` per concept (largest on top), activation annotated."""
    n = len(table)
    fig, ax = _figure(path, (8, 1.2 + 0.4 * max(n, 1)))
    y = np.arange(n)[::-1]
    colors = ["tab:green" if v >= 0 else "tab:red" for v in table["contribution"]]
    ax.barh(y, table["contribution"], color=colors)
    ax.set_yticks(y, [_short(str(c)) for c in table["concept"]])
    for yi, c, a in zip(y, table["contribution"], table["activation"], strict=True):
        ax.annotate(
            f" a={a:.3g}", (c, yi), va="center", ha="left" if c >= 0 else "right", fontsize=8
        )
    ax.axvline(0, color="black", linewidth=0.8)
    ax.margins(x=0.15)  # room for the activation labels at the bar ends
    ax.set_xlabel("contribution to the predicted class score")
    return _save(fig, ax, path, title, dpi=120)


def plot_confusion(cm: np.ndarray, classes, path: Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows = true class) as an image."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(classes)
    size = min(4 + 0.25 * n, 14)
    fig, ax = _figure(path, (size, size))
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= MAX_TICK_LABELS:
        names = [_short(str(c)) for c in classes]
        ax.set_xticks(np.arange(n), names, rotation=90, fontsize=7)
        ax.set_yticks(np.arange(n), names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    return _save(fig, ax, path, title, dpi=100)
