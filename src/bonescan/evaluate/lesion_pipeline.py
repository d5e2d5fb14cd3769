"""Lesion-level evaluation of `bonescan evaluate`: predicted hotspots, regions and BSI against per-study truth.

Inputs, per study: the prediction folder's `lesions/<case_id>.json` (`StudyLesions.to_json`: hotspots with view,
centroid and malignancy, n_malignant, n_malignant_lesions, bsi, probability_from_lesions) and
`lesions/<case_id>.npz` (`regions` uint8 [2, H, W]), and the manifest's `truth` column (a `bonescan.lesions.truth`
file; relative paths are relative to the manifest's folder). A study missing either side, or whose files cannot
be read, is left out and named in a warning; the others are evaluated.

Truth lesions are the metastases of the truth file seen in at least one view, confluent ones (outlines touching in
a view) counted once (`LesionTruth.confluent_metastases`); the sensitivity at false-positive rates is also given
per outlined metastasis (`sensitivity_at_fp_per_instance`). Their attributes:
- region: the truth's region name for the finding ("outside skeleton" when empty);
- size: equivalent diameter 2 sqrt(A / pi) in mm, A the larger of the two views' areas (pixel spacing of the
  study's images);
- contrast: mean counts inside the lesion / median counts of normal bone (region pixels outside every finding;
  non-zero pixels outside every finding when the truth has no region maps), in the view where it is higher, as
  the hotspots' `uptake_ratio`. Size and contrast need the study's images (manifest paths); without them the
  lesion's group is "unknown".
Metrics: `froc` (hit criterion, FROC, sensitivity at FPs per study) and `lesion_agreement` (Dice, BSI, counts);
the ROC of BSI and of the lesion probability beside the classifier's, compared by the paired DeLong test. The
report section (figures, HTML) is `lesion_report`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import AnnotationError, BoneScanError, PredictionsError
from ..lesions.bsi import bone_scan_index
from ..lesions.regions import BY_LABEL, REGIONS
from ..lesions.truth import LesionTruth, load_truth
from ..study import VIEWS
from .froc import (
    DEFAULT_TOLERANCE,
    FP_RATES,
    StudyDetections,
    froc_curve,
    lesion_sensitivity_by,
    match_hotspots,
    sensitivity_at_fp,
    sensitivity_at_fp_ci,
    study_detections,
)
from .lesion_agreement import bsi_agreement, count_agreement, region_dice
from .stats import clean_for_json, delong_auc, delong_paired_test, wilson_interval

SIZE_BINS = ((0.0, 10.0, "< 10 mm"), (10.0, 20.0, "10-20 mm"), (20.0, math.inf, ">= 20 mm"))
CONTRAST_BINS = ((0.0, 1.5, "< 1.5"), (1.5, 3.0, "1.5-3"), (3.0, math.inf, ">= 3"))
# Rose's signal-to-noise ratio of the lesion against its own bone: under 5 no observer detects it reliably (Rose
# 1948; Burgess 1999).
VISIBILITY_BINS = ((-math.inf, 5.0, "SNR < 5 (under Rose's threshold)"), (5.0, 15.0, "SNR 5-15"),
                   (15.0, math.inf, "SNR >= 15"))
UNKNOWN = "unknown"
METHODS = {
    "lesions": "truth lesions are the metastases as a reader can tell them apart: outlined metastases whose "
               "outlines touch in a view are one (confluent) lesion (LesionTruth.confluent_metastases); annotated "
               "boxes count as drawn. sensitivity_at_fp_per_instance counts every outlined metastasis instead "
               "(n_instances): each focus of a confluent group then needs a hotspot of its own",
    "hit": "a hotspot hits a truth metastasis when its centroid (rounded to a pixel) lies within tolerance_px of "
           "the metastasis's instance mask in the hotspot's view; the nearest metastasis is hit; one hit per truth "
           "lesion (score: highest malignancy among its hits, in either view), further hits ignored; a hotspot "
           "hitting no metastasis is a false positive",
    "froc": "sensitivity = found lesions / truth metastases against false-positive hotspots per study, over "
            "malignancy thresholds",
    "sensitivity_at_fp": "highest FROC sensitivity at <= r false positives per study (step, no interpolation); "
                         "percentile bootstrap over studies",
    "sensitivity_by": "at the reported malignancy threshold, Wilson CIs; size = equivalent diameter of the truth "
                      "lesion (larger view), contrast = mean lesion counts / median normal-bone counts, visibility "
                      "= Rose's SNR: counts over the local level of bone without findings (Gaussian sigma 8 px) "
                      "summed over the lesion / sqrt(that level summed over it), in the better view",
    "dice": "per study over both views, NaN where a region is in neither map, mean over studies",
    "malignant_dice": "per study over both views: pixels of hotspots at or above the malignancy threshold against "
                      "truth metastasis pixels; studies with neither are not scored; outlined truth only",
    "bsi": "truth BSI = bone_scan_index(truth regions, truth metastasis mask); Pearson r with Fisher-z CI; "
           "Bland-Altman bias and 1.96 SD limits of agreement",
    "counts": "predicted malignant lesions (n_malignant_lesions: a focus seen in both views counted once; "
              "malignant hotspots of both views, n_malignant, from outputs without it) against truth metastases per "
              "study; ICC(A,1), quadratic-weighted kappa on classes 0, 1, 2, 3-5, >=6; studies whose truth is a "
              "superscan (diffuse uptake through the axial skeleton, one finding in the truth, no countable lesions "
              "to a reader) are left out (n_superscans_left_out); superscan_flag: truth superscans, studies the "
              "reader flagged as superscans, and truth superscans among them",
    "roc": "AUCs with DeLong CIs; paired DeLong test of each lesion score against the classifier",
    "per_patient": "at the malignancy threshold a study is called metastatic when it has >= 1 malignant hotspot; "
                   "sensitivity over studies with truth metastases, specificity over studies without (Wilson CIs); "
                   "located: called with >= 1 malignant hotspot hitting a truth metastasis",
}
OUTSIDE = "outside skeleton"


@dataclass
class LesionInputs:
    """Where the lesion outputs and the truth of each study are."""

    lesions_dir: Path
    truth: dict[str, Path]  # case_id -> truth file
    images: dict[str, Any] = field(default_factory=dict)  # case_id -> study source (path or [anterior, posterior])
    tolerance: float = DEFAULT_TOLERANCE


def find_lesion_inputs(predictions_csv: str | Path, manifest: str | Path | None,
                       lesions_dir: str | Path | None = None) -> LesionInputs | None:
    """Lesion inputs when the predictions have a lesions folder and the manifest a `truth` column, else None."""
    folder = Path(lesions_dir) if lesions_dir is not None else Path(predictions_csv).parent / "lesions"
    if manifest is None or not folder.is_dir():
        if lesions_dir is not None:
            raise PredictionsError(folder if manifest else "--lesions", "lesion outputs need a folder of "
                                   "<case_id>.json files and a manifest with a truth column")
        return None
    from ..cohort import load_manifest

    table = load_manifest(manifest, check_files=False)
    if "truth" not in table.columns:
        if lesions_dir is not None:
            raise PredictionsError(manifest, "has no truth column: lesion outputs cannot be evaluated")
        return None
    base = Path(manifest).resolve().parent
    truth, images = {}, {}
    for _, row in table.iterrows():
        value = row["truth"]
        if isinstance(value, str) and value.strip():
            path = Path(value.strip())
            truth[str(row["case_id"])] = path if path.is_absolute() else base / path
        if isinstance(row.get("path"), str):
            images[str(row["case_id"])] = row["path"]
        elif isinstance(row.get("anterior"), str) and isinstance(row.get("posterior"), str):
            images[str(row["case_id"])] = [row["anterior"], row["posterior"]]
    return LesionInputs(folder, truth, images)


@dataclass
class _Study:
    case_id: str
    detections: StudyDetections
    regions: list[str]
    sizes: list[str]
    contrasts: list[str]
    fp_categories: list[str]
    fp_scores: np.ndarray
    truth_count: int
    predicted_count: int
    truth_bsi: float | None
    predicted_bsi: float
    dice: np.ndarray | None
    malignant_dice: float | None
    has_findings: bool
    per_instance: StudyDetections  # every outlined metastasis a lesion of its own, confluent or not
    visibility: list[str] = field(default_factory=list)  # per lesion, a VISIBILITY_BINS group
    superscan: bool = False  # the truth holds a diffuse superscan: no lesion count to agree with


@dataclass
class LesionEvaluation:
    """The lesion section: JSON-ready metrics, warnings and what the figures draw."""

    metrics: dict
    warnings: list[str]
    froc: Any = None
    bsi_pairs: tuple[np.ndarray, np.ndarray] | None = None
    roc_curves: list = field(default_factory=list)


def _read_prediction(folder: Path, case_id: str) -> tuple[dict, dict[str, np.ndarray]]:
    path = folder / f"{case_id}.json"
    try:
        detail = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PredictionsError(path, "no lesion output for this study") from None
    except (OSError, ValueError) as error:
        raise PredictionsError(path, f"not a readable lesion JSON file ({error})") from None
    missing = [k for k in ("hotspots", "n_malignant", "bsi") if k not in detail]
    if missing:
        raise PredictionsError(path, f"missing key(s): {', '.join(missing)}")
    maps: dict[str, np.ndarray] = {}
    arrays = folder / f"{case_id}.npz"
    if arrays.is_file():
        try:
            with np.load(arrays, allow_pickle=False) as data:
                maps = {key: data[key] for key in ("regions", "hotspots") if key in data.files}
        except (OSError, ValueError) as error:
            raise PredictionsError(arrays, f"not a readable lesion array file ({error})") from None
    return detail, maps


def _hotspot_arrays(detail: dict, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    views, centroids, scores = [], [], []
    for n, spot in enumerate(detail["hotspots"], start=1):
        try:
            views.append(VIEWS.index(spot["view"]))
            centroids.append([float(spot["centroid"][0]), float(spot["centroid"][1])])
            scores.append(float(spot["malignancy"]))
        except (KeyError, ValueError, IndexError, TypeError) as error:
            raise PredictionsError(source, f"hotspot {n}: needs view (anterior/posterior), centroid [row, col] "
                                           f"and malignancy ({error!r})") from None
    return np.asarray(views, np.int64), np.asarray(centroids, np.float64).reshape(-1, 2), np.asarray(scores)


def _bin(value: float | None, bins) -> str:
    if value is None or not math.isfinite(value):
        return UNKNOWN
    return next(name for low, high, name in bins if low <= value < high)


def _lesion_attributes(truth: LesionTruth, instances: np.ndarray, lesion: int,
                       images: tuple[np.ndarray, np.ndarray] | None,
                       spacing: tuple[float, float] | None,
                       bone_levels: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[str, str, str, str]:
    """(region, size group, contrast group, visibility group) of one truth lesion of `instances`
    (`confluent_metastases`); visibility needs `bone_levels` (`_bone_levels`)."""
    mask = instances == lesion
    name = truth.region[lesion - 1] if lesion - 1 < len(truth.region) else ""
    if not name and truth.has_regions:  # the bone under most of the lesion
        labels = truth.regions[mask]
        labels = labels[labels > 0]
        name = BY_LABEL[int(np.bincount(labels).argmax())].name if labels.size else ""
    region = name or OUTSIDE
    area = int(mask.reshape(2, -1).sum(axis=1).max())
    diameter = 2.0 * math.sqrt(area * spacing[0] * spacing[1] / math.pi) if spacing else None
    contrast = None
    if images is not None:
        ratios = []
        for view in range(2):
            inside = mask[view]
            if not inside.any():
                continue
            counts = images[view]
            normal = (truth.regions[view] > 0) if truth.has_regions else (counts > 0)
            normal &= truth.instances[view] == 0
            reference = float(np.median(counts[normal])) if normal.any() else 0.0
            if reference > 0:
                ratios.append(float(counts[inside].mean()) / reference)
        contrast = max(ratios) if ratios else None
    snr = None
    if images is not None and bone_levels is not None:
        # Rose: the lesion's counts over its bone's level, in units of that level's Poisson noise, in the better view
        values = [float((images[v][mask[v]] - bone_levels[v][mask[v]]).sum())
                  / math.sqrt(float(bone_levels[v][mask[v]].sum()))
                  for v in range(2) if mask[v].any() and bone_levels[v][mask[v]].sum() > 0]
        snr = max(values) if values else None
    return region, _bin(diameter, SIZE_BINS), _bin(contrast, CONTRAST_BINS), _bin(snr, VISIBILITY_BINS)


def _bone_levels(truth: LesionTruth,
                 images: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Each view's local level of bone without findings (`lesions.rescore.bone_level`): what a lesion stands out
    against. None without images or region truth."""
    if images is None or not truth.has_regions:
        return None
    from ..lesions.rescore import bone_level

    return tuple(bone_level(np.asarray(images[v], np.float32), (truth.regions[v] > 0) & (truth.instances[v] == 0))
                 for v in range(2))


def _fp_category(truth: LesionTruth, view: int, centroid: np.ndarray, tolerance: float) -> str:
    """What a false-positive hotspot lies on: a benign / artifact / physiological finding, or nothing."""
    others = [i + 1 for i, c in enumerate(truth.category) if c != "metastasis"]
    hit = match_hotspots(truth.instances, others, [view], centroid.reshape(1, 2), tolerance)[0] if others else 0
    return truth.category[hit - 1] if hit else "no finding"


def _study_images(source: Any, truth: LesionTruth) -> tuple[tuple[np.ndarray, np.ndarray] | None,
                                                            tuple[float, float] | None]:
    if source is None:
        return None, None
    from ..io import read_study

    try:
        study = read_study(source)
        images = study.both_views()
    except BoneScanError:
        return None, None
    if images[0].shape != truth.instances.shape[1:]:
        return None, study.pixel_spacing
    return images, study.pixel_spacing


def _one_study(case_id: str, inputs: LesionInputs, detail: dict, maps: dict[str, np.ndarray]) -> _Study:
    truth = load_truth(inputs.truth[case_id])
    source = str(inputs.lesions_dir / f"{case_id}.json")
    views, centroids, scores = _hotspot_arrays(detail, source)
    height, width = truth.instances.shape[1:]
    if centroids.size and ((centroids < -0.5).any() or (centroids[:, 0] > height).any()
                           or (centroids[:, 1] > width).any()):
        raise PredictionsError(source, f"hotspot centroids outside the truth's {height} x {width} image")
    instances, lesion_ids = truth.confluent_metastases()
    hits = match_hotspots(instances, lesion_ids, views, centroids, inputs.tolerance)
    detections = study_detections(lesion_ids, hits, scores)
    painted = truth.metastasis_ids()
    per_instance = study_detections(painted, match_hotspots(truth.instances, painted, views, centroids,
                                                            inputs.tolerance), scores)
    images, spacing = _study_images(inputs.images.get(case_id), truth)
    levels = _bone_levels(truth, images)
    attributes = [_lesion_attributes(truth, instances, int(k), images, spacing, levels)
                  for k in detections.lesion_ids]
    fp = np.flatnonzero(hits == 0)
    for key, array in maps.items():
        if array.shape != truth.instances.shape:
            raise PredictionsError(inputs.lesions_dir / f"{case_id}.npz", f"{key} {array.shape} differ from the "
                                   f"truth's {truth.instances.shape}")
    dice = region_dice(maps["regions"], truth.regions) if truth.has_regions and "regions" in maps else None
    malignant_dice = None
    if "hotspots" in maps and truth.has_findings and not truth.boxes:
        malignant_dice = _malignant_dice(maps["hotspots"], detail, truth)
    truth_bsi = (bone_scan_index(truth.regions, truth.malignant_mask())[0]
                 if truth.has_regions and truth.has_findings else None)
    return _Study(case_id, detections, [a[0] for a in attributes], [a[1] for a in attributes],
                  [a[2] for a in attributes],
                  [_fp_category(truth, int(views[i]), centroids[i], inputs.tolerance) for i in fp], scores[fp],
                  len(lesion_ids), int(detail.get("n_malignant_lesions", detail["n_malignant"])), truth_bsi,
                  float(detail["bsi"]), dice, malignant_dice,
                  truth.has_findings, per_instance, [a[3] for a in attributes],
                  "superscan" in truth.kind)


def _malignant_dice(hotspots: np.ndarray, detail: dict, truth: LesionTruth) -> float | None:
    """Dice of the malignant hotspots' pixels (malignancy >= the reported threshold) against truth metastases."""
    threshold = float(detail.get("malignancy_threshold", 0.5))
    numbers = [int(h.get("number", n + 1)) for n, h in enumerate(detail["hotspots"])
               if float(h["malignancy"]) >= threshold]
    predicted, wanted = np.isin(hotspots, numbers), truth.malignant_mask()
    total = int(predicted.sum()) + int(wanted.sum())
    return 2.0 * int((predicted & wanted).sum()) / total if total else None


def _score_rocs(evaluated: pd.DataFrame, details: dict[str, dict], confidence: float) -> tuple[dict, list]:
    """AUC of the classifier, of BSI and of the lesion probability on the same studies; DeLong tests vs the
    classifier."""
    rows = evaluated[evaluated["case_id"].isin(details)]
    labels = rows["label"].to_numpy()
    classifier = rows["probability"].to_numpy(dtype=float)
    scores = {"classifier": classifier,
              "BSI": np.array([float(details[c]["bsi"]) for c in rows["case_id"]])}
    if all("probability_from_lesions" in details[c] for c in rows["case_id"]):
        scores["lesion probability"] = np.array([float(details[c]["probability_from_lesions"])
                                                 for c in rows["case_id"]])
    section = {"n": int(len(rows)), "n_pos": int(labels.sum()),
               "auc": {name: delong_auc(labels, s, confidence).as_dict() for name, s in scores.items()},
               "versus_classifier": {name: delong_paired_test(labels, s, classifier, confidence=confidence).as_dict()
                                     for name, s in scores.items() if name != "classifier"}}
    return section, [(name, labels, s) for name, s in scores.items()]


def evaluate_lesions(evaluated: pd.DataFrame, inputs: LesionInputs, n_boot: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> LesionEvaluation:
    """Lesion-level results for the evaluated studies that have both lesion outputs and truth."""
    warnings: list[str] = []
    studies: list[_Study] = []
    failures: dict[str, str] = {}
    details: dict[str, dict] = {}
    case_ids = [str(c) for c in evaluated["case_id"]]
    for case_id in case_ids:
        try:
            details[case_id], maps = _read_prediction(inputs.lesions_dir, case_id)
        except PredictionsError as error:
            failures[case_id] = str(error)
            continue
        if case_id not in inputs.truth:
            continue
        try:
            studies.append(_one_study(case_id, inputs, details[case_id], maps))
        except (PredictionsError, AnnotationError) as error:
            failures[case_id] = str(error)
    without_truth = [c for c in case_ids if c not in inputs.truth]
    if without_truth:
        warnings.append(f"lesions: {len(without_truth)} evaluated stud(ies) have no truth file and are left out "
                        f"of the lesion metrics (e.g. {', '.join(without_truth[:3])})")
    if failures:
        warnings.append(f"lesions: {len(failures)} stud(ies) left out: " + "; ".join(list(failures.values())[:3]))
    dice = _dice_summary([s.dice for s in studies if s.dice is not None])
    region_only = [s.case_id for s in studies if not s.has_findings]
    if region_only:  # annotated for regions only: Dice yes, detection no
        warnings.append(f"lesions: {len(region_only)} stud(ies) have region-only truth (findings not annotated): "
                        "in Dice, left out of detection, count and BSI metrics")
        studies = [s for s in studies if s.has_findings]
    metrics: dict[str, Any] = {"n_studies": len(studies), "failures": failures, "tolerance_px": inputs.tolerance,
                               "methods": METHODS, "dice": dice}
    result = LesionEvaluation(metrics, warnings)
    if details:
        metrics["roc"], result.roc_curves = _score_rocs(evaluated, details, confidence)
    if not studies:
        warnings.append("lesions: no study has both lesion outputs and truth; no lesion metrics")
        result.metrics = clean_for_json(metrics)
        return result
    threshold = Counter(float(details[s.case_id].get("malignancy_threshold", 0.5)) for s in studies).most_common(1)
    threshold = threshold[0][0]
    detections = [s.detections for s in studies]
    curve = froc_curve(detections)
    result.froc = curve
    lesion_scores = np.concatenate([d.lesion_scores for d in detections])
    by = {"region": [g for s in studies for g in s.regions], "size": [g for s in studies for g in s.sizes],
          "contrast": [g for s in studies for g in s.contrasts],
          "visibility": [g for s in studies for g in s.visibility]}
    metrics.update({
        "n_lesions": curve.n_lesions,
        "malignancy_threshold": threshold,
        "froc": {"fp_per_study": curve.fp_per_study, "sensitivity": curve.sensitivity,
                 "thresholds": curve.thresholds},
        "sensitivity_at_fp": [row.as_dict() for row in
                              sensitivity_at_fp_ci(detections, FP_RATES, n_boot, seed, confidence)],
        "n_instances": int(sum(s.per_instance.lesion_scores.size for s in studies)),
        "sensitivity_at_fp_per_instance": [row.as_dict() for row in sensitivity_at_fp_ci(
            [s.per_instance for s in studies], FP_RATES, n_boot, seed, confidence)],
        "at_threshold": _at_threshold(studies, lesion_scores, threshold, confidence),
        "sensitivity_by": {name: lesion_sensitivity_by(groups, lesion_scores, threshold, confidence)
                           for name, groups in by.items()},
        "malignant_dice": _mean_of([s.malignant_dice for s in studies]),
        "counts": _counts(studies, details),
        "per_patient": _per_patient(studies, threshold, confidence),
        "by_site": _by_site(studies, evaluated, threshold, confidence),
    })
    with_bsi = [s for s in studies if s.truth_bsi is not None]
    if len(with_bsi) < len(studies):
        warnings.append(f"lesions: {len(studies) - len(with_bsi)} stud(ies) have box-only truth (no region maps): "
                        "left out of BSI agreement and Dice")
    predicted = np.array([s.predicted_bsi for s in with_bsi])
    truth_bsi = np.array([s.truth_bsi for s in with_bsi])
    metrics["bsi"] = bsi_agreement(predicted, truth_bsi, confidence).as_dict()
    result.bsi_pairs = (predicted, truth_bsi)
    result.metrics = clean_for_json(metrics)
    return result


def _counts(studies: list[_Study], details: dict[str, dict]) -> dict:
    """Count agreement over the studies with countable truth: a superscan's hotspots cover the whole axial skeleton
    (on 400 synthetic studies three superscans gave 75-115 malignant lesions each against the truth's one diffuse
    finding, and alone took the ICC from 0.98 to 0.58)."""
    countable = [s for s in studies if not s.superscan]
    agreement = count_agreement([s.predicted_count for s in countable], [s.truth_count for s in countable])
    out = {**agreement.as_dict(), "counted": _counted([details[s.case_id] for s in countable]),
           "n_superscans_left_out": len(studies) - len(countable)}
    if all("superscan" in details[s.case_id] for s in studies):  # the reader's flag (`lesions.superscan`)
        flagged = {s.case_id for s in studies if details[s.case_id]["superscan"]}
        out["superscan_flag"] = {"truth": len(studies) - len(countable), "flagged": len(flagged),
                                 "flagged_of_truth": sum(s.case_id in flagged for s in studies if s.superscan)}
    return out


def _counted(details: list[dict]) -> str:
    """What the predicted counts count: lesions, or (outputs written before lesions were counted) hotspots."""
    lesions = sum("n_malignant_lesions" in d for d in details)
    if lesions == len(details):
        return "malignant lesions (a focus seen in both views once)"
    if not lesions:
        return "malignant hotspots of both views (outputs without n_malignant_lesions)"
    return (f"malignant lesions in {lesions} studies, malignant hotspots of both views in {len(details) - lesions} "
            "(outputs without n_malignant_lesions)")


def _at_threshold(studies: list[_Study], lesion_scores: np.ndarray, threshold: float, confidence: float) -> dict:
    found = int((lesion_scores >= threshold).sum())
    fp_kinds = Counter(k for s in studies for k, score in zip(s.fp_categories, s.fp_scores) if score >= threshold)
    n_fp = sum(fp_kinds.values())
    return {"sensitivity": wilson_interval(found, lesion_scores.size, confidence).as_dict(),
            "false_positives": n_fp, "fp_per_study": n_fp / len(studies), "false_positives_on": dict(fp_kinds)}


def _per_patient(studies: list[_Study], threshold: float, confidence: float) -> dict:
    """Study-level calls from the hotspots, as the commercial readers are compared (per patient)."""
    metastatic = [s for s in studies if s.truth_count > 0]
    free = [s for s in studies if s.truth_count == 0]
    called = sum(s.predicted_count > 0 for s in metastatic)
    located = sum(bool((s.detections.lesion_scores >= threshold).any()) for s in metastatic)
    cleared = sum(s.predicted_count == 0 for s in free)
    return {"sensitivity": wilson_interval(called, len(metastatic), confidence).as_dict(),
            "located": wilson_interval(located, len(metastatic), confidence).as_dict(),
            "specificity": wilson_interval(cleared, len(free), confidence).as_dict()}


def _by_site(studies: list[_Study], evaluated: pd.DataFrame, threshold: float, confidence: float) -> dict:
    """Detection per acquisition site (the `site` column), when the studies come from more than one: a lesion
    network trained on one camera's scans may fail on another's, which the pooled figures hide."""
    if "site" not in evaluated.columns:
        return {}
    site_of = {str(c): s for c, s in zip(evaluated["case_id"], evaluated["site"]) if isinstance(s, str) and s}
    groups: dict[str, list[_Study]] = {}
    for study in studies:
        groups.setdefault(site_of.get(study.case_id, "unknown"), []).append(study)
    if len(groups) < 2:
        return {}
    out = {}
    for site, members in sorted(groups.items()):
        scores = np.concatenate([s.detections.lesion_scores for s in members])
        at = _at_threshold(members, scores, threshold, confidence)
        at_one = sensitivity_at_fp(froc_curve([s.detections for s in members]), (1.0,))[0]
        out[site] = {"n_studies": len(members), "n_lesions": int(scores.size),
                     "sensitivity_at_1fp": float(at_one), "sensitivity": at["sensitivity"],
                     "fp_per_study": at["fp_per_study"], "per_patient": _per_patient(members, threshold, confidence)}
    return out


def _mean_of(values: list[float | None]) -> dict:
    scored = [v for v in values if v is not None]
    return {"mean": float(np.mean(scored)) if scored else None, "n_studies": len(scored)}


def _dice_summary(per_study: list[np.ndarray]) -> dict:
    if not per_study:
        return {"n_studies": 0, "by_region": {}, "mean": None}
    table = np.vstack(per_study)
    by_region = {}
    for k, region in enumerate(REGIONS):
        scored = table[:, k][np.isfinite(table[:, k])]
        by_region[region.name] = {"mean": float(scored.mean()) if scored.size else None, "n": int(scored.size)}
    means = [v["mean"] for v in by_region.values() if v["mean"] is not None]
    return {"n_studies": int(table.shape[0]), "by_region": by_region, "mean": float(np.mean(means)) if means else None}
