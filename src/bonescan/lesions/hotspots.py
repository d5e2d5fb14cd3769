"""What the lesion reader reports for one study: numbered hotspots, their regions and the Bone Scan Index."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .pairing import lesions_by_region
from .superscan import is_superscan


@dataclass
class Hotspot:
    """One hotspot in one view, in stored-image pixels (rows head -> feet, posterior as seen from behind)."""

    number: int  # 1-based within the study: the number on overlays, in the SR and the SEG
    view: str  # anterior | posterior
    box: tuple[int, int, int, int]  # row0, col0, row1, col1 (0-based, half-open)
    centroid: tuple[float, float]  # row, col
    area_mm2: float
    region: str  # a `regions.REGIONS` name, or "" outside the skeleton
    malignancy: float  # probability that this hotspot is a metastasis
    uptake_ratio: float  # mean counts in the hotspot / median counts of normal bone in the same view
    uid: str  # tracking UID, unique per hotspot, reused by the SR and the SEG
    mask: np.ndarray | None = field(default=None, repr=False)  # bool, box-sized

    def to_json(self) -> dict:
        return {"number": self.number, "view": self.view, "box": list(self.box),
                "centroid": [round(v, 1) for v in self.centroid], "area_mm2": round(self.area_mm2, 1),
                "region": self.region, "malignancy": round(self.malignancy, 4),
                "uptake_ratio": round(self.uptake_ratio, 2), "uid": self.uid}


def normal_bone_level(counts: np.ndarray, bone: np.ndarray, hotspot_pixels: np.ndarray) -> float:
    """Median counts of skeletal-region pixels outside every hotspot; without such pixels, of all counted pixels."""
    normal = bone & ~hotspot_pixels
    if normal.any():
        return float(np.median(counts[normal]))
    counted = counts[counts > 0]
    return float(np.median(counted)) if counted.size else 0.0


@dataclass
class StudyLesions:
    """Lesion-level result of one study."""

    hotspots: list[Hotspot]
    regions: np.ndarray  # uint8 [2, H, W] predicted skeletal-region labels
    bsi: float  # percent
    bsi_by_region: dict[str, float]
    probability: float  # study-level probability of metastasis from the lesions
    threshold: float  # malignancy probability at which a hotspot counts as malignant
    # Per view (anterior, posterior): median counts of normal bone, the reference of every uptake ratio
    # (`normal_bone_level`); 0 where unknown.
    normal_bone: tuple[float, float] = (0.0, 0.0)
    # (row, col) mm per stored pixel: how far apart the views' hotspots of one lesion may lie (`n_malignant_lesions`);
    # the reader assumes 2.4 mm where a study gives none.
    pixel_spacing: tuple[float, float] = (2.4, 2.4)

    @property
    def n_malignant(self) -> int:
        """Malignant hotspots, both views: a lesion seen from the front and from behind counts twice."""
        return sum(h.malignancy >= self.threshold for h in self.hotspots)

    @property
    def n_malignant_lesions(self) -> int:
        """Malignant lesions: the malignant hotspots with each anterior-posterior pair of one focus counted once
        (`pairing.lesions_by_region`)."""
        return sum(self.malignant_lesions_by_region.values())

    @property
    def malignant_lesions_by_region(self) -> dict[str, int]:
        """Malignant lesions per skeletal region ("" outside the skeleton), as `n_malignant_lesions` counts them."""
        malignant = [h for h in self.hotspots if h.malignancy >= self.threshold]
        return lesions_by_region(malignant, self.regions.shape[-1], self.pixel_spacing)

    @property
    def superscan(self) -> bool:
        """Diffuse uptake through the axial skeleton (`superscan`): the lesion count is then no count of lesions."""
        return is_superscan(self.bsi)

    def to_json(self) -> dict:
        by_region = self.malignant_lesions_by_region  # the views paired once for both keys
        return {"n_hotspots": len(self.hotspots), "n_malignant": self.n_malignant,
                "n_malignant_lesions": sum(by_region.values()),
                "malignant_lesions_by_region": {name or "outside the skeleton": n
                                                for name, n in sorted(by_region.items())},
                "superscan": self.superscan, "bsi": round(self.bsi, 3),
                "bsi_by_region": {k: round(v, 3) for k, v in self.bsi_by_region.items() if v > 0},
                "probability_from_lesions": round(self.probability, 4), "malignancy_threshold": self.threshold,
                "hotspots": [h.to_json() for h in self.hotspots]}
