"""Build NM whole-body DICOM datasets in the variations real cameras produce, for the reading tests.

Frames are small (512 x 128, the 1024 x 256 whole-body shape at half size) and carry a marker: a bright block
that exists only in the anterior frame, another only in the posterior frame, so a test can check that the frame
called anterior really is the anterior one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

NM_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.20")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")

ROWS, COLS = 512, 128
ANTERIOR_MARKER = (slice(20, 24), slice(10, 14))
POSTERIOR_MARKER = (slice(40, 44), slice(100, 104))
ANTERIOR_MARKER_VALUE = 900
POSTERIOR_MARKER_VALUE = 700

# (code value, coding scheme, code meaning) of CID 26 "Nuclear Medicine Projections"
ANTERIOR_SCT = ("399321004", "SCT", "Anterior projection")
POSTERIOR_SCT = ("399001007", "SCT", "Posterior projection")
ANTERIOR_SRT = ("G-5215", "SRT", "Anterior projection")
POSTERIOR_SRT = ("G-5216", "SRT", "Posterior projection")


def body_views(rows: int = ROWS, cols: int = COLS, seed: int = 0) -> np.ndarray:
    """Two uint16 count frames (anterior, posterior): Poisson background, a spine, and one marker per view."""
    rng = np.random.default_rng(seed)
    views = rng.poisson(3.0, size=(2, rows, cols)).astype(np.uint16)
    views[:, rows // 8 : rows // 2, cols // 2 - 3 : cols // 2 + 3] += 40  # spine
    views[0][ANTERIOR_MARKER] = ANTERIOR_MARKER_VALUE
    views[1][POSTERIOR_MARKER] = POSTERIOR_MARKER_VALUE
    return views


def nm_dataset(
    frames: np.ndarray,
    *,
    view_codes: Sequence[tuple[str, str, str] | None] | None = None,
    detector_vector: Sequence[int] | None = (1, 2),
    text: dict[str, str] | None = None,
    modality: str = "NM",
    sop_class: UID = NM_IMAGE_STORAGE,
    pixel_spacing: tuple[float, float] | None = (2.4, 2.4),
    rescale: tuple[float, float] | None = None,
    patient_age: str = "063Y",
    patient_sex: str = "M",
    study_uid: str | None = None,
) -> Dataset:
    """An uncompressed NM dataset holding `frames` (n x rows x cols uint16), GE Discovery style by default.

    view_codes: one (value, scheme, meaning) per detector in a Detector Information Sequence (None = no codes).
    detector_vector: Detector Vector values, one per frame (None = absent).
    text: extra text attributes, e.g. {"ViewPosition": "ANT"} or {"SeriesDescription": "WB POST ANT"}.
    """
    frames = np.asarray(frames, dtype=np.uint16)
    if frames.ndim == 2:
        frames = frames[None]
    n_frames, rows, cols = frames.shape
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.ManufacturerModelName = "Discovery NM/CT 670"
    ds.PatientID = "P001"
    ds.PatientSex = patient_sex
    ds.PatientAge = patient_age
    ds.StudyDate = "20190315"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.Rows, ds.Columns = rows, cols
    ds.NumberOfFrames = n_frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if detector_vector is not None:
        ds.DetectorVector = list(detector_vector)
        ds.NumberOfDetectors = len(set(detector_vector))
        ds.FrameIncrementPointer = 0x00540020  # frames follow the Detector Vector
    if view_codes is not None:
        items = []
        for code in view_codes:
            item = Dataset()
            if code is not None:
                value, scheme, meaning = code
                view = Dataset()
                view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = value, scheme, meaning
                item.ViewCodeSequence = DicomSequence([view])
            items.append(item)
        ds.DetectorInformationSequence = DicomSequence(items)
    for keyword, value in (text or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = frames.tobytes()
    return ds


def save(ds: Dataset, path: Path, transfer_syntax: UID | None = None) -> Path:
    """Write `ds` as a DICOM file (preamble + DICM), compressed to `transfer_syntax` when given."""
    if transfer_syntax is not None:
        ds.compress(transfer_syntax)
    ds.save_as(path, enforce_file_format=True)
    return path
