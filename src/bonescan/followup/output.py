"""What a comparison leaves on disk: JSON, a per-region CSV, a side-by-side PNG, a DICOM SR and the PNG as a
DICOM Secondary Capture.

Everything is built in memory first and only then written, each file atomically, so a comparison that fails
(bad input, an unreadable header) leaves nothing behind.

The SR (Comprehensive SR, TID 1500 measurement report) joins the newest study and references every study
compared (the newest in its evidence, the earlier ones as pertinent other evidence). It holds one measurement
group per lesion (tracking identifier "lesion <n>"; tracking UID the one an earlier follow-up report gave it, else
that of its hotspot on the earliest visit showing it, as that study's own report gives it, so a viewer takes them
for one finding; finding site = its skeletal
region, its area on the newest visit where it is seen, and its status: new, persistent, grown or resolved), with a
change network one group per new lesion it saw (tracking identifier "change network <visit> N<n>", status new), and
one group for the patient (PCWG3 verdict, number of new lesions as the verdict counts them, with a change network
also the rules' and the network's counts, change in BSI). At most DICOM_HOTSPOT_LIMIT lesion groups, new ones
first, then grown, resolved and persistent (`lesions_for_dicom`), the network's after them while room is left: each
costs highdicom ~14 ms, and a superscan's lesions run to hundreds; the JSON, CSV and image keep every lesion.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from .. import __version__
from ..dicom_out import (
    FOLLOWUP_SC_SERIES_NUMBER, FOLLOWUP_SR_SERIES_NUMBER, LOCAL_SCHEME, build_secondary_capture,
    declare_local_scheme, read_source_headers, with_type2_attributes,
)
from ..fileio import atomic_path, write_bytes_atomic, write_text_atomic
from ..lesions.dicom import DICOM_HOTSPOT_LIMIT
from ..lesions.regions import BY_NAME
from ..study import VIEWS
from .compare import Comparison
from .match import STATUSES

COLOURS = {"new": (220, 30, 30), "grown": (240, 140, 0), "persistent": (230, 200, 0), "resolved": (40, 110, 230),
           "seen": (120, 120, 120)}
NETWORK_COLOUR = (200, 0, 200)  # the change network's new lesions: boxes labelled N1, N2, ...


def _local(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=LOCAL_SCHEME, meaning=meaning)


FOLLOWUP_STATUS = _local("FU-STATUS", "Follow-up status")
PCWG3_VERDICT = _local("PCWG3", "PCWG3 bone progression")
NEW_LESIONS = _local("FU-NEW", "Number of new lesions")
NETWORK_NEW_LESIONS = _local("FU-NEW-NET", "Number of new lesions seen by the change network")
RULES_NEW_LESIONS = _local("FU-NEW-RULES", "Number of new lesions by the follow-up rules")
BSI_CHANGE = _local("BSI-CHANGE", "Change in Bone Scan Index")


def lesion_status(comparison: Comparison, number: int) -> str:
    """The lesion's status on the newest visit compared (confirmatory, else follow-up), else on the follow-up."""
    for change in filter(None, (comparison.confirmatory, comparison.followup)):
        for name in ("new", "grown", "resolved"):
            if number in getattr(change, name):
                return name
    return "persistent"


def lesions_for_dicom(comparison: Comparison) -> list:
    """The lesions the follow-up SR lists: all, or the DICOM_HOTSPOT_LIMIT that matter most for the verdict (new,
    then grown, resolved, persistent; by number within each), in number order."""
    if len(comparison.lesions) <= DICOM_HOTSPOT_LIMIT:
        return list(comparison.lesions)
    order = ("new", "grown", "resolved", "persistent")
    ranked = sorted(comparison.lesions, key=lambda lesion: (order.index(lesion_status(comparison, lesion.number)),
                                                            lesion.number))
    return sorted(ranked[:DICOM_HOTSPOT_LIMIT], key=lambda lesion: lesion.number)


def regions_csv(comparison: Comparison) -> str:
    """One row per region and comparison: counts of new, resolved, persistent and grown lesions."""
    lines = ["comparison,region," + ",".join(STATUSES)]
    for name, change in (("follow-up", comparison.followup), ("confirmatory", comparison.confirmatory)):
        if change is None:
            continue
        for region, counts in sorted(change.by_region.items()):
            lines.append(f"{name},{region}," + ",".join(str(counts[s]) for s in STATUSES))
    return "\n".join(lines) + "\n"


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def side_by_side_image(comparison: Comparison) -> np.ndarray:
    """Anterior and posterior view of each visit side by side, a lesion carrying the same number on every panel;
    H x W x 3 uint8."""
    font = ImageFont.load_default()
    panels = []
    for v, visit in enumerate(comparison.visits):
        for view in VIEWS:
            image = np.sqrt(np.maximum(np.asarray(getattr(visit.study, view), np.float32), 0))
            top = float(np.percentile(image, 99.5)) or 1.0
            grey = (255 - np.clip(image / top * 255, 0, 255)).astype(np.uint8)  # dark uptake on white, as read
            panel = Image.fromarray(grey).convert("RGB")
            draw = ImageDraw.Draw(panel)
            for lesion in comparison.lesions:
                for h in lesion.hotspots.get(v, []):
                    if h.view != view:
                        continue
                    status = _panel_status(comparison, lesion.number, v)
                    r, c = h.centroid
                    radius = max(6.0, np.sqrt(h.area_mm2) / (visit.study.pixel_spacing or (2.4, 2.4))[0])
                    draw.ellipse([c - radius, r - radius, c + radius, r + radius], outline=COLOURS[status], width=2)
                    draw.text((c + radius + 1, r - 6), str(lesion.number), fill=COLOURS[status], font=font)
            for area in _network_areas(comparison, v):
                if area.view == view:
                    r0, c0, r1, c1 = area.box
                    draw.rectangle([c0 - 2, r0 - 2, c1 + 1, r1 + 1], outline=NETWORK_COLOUR, width=1)
                    draw.text((c0 - 14, r0 - 10), f"N{area.number}", fill=NETWORK_COLOUR, font=font)
            when = f"day {visit.timepoint}" if visit.timepoint is not None else "date unknown"
            draw.text((3, 3), f"{visit.role} ({when})", fill=(0, 0, 0), font=font)
            draw.text((3, 15), f"{view}  BSI {visit.lesions.bsi:.2f} %", fill=(0, 0, 0), font=font)
            panels.append(panel)
    height = max(p.height for p in panels) + 28
    sheet = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), height), (255, 255, 255))
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width + 4
    draw = ImageDraw.Draw(sheet)
    legend = "  ".join(f"{k}" for k in ("new", "grown", "persistent", "resolved"))
    draw.text((3, height - 26), f"PCWG3: {comparison.verdict.status}. {comparison.verdict.reason}"[:220],
              fill=(0, 0, 0), font=font)
    draw.text((3, height - 13), f"reader: {comparison.reader}; colours: {legend}", fill=(0, 0, 0), font=font)
    x = 3 + draw.textlength(f"reader: {comparison.reader}; colours: ", font=font)
    for name in ("new", "grown", "persistent", "resolved"):
        draw.text((x, height - 13), name, fill=COLOURS[name], font=font)
        x += draw.textlength(name + "  ", font=font)
    if comparison.network is not None:
        draw.text((x, height - 13), "N: new by the change network", fill=NETWORK_COLOUR, font=font)
    return np.asarray(sheet).copy()


def _network_areas(comparison: Comparison, visit: int) -> list:
    """The change network's new lesions drawn on visit `visit` (the follow-up's, the confirmatory's)."""
    network = comparison.network
    if network is None or visit == 0:
        return []
    return (network.followup if visit == 1 else network.confirmatory) or []


def _panel_status(comparison: Comparison, number: int, visit: int) -> str:
    if visit == 0:
        return "resolved" if number in comparison.followup.resolved else "seen"
    change = comparison.followup if visit == 1 else comparison.confirmatory
    for name in ("new", "grown", "persistent"):
        if number in getattr(change, name):
            return name
    return "seen"


def build_capture(comparison: Comparison, image: np.ndarray) -> Dataset | None:
    """The side-by-side image as a Secondary Capture in the newest study (any PACS viewer shows it), or None when
    that study is not DICOM."""
    newest = comparison.visits[-1]
    headers = read_source_headers(newest.files)
    if not headers:
        return None
    return build_secondary_capture(image, newest.study, headers, FOLLOWUP_SC_SERIES_NUMBER, "bonescan follow-up",
                                   "Lesions numbered alike on every visit (red: new); for review, not for diagnosis "
                                   "alone")


def build_sr(comparison: Comparison, capture: Dataset | None = None) -> Dataset | None:
    """The follow-up SR, or None when no compared study is DICOM (nothing to reference); `capture` (the
    side-by-side Secondary Capture) is listed in its evidence."""
    headers = [read_source_headers(v.files) for v in comparison.visits]
    if not all(headers):
        return None
    parameters = [f"reader={comparison.reader}"]
    if comparison.network is not None:
        parameters.append(f"{comparison.network.model}, join={comparison.network.join}")
    algorithm = hd.sr.AlgorithmIdentification(name="bonescan follow-up", version=__version__, parameters=parameters)
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(), name="bonescan",
                                                       manufacturer_name="bonescan", model_name="bonescan follow-up")
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    groups = []
    for lesion in lesions_for_dicom(comparison):
        visit = max(lesion.hotspots)
        region = BY_NAME.get(lesion.region)
        sites = [hd.sr.FindingSite(anatomic_location=region.site, laterality=region.laterality)] if region else None
        status = lesion_status(comparison, lesion.number)
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=lesion.tracking_uid, identifier=f"lesion {lesion.number}"),
            finding_type=codes.SCT.Lesion, finding_sites=sites, algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=codes.SCT.Area, value=float(lesion.area(visit)),
                                            unit=codes.UCUM.SquareMillimeter)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=FOLLOWUP_STATUS,
                                                                 value=_local(status.upper(), status))],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(h) for h in headers[visit]]))
    room = max(0, DICOM_HOTSPOT_LIMIT - len(groups))
    for visit, area in [(v, a) for v in (1, 2) for a in _network_areas(comparison, v)][:room]:
        region = BY_NAME.get(area.region)
        sites = [hd.sr.FindingSite(anatomic_location=region.site, laterality=region.laterality)] if region else None
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(), identifier=f"change network {comparison.visits[visit].role} N{area.number}"),
            finding_type=codes.SCT.Lesion, finding_sites=sites, algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=codes.SCT.Area, value=float(area.area_mm2),
                                            unit=codes.UCUM.SquareMillimeter)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=FOLLOWUP_STATUS, value=_local("NEW", "new"))],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(h) for h in headers[visit]]))
    newest = comparison.confirmatory or comparison.followup
    lesions_unit = hd.sr.CodedConcept("{lesions}", "UCUM", "lesions")
    counts = [hd.sr.Measurement(name=NEW_LESIONS, value=comparison.new_count, unit=lesions_unit)]
    if comparison.network is not None:
        counts += [hd.sr.Measurement(name=RULES_NEW_LESIONS, value=len(comparison.followup.new), unit=lesions_unit),
                   hd.sr.Measurement(name=NETWORK_NEW_LESIONS, value=len(comparison.network.followup),
                                     unit=lesions_unit)]
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="bone progression, patient"),
        finding_type=codes.SCT.BonyMetastasis, algorithm_id=algorithm,
        measurements=counts + [hd.sr.Measurement(name=BSI_CHANGE, value=round(newest.bsi_change, 4),
                                                 unit=codes.UCUM.Percent)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=PCWG3_VERDICT, value=_local(comparison.verdict.status.upper().replace(" ", "-"),
                                             comparison.verdict.status))]))
    report = hd.sr.MeasurementReport(observation_context=context,
                                     procedure_reported=codes.LN.RadionuclideScanOfWholeBody,
                                     imaging_measurements=groups)
    # newest study first: the SR joins it and copies its patient and study attributes
    evidence = [with_type2_attributes(h) for visit_headers in reversed(headers) for h in visit_headers]
    evidence = ([capture] if capture is not None else []) + evidence  # the capture is in the newest study too
    sr = hd.sr.ComprehensiveSR(evidence=evidence, content=report[0], series_instance_uid=generate_uid(),
                               series_number=FOLLOWUP_SR_SERIES_NUMBER, sop_instance_uid=generate_uid(),
                               instance_number=1, manufacturer="bonescan", is_complete=True)
    sr.SeriesDescription = "bonescan follow-up: new lesions, BSI change, PCWG3"
    declare_local_scheme(sr, "bonescan follow-up concepts")
    return sr


def write_comparison(comparison: Comparison, out: str | Path, stem: str = "followup") -> dict[str, Path]:
    """Write <stem>.json, <stem>_regions.csv, <stem>.png, and when the studies are DICOM <stem>_sr.dcm and
    <stem>_sc.dcm (the PNG as a Secondary Capture), to `out`."""
    out = Path(out)
    text = json.dumps(comparison.to_json(), indent=1) + "\n"
    table = regions_csv(comparison)
    image = side_by_side_image(comparison)
    png = _png_bytes(image)
    capture = build_capture(comparison, image)
    sr = build_sr(comparison, capture)
    paths = {"json": out / f"{stem}.json", "regions": out / f"{stem}_regions.csv", "png": out / f"{stem}.png"}
    write_text_atomic(paths["json"], text)
    write_text_atomic(paths["regions"], table)
    write_bytes_atomic(paths["png"], png)
    for key, dataset in (("sr", sr), ("sc", capture)):
        if dataset is not None:
            paths[key] = out / f"{stem}_{key}.dcm"
            with atomic_path(paths[key]) as tmp:
                dataset.save_as(tmp, enforce_file_format=True)
    return paths
