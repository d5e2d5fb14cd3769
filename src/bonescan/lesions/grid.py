"""Where the lesion network's pixels lie on the stored image: which stored pixels each one stands for.

The network sees a study resized to its input size (512 x 128 for cpu-small-lesion: half a 1024 x 256 whole-body
image each way) and its maps have that size. Hotspots are found on the maps at that size, a quarter of the stored
image's pixels and so about a quarter of the work, and shown at the stored size: each stored pixel takes the value
of the network pixel nearest its centre (the enlargement the region maps always had). Where a stored pixel needs
the network's probability itself (a hotspot's malignancy, the outline the BSI counts), it is read bilinearly, as
`torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` reads it, inside that hotspot's window only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class NetworkGrid:
    """The network's pixels (`network_shape`) on the stored image (`stored_shape`), both (rows, columns)."""

    network_shape: tuple[int, int]
    stored_shape: tuple[int, int]

    def __post_init__(self) -> None:
        if min(self.network_shape) < 1 or min(self.stored_shape) < 1:
            raise ValueError(f"empty grid: network {self.network_shape}, stored {self.stored_shape}")
        near, taps = [], []
        for net, stored in zip(self.network_shape, self.stored_shape):
            near.append(np.minimum(((np.arange(stored) + 0.5) * net / stored).astype(np.int64), net - 1))
            # interpolate's source coordinate, in float32 as its CPU kernel computes it
            source = np.maximum((np.arange(stored, dtype=np.float32) + np.float32(0.5)) * np.float32(net / stored)
                                - np.float32(0.5), np.float32(0.0))
            first = source.astype(np.int64)
            taps.append((first, np.minimum(first + 1, net - 1), (source - first).astype(np.float32)))
        object.__setattr__(self, "_near", tuple(near))
        object.__setattr__(self, "_taps", tuple(taps))

    @property
    def rows(self) -> np.ndarray:
        """For each stored row, the network row it shows."""
        return self._near[0]

    @property
    def cols(self) -> np.ndarray:
        """For each stored column, the network column it shows."""
        return self._near[1]

    @property
    def pixels_per_network_pixel(self) -> np.ndarray:
        """float [h, w]: how many stored pixels show each network pixel (0 where the stored image is smaller)."""
        rows, cols = (np.bincount(near, minlength=n) for near, n in zip(self._near, self.network_shape))
        return np.outer(rows, cols).astype(np.float64)

    @property
    def block(self) -> tuple[int, int] | None:
        """(rows, columns) of the stored pixels that show each network pixel when that is the same for all of them
        (the stored size a whole multiple of the network's), else None."""
        if any(stored % net for net, stored in zip(self.network_shape, self.stored_shape)):
            return None
        return tuple(stored // net for net, stored in zip(self.network_shape, self.stored_shape))

    def area(self, labels: np.ndarray, n_labels: int) -> np.ndarray:
        """Stored pixels of each label id of a network-size label image (ids below `n_labels`)."""
        labels = np.asarray(labels).ravel()
        if self.block is not None:
            return np.bincount(labels, minlength=n_labels)[:n_labels] * float(self.block[0] * self.block[1])
        return np.bincount(labels, self.pixels_per_network_pixel.ravel(), minlength=n_labels)[:n_labels]

    def network_mm(self, stored_mm: float) -> float:
        """The side of a network pixel in mm (rows and columns averaged) for stored pixels of `stored_mm`."""
        return float(stored_mm * np.sqrt(self.stored_shape[0] / self.network_shape[0] *
                                         self.stored_shape[1] / self.network_shape[1]))

    def enlarge(self, image: np.ndarray) -> np.ndarray:
        """[..., h, w] at the network size -> [..., H, W] at the stored size, nearest."""
        return np.take(np.take(image, self.rows, axis=-2), self.cols, axis=-1)

    def stored_window(self, window: tuple[slice, slice]) -> tuple[slice, slice]:
        """The stored pixels showing a window of network pixels (empty where none does)."""
        return tuple(slice(int(np.searchsorted(near, part.start)), int(np.searchsorted(near, part.stop)))
                     for near, part in zip(self._near, window))

    def enlarge_window(self, image: np.ndarray, window: tuple[slice, slice]) -> np.ndarray:
        """`image` (network size) nearest at the stored pixels of `window` (a stored window)."""
        return image[np.ix_(self.rows[window[0]], self.cols[window[1]])]

    def bilinear_window(self, image: np.ndarray, window: tuple[slice, slice]) -> np.ndarray:
        """`image` (network size, float) read bilinearly at the stored pixels of `window` (a stored window)."""
        (row0, row1, row_weight), (col0, col1, col_weight) = (
            tuple(tap[part] for tap in taps) for taps, part in zip(self._taps, window))
        low, high = min(col0.min(initial=0), col1.min(initial=0)), max(col0.max(initial=0), col1.max(initial=0)) + 1
        image = np.asarray(image, np.float32)[:, low:high]
        weight = row_weight[:, None]
        rows = (1 - weight) * image[row0] + weight * image[row1]
        weight = col_weight[None, :]
        return (1 - weight) * rows[:, col0 - low] + weight * rows[:, col1 - low]

    def block_means(self, image: np.ndarray) -> np.ndarray:
        """[H, W] stored -> float32 [h, w]: each network pixel's mean over the stored pixels that show it (the stored
        pixel nearest its centre where none does: a stored image smaller than the network's input)."""
        if self.block is not None:
            rows, cols = self.block
            image = np.asarray(image, np.float32)
            # strided sums, rows first: numpy's mean over the axes of a reshaped block view took 1.8 ms per view,
            # these 0.05
            by_rows = image[0::rows].copy()
            for k in range(1, rows):
                by_rows += image[k::rows]
            means = by_rows[:, 0::cols].copy()
            for k in range(1, cols):
                means += by_rows[:, k::cols]
            means *= np.float32(1.0 / (rows * cols))
            return means
        counts = [np.bincount(near, minlength=n) for near, n in zip(self._near, self.network_shape)]
        if all((count > 0).all() for count in counts):
            starts = [np.concatenate([[0], np.cumsum(count)[:-1]]) for count in counts]
            sums = np.add.reduceat(np.add.reduceat(np.asarray(image, np.float64), starts[0], axis=0), starts[1], axis=1)
            return (sums / np.outer(*counts)).astype(np.float32)
        # each network pixel from the stored pixel nearest its centre
        nearest = [np.minimum(((np.arange(n) + 0.5) * s / n).astype(np.int64), s - 1)
                   for n, s in zip(self.network_shape, self.stored_shape)]
        return np.asarray(image, np.float32)[np.ix_(*nearest)]


@lru_cache(maxsize=8)
def network_grid(network_shape: tuple[int, int], stored_shape: tuple[int, int]) -> NetworkGrid:
    """The grid between two sizes, built once per pair (a cohort's studies mostly share one)."""
    return NetworkGrid(tuple(network_shape), tuple(stored_shape))
