"""The in-memory form of one bone-scan study, shared by every stage after reading."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ViewError

VIEWS = ("anterior", "posterior")  # a study's two views, in this order wherever both are stacked or listed


@dataclass
class StudyMeta:
    """Clinical and acquisition metadata carried from the source file (None where absent)."""

    patient_id: str | None = None
    sex: str | None = None  # "M" / "F" / None
    age: float | None = None  # years
    study_date: str | None = None  # YYYYMMDD as in DICOM
    manufacturer: str | None = None
    model: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uids: tuple[str, ...] = ()


@dataclass
class Study:
    """Anterior and posterior count images of one whole-body scan.

    Arrays are float32 counts, rows running head to feet as acquired. The posterior view is kept as stored
    (seen from behind); mirroring is a preprocessing choice. `view_rule` records how the views were told apart:
    "view-code", "text", "detector-vector", "file-pair" (two files given in anterior, posterior order),
    "file-pair:<rule>" (two files found in a folder, ordered by their own view information), "image-pair" or
    "single-view".
    """

    source: str
    anterior: np.ndarray | None
    posterior: np.ndarray | None
    pixel_spacing: tuple[float, float] | None  # (row, column) in mm
    meta: StudyMeta = field(default_factory=StudyMeta)
    view_rule: str = "unknown"
    warnings: list[str] = field(default_factory=list)

    @property
    def study_id(self) -> str:
        """Study Instance UID when known, else the source path."""
        return self.meta.study_uid or self.source

    @property
    def views(self) -> list[str]:
        """Names of the views present, in anterior/posterior order."""
        return [name for name in VIEWS if getattr(self, name) is not None]

    def both_views(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (anterior, posterior) or refuse a study that lacks one of them."""
        if self.anterior is None or self.posterior is None:
            found = ", ".join(self.views) or "none"
            raise ViewError(
                self.source,
                f"this needs both anterior and posterior views, but the study has only: {found}",
            )
        return self.anterior, self.posterior
