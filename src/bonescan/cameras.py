"""Which cameras a run was trained on, and whether a study comes from one of them.

A network can fail on a camera it never saw, and the failure does not show in its output. The `cpu-small-lesion`
network trained 36 epochs on the generic phantom alone called 89.6 hot spots per GE Discovery test study malignant at
its threshold, against about one on the studies of the camera it knew (README, "Skeletal regions, hotspots and the
Bone Scan Index"). So training records the cameras of its training studies (DICOM Manufacturer and
ManufacturerModelName) in the run's config.json (`manifest.cameras`), and prediction flags every study from a camera
the run never saw.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

if TYPE_CHECKING:
    from .study import StudyMeta

UNKNOWN = "unknown"  # a training study whose file names no camera (not DICOM, or the tags are empty)


def camera_name(manufacturer: str | None, model: str | None) -> str | None:
    """The camera as "Manufacturer Model", as the DICOM header names them; None when it names neither."""
    parts = [part.strip() for part in (manufacturer, model) if part and part.strip()]
    return " ".join(parts) or None


def read_camera(path: str | Path) -> str | None:
    """The camera named in one study file's header (a folder: its first file); None where the file names none."""
    import pydicom

    path = Path(path)
    if path.is_dir():
        path = next((f for f in sorted(path.iterdir()) if f.is_file()), path)
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Manufacturer", "ManufacturerModelName"])
    except Exception:  # noqa: BLE001 - a PNG, a TIFF, an unreadable file: no camera to record
        return None
    return camera_name(header.get("Manufacturer"), header.get("ManufacturerModelName"))


def count_cameras(files: Iterable[str | Path]) -> dict[str, int]:
    """How many of the studies (one file or folder each) come from each camera, most first; UNKNOWN counts those
    whose file names none."""
    counts = Counter(read_camera(path) or UNKNOWN for path in files)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def manifest_cameras(manifest, case_ids: Iterable[str]) -> dict[str, int]:
    """`count_cameras` of a manifest's studies of `case_ids` (a run's training studies), first file of a view pair."""
    from .data import study_source

    rows = manifest[manifest["case_id"].astype(str).isin({str(case) for case in case_ids})]
    sources = (study_source(row) for _, row in rows.iterrows())
    return count_cameras(source if isinstance(source, str) else source[0] for source in sources)


def trained_cameras(run_dir: str | Path) -> dict[str, int] | None:
    """The cameras a run recorded at training (config.json `manifest.cameras`); None for a run made before the
    record or without a readable config.json."""
    try:
        record = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    cameras = (record.get("manifest") or {}).get("cameras")
    return {str(name): int(n) for name, n in cameras.items()} if isinstance(cameras, dict) else None


class CameraCheck:
    """Flags studies from a camera that none of a run's training studies came from.

    Says nothing when it cannot tell: a run without the record, a run whose training files named no camera, or a
    study whose header names none.
    """

    def __init__(self, run_dir: str | Path, trained: Mapping[str, int] | None):
        self.run_dir = Path(run_dir)
        self.trained = dict(trained or {})
        self.known = {name for name in self.trained if name != UNKNOWN}

    @classmethod
    def of_run(cls, run_dir: str | Path) -> "CameraCheck":
        return cls(run_dir, trained_cameras(run_dir))

    def unseen(self, meta: StudyMeta | None) -> str | None:
        """The camera of a study (its `study.StudyMeta`, or None) when the run never saw it, else None."""
        camera = camera_name(meta.manufacturer, meta.model) if meta is not None else None
        if not self.known or camera is None or camera in self.known:
            return None
        return camera

    def warning(self, meta: StudyMeta | None) -> str | None:
        """One line for the user when the camera of a study (its `study.StudyMeta`) is unseen, else None."""
        camera = self.unseen(meta)
        return None if camera is None else self.warning_for(camera)

    def warning_for(self, camera: str) -> str:
        """The warning for a camera that `unseen` named."""
        seen = ", ".join(f"{name} ({n})" for name, n in self.trained.items())
        return (f"camera {camera!r} is not among those of the training studies of {self.run_dir.name} ({seen}): "
                f"its results may be wrong on this study (a network trained without a camera's studies can call "
                f"dozens of hot spots per study malignant there); train it on studies of this camera too")
