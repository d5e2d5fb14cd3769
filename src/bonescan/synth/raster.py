"""Rasterising smooth primitives (blobs, tubes, filled shapes) into a pair of view canvases.

Every primitive is drawn once inside its own bounding box and added to the anterior and posterior canvases with
the attenuation weight of its depth, so the cost is proportional to the primitive's area, not the image's.
Canvases are in anterior layout: column grows towards the patient's left; the posterior view is mirrored at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Effective linear attenuation of 140 keV photons in soft tissue with scatter build-up (narrow beam is 0.15 /cm).
MU_PER_CM = 0.10


def depth_weights(depth: float, thickness_cm: float) -> tuple[float, float]:
    """Transmission to the anterior and posterior detectors of a source at `depth` (0 = anterior skin, 1 = back)."""
    return (
        float(np.exp(-MU_PER_CM * depth * thickness_cm)),
        float(np.exp(-MU_PER_CM * (1.0 - depth) * thickness_cm)),
    )


@dataclass
class ViewCanvas:
    """Expected-count images of both views being built (float32, anterior layout)."""

    anterior: np.ndarray
    posterior: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> "ViewCanvas":
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    def _window(self, r0: float, r1: float, c0: float, c1: float) -> tuple[slice, slice] | None:
        rows, cols = self.anterior.shape
        a, b = max(int(np.floor(r0)), 0), min(int(np.ceil(r1)) + 1, rows)
        c, d = max(int(np.floor(c0)), 0), min(int(np.ceil(c1)) + 1, cols)
        if a >= b or c >= d:
            return None
        return slice(a, b), slice(c, d)

    def _add(self, window: tuple[slice, slice], patch: np.ndarray, weights: tuple[float, float]) -> None:
        wa, wp = weights
        self.anterior[window] += wa * patch
        self.posterior[window] += wp * patch

    def blob(
        self,
        centre: tuple[float, float],
        sigma_along: float,
        sigma_across: float,
        angle: float,
        amplitude: float,
        weights: tuple[float, float],
    ) -> None:
        """Anisotropic Gaussian at (row, col); `angle` (radians) turns the long axis away from the row axis."""
        r, c = centre
        reach = 3.0 * max(sigma_along, sigma_across)
        window = self._window(r - reach, r + reach, c - reach, c + reach)
        if window is None:
            return
        yy = np.arange(window[0].start, window[0].stop, dtype=np.float32)[:, None] - r
        xx = np.arange(window[1].start, window[1].stop, dtype=np.float32)[None, :] - c
        cos, sin = np.cos(angle), np.sin(angle)
        along = yy * cos + xx * sin
        across = -yy * sin + xx * cos
        patch = np.exp(-0.5 * ((along / sigma_along) ** 2 + (across / sigma_across) ** 2))
        self._add(window, amplitude * patch, weights)

    def tube(
        self,
        points: np.ndarray,
        sigma: float,
        amplitude: float,
        weights: tuple[float, float],
    ) -> None:
        """Gaussian line of width `sigma` along a polyline of (row, col) points."""
        points = np.asarray(points, np.float32)
        reach = 3.0 * sigma
        window = self._window(
            points[:, 0].min() - reach, points[:, 0].max() + reach, points[:, 1].min() - reach, points[:, 1].max() + reach
        )
        if window is None:
            return
        d2 = _polyline_distance2(points, window)
        self._add(window, amplitude * np.exp(-0.5 * d2 / (sigma * sigma)), weights)

    def solid(
        self,
        points: np.ndarray,
        radius: float,
        amplitude: float,
        weights: tuple[float, float],
        combine_max: bool = False,
    ) -> None:
        """Projected thickness of a rounded cylinder of `radius` around a polyline (chord profile).

        With `combine_max` the canvas keeps the larger value instead of the sum, so overlapping body parts of one
        outline do not double their soft-tissue counts.
        """
        points = np.asarray(points, np.float32)
        window = self._window(
            points[:, 0].min() - radius, points[:, 0].max() + radius, points[:, 1].min() - radius, points[:, 1].max() + radius
        )
        if window is None:
            return
        d2 = _polyline_distance2(points, window)
        patch = amplitude * np.sqrt(np.maximum(1.0 - d2 / (radius * radius), 0.0))
        if combine_max:
            wa, wp = weights
            np.maximum(self.anterior[window], wa * patch, out=self.anterior[window])
            np.maximum(self.posterior[window], wp * patch, out=self.posterior[window])
        else:
            self._add(window, patch, weights)


def _polyline_distance2(points: np.ndarray, window: tuple[slice, slice]) -> np.ndarray:
    """Squared distance from every pixel of `window` to the nearest segment of the polyline."""
    yy = np.arange(window[0].start, window[0].stop, dtype=np.float32)[:, None]
    xx = np.arange(window[1].start, window[1].stop, dtype=np.float32)[None, :]
    best = None
    if len(points) == 1:
        return (yy - points[0, 0]) ** 2 + (xx - points[0, 1]) ** 2
    for (r0, c0), (r1, c1) in zip(points[:-1], points[1:]):
        dr, dc = r1 - r0, c1 - c0
        length2 = max(dr * dr + dc * dc, 1e-6)
        t = np.minimum(np.maximum(((yy - r0) * dr + (xx - c0) * dc) / length2, 0.0), 1.0)
        d2 = (yy - r0 - t * dr) ** 2 + (xx - c0 - t * dc) ** 2
        best = d2 if best is None else np.minimum(best, d2)
    return best
