"""PNG renderings for the reading screen and the analysis report: views, heat maps, thumbnails."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import UnreadableInputError

HEATMAP_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True)
class RenderedViews:
    """8-bit PNGs of both views on one shared count scale, and the suggested upper window level."""

    anterior_png: bytes
    posterior_png: bytes
    upper: float  # fraction of the shared maximum at which the default window saturates


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def suggested_upper(anterior: np.ndarray, posterior: np.ndarray) -> float:
    """Upper window level (fraction of the maximum) that shows the skeleton without the bladder's glare.

    Uses the 99.5th percentile of the pixels that hold counts: bone is then well lit while the few hottest
    pixels (bladder, injection site) saturate, as on a camera console's default display.
    """
    values = np.concatenate([anterior.ravel(), posterior.ravel()]).astype(np.float64)
    peak = float(values.max())
    counted = values[values > 0]
    if peak <= 0 or counted.size == 0:
        return 1.0
    return float(np.clip(np.percentile(counted, 99.5) / peak, 0.05, 1.0))


def render_views(anterior: np.ndarray, posterior: np.ndarray) -> RenderedViews:
    """Map counts linearly to 0..255 on the maximum of both views (posterior kept as stored, seen from behind)."""
    peak = float(max(np.max(anterior), np.max(posterior), 0.0))
    scale = 255.0 / peak if peak > 0 else 0.0

    def to_uint8(view: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(np.nan_to_num(view, nan=0.0) * scale), 0, 255).astype(np.uint8)

    return RenderedViews(
        anterior_png=_png(to_uint8(anterior)),
        posterior_png=_png(to_uint8(posterior)),
        upper=suggested_upper(anterior, posterior),
    )


def _colour_map(array: np.ndarray) -> np.ndarray:
    """Heat-map values scaled to their maximum and coloured with matplotlib's 'inferno' (RGB uint8)."""
    from matplotlib import colormaps

    array = np.nan_to_num(np.asarray(array, dtype=np.float64), nan=0.0)
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return (colormaps["inferno"](scaled)[..., :3] * 255).astype(np.uint8)


def render_heatmap(path: Path) -> bytes:
    """Read a heat map (an image file, or a .npy of one map or of two maps for the two views) as PNG bytes."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise UnreadableInputError(path, "heat map file not found")
    if suffix in HEATMAP_IMAGE_SUFFIXES:
        try:
            with Image.open(path) as image:
                return _png(np.asarray(image.convert("RGB")))
        except (UnidentifiedImageError, OSError) as error:
            raise UnreadableInputError(path, f"heat map image cannot be read ({error})") from error
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise UnreadableInputError(path, f"heat map array cannot be read ({error})") from error
        array = np.squeeze(array)
        if array.ndim == 2:
            return _png(_colour_map(array))
        if array.ndim == 3 and array.shape[0] == 2:
            gap = np.zeros((array.shape[1], max(2, array.shape[2] // 16), 3), dtype=np.uint8)
            return _png(np.concatenate([_colour_map(array[0]), gap, _colour_map(array[1])], axis=1))
        raise UnreadableInputError(path, f"heat map array must be H x W or 2 x H x W, got shape {array.shape}")
    raise UnreadableInputError(path, f"heat map must be {', '.join(HEATMAP_IMAGE_SUFFIXES)} or .npy, not '{suffix}'")


def thumbnail(anterior_png: Path, posterior_png: Path, *, upper: float, height: int = 240) -> bytes:
    """Both views side by side, windowed at `upper` and shown black on white as bone scans are read."""
    views = []
    for path in (anterior_png, posterior_png):
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"), dtype=np.float64)
        windowed = np.clip(grey / (255.0 * max(upper, 1e-3)), 0.0, 1.0)
        inverted = (255 - np.rint(windowed * 255)).astype(np.uint8)
        width = max(1, round(inverted.shape[1] * height / inverted.shape[0]))
        views.append(np.asarray(Image.fromarray(inverted).resize((width, height), Image.Resampling.LANCZOS)))
    gap = np.full((height, max(4, height // 40)), 255, dtype=np.uint8)
    return _png(np.concatenate([views[0], gap, views[1]], axis=1))
