"""Heat maps: where in each view the network saw evidence of metastasis, drawn over the scan.

Method: Grad-CAM (captum's `LayerGradCam`) on the last convolutional stage of the shared trunk. Both views pass
through the trunk as one batch, so the hooked stage yields one map per view; Grad-CAM weights each view's channels
by the mean gradient of the metastasis logit and keeps the positive part. Why Grad-CAM: the head pools with
spatial-pyramid max pools and two FC layers, so plain CAM (which needs global average pooling straight into one
linear layer) does not apply; Grad-CAM needs one backward pass per batch, whereas Score-CAM-style methods need one
forward pass per channel (2048 for ResNet-50), far too slow for a CPU reading workflow.

Each map is upsampled from the trunk's grid (24 x 8 cells at 768 x 256 input) straight to the original acquisition
grid (e.g. 1024 x 256): preprocessing resizes without cropping, so both grids span the same field of view. The
posterior map is mirrored back when preprocessing mirrored the posterior view, so it lines up with the view as
stored (seen from behind). Both views share one scale (divided by the larger maximum of the two) so a view with
weaker evidence also looks weaker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .fileio import atomic_path
from .model import MultiViewNet


@dataclass
class ViewHeatMaps:
    """Grad-CAM maps of one study on the original grid, in [0, 1]; posterior in stored orientation."""

    anterior: np.ndarray
    posterior: np.ndarray


def grad_cam(
    model: MultiViewNet,
    inputs: torch.Tensor,
    original_shapes: Sequence[tuple[int, int]],
    mirror_posterior: bool = True,
) -> list[ViewHeatMaps]:
    """Grad-CAM per view for a batch (B x 2 x H x W network input); one `ViewHeatMaps` per case.

    `original_shapes[i]` is case i's acquisition grid (rows, columns); `mirror_posterior` says whether its
    posterior channel was mirrored by preprocessing (then the map is mirrored back).
    """
    if len(original_shapes) != inputs.shape[0]:
        raise ValueError(f"{len(original_shapes)} original shapes for a batch of {inputs.shape[0]}")
    model.eval()
    parameter = next(model.parameters())
    inputs = inputs.to(device=parameter.device, dtype=parameter.dtype)
    cam = LayerGradCam(model, model.trunk_last_layer())
    with torch.enable_grad():
        maps = cam.attribute(inputs, relu_attributions=True).detach().float()
    batch = inputs.shape[0]
    per_view = maps.reshape(batch, maps.shape[0] // batch, *maps.shape[2:])  # B x V x h x w, case-major
    results = []
    for case, shape in enumerate(original_shapes):
        views = _view_maps(per_view[case], model.config.views)
        grid = F.interpolate(views[:, None], size=tuple(shape), mode="bilinear", align_corners=False)[:, 0]
        grid = grid.clamp_min(0).cpu().numpy()
        peak = float(grid.max())
        if peak > 0:
            grid /= peak
        anterior, posterior = grid[0], grid[1]
        if mirror_posterior:
            posterior = posterior[:, ::-1]
        results.append(ViewHeatMaps(anterior=np.ascontiguousarray(anterior), posterior=np.ascontiguousarray(posterior)))
    return results


def _view_maps(maps: torch.Tensor, views: str) -> torch.Tensor:
    """2 x h x w maps (anterior, posterior); a single-view network gives zeros for the view it ignores."""
    if maps.shape[0] == 2:
        return maps
    empty = torch.zeros_like(maps[0])
    return torch.stack([maps[0], empty]) if views == "anterior" else torch.stack([empty, maps[0]])


def caption_text(probability: float, positive: bool, operating_point: str, threshold: float) -> str:
    """The overlay's caption: probability and the decision at the frozen operating point."""
    decision = "metastasis" if positive else "no metastasis"
    return f"P(metastasis) = {probability:.3f}  ->  {decision}\n(operating point {operating_point}, threshold {threshold:.3f})"


def render_overlay(
    anterior: np.ndarray,
    posterior: np.ndarray,
    heat: ViewHeatMaps,
    caption: str,
    title: str | None = None,
) -> np.ndarray:
    """Both views side by side, heat map over the counts, caption below; returns an H x W x 3 uint8 image.

    Counts are shown inverted (hot spots dark), as bone scans are usually read; the heat map's opacity follows
    its value, so regions without evidence leave the scan untouched.
    """
    rows, cols = anterior.shape
    width_px, height_px = 2 * cols + 60, rows + 170
    figure = Figure(figsize=(width_px / 100, height_px / 100), dpi=100)
    canvas = FigureCanvasAgg(figure)
    panels = (("Anterior", anterior, heat.anterior, ("R", "L")), ("Posterior", posterior, heat.posterior, ("L", "R")))
    for index, (name, counts, cam, sides) in enumerate(panels):
        axes = figure.add_axes((0.02 + index * 0.49, 130 / height_px, 0.47, rows / height_px))
        ceiling = float(np.percentile(counts, 99.5)) or float(counts.max()) or 1.0
        axes.imshow(counts, cmap="gray_r", vmin=0.0, vmax=ceiling, interpolation="nearest")
        axes.imshow(_heat_rgba(cam), interpolation="bilinear")
        axes.set_title(name, fontsize=10)
        for x, side in zip((0.03, 0.97), sides):  # the patient's right / left as displayed
            axes.text(x, 0.99, side, transform=axes.transAxes, ha="center", va="top", fontsize=9, color="tab:blue")
        axes.set_axis_off()
    figure.text(0.5, 0.06, caption, ha="center", va="center", fontsize=9)
    if title:
        figure.text(0.5, 0.015, title, ha="center", va="bottom", fontsize=7, color="dimgray")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _heat_rgba(cam: np.ndarray) -> np.ndarray:
    rgba = colormaps["jet"](np.clip(cam, 0.0, 1.0))
    rgba[..., 3] = 0.6 * np.clip(cam, 0.0, 1.0)
    return rgba


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB image as PNG atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return Path(path)
