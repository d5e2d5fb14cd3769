"""Bone Scan Index: the share of skeletal mass involved by tumour, in percent (Imbriaco et al. 1998).

BSI = sum over regions of (fraction of the region involved) x (the region's share of skeletal mass). A planar scan
sees each bone twice; the involved fraction of a region is the larger of its two views' fractions (area of malignant
uptake inside the region / area of the region), so a lesion seen only from behind still counts, and one seen from
both sides is not counted twice.
"""

from __future__ import annotations

import numpy as np

from .regions import N_LABELS, REGIONS


def bone_scan_index(regions: np.ndarray, malignant: np.ndarray) -> tuple[float, dict[str, float]]:
    """(BSI %, BSI % per region name) from [2, H, W] region labels and a [2, H, W] malignant-uptake mask."""
    if regions.shape != malignant.shape or regions.ndim != 3:
        raise ValueError(f"regions {regions.shape} and malignant {malignant.shape} must both be [2, H, W]")
    # One pass per view: pixel counts of every label, inside the region and inside its malignant part.
    n_labels = max(N_LABELS, int(regions.max()) + 1)
    area = np.zeros((regions.shape[0], n_labels))
    involved = np.zeros((regions.shape[0], n_labels))
    for view in range(regions.shape[0]):
        labels = regions[view].ravel()
        area[view] = np.bincount(labels, minlength=n_labels)
        involved[view] = np.bincount(labels[malignant[view].ravel().astype(bool)], minlength=n_labels)  # few pixels
    return bone_scan_index_from_areas(area, involved)


def bone_scan_index_from_areas(area: np.ndarray, involved: np.ndarray) -> tuple[float, dict[str, float]]:
    """(BSI %, BSI % per region name) from [views, labels] areas of each label and of its malignant part (pixels,
    or any unit shared by both)."""
    area, involved = np.asarray(area, np.float64), np.asarray(involved, np.float64)
    if area.shape != involved.shape or area.ndim != 2 or area.shape[1] < N_LABELS:
        raise ValueError(f"areas {area.shape} and involved {involved.shape} must both be [views, >= {N_LABELS}]")
    fractions = np.divide(involved, area, out=np.zeros(area.shape), where=area > 0)
    per_region = {region.name: float(fractions[:, region.label].max()) * region.mass_percent for region in REGIONS}
    return float(sum(per_region.values())), per_region
