"""Write a synthetic study as NM Image Storage DICOM, in the header convention of its site's camera.

One two-frame file (frame 1 anterior, frame 2 posterior seen from behind; with or without view codes) or one
single-frame file per view (`<case>_ant.dcm`, `<case>_post.dcm`), as `sites.HeaderConvention` says.
"""

from __future__ import annotations

import datetime as dt
import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, NuclearMedicineImageStorage, generate_uid

from .. import __version__
from ..fileio import atomic_path
from ..study import VIEWS
from .case import SyntheticCase
from .sites import SITES, HeaderConvention

MANUFACTURER = "bonescan synthetic"
VIEW_SUFFIXES = {"anterior": "_ant", "posterior": "_post"}

# View codes from DICOM PS3.16 CID 26 "Nuclear Medicine Projection" (as listed in pydicom.sr.codedict):
# SCT 399321004 "Anterior projection" and SCT 399001007 "Posterior projection".
VIEW_CODES = {"anterior": codes.SCT.AnteriorProjection, "posterior": codes.SCT.PosteriorProjection}
# The same concepts in the SNOMED-RT codes older NM software writes (the reader accepts both).
SRT_VIEW_CODES = {"anterior": ("G-5215", "SRT", "Anterior projection"),
                  "posterior": ("G-5216", "SRT", "Posterior projection")}
# Radiopharmaceutical from CID 25: SCT 96390006 "Technetium Tc^99m^ medronate" (99mTc-MDP).
MDP_CODE = codes.SCT.TechnetiumTc99mMedronate


def _code_item(code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _view_code_item(view: str, scheme: str) -> Dataset:
    if scheme == "SCT":
        return _code_item(VIEW_CODES[view])
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = SRT_VIEW_CODES[view]
    return item


def header_convention(case: SyntheticCase) -> HeaderConvention:
    """How the camera of the case's site writes DICOM."""
    return SITES[case.site].header


def case_files(target: str | Path, header: HeaderConvention) -> list[Path]:
    """The files a study named by `target` (`<case>.dcm`) is written to: itself, or one per view."""
    target = Path(target)
    if header.files == 1:
        return [target]
    return [target.with_name(f"{target.stem}{VIEW_SUFFIXES[view]}{target.suffix}") for view in VIEW_SUFFIXES]


def study_uids(case: SyntheticCase) -> dict[str, str]:
    """Study, series, instance and frame-of-reference UIDs derived from the case seed (stable across reruns)."""
    base = [str(case.seed), case.case_id, case.difficulty]
    names = ("study", "series", "instance", "frame", "series-anterior", "instance-anterior", "series-posterior",
             "instance-posterior")
    return {name: generate_uid(entropy_srcs=base + [name]) for name in names}


def build_dataset(case: SyntheticCase) -> Dataset:
    """The two-frame NM dataset of a case: frame 1 anterior, frame 2 posterior (seen from behind), uint16 counts."""
    header = header_convention(case)
    if header.files != 1:
        raise ValueError(f"site {case.site!r} writes one file per view; use build_datasets")
    return build_datasets(case)[0]


def build_datasets(case: SyntheticCase) -> list[Dataset]:
    """The NM datasets of a case in its site's convention: one two-frame file, or (anterior, posterior) files."""
    header = header_convention(case)
    uids = study_uids(case)
    if header.files == 1:
        pixels = np.stack([case.anterior, case.posterior])
        return [_dataset(case, header, None, pixels, uids["series"], uids["instance"], 1)]
    return [_dataset(case, header, view, image[None], uids[f"series-{view}"], uids[f"instance-{view}"], number)
            for number, (view, image) in enumerate((("anterior", case.anterior), ("posterior", case.posterior)), 1)]


def _dataset(case: SyntheticCase, header: HeaderConvention, view: str | None, pixels: np.ndarray, series_uid: str,
             instance_uid: str, series_number: int) -> Dataset:
    static = _static_dataset(header, view)
    # The elements shared by every study are kept encoded (as read back from bytes) and written as they are.
    ds = Dataset(dict(static.items()))
    ds.set_original_encoding(False, True, static.original_character_set)
    uids = study_uids(case)
    if case.visit is None:
        date = (dt.date(2016, 1, 1) + dt.timedelta(days=case.seed % 1500)).strftime("%Y%m%d")
    else:  # one patient, dated visits
        date = (case.visit.baseline_date + dt.timedelta(days=case.visit.timepoint)).strftime("%Y%m%d")
    ds.SOPInstanceUID = instance_uid
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.FrameOfReferenceUID = uids["frame"]
    patient_id = case.visit.patient_id if case.visit else case.case_id
    ds.PatientName = f"Synthetic^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientSex = case.demographics.sex
    ds.PatientAge = f"{case.demographics.age:03d}Y"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyID = case.case_id
    ds.ImageComments = (f"synthetic phantom, difficulty {case.difficulty}, site {case.site}; ground truth in "
                        f"{case.case_id}.json")
    ds.Rows, ds.Columns = pixels.shape[1:]
    ds.PixelSpacing = [f"{case.patient.pixel_spacing:.4g}"] * 2
    ds.PixelData = pixels.astype("<u2", copy=False).tobytes()
    ds["PixelData"].VR = "OW"

    meta = FileMetaDataset(dict(static.file_meta.items()))
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    return ds


@lru_cache(maxsize=16)
def _static_dataset(header: HeaderConvention, view: str | None) -> Dataset:
    """The elements every study of one convention (and view, for a file per view) shares, encoded once per
    process (Explicit VR Little Endian). `view` None: both views as two frames."""
    ds = Dataset()
    ds.SOPClassUID = NuclearMedicineImageStorage
    ds.Modality = "NM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.PatientBirthDate = ""
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Whole-body bone scintigraphy"
    views = VIEWS if view is None else (view,)
    word = {"anterior": "ANT", "posterior": "POST"}
    ds.SeriesDescription = header.series_description.format(view=word[view]) if view else header.series_description
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "WHOLEBODY"
    ds.Manufacturer = header.manufacturer
    ds.ManufacturerModelName = header.model
    ds.SoftwareVersions = __version__
    ds.PatientOrientation = ""

    # Image pixel and multi-frame: frames selected by the detector (head 1 anterior, head 2 posterior).
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = len(views)
    ds.FrameIncrementPointer = 0x00540020  # DetectorVector
    heads = {"anterior": 1, "posterior": 2}
    ds.DetectorVector = [heads[v] for v in views]
    ds.EnergyWindowVector = [1] * len(views)
    ds.NumberOfDetectors = len(views)
    ds.NumberOfEnergyWindows = 1
    detectors = []
    for name in views:
        item = Dataset()
        if header.view_codes is not None:
            item.ViewCodeSequence = Sequence([_view_code_item(name, header.view_codes)])
        detectors.append(item)
    ds.DetectorInformationSequence = Sequence(detectors)
    window = Dataset()
    window.EnergyWindowName = "TC99M"
    limits = Dataset()
    limits.EnergyWindowLowerLimit = "126"  # 140 keV +/- 10 %
    limits.EnergyWindowUpperLimit = "154"
    window.EnergyWindowRangeSequence = Sequence([limits])
    ds.EnergyWindowInformationSequence = Sequence([window])
    pharm = Dataset()
    pharm.Radiopharmaceutical = "Tc-99m MDP"
    pharm.RadiopharmaceuticalCodeSequence = Sequence([_code_item(MDP_CODE)])
    ds.RadiopharmaceuticalInformationSequence = Sequence([pharm])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = generate_uid()  # replaced per study
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def write_case_dicom(case: SyntheticCase, target: str | Path) -> list[Path]:
    """Write the case as NM DICOM named by `target` (see `case_files`), each file atomically; the last file
    written is the posterior view's (or the only file), so its presence marks a complete study."""
    paths = case_files(target, header_convention(case))
    for ds, path in zip(build_datasets(case), paths):
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    return paths
