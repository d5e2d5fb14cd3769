"""Write a synthetic study as one two-frame NM Image Storage DICOM file, as a whole-body camera does."""

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
from .case import SyntheticCase

MANUFACTURER = "bonescan synthetic"

# View codes from DICOM PS3.16 CID 26 "Nuclear Medicine Projection" (as listed in pydicom.sr.codedict):
# SCT 399321004 "Anterior projection" and SCT 399001007 "Posterior projection".
VIEW_CODES = {"anterior": codes.SCT.AnteriorProjection, "posterior": codes.SCT.PosteriorProjection}
# Radiopharmaceutical from CID 25: SCT 96390006 "Technetium Tc^99m^ medronate" (99mTc-MDP).
MDP_CODE = codes.SCT.TechnetiumTc99mMedronate


def _code_item(code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def study_uids(case: SyntheticCase) -> dict[str, str]:
    """Study, series, instance and frame-of-reference UIDs derived from the case seed (stable across reruns)."""
    base = [str(case.seed), case.case_id, case.difficulty]
    return {name: generate_uid(entropy_srcs=base + [name]) for name in ("study", "series", "instance", "frame")}


def build_dataset(case: SyntheticCase) -> Dataset:
    """The NM dataset of a case: frame 1 anterior, frame 2 posterior (seen from behind), uint16 counts."""
    static = _static_dataset()
    # The elements shared by every study are kept encoded (as read back from bytes) and written as they are.
    ds = Dataset(dict(static.items()))
    ds.set_original_encoding(False, True, static.original_character_set)
    uids = study_uids(case)
    date = (dt.date(2016, 1, 1) + dt.timedelta(days=case.seed % 1500)).strftime("%Y%m%d")
    ds.SOPInstanceUID = uids["instance"]
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PatientName = f"Synthetic^{case.case_id}"
    ds.PatientID = case.case_id
    ds.PatientSex = case.demographics.sex
    ds.PatientAge = f"{case.demographics.age:03d}Y"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyID = case.case_id
    ds.ImageComments = f"synthetic phantom, difficulty {case.difficulty}; ground truth in {case.case_id}.json"
    anterior, posterior = case.anterior, case.posterior
    ds.Rows, ds.Columns = anterior.shape
    ds.PixelSpacing = [f"{case.patient.pixel_spacing:.4g}"] * 2
    ds.PixelData = np.stack([anterior, posterior]).astype("<u2", copy=False).tobytes()
    ds["PixelData"].VR = "OW"

    meta = FileMetaDataset(dict(static.file_meta.items()))
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    return ds


@lru_cache(maxsize=1)
def _static_dataset() -> Dataset:
    """The elements every synthetic study shares, encoded once per process (Explicit VR Little Endian)."""
    ds = Dataset()
    ds.SOPClassUID = NuclearMedicineImageStorage
    ds.Modality = "NM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.PatientBirthDate = ""
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Whole-body bone scintigraphy"
    ds.SeriesDescription = "WB ANT/POST"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "WHOLEBODY"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "phantom"
    ds.SoftwareVersions = __version__
    ds.PatientOrientation = ""

    # Image pixel and multi-frame: two frames selected by the detector (the two heads of the camera).
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = 2
    ds.FrameIncrementPointer = 0x00540020  # DetectorVector
    ds.DetectorVector = [1, 2]
    ds.EnergyWindowVector = [1, 1]
    ds.NumberOfDetectors = 2
    ds.NumberOfEnergyWindows = 1
    detectors = []
    for view in ("anterior", "posterior"):
        item = Dataset()
        item.ViewCodeSequence = Sequence([_code_item(VIEW_CODES[view])])
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


def write_case_dicom(case: SyntheticCase, target: str | Path) -> Path:
    """Write the case as an NM DICOM file at `target`, atomically."""
    ds = build_dataset(case)
    with atomic_path(target) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(target)
