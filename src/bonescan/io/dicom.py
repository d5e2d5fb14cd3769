"""Read one NM DICOM file: decoded frames, which frame is which view, pixel spacing and metadata.

Which frame is the anterior view is decided by the first rule that gives an answer:

1. "view-code": the View Code Sequence of each Detector Information Sequence item (mapped to frames through the
   Detector Vector, else item order), or a top-level View Code Sequence for a single frame. Codes: anterior
   projection SCT 399321004 / SRT G-5215, posterior projection SCT 399001007 / SRT G-5216; other codes are read
   from their Code Meaning ("anterior" / "posterior", but not "antero-posterior", which is ambiguous).
2. "text": the words ANT / ANTERIOR and POST / POSTERIOR in View Position, then Series Description, then Image ID.
   One field naming both views gives the frame order ("ANT POST" = frame 1 anterior); for a single frame the
   field must name one view only. "POST" followed by INJ, OP, THERAP, TREAT or TX is a time, not a view.
3. "detector-vector": detector 1 is anterior, detector 2 posterior (the GE whole-body convention, which GE
   Discovery files rely on; they carry no view codes).

Later rules that disagree with the deciding one add a warning. A two-frame file that no rule decides is refused;
a single frame no rule decides is taken as anterior, with a warning.
"""

from __future__ import annotations

import re
import warnings as pywarnings
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from ..errors import MissingDecoderError, NotABoneScanError, UnreadableInputError, ViewError
from ..study import StudyMeta

ANTERIOR, POSTERIOR = "anterior", "posterior"
ANTERIOR_CODES = {"399321004", "G-5215"}
POSTERIOR_CODES = {"399001007", "G-5216"}
TEXT_FIELDS = ("ViewPosition", "SeriesDescription", "ImageID")
NOT_A_VIEW_AFTER_POST = ("INJ", "OP", "THERAP", "TREAT", "TX")
MAX_FRAMES = 2
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

# pip packages that provide a decoder, per compressed transfer syntax (pydicom's pixel handler plugins).
_JPEG = "pylibjpeg pylibjpeg-libjpeg"
_J2K = "pylibjpeg pylibjpeg-openjpeg"
DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": _JPEG,  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": _JPEG,  # JPEG Extended
    "1.2.840.10008.1.2.4.57": _JPEG,  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": _JPEG,  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90": _J2K,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _J2K,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _J2K,  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": _J2K,  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": _J2K,  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE Lossless
}


@dataclass
class ViewDecision:
    """Per-frame view names ("anterior"/"posterior", None when undecided) and the rule that decided them."""

    views: list[str | None]
    rule: str | None
    warnings: list[str] = field(default_factory=list)


@dataclass
class DicomContent:
    """One DICOM file, decoded: float32 frames (rows head to feet) and what the header says about them."""

    path: Path
    frames: list[np.ndarray]
    decision: ViewDecision
    pixel_spacing: tuple[float, float] | None
    meta: StudyMeta
    warnings: list[str]


def read_header(path: Path) -> Dataset:
    """Read a DICOM file without its pixel data (for grouping files into studies)."""
    return _dcmread(path, stop_before_pixels=True)


def read_dicom(path: Path) -> DicomContent:
    """Read, check and decode one NM DICOM file holding one or two whole-body views."""
    ds = _dcmread(path, stop_before_pixels=False)
    _check_modality(ds, path)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > MAX_FRAMES:
        raise NotABoneScanError(
            path, f"holds {n_frames} frames; a whole-body study has one view per frame, at most {MAX_FRAMES}"
        )
    pixels = _decode(ds, path)
    frames = [pixels] if pixels.ndim == 2 else list(pixels)
    warnings: list[str] = []
    if str(ds.get("LossyImageCompression", "")) == "01":
        warnings.append("lossy compression was applied to these counts")
    spacing = pixel_spacing(ds)
    if spacing is None:
        warnings.append("no pixel spacing in the file")
    return DicomContent(path, frames, decide_views(ds, len(frames)), spacing, study_meta(ds), warnings)


def decide_views(ds: Dataset, n_frames: int) -> ViewDecision:
    """Decide each frame's view from view codes, then view text, then the detector vector (module docstring)."""
    rules: list[tuple[str, Callable[[Dataset, int], list[str] | None]]] = [
        ("view-code", _views_from_codes),
        ("text", _views_from_text),
        ("detector-vector", _views_from_detectors),
    ]
    answers = [(name, rule(ds, n_frames)) for name, rule in rules]
    decided = [(name, views) for name, views in answers if views is not None]
    if not decided:
        return ViewDecision([None] * n_frames, None)
    rule, views = decided[0]
    notes = [
        f"{other} says frames are {', '.join(other_views)} but {rule} decided {', '.join(views)}"
        for other, other_views in decided[1:]
        if other_views != views
    ]
    return ViewDecision(list(views), rule, notes)


def views_or_refuse(decision: ViewDecision, path: Path) -> list[str]:
    """The decided views of a two-frame file, or a ViewError saying that nothing in the file tells them apart."""
    if decision.rule is None:
        raise ViewError(
            path,
            "cannot tell which frame is anterior: no view codes, no ANT/POST text in View Position, Series"
            " Description or Image ID, and no detector vector of 1 and 2",
        )
    return decision.views  # type: ignore[return-value]


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm: Pixel Spacing, else Detector Information, else Imager Pixel Spacing."""
    candidates = [ds.get("PixelSpacing")]
    detectors = ds.get("DetectorInformationSequence") or []
    candidates += [item.get("PixelSpacing") for item in detectors]
    candidates.append(ds.get("ImagerPixelSpacing"))
    for value in candidates:
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return (row, col)
    return None


def study_meta(ds: Dataset) -> StudyMeta:
    """Patient and acquisition metadata from a DICOM header (None where absent or malformed)."""
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    return StudyMeta(
        patient_id=_text(ds, "PatientID"),
        sex=sex if sex in ("M", "F") else None,
        age=patient_age(ds),
        study_date=_text(ds, "StudyDate"),
        manufacturer=_text(ds, "Manufacturer"),
        model=_text(ds, "ManufacturerModelName"),
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_instance_uids=tuple(uid for uid in [_text(ds, "SOPInstanceUID")] if uid),
    )


def patient_age(ds: Dataset) -> float | None:
    """Age in years from Patient's Age ("063Y", "006M", "010W", "005D"), else from birth and study dates."""
    text = str(ds.get("PatientAge", "") or "").strip().upper()
    match = re.fullmatch(r"(\d{1,3})\s*([YMWD])", text)
    if match:
        per_year = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}[match.group(2)]
        return int(match.group(1)) / per_year
    birth, study = _date(ds, "PatientBirthDate"), _date(ds, "StudyDate")
    if birth and study and study >= birth:
        return (study - birth).days / 365.25
    return None


# --- reading and decoding ----------------------------------------------------------------------------------


def _dcmread(path: Path, stop_before_pixels: bool) -> Dataset:
    try:
        with pywarnings.catch_warnings(record=True) as caught:
            pywarnings.simplefilter("always")
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise UnreadableInputError(path, "not a DICOM file (no DICM marker)") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as error:
        raise UnreadableInputError(path, f"truncated or corrupt DICOM file ({error})") from None
    # pydicom drops a cut-off element with only a warning; a file cut short must not pass as "no pixel data".
    if any("End of file" in str(w.message) for w in caught):
        raise UnreadableInputError(path, "truncated DICOM file (it ends inside an element)")
    return ds


def _check_modality(ds: Dataset, path: Path) -> None:
    if str(ds.get("SOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY:
        raise NotABoneScanError(path, "a DICOMDIR index, not an image; give the image files or their folder")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality != "NM":
        found = f"modality {modality}" if modality else "no modality"
        raise NotABoneScanError(path, f"{found}; bone scans are nuclear medicine (NM) images")


def _decode(ds: Dataset, path: Path) -> np.ndarray:
    if not any(key in ds for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise NotABoneScanError(path, "no pixel data in the DICOM file")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise NotABoneScanError(path, "a colour image (several samples per pixel); bone scans are count images")
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1")))
    _require_decoder(syntax, path)
    try:
        pixels = ds.pixel_array
    except Exception as error:  # decoders raise many types; all mean "these bytes are not an image"
        reason = str(error)
        if "less than expected" in reason or "truncat" in reason.lower():
            raise UnreadableInputError(path, "truncated DICOM file (pixel data shorter than its header says)") from None
        raise UnreadableInputError(path, f"pixel data cannot be decoded ({type(error).__name__}: {reason})") from None
    counts = np.asarray(pixels, dtype=np.float32)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if (slope, intercept) != (1.0, 0.0):
        counts = counts * np.float32(slope) + np.float32(intercept)
    return counts


def _require_decoder(syntax: UID, path: Path) -> None:
    if not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise MissingDecoderError(
            path,
            f"pydicom has no decoder for transfer syntax {syntax.name} ({syntax}); convert the file to an"
            " uncompressed transfer syntax first (e.g. gdcmconv --raw)",
        ) from None
    if not decoder.is_available:
        package = DECODER_PACKAGES.get(str(syntax), "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg")
        raise MissingDecoderError(
            path, f"no decoder installed for transfer syntax {syntax.name}; install it with: pip install {package}"
        )


# --- view rules ------------------------------------------------------------------------------------------


def _views_from_codes(ds: Dataset, n_frames: int) -> list[str] | None:
    detectors = list(ds.get("DetectorInformationSequence") or [])
    by_detector = {j + 1: _code_view(item.get("ViewCodeSequence")) for j, item in enumerate(detectors)}
    vector = _detector_vector(ds, n_frames)
    if vector is not None:
        views = [by_detector.get(d) for d in vector]
    elif len(detectors) == n_frames:
        views = [by_detector[j + 1] for j in range(n_frames)]
    else:
        views = [None] * n_frames
    if n_frames == 1 and views[0] is None:
        views = [_code_view(ds.get("ViewCodeSequence"))]
    return _complete(views)


def _views_from_text(ds: Dataset, n_frames: int) -> list[str] | None:
    for keyword in TEXT_FIELDS:
        named = _text_views(str(ds.get(keyword, "") or ""))
        if n_frames == 1 and len(named) == 1:
            return named
        if n_frames == 2 and len(named) == 2:
            return named
    return None


def _views_from_detectors(ds: Dataset, n_frames: int) -> list[str] | None:
    vector = _detector_vector(ds, n_frames)
    if vector is None:
        return None
    views = [{1: ANTERIOR, 2: POSTERIOR}.get(d) for d in vector]
    return _complete(views)


def _complete(views: list[str | None]) -> list[str] | None:
    """Accept a decision only when every frame got a view and no view appears twice."""
    if any(v is None for v in views) or len(set(views)) != len(views):
        return None
    return list(views)  # type: ignore[arg-type]


def _code_view(sequence) -> str | None:
    for item in sequence or []:
        value = str(item.get("CodeValue", "") or "").strip()
        if value in ANTERIOR_CODES:
            return ANTERIOR
        if value in POSTERIOR_CODES:
            return POSTERIOR
        meaning = str(item.get("CodeMeaning", "") or "").lower()
        has_anterior, has_posterior = "anter" in meaning, "poster" in meaning
        if has_anterior != has_posterior:  # "antero-posterior" names both: no decision
            return ANTERIOR if has_anterior else POSTERIOR
    return None


def _text_views(text: str) -> list[str]:
    """Views named in a text field, in order of first mention."""
    words = {"ANT": ANTERIOR, "ANTERIOR": ANTERIOR, "POST": POSTERIOR, "POSTERIOR": POSTERIOR}
    tokens = [token for token in re.split(r"[^A-Z]+", text.upper()) if token]
    named: list[str] = []
    for token, following in zip(tokens, tokens[1:] + [""]):
        if token == "POST" and following.startswith(NOT_A_VIEW_AFTER_POST):
            continue  # "3H POST INJ", "POST OP": time, not view
        view = words.get(token)
        if view and view not in named:
            named.append(view)
    return named


def _detector_vector(ds: Dataset, n_frames: int) -> list[int] | None:
    value = ds.get("DetectorVector")
    if value is None:
        return None
    vector = [int(v) for v in (value if isinstance(value, (list, tuple, MultiValue)) else [value])]
    return vector if len(vector) == n_frames else None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = str(ds.get(keyword, "") or "").strip()
    return value or None


def _date(ds: Dataset, keyword: str) -> date | None:
    text = _text(ds, keyword)
    if not text or not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None

