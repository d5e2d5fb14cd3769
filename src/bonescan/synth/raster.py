"""Rasterising smooth primitives (blobs, tubes, filled shapes) into a pair of view canvases.

Each primitive covers only its own bounding window and is added to the anterior and posterior canvases with the
attenuation weight of its depth. A body has a few hundred small primitives, so drawing them one by one would cost
far more in per-call overhead than in arithmetic: primitives are queued, and the pixels of all windows of one kind
are listed end to end and computed in a handful of array operations. Canvases are in anterior layout: column grows
towards the patient's left; the posterior view is mirrored at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Effective linear attenuation of 140 keV photons in soft tissue with scatter build-up (narrow beam is 0.15 /cm).
MU_PER_CM = 0.10



def depth_weights(depth: float, thickness_cm: float) -> tuple[float, float]:
    """Transmission to the anterior and posterior detectors of a source at `depth` (0 = anterior skin, 1 = back)."""
    return math.exp(-MU_PER_CM * depth * thickness_cm), math.exp(-MU_PER_CM * (1.0 - depth) * thickness_cm)


@dataclass
class _Primitive:
    """One queued shape: its window (rows a:b, cols c:d), geometry and view weights."""

    kind: str  # blob | tube | solid
    a: int
    b: int
    c: int
    d: int
    geometry: tuple  # blob: (row, col, A, B, C) quadratic form; tube/solid: (segments (S, 4), sigma or radius)
    amplitude: float
    weights: tuple[float, float]


class ViewCanvas:
    """Expected-count images of both views being built (float32, anterior layout).

    `blob`, `tube` and `solid` queue a primitive; reading `anterior` or `posterior` draws what is queued. Summed
    primitives are order-independent; `combine_max` solids are drawn in order relative to summed ones (a change
    between the two modes draws the queue first).
    """

    def __init__(self, anterior: np.ndarray, posterior: np.ndarray):
        self._anterior = anterior
        self._posterior = posterior
        self._queue: list[_Primitive] = []
        self._queue_max = False  # whether the queued primitives combine by maximum instead of sum

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> "ViewCanvas":
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    @property
    def shape(self) -> tuple[int, int]:
        return self._anterior.shape

    @property
    def anterior(self) -> np.ndarray:
        self.flush()
        return self._anterior

    @property
    def posterior(self) -> np.ndarray:
        self.flush()
        return self._posterior

    def add_canvas(self, other: "ViewCanvas") -> None:
        """Add another canvas's images (e.g. the soft-tissue outline) to this one."""
        if self._queue_max:
            self.flush()
        self._anterior += other.anterior
        self._posterior += other.posterior

    def _window(self, r0: float, r1: float, c0: float, c1: float) -> tuple[int, int, int, int] | None:
        rows, cols = self._anterior.shape
        a, b = max(math.floor(r0), 0), min(math.ceil(r1) + 1, rows)
        c, d = max(math.floor(c0), 0), min(math.ceil(c1) + 1, cols)
        if a >= b or c >= d:
            return None
        return a, b, c, d

    def _queue_primitive(self, prim: _Primitive, combine_max: bool = False) -> None:
        if self._queue and combine_max != self._queue_max:
            self.flush()
        self._queue_max = combine_max
        self._queue.append(prim)

    def blob(
        self,
        centre: tuple[float, float],
        sigma_along: float,
        sigma_across: float,
        angle: float,
        amplitude: float,
        weights: tuple[float, float],
        reach_sigmas: float = 3.0,
    ) -> None:
        """Anisotropic Gaussian at (row, col); `angle` (radians) turns the long axis away from the row axis."""
        r, c = float(centre[0]), float(centre[1])
        reach = reach_sigmas * max(sigma_along, sigma_across)
        window = self._window(r - reach, r + reach, c - reach, c + reach)
        if window is None:
            return
        # (along / sa)^2 + (across / sx)^2 as a quadratic form A dy^2 + B dy dx + C dx^2.
        cos, sin = math.cos(angle), math.sin(angle)
        ia, ix = 1.0 / sigma_along**2, 1.0 / sigma_across**2
        form = (r, c, cos * cos * ia + sin * sin * ix, 2.0 * sin * cos * (ia - ix), sin * sin * ia + cos * cos * ix)
        self._queue_primitive(_Primitive("blob", *window, form, float(amplitude), weights))

    def tube(
        self,
        points: np.ndarray,
        sigma: float,
        amplitude: float,
        weights: tuple[float, float],
        reach_sigmas: float = 3.0,
    ) -> None:
        """Gaussian line of width `sigma` along a polyline of (row, col) points."""
        points = np.asarray(points, np.float64).reshape(-1, 2)
        reach = reach_sigmas * sigma
        (r0, c0), (r1, c1) = points.min(axis=0).tolist(), points.max(axis=0).tolist()
        window = self._window(r0 - reach, r1 + reach, c0 - reach, c1 + reach)
        if window is None:
            return
        self._queue_primitive(_Primitive("tube", *window, (_segments(points), float(sigma)), float(amplitude), weights))

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
        points = np.asarray(points, np.float64).reshape(-1, 2)
        (r0, c0), (r1, c1) = points.min(axis=0).tolist(), points.max(axis=0).tolist()
        window = self._window(r0 - radius, r1 + radius, c0 - radius, c1 + radius)
        if window is None:
            return
        self._queue_primitive(
            _Primitive("solid", *window, (_segments(points), float(radius)), float(amplitude), weights), combine_max)

    def flush(self) -> None:
        """Draw every queued primitive: one batch per kind and number of polyline segments."""
        if not self._queue:
            return
        groups: dict[tuple[str, int], list[_Primitive]] = {}
        for prim in self._queue:
            segments = 0 if prim.kind == "blob" else len(prim.geometry[0])
            groups.setdefault((prim.kind, segments), []).append(prim)
        combine = np.maximum if self._queue_max else np.add
        cols = self._anterior.shape[1]
        for (kind, _), prims in groups.items():
            pixels = _WindowPixels(prims, cols)
            values = _draw_batch(kind, prims, pixels)
            wa = np.array([p.weights[0] for p in prims], np.float32)
            wp = np.array([p.weights[1] for p in prims], np.float32)
            combine.at(self._anterior.reshape(-1), pixels.flat, values * pixels.spread(wa))
            combine.at(self._posterior.reshape(-1), pixels.flat, values * pixels.spread(wp))
        self._queue = []
        self._queue_max = False


class LabelCanvas:
    """A label map from labelled smooth shapes: each pixel takes the label whose shapes add up to the most there.

    Shapes are drawn with unit peak (their uptake does not matter, only where the bone is); a pixel where no label
    reaches `level` stays 0. Where two bones of different labels overlap, the boundary falls where their profiles
    cross, as a reader would draw it.
    """

    # Shapes are drawn out to 2 sigmas (a value of 0.14) instead of 3: labels need only where a bone reaches the
    # level (0.3 in synthetic truth, 1.55 sigmas), and the smaller windows hold a third of the pixels.
    REACH_SIGMAS = 2.0

    def __init__(self, shape: tuple[int, int], n_labels: int):
        # The queue of a ViewCanvas, with each primitive's label carried in its anterior weight.
        self._canvas = ViewCanvas.empty(shape)
        self.n_labels = n_labels

    def blob(self, label: int, centre: tuple[float, float], sigma_along: float, sigma_across: float,
             angle: float) -> None:
        self._canvas.blob(centre, sigma_along, sigma_across, angle, 1.0, (float(label), 0.0), self.REACH_SIGMAS)

    def tube(self, label: int, points: np.ndarray, sigma: float) -> None:
        self._canvas.tube(points, sigma, 1.0, (float(label), 0.0), self.REACH_SIGMAS)

    def labels(self, level: float) -> np.ndarray:
        """uint8 label map: per pixel the label of the largest summed profile, 0 where none reaches `level`."""
        rows, cols = self._canvas.shape
        stack = np.zeros((self.n_labels, rows * cols), np.float32)
        groups: dict[tuple[str, int], list[_Primitive]] = {}
        for prim in self._canvas._queue:
            segments = 0 if prim.kind == "blob" else len(prim.geometry[0])
            groups.setdefault((prim.kind, segments), []).append(prim)
        for (kind, _), prims in groups.items():
            pixels = _WindowPixels(prims, cols)
            label = pixels.spread(np.array([int(p.weights[0]) for p in prims], np.int64))
            np.add.at(stack.reshape(-1), label * (rows * cols) + pixels.flat, _draw_batch(kind, prims, pixels))
        # A running maximum over the layers: numpy's argmax along the first axis of this layout is ~10x slower.
        top = np.full(rows * cols, np.float32(level))
        best = np.zeros(rows * cols, np.uint8)
        for label in range(1, self.n_labels):
            wins = stack[label] >= top
            top[wins] = stack[label][wins]
            best[wins] = label
        return best.reshape(rows, cols)


class _WindowPixels:
    """Every pixel of every primitive's window, listed one after another (no padding between windows)."""

    def __init__(self, prims: list[_Primitive], cols: int):
        a = np.array([p.a for p in prims], np.int64)
        c = np.array([p.c for p in prims], np.int64)
        height = np.array([p.b for p in prims], np.int64) - a
        width = np.array([p.d for p in prims], np.int64) - c
        self.sizes = height * width
        owner = np.repeat(np.arange(len(prims)), self.sizes)
        offset = np.arange(int(self.sizes.sum())) - np.repeat(np.cumsum(self.sizes) - self.sizes, self.sizes)
        local_row = offset // width[owner]
        row = a[owner] + local_row
        col = c[owner] + offset - local_row * width[owner]
        self.flat = row * cols + col
        self.row = row.astype(np.float32)
        self.col = col.astype(np.float32)

    def spread(self, per_primitive: np.ndarray) -> np.ndarray:
        """A per-primitive value repeated over that primitive's pixels."""
        return np.repeat(per_primitive, self.sizes)


def _segments(points: np.ndarray) -> np.ndarray:
    """(S, 4) segments (r0, c0, r1, c1) of a polyline; a single point is one segment of length zero."""
    if len(points) == 1:
        return np.tile(points, 2)
    return np.hstack((points[:-1], points[1:]))


def _draw_batch(kind: str, prims: list[_Primitive], pixels: _WindowPixels) -> np.ndarray:
    """Amplitude-scaled values of a batch of primitives of one kind at their window pixels."""
    amp = pixels.spread(np.array([p.amplitude for p in prims], np.float32))
    if kind == "blob":
        g = np.array([p.geometry for p in prims], np.float32)  # (n, 5): row, col, A, B, C
        dy = pixels.row - pixels.spread(g[:, 0])
        dx = pixels.col - pixels.spread(g[:, 1])
        q = pixels.spread(g[:, 2]) * dy * dy
        q += pixels.spread(g[:, 3]) * dy * dx
        q += pixels.spread(g[:, 4]) * dx * dx
        q *= -0.5
        np.exp(q, out=q)
        q *= amp
        return q
    d2 = _polyline_distance2(np.array([p.geometry[0] for p in prims], np.float32), pixels)
    scale = pixels.spread(np.array([p.geometry[1] for p in prims], np.float32))
    if kind == "tube":
        d2 *= -0.5 / (scale * scale)
        np.exp(d2, out=d2)
    else:  # solid: chord length of a cylinder, sqrt(1 - d^2 / r^2)
        d2 /= -(scale * scale)
        d2 += 1.0
        np.maximum(d2, 0.0, out=d2)
        np.sqrt(d2, out=d2)
    d2 *= amp
    return d2


def _polyline_distance2(segments: np.ndarray, pixels: _WindowPixels) -> np.ndarray:
    """Squared distance from every window pixel to the nearest segment of its primitive's polyline.

    `segments` is (n, S, 4): all polylines of a batch have the same number of segments.
    """
    best = None
    for s in range(segments.shape[1]):
        r0, c0, r1, c1 = segments[:, s, 0], segments[:, s, 1], segments[:, s, 2], segments[:, s, 3]
        dr, dc = r1 - r0, c1 - c0
        inv_len2 = 1.0 / np.maximum(dr * dr + dc * dc, np.float32(1e-6))
        dy = pixels.row - pixels.spread(r0)
        dx = pixels.col - pixels.spread(c0)
        dr_px, dc_px = pixels.spread(dr), pixels.spread(dc)
        t = dy * pixels.spread(dr * inv_len2)
        t += dx * pixels.spread(dc * inv_len2)
        np.clip(t, 0.0, 1.0, out=t)
        dy -= t * dr_px
        dx -= t * dc_px
        dy *= dy
        dx *= dx
        dy += dx
        best = dy if best is None else np.minimum(best, dy, out=best)
    return best
