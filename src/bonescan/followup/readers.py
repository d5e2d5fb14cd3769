"""Lesion readers: what turns one visit's study into StudyLesions (hotspots, regions, BSI).

- `NetworkReader`: the trained lesion network of a run (`bonescan train` with the lesion task).
- `OracleReader`: the synthetic truth file of the study (truth/<case>.npz beside studies/): every finding on
  bone or skin becomes a hotspot, metastases with malignancy 1 and the rest 0; kidneys and bladder are left out.
  It reads perfectly, so figures made with it are upper bounds of what a network can reach.
- `KnownLesions`: another reader, except for studies whose lesions were found already (the DICOM node's study
  just read): those are taken as found, hotspot numbers and tracking UIDs included.
Every output names the reader that produced it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage

from ..errors import ConfigError, RunError
from ..lesions.bsi import bone_scan_index
from ..lesions.hotspots import Hotspot, StudyLesions, normal_bone_level
from ..lesions.regions import BY_LABEL
from ..lesions.truth import LesionTruth, load_truth
from ..study import VIEWS, Study

_VIEW_SUFFIX = re.compile(r"_(ant|post)$")


class LesionReader(Protocol):
    """Reads the lesions of one study; `name` says in every output which reader produced the numbers. `exact`: its
    calls are the truth (the oracle), so a would-be new lesion needs no check against the count images."""

    name: str
    exact: bool

    def read(self, study: Study, files: Sequence[Path]) -> StudyLesions: ...


def hotspots_from_instances(study: Study, regions: np.ndarray, instances: np.ndarray, malignancy: dict[int, float],
                            region_of: dict[int, str], key: str) -> tuple[list[Hotspot], tuple[float, float]]:
    """Hotspots of labelled instance masks ([2, H, W]; ids in `malignancy`), numbered in reading order, and each
    view's normal-bone level (outside every instance)."""
    row_mm, col_mm = study.pixel_spacing or (1.0, 1.0)
    hotspots = []
    levels = []
    for v, view in enumerate(VIEWS):
        image = np.asarray(getattr(study, view), np.float32)
        normal = normal_bone_level(image, regions[v] > 0, instances[v] > 0)
        levels.append(normal)
        for k, box in enumerate(ndimage.find_objects(instances[v]), start=1):
            if box is None or k not in malignancy:
                continue
            mask = instances[v][box] == k
            rows, cols = np.nonzero(mask)
            r0, c0 = box[0].start, box[1].start
            centroid = (float(rows.mean() + r0), float(cols.mean() + c0))
            region = region_of.get(k) or region_at(regions[v], centroid)
            hotspots.append(Hotspot(0, view, (r0, c0, box[0].stop, box[1].stop), centroid,
                                    float(mask.sum() * row_mm * col_mm), region, malignancy[k],
                                    float(image[box][mask].mean() / max(normal, 1e-6)),
                                    generate_uid(entropy_srcs=[key, view, str(k)]), mask))
    hotspots.sort(key=lambda h: (VIEWS.index(h.view), h.centroid))
    for number, hotspot in enumerate(hotspots, 1):
        hotspot.number = number
    return hotspots, (levels[0], levels[1])


def region_at(regions: np.ndarray, centroid: tuple[float, float]) -> str:
    """Name of the skeletal region under a (row, col) point of one view's label map ("" outside the skeleton)."""
    r = int(np.clip(round(centroid[0]), 0, regions.shape[0] - 1))
    c = int(np.clip(round(centroid[1]), 0, regions.shape[1] - 1))
    region = BY_LABEL.get(int(regions[r, c]))
    return region.name if region else ""


class OracleReader:
    """Hotspots from the synthetic truth file of each study: the upper bound of any lesion reader."""

    name = "oracle (synthetic truth)"
    exact = True

    def __init__(self, truth_files: dict[str, Path] | None = None):
        self.truth_files = truth_files or {}  # source file -> truth file (a manifest's `truth` column)

    def truth_path(self, files: Sequence[Path]) -> Path:
        """The study's truth file: given by the manifest, else truth/<case>.npz beside the studies/ folder."""
        for path in files:
            if str(path) in self.truth_files:
                return Path(self.truth_files[str(path)])
        first = Path(files[0])
        candidate = first.parent.parent / "truth" / f"{_VIEW_SUFFIX.sub('', first.stem)}.npz"
        if not candidate.is_file():
            raise ConfigError(first, f"the oracle reader needs the study's truth file, and {candidate} does not "
                                     "exist; it reads synthetic cohorts (bonescan synth) only")
        return candidate

    def read(self, study: Study, files: Sequence[Path]) -> StudyLesions:
        path = self.truth_path(files)
        truth = load_truth(path)
        shape = np.asarray(study.anterior).shape
        if truth.instances.shape[1:] != shape:
            raise ConfigError(path, f"truth is {truth.instances.shape[1:]} pixels, the study {shape}")
        return lesions_from_truth(study, truth, str(path))


def lesions_from_truth(study: Study, truth: LesionTruth, key: str) -> StudyLesions:
    """StudyLesions that a perfect reader would report for this truth: confluent metastases as one hotspot, as
    they look (`LesionTruth.confluent_metastases`)."""
    malignancy = {i + 1: float(c == "metastasis") for i, c in enumerate(truth.category) if c != "physiological"}
    region_of = {i + 1: r for i, r in enumerate(truth.region)}
    instances, _ = truth.confluent_metastases()
    hotspots, levels = hotspots_from_instances(study, truth.regions, instances, malignancy, region_of, key)
    bsi, by_region = bone_scan_index(truth.regions, truth.malignant_mask())
    return StudyLesions(hotspots, truth.regions, bsi, by_region, float(any(malignancy.values())), 0.5, levels,
                        tuple(study.pixel_spacing or (2.4, 2.4)))


class NetworkReader:
    """The lesion network of a training run (`bonescan train --preset cpu-small-lesion`), behind the reader API:
    the same preprocessing and post-processing as `bonescan predict --lesions`, except that a focus both views show
    keeps its hotspot in each (see `read`)."""

    exact = False

    def __init__(self, run: str | Path, device: str = "auto", model=None, warn: Callable[[str], None] | None = None):
        """`model`: the run already loaded (`lesions.infer.LesionModel`), e.g. by the DICOM node. `warn` is told
        once per camera the network was not trained on (`bonescan.cameras`)."""
        from ..lesions.infer import load_lesion_run

        self.run = Path(run)
        if model is None:
            if not self.run.is_dir():
                raise RunError(self.run, "no such training run folder")
            model = load_lesion_run(self.run, device=device)
        self.model = model
        self.name = f"lesion network ({self.run.name}, {self.model.config.preset})"
        self.warn = warn
        self.unseen_cameras: set[str] = set()

    def read(self, study: Study, files: Sequence[Path]) -> StudyLesions:
        from ..lesions.infer import tracking_key

        self._check_camera(study)
        # Both views' hotspots of a focus: the comparison pairs the views itself (`match`), and a focus reported
        # in the anterior on one visit and in the posterior on the next would break its link between the visits.
        return self.model.read(study, study_key=tracking_key(study.study_id), one_per_focus=False)[0]

    def _check_camera(self, study: Study) -> None:
        check = self.model.cameras
        camera = check.unseen(study.meta) if check is not None else None
        if camera is None or camera in self.unseen_cameras:
            return
        self.unseen_cameras.add(camera)
        if self.warn is not None:
            self.warn(check.warning_for(camera))


class KnownLesions:
    """`reader`, except for the studies in `known` (Study Instance UID -> StudyLesions found already): their lesions
    are taken as they are, so a comparison describes the hotspots the study's own report lists."""

    def __init__(self, reader: LesionReader, known: dict[str, StudyLesions]):
        self.reader, self.known = reader, known
        self.name, self.exact = reader.name, reader.exact

    def read(self, study: Study, files: Sequence[Path]) -> StudyLesions:
        found = self.known.get(study.meta.study_uid or "")
        return found if found is not None else self.reader.read(study, files)
