"""Hotspots in the DICOM SR: one TID 1501 measurement group per hotspot, added to bonescan's TID 1500 report.

Each group: tracking identifier "hotspot <n> (<view>)" with the hotspot's UID (the same UID as in hotspots.csv
and the lesion JSON), finding type Lesion, finding site = the skeletal region's SNOMED CT code with its laterality
(none outside the skeleton), measurements Area (mm2) and Probability (of metastasis), and the qualitative
evaluation Bony metastasis Present / Absent at the malignancy threshold. A first group holds the study: the Bone
Scan Index (percent), the number of malignant lesions (a focus seen in both views once, `pairing`) and whether the
uptake is a superscan's (`superscan`: then the number is no count of lesions), under local codes of the 99BONESCAN
scheme, since no standard code names them, and the number of hotspots found. The hotspots' and regions'
outlines go to DICOM Segmentations (`segmentation`).

Both list at most DICOM_HOTSPOT_LIMIT hotspots, the most malignant (`hotspots_for_dicom`): highdicom spends about
14 ms per hotspot building them (its content-tree checks), so a superscan's 75-200 hotspots took seconds and an
undertrained network's thousands of noise hotspots a minute per study, with Segmentations of tens of MB. The lesion
files (JSON, hotspots.csv, npz, overlay) keep every hotspot.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes

from .. import __version__
from ..dicom_out import LOCAL_SCHEME
from .hotspots import Hotspot, StudyLesions
from .regions import BY_NAME

BSI_CODE = hd.sr.CodedConcept(value="BSI", scheme_designator=LOCAL_SCHEME, meaning="Bone Scan Index")
LESIONS_CODE = hd.sr.CodedConcept(value="NMALLES", scheme_designator=LOCAL_SCHEME,
                                  meaning="Number of malignant lesions")
SUPERSCAN_CODE = hd.sr.CodedConcept(value="SUPERSCAN", scheme_designator=LOCAL_SCHEME, meaning="Superscan pattern")
LESIONS_UNIT = hd.sr.CodedConcept(value="{lesions}", scheme_designator="UCUM", meaning="lesions")
HOTSPOTS_CODE = hd.sr.CodedConcept(value="NHOTSPOTS", scheme_designator=LOCAL_SCHEME, meaning="Number of hotspots")
HOTSPOTS_UNIT = hd.sr.CodedConcept(value="{hotspots}", scheme_designator="UCUM", meaning="hotspots")
# A trained network finds tens of hotspots in a study (metastases, kidneys, bladder, benign uptake); more are a
# superscan's or noise, and each costs ~14 ms in the SR and Segmentations.
DICOM_HOTSPOT_LIMIT = 100


def hotspots_for_dicom(lesions: StudyLesions) -> list[Hotspot]:
    """The hotspots the SR and the Segmentations list: all, or the DICOM_HOTSPOT_LIMIT most malignant (ties by
    number), in number order."""
    if len(lesions.hotspots) <= DICOM_HOTSPOT_LIMIT:
        return list(lesions.hotspots)
    kept = sorted(lesions.hotspots, key=lambda h: (-h.malignancy, h.number))[:DICOM_HOTSPOT_LIMIT]
    return sorted(kept, key=lambda h: h.number)


def dicom_hotspot_warning(lesions: StudyLesions) -> str | None:
    """What a reader of the SR should know when it lists fewer hotspots than were found."""
    found = len(lesions.hotspots)
    if found <= DICOM_HOTSPOT_LIMIT:
        return None
    return (f"{found} hotspots found: the SR and Segmentations list the {DICOM_HOTSPOT_LIMIT} most malignant, the "
            "lesion files all of them")


def lesion_groups(lesions: StudyLesions, source_images=()) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """The study's group (BSI, malignant lesions, hotspots found, superscan), then one measurement group per
    hotspot listed (`hotspots_for_dicom`)."""
    algorithm = hd.sr.AlgorithmIdentification(name="bonescan lesion network", version=__version__,
                                              parameters=[f"malignancy_threshold={lesions.threshold:.6g}"])
    sources = [hd.sr.SourceImageForMeasurementGroup.from_source_image(h) for h in source_images] or None
    groups = [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Bone Scan Index, whole study"),
        finding_type=codes.SCT.BonyMetastasis, algorithm_id=algorithm,
        measurements=[hd.sr.Measurement(name=BSI_CODE, value=float(lesions.bsi), unit=codes.UCUM.Percent,
                                        algorithm_id=algorithm),
                      hd.sr.Measurement(name=LESIONS_CODE, value=lesions.n_malignant_lesions, unit=LESIONS_UNIT,
                                        algorithm_id=algorithm),
                      hd.sr.Measurement(name=HOTSPOTS_CODE, value=len(lesions.hotspots), unit=HOTSPOTS_UNIT,
                                        algorithm_id=algorithm)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=SUPERSCAN_CODE, value=codes.SCT.Present if lesions.superscan else codes.SCT.Absent)],
        source_images=sources)]
    for hotspot in hotspots_for_dicom(lesions):
        region = BY_NAME.get(hotspot.region)
        site = [hd.sr.FindingSite(anatomic_location=region.site, laterality=region.laterality)] if region else None
        malignant = hotspot.malignancy >= lesions.threshold
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hotspot.uid,
                                                         identifier=f"hotspot {hotspot.number} ({hotspot.view})"),
            finding_type=codes.SCT.Lesion, finding_sites=site, algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=codes.SCT.Area, value=float(hotspot.area_mm2),
                                            unit=codes.UCUM.SquareMillimeter),
                          hd.sr.Measurement(name=codes.DCM.Probability, value=float(hotspot.malignancy),
                                            unit=codes.UCUM.NoUnits, algorithm_id=algorithm)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=codes.SCT.BonyMetastasis, value=codes.SCT.Present if malignant else codes.SCT.Absent)],
            source_images=sources))
    return groups
