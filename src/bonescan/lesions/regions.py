"""The skeletal regions bonescan segments, with their finding-site codes and reference skeletal mass fractions.

Label ids are stable: they are stored in truth files, label maps and DICOM Segmentations. Mass fractions are the
percentages of total skeletal weight that Imbriaco et al. (Clin Cancer Res 1998) used for the first Bone Scan Index,
from Spiers (Radioisotopes in the Human Body, 1968, p. 120): skull 16.6 + mandible 1.8, spine and sacrum 8.3,
ribs 4.4, sternum 0.3, each clavicle 0.5, scapula 1.5, humerus 3.3, ulna 1.5 + radius 1.2 + hand 1.5,
pelvis 7.5, femur 8.9, tibia 5.1 + fibula 1.3 + foot 5.8 (total 100.1). Spiers gives spine and sacrum as one
figure; the split below (cervical 1.5, thoracic 3.2, lumbar 2.4, sacrum 1.2, the sacrum counted with the pelvis)
is ours, in proportion to vertebral body volumes, and only moves BSI between spine regions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code


@dataclass(frozen=True)
class SkeletalRegion:
    """One labelled region: its id in label maps, name, finding-site code, laterality and share of skeletal mass."""

    label: int
    name: str
    site: Code
    laterality: Code | None
    mass_percent: float

    @property
    def title(self) -> str:
        """Human-readable name, e.g. 'ribs (right)'."""
        base, _, side = self.name.rpartition("_") if self.laterality is not None else (self.name, "", "")
        return f"{base.replace('_', ' ')} ({side})" if side else base.replace("_", " ")


_R, _L = codes.SCT.Right, codes.SCT.Left
REGIONS: tuple[SkeletalRegion, ...] = (
    SkeletalRegion(1, "skull", codes.SCT.Skull, None, 18.4),
    SkeletalRegion(2, "cervical_spine", codes.SCT.CervicalSpine, None, 1.5),
    SkeletalRegion(3, "thoracic_spine", codes.SCT.ThoracicSpine, None, 3.2),
    SkeletalRegion(4, "lumbar_spine", codes.SCT.LumbarSpine, None, 2.4),
    SkeletalRegion(5, "sternum", codes.SCT.Sternum, None, 0.3),
    SkeletalRegion(6, "ribs_right", codes.SCT.Rib, _R, 2.2),
    SkeletalRegion(7, "ribs_left", codes.SCT.Rib, _L, 2.2),
    SkeletalRegion(8, "clavicle_right", codes.SCT.Clavicle, _R, 0.5),
    SkeletalRegion(9, "clavicle_left", codes.SCT.Clavicle, _L, 0.5),
    SkeletalRegion(10, "scapula_right", codes.SCT.Scapula, _R, 1.5),
    SkeletalRegion(11, "scapula_left", codes.SCT.Scapula, _L, 1.5),
    SkeletalRegion(12, "humerus_right", codes.SCT.Humerus, _R, 3.3),
    SkeletalRegion(13, "humerus_left", codes.SCT.Humerus, _L, 3.3),
    SkeletalRegion(14, "forearm_hand_right", codes.SCT.Forearm, _R, 4.2),
    SkeletalRegion(15, "forearm_hand_left", codes.SCT.Forearm, _L, 4.2),
    SkeletalRegion(16, "pelvis", codes.SCT.Pelvis, None, 8.7),
    SkeletalRegion(17, "femur_right", codes.SCT.Femur, _R, 8.9),
    SkeletalRegion(18, "femur_left", codes.SCT.Femur, _L, 8.9),
    SkeletalRegion(19, "lower_leg_foot_right", codes.SCT.LowerLeg, _R, 12.2),
    SkeletalRegion(20, "lower_leg_foot_left", codes.SCT.LowerLeg, _L, 12.2),
)
BACKGROUND = 0
N_LABELS = len(REGIONS) + 1  # background included
BY_NAME = {region.name: region for region in REGIONS}
BY_LABEL = {region.label: region for region in REGIONS}
# Region labels swapped by a left-right flip (a mirrored body's left ribs are where its right ribs were).
FLIP_LABELS = np.arange(N_LABELS, dtype=np.int64)
for _region in REGIONS:
    if _region.name.endswith("_right"):
        _left = BY_NAME[_region.name[: -len("right")] + "left"].label
        FLIP_LABELS[_region.label], FLIP_LABELS[_left] = _left, _region.label


def region_under(regions: np.ndarray, window: tuple[slice, slice], mask: np.ndarray) -> str:
    """The most common skeletal region under a box-sized mask ("" off the skeleton)."""
    labels = regions[window][mask]
    labels = labels[labels > 0]
    return BY_LABEL[int(np.bincount(labels).argmax())].name if labels.size else ""
