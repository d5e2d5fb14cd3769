"""Hotspots and skeletal regions as DICOM Segmentations (highdicom), so a PACS viewer draws them over the scan.

One SEG instance per view, both in one SEG series of the source study. Segments: each hotspot of that view that
the SR lists (`dicom.hotspots_for_dicom`; category Morphologically abnormal structure, type Lesion, label "hotspot
<n>", tracking identifier and UID the same as in the SR and hotspots.csv), then each skeletal region found
(category Anatomical structure, type the region's SNOMED CT site, label its name with side). Binary, one frame per
non-empty segment.

Why one SEG per view: a whole-body NM study is one file of two planar frames (anterior, posterior) with no patient
coordinate system for its pixels; highdicom (0.28) builds a SEG from a multi-frame source only in such a coordinate
system, and from a source without one only when it has a single frame. Each view is therefore built against a
single-frame copy of the source header (no pixel data, no Frame of Reference), and the references are then pointed
back at the real NM instance and frame (Referenced Frame Number). Views are matched to frames by the same rules
that read the study (`io.dicom.decide_views`); two single-frame files (one per view) need no renumbering.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from .. import __version__
from ..dicom_out import SEG_SERIES_NUMBER, with_type2_attributes
from ..io.dicom import decide_views
from ..study import VIEWS
from .dicom import hotspots_for_dicom
from .hotspots import StudyLesions
from .regions import BY_LABEL

# Patient Orientation of the stored views (rows run head to feet): anterior seen from the front (columns run to
# the patient's left), posterior seen from behind (columns run to the patient's right).
ORIENTATION = {"anterior": ["L", "F"], "posterior": ["R", "F"]}


@dataclass
class ViewSource:
    """The DICOM instance and frame (1-based) that hold one view."""

    header: Dataset
    frame: int


def view_sources(headers: list[Dataset]) -> dict[str, ViewSource]:
    """Which instance and frame holds each view, by the rules that read the study; views not found are absent."""
    found: dict[str, ViewSource] = {}
    for position, header in enumerate(headers):
        n_frames = int(header.get("NumberOfFrames", 1) or 1)
        views = decide_views(header, n_frames).views
        if n_frames == 1 and views[0] is None and len(headers) == 2:
            views = [VIEWS[position]]  # a file pair given in anterior, posterior order
        for frame, view in enumerate(views, start=1):
            if view in VIEWS and view not in found:
                found[view] = ViewSource(header, frame)
    return found


def build_segmentations(lesions: StudyLesions, numbers: np.ndarray,
                        headers: list[Dataset]) -> dict[str, hd.seg.Segmentation]:
    """The SEG of each view (by view name) that has a DICOM source and something to show (hotspots or regions)."""
    sources = view_sources(headers)
    series_uid = hd.UID()
    algorithm = hd.AlgorithmIdentificationSequence(name="bonescan lesion network", version=__version__,
                                                   family=codes.DCM.ArtificialIntelligence)
    segmentations = {}
    for index, view in enumerate(VIEWS):
        source = sources.get(view)
        if source is None:
            continue
        shape = (int(source.header.Rows), int(source.header.Columns))
        if numbers.shape[1:] != shape:
            raise ValueError(f"{view} view: lesion maps {numbers.shape[1:]} differ from the source image {shape}")
        masks, descriptions = _segments(lesions, numbers[index], lesions.regions[index], view, algorithm)
        if not masks:
            continue
        seg = hd.seg.Segmentation(
            source_images=[_single_frame_copy(source.header)],
            pixel_array=np.stack(masks, axis=-1)[None],
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=series_uid, series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=index + 1,
            manufacturer="bonescan", manufacturer_model_name="bonescan lesion network",
            software_versions=__version__, device_serial_number="0",
            series_description="bonescan hotspots and skeletal regions",
        )
        _point_at_frame(seg, source)
        seg.PatientOrientation = ORIENTATION[view]
        seg.ContentLabel = "HOTSPOTS"
        segmentations[view] = seg
    return segmentations


def _segments(lesions: StudyLesions, numbers: np.ndarray, regions: np.ndarray, view: str,
              algorithm) -> tuple[list[np.ndarray], list[hd.seg.SegmentDescription]]:
    masks, descriptions = [], []

    def add(mask, label, category, kind, **tracking):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=len(descriptions) + 1, segment_label=label, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, **tracking))
        masks.append(mask)

    for hotspot in hotspots_for_dicom(lesions):
        mask = numbers == hotspot.number
        if hotspot.view == view and mask.any():
            add(mask, f"hotspot {hotspot.number}", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion,
                tracking_id=f"hotspot {hotspot.number} ({view})", tracking_uid=hotspot.uid)
    for label in np.unique(regions):
        if label == 0:
            continue
        region = BY_LABEL[int(label)]
        add(regions == label, region.title, codes.SCT.AnatomicalStructure, region.site)
    return masks, descriptions


def _single_frame_copy(header: Dataset) -> Dataset:
    """The header as a one-frame image without a coordinate system: what highdicom can derive a SEG from."""
    proxy = with_type2_attributes(header)
    for keyword in ("FrameOfReferenceUID", "PositionReferenceIndicator", "PixelData", "FrameIncrementPointer"):
        if keyword in proxy:
            delattr(proxy, keyword)
    proxy.NumberOfFrames = 1
    measures = Dataset()
    measures.PixelSpacing = list(header.get("PixelSpacing", [1.0, 1.0]))
    measures.SliceThickness = header.get("SliceThickness", 1.0) or 1.0
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    proxy.SharedFunctionalGroupsSequence = [shared]
    return proxy


def _point_at_frame(seg: hd.seg.Segmentation, source: ViewSource) -> None:
    """Make every reference to the source instance name the frame that holds this view."""
    if int(source.header.get("NumberOfFrames", 1) or 1) == 1:
        return
    for frame in seg.PerFrameFunctionalGroupsSequence:
        for derivation in frame.get("DerivationImageSequence", []):
            for item in derivation.get("SourceImageSequence", []):
                item.ReferencedFrameNumber = source.frame
    for series in seg.get("ReferencedSeriesSequence", []):
        for item in series.get("ReferencedInstanceSequence", []):
            item.ReferencedFrameNumber = source.frame
    for item in seg.get("SourceImageSequence", []):
        item.ReferencedFrameNumber = source.frame
