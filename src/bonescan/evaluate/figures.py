"""Figures of the evaluation report as PNG bytes (matplotlib's Agg canvas, no display needed) and data URIs.

Figures are built on `matplotlib.figure.Figure` directly rather than pyplot, so nothing touches global state and
nothing needs a display.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .calibration import Calibration
from .operating_points import ConfusionCounts, roc_points
from .stats import fast_auc

# One curve: (name, labels, probabilities)
Curve = tuple[str, np.ndarray, np.ndarray]


def data_uri(png: bytes) -> str:
    """A PNG as a base64 data URI for embedding in HTML."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png(fig: Figure, dpi: int = 100) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _draw_roc(ax, curves: Sequence[Curve], title: str) -> None:
    ax.plot([0, 1], [0, 1], linestyle=":", color="0.6", linewidth=1)
    for name, labels, scores in curves:
        labels = np.asarray(labels)
        n_pos = int(labels.sum())
        if n_pos == 0 or n_pos == labels.size:
            ax.plot([], [], label=f"{name} (one class, n={labels.size})")
            continue
        fpr, tpr, _ = roc_points(labels, scores)
        auc = fast_auc(labels, np.asarray(scores, dtype=float))
        ax.plot(fpr, tpr, linewidth=1.6, label=f"{name} (AUC {auc:.3f}, n={labels.size})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1])  # fixed ticks: tick layout dominates drawing time
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1])
    ax.set_aspect("equal")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("Sensitivity")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    ax.grid(True, linewidth=0.3)


def roc_figure(panels: Sequence[tuple[str, Sequence[Curve]]], columns: int = 2) -> bytes:
    """ROC curves, one panel per (title, curves), AUC and n in each legend entry."""
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(4.0 * columns, 4.0 * rows))
    fig.subplots_adjust(left=0.1 / columns + 0.02, right=0.98, bottom=0.12 / rows, top=1 - 0.08 / rows,
                        wspace=0.3, hspace=0.35)
    for i, (title, curves) in enumerate(panels):
        _draw_roc(fig.add_subplot(rows, columns, i + 1), curves, title)
    return _png(fig)


def reliability_figure(curves: Sequence[tuple[str, Calibration]]) -> bytes:
    """Reliability diagram: observed positive rate against mean predicted probability per bin, bin counts below."""
    fig = Figure(figsize=(4.6, 5.2))
    ax = fig.add_axes((0.14, 0.36, 0.8, 0.58))
    hist = fig.add_axes((0.14, 0.1, 0.8, 0.17), sharex=ax)
    ax.plot([0, 1], [0, 1], linestyle=":", color="0.6", linewidth=1)
    width = 1.0 / max(len(curves), 1)
    for k, (name, cal) in enumerate(curves):
        used = [b for b in cal.bins if b.n]
        ax.plot([b.mean_probability for b in used], [b.observed_rate for b in used], marker="o", markersize=3,
                label=f"{name} (ECE {cal.ece:.3f}, Brier {cal.brier:.3f})")
        bin_width = (cal.bins[0].high - cal.bins[0].low) if cal.bins else 0.1
        hist.bar([b.low + bin_width * width * (k + 0.5) for b in cal.bins], [b.n for b in cal.bins],
                 width=bin_width * width * 0.9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Observed metastasis rate")
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    ax.grid(True, linewidth=0.3)
    ax.tick_params(labelbottom=False)
    hist.set_xlabel("Predicted probability")
    hist.set_ylabel("Cases", fontsize=8)
    return _png(fig)


def confusion_figure(counts: dict[str, tuple[float, ConfusionCounts]]) -> bytes:
    """One 2x2 confusion matrix per operating point {name: (threshold, counts)}."""
    fig = Figure(figsize=(2.4 * len(counts), 2.6))
    for i, (name, (threshold, c)) in enumerate(counts.items()):
        ax = fig.add_subplot(1, len(counts), i + 1)
        grid = np.array([[c.tp, c.fn], [c.fp, c.tn]])
        ax.imshow(grid, cmap="Blues", vmin=0, vmax=max(grid.max(), 1))
        for (r, q), value in np.ndenumerate(grid):
            ax.text(q, r, str(value), ha="center", va="center", fontsize=10,
                    color="white" if value > grid.max() / 2 else "black")
        ax.set_xticks([0, 1], ["called +", "called -"], fontsize=7)
        ax.set_yticks([0, 1], ["metastasis", "none"], fontsize=7)
        ax.set_title(f"{name} (t = {threshold:.3f})", fontsize=8)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.12, top=0.85, wspace=0.6)
    return _png(fig)


def view_thumbnail(image: np.ndarray, height: int = 160) -> bytes:
    """A small PNG of one whole-body view in the usual display: dark uptake on white, top 0.5 % of counts saturated."""
    counts = np.asarray(image, dtype=np.float32)
    top = float(np.percentile(counts, 99.5)) if counts.size else 0.0
    scaled = np.clip(counts / top, 0.0, 1.0) if top > 0 else np.zeros_like(counts)
    pixels = (255 * (1.0 - scaled)).astype(np.uint8)
    width = max(1, round(pixels.shape[1] * height / max(pixels.shape[0], 1)))
    thumb = Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
