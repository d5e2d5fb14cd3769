"""DICOM results a PACS can store and show: a Secondary Capture of the heat-map overlay and a Comprehensive SR.

Both objects join the source study (same Study Instance UID, patient and study attributes copied from the source
DICOM header), so they appear beside the scan in any viewer. The SR follows TID 1500 (Measurement Report) with one
measurement group (TID 1501) for the finding "Bony metastasis":
  - measurement "Probability" (UCUM "1"), the network's probability of metastasis;
  - measurement "Threshold Value", the frozen operating point's threshold;
  - qualitative evaluation "Bony metastasis" = Present / Absent (the decision at that threshold);
  - qualitative evaluation "CAD Operating Point" = the operating point's name (local scheme 99BONESCAN);
  - algorithm identification (name, version, parameters: run, checkpoint, operating point);
  - source images: the SOP instances of the scan that was read.
Studies read from plain image files have no DICOM identity: their results are put in a new study and say so.
"""

from __future__ import annotations

import re
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from . import __version__
from .errors import UnreadableInputError
from .fileio import write_together
from .study import Study

# Local coding scheme for concepts that have no standard code (the name of a frozen operating point).
LOCAL_SCHEME = "99BONESCAN"
# Series numbers of bonescan's results, one per kind, so a PACS lists each kind as its own series.
SC_SERIES_NUMBER = 9901  # heat map
SR_SERIES_NUMBER = 9902  # the reading's report
SEG_SERIES_NUMBER = 9903  # hotspots and skeletal regions (`lesions.segmentation`)
HOTSPOTS_SC_SERIES_NUMBER = 9904  # numbered hotspots
FOLLOWUP_SR_SERIES_NUMBER = 9905  # what changed since the last scan (`followup.output`)
FOLLOWUP_SC_SERIES_NUMBER = 9906  # the visits side by side
HEATMAP_COMMENT = "Grad-CAM heat map of the metastasis probability; for review, not for diagnosis alone"
HOTSPOTS_COMMENT = ("Hotspots numbered as in the SR (red: malignant), Bone Scan Index; for review, not for "
                    "diagnosis alone")


@dataclass(frozen=True)
class AlgorithmInfo:
    """What produced the result: recorded in the SR's algorithm identification."""

    name: str = "bonescan MultiViewNet"
    version: str = __version__
    parameters: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReadingResult:
    """The network's reading of one study at a frozen operating point."""

    probability: float
    positive: bool
    operating_point: str
    threshold: float


@dataclass
class DicomResult:
    """Paths of the written objects and any note about how they were placed."""

    secondary_capture: Path
    structured_report: Path
    warnings: list[str] = field(default_factory=list)
    segmentations: list[Path] = field(default_factory=list)  # hotspots and regions, one SEG per view
    hotspots_capture: Path | None = None  # the numbered hotspots as a Secondary Capture (any viewer shows it)


def read_source_headers(files: Sequence[str | Path]) -> list[Dataset]:
    """DICOM headers (no pixel data) of a study's source files; [] for plain image files."""
    headers = []
    for path in files:
        if not Path(path).is_file() or not pydicom.misc.is_dicom(str(path)):
            continue
        try:
            headers.append(pydicom.dcmread(str(path), stop_before_pixels=True))
        except Exception as error:  # pydicom raises several types for a damaged header
            raise UnreadableInputError(path, f"cannot re-read the DICOM header for the results ({error})") from error
    return [h for h in headers if "SOPInstanceUID" in h and "StudyInstanceUID" in h and "SOPClassUID" in h]


# Type 2 patient and study attributes that highdicom copies from a source (SR evidence, SEG source image) and reads
# without a default: an anonymised scan may leave any of them out.
COPIED_TYPE2_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                           "StudyDate", "StudyTime")


def with_type2_attributes(header: Dataset) -> Dataset:
    """A copy of `header` holding every COPIED_TYPE2_ATTRIBUTES, empty where the source left it out (the DICOM way
    to say "unknown"), so highdicom can build a result from it."""
    copy = deepcopy(header)
    for keyword in COPIED_TYPE2_ATTRIBUTES:
        if keyword not in copy:
            setattr(copy, keyword, None)
    return copy


def build_secondary_capture(overlay_rgb: np.ndarray, study: Study, headers: Sequence[Dataset],
                            series_number: int = SC_SERIES_NUMBER, description: str = "bonescan heat map",
                            comment: str = HEATMAP_COMMENT) -> hd.sc.SCImage:
    """A Secondary Capture image of the RGB overlay, placed in the source study when it is known."""
    if overlay_rgb.ndim != 3 or overlay_rgb.shape[2] != 3 or overlay_rgb.dtype != np.uint8:
        raise ValueError(f"overlay must be H x W x 3 uint8, got {overlay_rgb.shape} {overlay_rgb.dtype}")
    common = dict(
        pixel_array=np.ascontiguousarray(overlay_rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="bonescan",
        # Rows run head to feet, columns from the patient's right on the anterior panel.
        patient_orientation=("L", "F"),
    )
    if headers:
        image = hd.sc.SCImage.from_ref_dataset(ref_dataset=headers[0], **common)
    else:
        meta = study.meta
        image = hd.sc.SCImage(
            study_instance_uid=meta.study_uid or hd.UID(),
            patient_id=meta.patient_id,
            patient_sex=meta.sex if meta.sex in ("M", "F", "O") else None,
            study_date=meta.study_date,
            **common,
        )
    image.SeriesDescription = description
    # Naming the unpaired body part tells validators why Laterality (type 2C) is absent.
    image.BodyPartExamined = "WHOLEBODY"
    image.ImageComments = comment
    return image


def build_structured_report(
    result: ReadingResult,
    headers: Sequence[Dataset],
    secondary_capture: Dataset,
    algorithm: AlgorithmInfo = AlgorithmInfo(),
    extra_groups: Sequence[hd.sr.MeasurementsAndQualitativeEvaluations] = (),
    other_captures: Sequence[Dataset] = (),
) -> hd.sr.ComprehensiveSR:
    """A TID 1500 measurement report (Comprehensive SR) holding probability, decision and operating point.

    `extra_groups` follow the study-level group (e.g. one per hotspot, `bonescan.lesions.dicom`);
    `other_captures` (e.g. the numbered hotspots) are listed as evidence beside `secondary_capture`.
    """
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[
            *algorithm.parameters,
            f"operating_point={result.operating_point}",
            f"threshold={result.threshold:.6g}",
        ],
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hd.UID(), name="bonescan", manufacturer_name="bonescan", model_name=algorithm.name
    )
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    probability = hd.sr.Measurement(
        name=codes.DCM.Probability, value=float(result.probability), unit=codes.UCUM.NoUnits, algorithm_id=algorithm_id
    )
    threshold = hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=float(result.threshold), unit=codes.UCUM.NoUnits)
    decision = hd.sr.QualitativeEvaluation(
        name=codes.SCT.BonyMetastasis, value=codes.SCT.Present if result.positive else codes.SCT.Absent
    )
    operating_point = hd.sr.QualitativeEvaluation(
        name=codes.DCM.CADOperatingPoint,
        value=hd.sr.CodedConcept(
            value=result.operating_point, scheme_designator=LOCAL_SCHEME, meaning=f"{result.operating_point} threshold"
        ),
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="bone metastasis, whole study"),
        finding_type=codes.SCT.BonyMetastasis,
        algorithm_id=algorithm_id,
        measurements=[probability, threshold],
        qualitative_evaluations=[decision, operating_point],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(h) for h in headers] or None,
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=codes.LN.RadionuclideScanOfWholeBody,
        imaging_measurements=[group, *extra_groups],
    )
    sr = hd.sr.ComprehensiveSR(
        # The SC comes first: the SR copies patient and study attributes from it, which are complete even when
        # the source header lacks optional ones.
        evidence=[secondary_capture, *other_captures, *headers],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="bonescan",
        is_complete=True,
    )
    sr.SeriesDescription = "bonescan bone metastasis report"
    declare_local_scheme(sr, "bonescan frozen operating points")
    return sr


def declare_local_scheme(sr: Dataset, name: str) -> None:
    """Declare the local coding scheme in an SR, so validators and viewers know where its local codes come from."""
    scheme = Dataset()
    scheme.CodingSchemeDesignator = LOCAL_SCHEME
    scheme.CodingSchemeName = name
    scheme.CodingSchemeResponsibleOrganization = "bonescan"
    sr.CodingSchemeIdentificationSequence = [scheme]


def write_dicom_results(
    out_dir: str | Path,
    study: Study,
    overlay_rgb: np.ndarray,
    result: ReadingResult,
    source_files: Sequence[str | Path],
    algorithm: AlgorithmInfo = AlgorithmInfo(),
    file_stem: str | None = None,
    lesions=None,
    hotspot_numbers: np.ndarray | None = None,
    lesion_overlay: np.ndarray | None = None,
) -> DicomResult:
    """Write the Secondary Capture and the SR of one study into `out_dir` (atomically) and return their paths.

    Files are named `<stem>_heatmap_sc.dcm` and `<stem>_report_sr.dcm`; the stem defaults to the study id.
    `lesions` (a `bonescan.lesions.hotspots.StudyLesions`) adds the BSI and one measurement group per hotspot;
    with its hotspot number map ([2, H, W]) and DICOM sources, also `<stem>_seg_<view>.dcm`, the DICOM
    Segmentation of each view (`bonescan.lesions.segmentation`); with `lesion_overlay` (RGB, the numbered
    hotspots), also `<stem>_hotspots_sc.dcm`, a Secondary Capture of it: many PACS viewers draw no Segmentation.
    """
    headers = read_source_headers(source_files)
    warnings = []
    if not headers:
        warnings.append("source is not DICOM: the DICOM results were placed in a new study")
    capture = build_secondary_capture(overlay_rgb, study, headers)
    stem = file_stem or safe_file_stem(study.study_id)
    out_dir = Path(out_dir)
    extra, other_captures, other_paths = (), [], []
    if lesions is not None:
        from .lesions.dicom import dicom_hotspot_warning, lesion_groups

        extra = lesion_groups(lesions, headers)
        warnings += filter(None, [dicom_hotspot_warning(lesions)])
        if lesion_overlay is not None:  # in the heat map's study, which is the source's when there is one
            other_captures.append(build_secondary_capture(lesion_overlay, study, [capture], HOTSPOTS_SC_SERIES_NUMBER,
                                                          "bonescan hotspots", HOTSPOTS_COMMENT))
            other_paths.append(out_dir / f"{stem}_hotspots_sc.dcm")
    report = build_structured_report(result, headers, capture, algorithm, extra, other_captures)
    datasets = [capture, report, *other_captures]
    paths = [out_dir / f"{stem}_heatmap_sc.dcm", out_dir / f"{stem}_report_sr.dcm", *other_paths]
    segmentations_from = len(paths)
    if lesions is not None and hotspot_numbers is not None:
        from .lesions.segmentation import build_segmentations

        if headers:
            try:
                segmentations = build_segmentations(lesions, hotspot_numbers, headers)
            except Exception as error:  # noqa: BLE001 - the SC and SR carry the reading without it
                segmentations = {}
                warnings.append(f"no Segmentation written ({type(error).__name__}: {error})")
            for view, seg in segmentations.items():
                datasets.append(seg)
                paths.append(out_dir / f"{stem}_seg_{view}.dcm")
        else:
            warnings.append("source is not DICOM: no Segmentation written (it must reference the source frames)")
    # all or none: an SR never refers to a capture that was not written
    write_together(*[(path, lambda tmp, dataset=dataset: dataset.save_as(tmp, enforce_file_format=True))
                     for dataset, path in zip(datasets, paths)])
    return DicomResult(secondary_capture=paths[0], structured_report=paths[1], warnings=warnings,
                       segmentations=paths[segmentations_from:],
                       hotspots_capture=other_paths[0] if other_paths else None)


def safe_file_stem(study_id: str) -> str:
    """A file-name-safe form of a study id (a UID stays as it is; a path keeps its last parts)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", study_id).strip("._")
    return stem[-120:] or "study"
