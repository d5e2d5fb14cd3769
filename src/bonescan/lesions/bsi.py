"""Bone Scan Index: the share of skeletal mass involved by tumour, in percent (Imbriaco et al. 1998).

BSI = sum over regions of (fraction of the region involved) x (the region's share of skeletal mass). A planar scan
sees each bone twice; the involved fraction of a region is the larger of its two views' fractions (area of malignant
uptake inside the region / area of the region), so a lesion seen only from behind still counts, and one seen from
both sides is not counted twice.
"""

from __future__ import annotations

import numpy as np

from .regions import REGIONS


def bone_scan_index(regions: np.ndarray, malignant: np.ndarray) -> tuple[float, dict[str, float]]:
    """(BSI %, BSI % per region name) from [2, H, W] region labels and a [2, H, W] malignant-uptake mask."""
    if regions.shape != malignant.shape or regions.ndim != 3:
        raise ValueError(f"regions {regions.shape} and malignant {malignant.shape} must both be [2, H, W]")
    per_region: dict[str, float] = {}
    for region in REGIONS:
        fractions = []
        for view in range(regions.shape[0]):
            inside = regions[view] == region.label
            area = int(inside.sum())
            fractions.append(float((malignant[view] & inside).sum()) / area if area else 0.0)
        per_region[region.name] = max(fractions) * region.mass_percent
    return float(sum(per_region.values())), per_region
