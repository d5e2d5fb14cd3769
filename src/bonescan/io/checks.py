"""What a whole-body view must look like to be accepted.

Geometry rule: a whole-body bone-scan view is acquired head to feet, so it is taller than wide. A view is accepted
when it is a 2-D image with at least MIN_ROWS (256) rows and rows / columns >= MIN_ASPECT (2.0). Typical matrices
are 1024 x 256 or 2048 x 512 (ratio 4); an adult body is about three times longer than wide, so 2.0 leaves room
for cropped exports while refusing square statics such as a 256 x 256 thyroid or a 128 x 128 spot view.

Count rule: every pixel finite, and at least one pixel above zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import NotABoneScanError

MIN_ROWS = 256
MIN_ASPECT = 2.0


def check_whole_body(image: np.ndarray, source: str | Path, view: str) -> None:
    """Refuse a view whose shape cannot be a whole-body scan (see the module's geometry rule)."""
    if image.ndim != 2:
        raise NotABoneScanError(source, f"{view} view has shape {image.shape}; a whole-body view is one 2-D image")
    rows, cols = image.shape
    if rows < MIN_ROWS or rows < MIN_ASPECT * cols:
        raise NotABoneScanError(
            source,
            f"a {rows} x {cols} (rows x columns) {view} view cannot be a whole-body scan: whole-body views have"
            f" at least {MIN_ROWS} rows and are at least {MIN_ASPECT:g} times taller than wide",
        )


def check_counts(image: np.ndarray, source: str | Path, view: str) -> list[str]:
    """Refuse non-finite or all-zero counts; return warnings for suspicious but usable values."""
    finite = np.isfinite(image)
    if not finite.all():
        bad = int(np.size(image) - finite.sum())
        raise NotABoneScanError(source, f"{view} view has {bad} non-finite pixel values (NaN or infinity)")
    if not (image > 0).any():
        raise NotABoneScanError(source, f"{view} view holds no counts (every pixel is zero or below)")
    warnings = []
    if image.min() < 0:
        warnings.append(f"{view} view has negative values (minimum {float(image.min()):g}); counts cannot be negative")
    return warnings
