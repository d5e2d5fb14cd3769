"""Will a batch's output files fit? Their size per study after the first studies, times the studies still to come,
against the free space where they go: said once, early, rather than found at the study where the disk fills (a
study's DICOM results with lesions take a few MB, so 10,000 studies take tens of GB)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable


def output_files(outcome) -> list[Path]:
    """The files a predicted study's outcome (`predict.StudyOutcome`) names: heat map, DICOM results, and the lesion
    JSON with its label maps and overlay."""
    named = [outcome.heatmap, outcome.dicom_sc, outcome.dicom_sr, outcome.dicom_hotspots_sc,
             *(outcome.dicom_seg or "").split(";")]
    paths = [Path(name) for name in named if name]
    if outcome.lesions:
        record = Path(outcome.lesions)
        paths += [record, record.with_suffix(".npz"), record.with_suffix(".png")]
    return paths


def shortfall(files: Iterable[Path], studies_done: int, studies_left: int) -> str | None:
    """A notice when the studies left would need more room than is free on a file system that `files` (written for
    `studies_done` studies) lie on; None when they fit."""
    if studies_done < 1 or studies_left < 1:
        return None
    written: dict[int, list] = {}  # file system (device) -> [bytes, a folder on it]
    for path in files:
        if path.is_file():
            stat = path.stat()
            written.setdefault(stat.st_dev, [0, path.parent])[0] += stat.st_size
    for size, folder in written.values():
        per_study = size / studies_done
        need, free = per_study * studies_left, shutil.disk_usage(folder).free
        if need > free:
            left = "the 1 study left needs" if studies_left == 1 else f"the {studies_left} studies left need"
            return (f"the results take about {_size(per_study)} per study: {left} about {_size(need)}, but {folder} "
                    f"has {_size(free)} free; studies whose files cannot be written will be listed as failed")
    return None


def _size(count: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"
