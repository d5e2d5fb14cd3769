"""Lesion-level detection: the hit criterion, FROC curves, sensitivity at fixed false positives per study.

Plain functions of arrays, as MONAI's metrics are. Definitions:

- **Hit criterion.** A predicted hotspot hits a truth metastasis when its centroid, rounded to the nearest pixel,
  lies inside that metastasis's instance mask dilated by a disk of `tolerance` pixels (Euclidean distance from the
  centroid pixel to the nearest instance pixel <= tolerance), in the view the hotspot was found in. Default 3 pixels
  (7.2 mm at the GE Discovery 670's 2.4 mm): a centroid is a single pixel, and a small lesion's centroid may fall
  just outside a thin truth mask. When several metastases are within reach, the nearest is hit (ties: the lower
  truth id). Truth ids are shared by the two views (id k is the k-th finding, seen from the front and from
  behind), so a lesion visible in both views is one lesion, hit from either view.
- **One hit per truth lesion** (as LUNA16, Setio et al., Med Image Anal 2017): a lesion's score is the highest
  malignancy of the hotspots that hit it; further hotspots on the same lesion are neither true nor false
  positives. A hotspot that hits no metastasis (normal bone, a benign lesion, bladder, an injection site) is a
  false positive.
- **FROC** (Bunch et al. 1977; Chakraborty, Med Phys 1989): for each malignancy threshold t, sensitivity =
  lesions whose score >= t / all truth metastases, and false positives per study = false-positive hotspots with
  malignancy >= t / studies. Lesions no hotspot hits never count as found.
- **Sensitivity at r false positives per study**: the highest sensitivity of the FROC curve at a point with no more
  than r false positives per study (a step function, no interpolation between points; CAMELYON16 and LUNA16 read
  the curve at 1/8 ... 8 FPs per scan the same way up to interpolation).
- **Confidence intervals**: percentile bootstrap over studies (all lesions and hotspots of a study resampled
  together), with an explicit seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..errors import PredictionsError
from .stats import clean_for_json, wilson_interval

FP_RATES = (0.5, 1.0, 2.0, 4.0)
DEFAULT_TOLERANCE = 3.0  # pixels


# ----------------------------------------------------------------------------------------------------------------
# Matching hotspots to truth lesions


def match_hotspots(instances: np.ndarray, lesion_ids: Sequence[int], views: Sequence[int],
                   centroids: np.ndarray, tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
    """Truth lesion hit by each hotspot (0: none), by the hit criterion of this module.

    `instances` is the truth's [2, H, W] instance map, `lesion_ids` the ids of its metastases, `views` (0 anterior,
    1 posterior) and `centroids` ([N, 2] row, col in stored-image pixels) describe the predicted hotspots.
    """
    instances = np.asarray(instances)
    centroids = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    views = np.asarray(views, dtype=np.int64).reshape(-1)
    if instances.ndim != 3:
        raise PredictionsError("instances", f"expected a [views, H, W] instance map, got shape {instances.shape}")
    if views.size != centroids.shape[0]:
        raise PredictionsError("hotspots", f"{views.size} views for {centroids.shape[0]} centroids")
    if views.size and (views.min() < 0 or views.max() >= instances.shape[0]):
        raise PredictionsError("hotspots", f"view index outside 0..{instances.shape[0] - 1}")
    wanted = np.asarray(sorted(set(int(i) for i in lesion_ids)), dtype=np.int64)
    reach = int(np.floor(tolerance))
    offsets = np.arange(-reach, reach + 1)
    d_row, d_col = np.meshgrid(offsets, offsets, indexing="ij")
    distance = np.hypot(d_row, d_col)
    disk = distance <= tolerance
    height, width = instances.shape[1:]
    hits = np.zeros(views.size, dtype=np.int64)
    for n, (view, (row, col)) in enumerate(zip(views, centroids)):
        r, c = int(np.floor(row + 0.5)), int(np.floor(col + 0.5))  # halves round up, not to even
        rows, cols = r + d_row[disk], c + d_col[disk]
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        ids = instances[view, rows[inside], cols[inside]].astype(np.int64)
        near = distance[disk][inside]
        candidate = np.isin(ids, wanted)
        if candidate.any():
            # nearest first, then the lower id
            order = np.lexsort((ids[candidate], near[candidate]))
            hits[n] = ids[candidate][order[0]]
    return hits


@dataclass
class StudyDetections:
    """What one study contributes to a FROC curve."""

    lesion_scores: np.ndarray  # per truth metastasis: highest malignancy of a hotspot hitting it, -inf if none
    fp_scores: np.ndarray  # malignancy of each hotspot hitting no metastasis
    lesion_ids: np.ndarray  # truth id of each entry of lesion_scores


def study_detections(lesion_ids: Sequence[int], hits: Sequence[int], scores: Sequence[float]) -> StudyDetections:
    """Apply one-hit-per-lesion: lesion scores (max over hotspots hitting it) and false-positive scores."""
    ids = np.asarray(sorted(set(int(i) for i in lesion_ids)), dtype=np.int64)
    hits = np.asarray(hits, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if hits.size != scores.size:
        raise PredictionsError("hotspots", f"{hits.size} matches for {scores.size} scores")
    if not np.isfinite(scores).all():
        raise PredictionsError("hotspots", "malignancy scores must be finite")
    lesion_scores = np.full(ids.size, -np.inf)
    for k, lesion in enumerate(ids):
        mine = scores[hits == lesion]
        if mine.size:
            lesion_scores[k] = mine.max()
    return StudyDetections(lesion_scores, scores[hits == 0], ids)


# ----------------------------------------------------------------------------------------------------------------
# FROC


@dataclass
class FrocCurve:
    """Points of a FROC curve, from the highest threshold (nothing called) to the lowest."""

    thresholds: np.ndarray  # malignancy threshold of each point (+inf first)
    sensitivity: np.ndarray
    fp_per_study: np.ndarray
    n_lesions: int
    n_studies: int

    def as_dict(self) -> dict:
        """JSON-ready dict."""
        return clean_for_json(asdict(self))


def froc_curve(detections: Sequence[StudyDetections]) -> FrocCurve:
    """FROC curve of the pooled lesions and false positives of `detections` (one entry per study)."""
    n_studies = len(detections)
    if n_studies == 0:
        raise PredictionsError("froc", "no studies to evaluate")
    lesion = np.concatenate([d.lesion_scores for d in detections]) if detections else np.empty(0)
    fp = np.concatenate([d.fp_scores for d in detections]) if detections else np.empty(0)
    return _froc(lesion, fp, n_studies)


def _froc(lesion: np.ndarray, fp: np.ndarray, n_studies: int) -> FrocCurve:
    found = lesion[np.isfinite(lesion)]
    thresholds = np.unique(np.concatenate([found, fp]))[::-1]
    # counts of scores >= t for every t, by binary search in the ascending sorted scores
    found_sorted, fp_sorted = np.sort(found), np.sort(fp)
    tp_count = found_sorted.size - np.searchsorted(found_sorted, thresholds, side="left")
    fp_count = fp_sorted.size - np.searchsorted(fp_sorted, thresholds, side="left")
    n_lesions = int(lesion.size)
    sensitivity = tp_count / n_lesions if n_lesions else np.full(thresholds.size, np.nan)
    return FrocCurve(np.concatenate([[np.inf], thresholds]),
                     np.concatenate([[0.0 if n_lesions else np.nan], sensitivity]),
                     np.concatenate([[0.0], fp_count / n_studies]), n_lesions, n_studies)


def sensitivity_at_fp(curve: FrocCurve, rates: Sequence[float] = FP_RATES) -> np.ndarray:
    """Highest sensitivity at no more than r false positives per study, for each r in `rates`."""
    out = np.empty(len(rates))
    for k, rate in enumerate(rates):
        allowed = curve.fp_per_study <= rate + 1e-12
        out[k] = np.max(curve.sensitivity[allowed]) if curve.n_lesions else np.nan
    return out


@dataclass
class SensitivityAtFp:
    """Sensitivity at r false positives per study with a percentile bootstrap interval over studies."""

    fp_per_study: float
    sensitivity: float
    ci_low: float
    ci_high: float
    n_boot: int
    seed: int
    confidence: float

    def as_dict(self) -> dict:
        """JSON-ready dict (NaN becomes None)."""
        return clean_for_json(asdict(self))


def sensitivity_at_fp_ci(detections: Sequence[StudyDetections], rates: Sequence[float] = FP_RATES,
                         n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> list[SensitivityAtFp]:
    """Sensitivity at each rate of false positives per study, with a bootstrap CI resampling whole studies."""
    if n_boot < 1:
        raise PredictionsError("n_boot", f"need at least one bootstrap resample, got {n_boot}")
    estimate = sensitivity_at_fp(froc_curve(detections), rates)
    n = len(detections)
    rng = np.random.default_rng(seed)
    values = np.full((n_boot, len(rates)), np.nan)
    for b in range(n_boot):
        picked = [detections[i] for i in rng.integers(0, n, n)]
        lesion = np.concatenate([d.lesion_scores for d in picked])
        if lesion.size:  # a resample without any metastasis has no sensitivity
            values[b] = sensitivity_at_fp(_froc(lesion, np.concatenate([d.fp_scores for d in picked]), n), rates)
    tail = (1.0 - confidence) / 2.0 * 100.0
    out = []
    for k, rate in enumerate(rates):
        valid = values[:, k][np.isfinite(values[:, k])]
        lo, hi = np.percentile(valid, [tail, 100.0 - tail]) if valid.size else (np.nan, np.nan)
        out.append(SensitivityAtFp(float(rate), float(estimate[k]), float(lo), float(hi), n_boot, seed, confidence))
    return out


def lesion_sensitivity_by(groups: Sequence[str], lesion_scores: np.ndarray, threshold: float,
                          confidence: float = 0.95) -> dict[str, dict]:
    """Sensitivity per group of truth lesions (region, size, contrast) at a malignancy threshold, with Wilson CIs.

    A lesion counts as found when a hotspot with malignancy >= `threshold` hits it.
    """
    groups = np.asarray(groups, dtype=object)
    found = np.asarray(lesion_scores, dtype=np.float64) >= threshold
    if groups.size != found.size:
        raise PredictionsError("lesion groups", f"{groups.size} groups for {found.size} lesions")
    out = {}
    for group in sorted(set(groups.tolist()), key=str):
        mine = groups == group
        out[str(group)] = wilson_interval(int(found[mine].sum()), int(mine.sum()), confidence).as_dict()
    return out
