"""A second look at every hotspot candidate: count-based candidates beside the network's, rescored by gradient boosting.

The lesion network alone leaves about a third of the metastases without any hotspot near them (validation split
of a mixed-camera `paper` cohort, 16-epoch cpu-small-lesion network: 0.68 of the metastases hit by a candidate at any
threshold), many of them foci of 2-5x normal-bone counts that the small network at half resolution did not mark,
and it ranks its own candidates by one number, the metastasis map's peak. This module adds what computer-aided
detection systems put after a candidate generator (a false-positive reduction stage):

- **Count candidates**: peaks of the counts (smoothed over COUNT_SMOOTHING pixels) over the local level of bone
  (counts averaged over bone pixels only, Gaussian sigma BONE_LEVEL_SIGMA: so the spine is compared with bone, not
  with the soft tissue beside it) that reach COUNT_CANDIDATE_RATIO, on bone, outside the network's hotspots; then
  the peaks of a matched filter's signal-to-noise ratio (`matched_snr`) reaching SNR_CANDIDATE, faint foci that
  stand out of the counting noise by their size; each is the connected pixels around its peak above half its rise.
- **Features** per candidate (`FEATURES`): the network's metastasis and hotspot probabilities over it, the
  metastasis probability at the same place in the other view, size, uptake over normal bone, contrast against the
  frame around its box, the count peak over bone level, the matched filter's signal-to-noise ratio, elongation,
  position and skeletal region group.
- **Rescoring**: scikit-learn's HistGradientBoostingClassifier, fitted on candidates of studies with truth (label:
  the candidate hits a metastasis by the evaluation's criterion, `evaluate.froc.match_hotspots`), gives each
  candidate's malignancy. Count candidates scored below the rescorer's `keep_floor` are dropped, so a study lists
  about as many hotspots as before.

Stored beside the lesion run as RUN/hotspot_rescorer.skops (`bonescan.trees`: loading runs no pickled code) and
RUN/hotspot_rescorer.json (features, floor, what it was fitted on).
Fit it on studies the network did not train on (a fresh `bonescan synth` seed, or a held-out split); the network's
probabilities on its own training studies are overconfident.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import RunError
from ..fileio import write_text_atomic
from ..jit import compiled
from ..trees import FlatTrees, load_trees, one_thread, save_trees
from .filters import block_sums, gaussian_filter
from .hotspots import normal_bone_level
from .regions import region_under

RESCORER_FILE = "hotspot_rescorer.skops"
RESCORER_INFO = "hotspot_rescorer.json"
COUNT_SMOOTHING = 1.0  # stored pixels (Gaussian sigma) against Poisson noise
BONE_LEVEL_SIGMA = 8.0  # stored pixels: the neighbourhood whose bone sets the local level (19 mm at 2.4 mm)
# Count peak over the local bone level: 1.5 found as many metastases after rescoring, from 4x the candidates;
# 2.0 left more unfound (validation split, see README).
COUNT_CANDIDATE_RATIO = 1.7
# The brightest this many per view: a trained network's bone map gives ~13 (mixed-camera `paper` cohort), while
# an untrained one's, or a noisy low-count view, can give thousands of noise peaks.
COUNT_CANDIDATES_PER_VIEW = 100
# Faint foci by their signal-to-noise ratio (`matched_snr`): a focus of sigma 2.5 pixels (FWHM 14 mm at 2.4 mm, the
# middle of the metastases' sizes), at Rose's threshold of reliable detection.
MATCHED_SIGMA = 2.5
SNR_CANDIDATE = 5.0
# The strongest this many per view: bone's own texture (joints, vertebral end plates) in a high-count view reaches
# SNR 5 in ~60 places per view. 25 while each candidate's features cost 0.2 ms; with the compiled features, 60 found
# more metastases (1,000 studies of `synth --seed 11`, see README); 100, or SNR 4, no more than 60. A fitted
# rescorer keeps the limit its candidates had (`HotspotRescorer.snr_limit`).
SNR_CANDIDATES_PER_VIEW = 60
SNR_CANDIDATES_BEFORE_STORED = 25  # the limit of rescorers fitted before their files recorded it
COUNT_PEAK_DISTANCE = 3  # stored pixels: a peak is the highest within this reach
COUNT_REACH = 6  # stored pixels: a count candidate is at most (2 x reach + 1) pixels on a side
OTHER_VIEW_REACH = 3  # stored pixels around the mirrored box where the other view's evidence is read
REGION_GROUPS = ("skull", "spine", "sternum", "rib", "clavicle", "scapula", "humerus", "forearm", "pelvis", "femur",
                 "leg")
FEATURES = ("metastasis_peak", "metastasis_mean", "hotspot_peak", "log_area", "log_uptake", "other_view_metastasis",
            "log_ring_contrast", "log_ring_p90_contrast", "log_count_peak_over_bone", "log_matched_snr",
            "elongation", "posterior", "row", "distance_from_midline", "from_counts",
            "study_metastasis_peak") + tuple(f"region_{g}" for g in REGION_GROUPS)


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-4), 1 - 1e-4)
    return float(np.log(p / (1 - p)))


@dataclass
class Candidate:
    """A hotspot before numbering: view (0 anterior, 1 posterior), box window, box-sized mask, malignancy, region."""

    view: int
    window: tuple[slice, slice]
    mask: np.ndarray
    malignancy: float
    region: str
    from_counts: bool = False

    @property
    def centroid(self) -> tuple[float, float]:
        """(row, column) of the mask's centre in the whole view."""
        rows, cols = np.nonzero(self.mask)
        return float(rows.mean() + self.window[0].start), float(cols.mean() + self.window[1].start)


@dataclass
class ViewMaps:
    """What candidates of one view are measured on, at the stored size and in the view's own layout."""

    counts: np.ndarray  # float32 [H, W]
    smooth: np.ndarray  # counts smoothed over COUNT_SMOOTHING
    hotspot: np.ndarray  # network hotspot probability
    metastasis: np.ndarray  # network metastasis probability
    other_metastasis: np.ndarray  # the other view's metastasis probability, mirrored into this view's layout
    regions: np.ndarray  # uint8 skeletal-region labels
    bone_level: np.ndarray  # local bone level (see `bone_level`)
    snr: np.ndarray  # signal-to-noise ratio of a focus over that level (see `matched_snr`)
    normal_bone: float  # median counts of normal bone (the uptake ratio's reference)


def bone_level(counts: np.ndarray, bone: np.ndarray, factor: int = 4) -> np.ndarray:
    """Counts averaged over bone pixels only, Gaussian-weighted (sigma BONE_LEVEL_SIGMA); 0 far from bone.

    Computed on `factor` x `factor` block sums and upsampled bilinearly: the level varies over tens of pixels,
    and the full-size filters took 80 ms per view.
    """
    height, width = counts.shape
    weight = gaussian_filter(block_sums(bone, factor), BONE_LEVEL_SIGMA / factor)
    level = gaussian_filter(block_sums(counts * bone, factor), BONE_LEVEL_SIGMA / factor)
    coarse = np.where(weight > 1e-3, level / np.maximum(weight, 1e-3), 0.0).astype(np.float32)
    # bilinear between block centres (torch's half-pixel mapping), edges held; then the padding cut off
    fine = F.interpolate(torch.from_numpy(coarse)[None, None], scale_factor=factor, mode="bilinear",
                         align_corners=False)[0, 0, :height, :width]
    return np.ascontiguousarray(fine.numpy())


def matched_snr(counts: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Signal-to-noise ratio of a focus of MATCHED_SIGMA at each pixel over the local bone level `level`, under
    Poisson counting noise: the counts filtered by the focus's own unit-sum Gaussian (the matched filter) minus the
    level, over the filter's noise sqrt(level / (4 pi sigma^2)); 0 where the level is unknown. Rose's criterion
    (Rose 1948; Burgess 1999) puts the threshold of reliable detection near 5."""
    matched = gaussian_filter(counts, MATCHED_SIGMA)
    safe = np.maximum(level, 1e-6)
    return np.where(level > 0, (matched - level) * np.sqrt(4.0 * np.pi * MATCHED_SIGMA**2 / safe), 0.0)


def count_candidates(smooth: np.ndarray, bone: np.ndarray, level: np.ndarray, covered: np.ndarray,
                     snr: np.ndarray | None = None, snr_limit: int = SNR_CANDIDATES_PER_VIEW
                     ) -> list[tuple[tuple[slice, slice], np.ndarray]]:
    """(window, mask) of each count candidate of one view, on bone and outside `covered` (the network's hotspots):
    first the peaks of the smoothed counts over the local bone level reaching COUNT_CANDIDATE_RATIO, brightest
    first; then, with a `snr` map (`matched_snr`), its peaks reaching SNR_CANDIDATE: faint foci that stand out of
    the noise by their size rather than their brightness, the `snr_limit` strongest. At most
    COUNT_CANDIDATES_PER_VIEW in all."""
    on_bone = bone & (level > 0)
    safe = np.maximum(level, 1e-6)
    ratio = np.where(on_bone, smooth / safe, 0.0)
    # each seed grows over the map it was found on: a faint focus's outline from the noise-filtered counts
    peaks = _peaks(ratio, ratio >= COUNT_CANDIDATE_RATIO)
    grown = [ratio]
    kinds = [0] * len(peaks)
    if snr is not None:
        grown.append(np.where(on_bone, 1.0 + snr / np.sqrt(4.0 * np.pi * MATCHED_SIGMA**2 * safe), 0.0))
        faint = _peaks(snr, on_bone & (snr >= SNR_CANDIDATE) & ~covered)[:snr_limit]
        peaks, kinds = peaks + faint, kinds + [1] * len(faint)
    if not peaks:
        return []
    maps = np.stack(grown)
    one, half = maps.dtype.type(1.0), maps.dtype.type(0.5)
    seeds = np.array(peaks, np.int64).reshape(-1, 2)
    boxes, masks = _grow(maps, seeds, np.array(kinds, np.int64), covered.copy(), COUNT_REACH,
                         COUNT_CANDIDATES_PER_VIEW, one, half)
    return [((slice(r0, r1), slice(c0, c1)), mask[:r1 - r0, :c1 - c0].copy())
            for (r0, r1, c0, c1), mask in zip(boxes.tolist(), masks)]


@compiled
def _grow(maps, seeds, kinds, taken, reach, limit, one, half):
    """Each seed not `taken` by an earlier one grows, within `reach` of it, over the pixels of its map (`kinds`: the
    index into `maps`) that reach half its rise over 1 and are not taken (4-connected, as ndimage.label); its pixels
    are then taken. At most `limit`; returns their boxes [n, 4] (row start, stop, column start, stop) and masks
    [n, side, side], each filled from the corner as far as its box reaches."""
    _, height, width = maps.shape
    side = 2 * reach + 1
    boxes = np.zeros((limit, 4), np.int64)
    masks = np.zeros((limit, side, side), np.bool_)
    stack = np.empty(side * side, np.int64)
    n = 0
    for index in range(seeds.shape[0]):
        if n == limit:
            break
        row, col = seeds[index, 0], seeds[index, 1]
        if taken[row, col]:
            continue  # inside an earlier peak's candidate
        grown = maps[kinds[index]]
        r0, r1 = max(0, row - reach), min(height, row + reach + 1)
        c0, c1 = max(0, col - reach), min(width, col + reach + 1)
        level = one + half * (grown[row, col] - one)
        mask = masks[n]
        mask[row - r0, col - c0] = True
        stack[0], top = (row - r0) * side + (col - c0), 1
        while top:
            top -= 1
            r, c = stack[top] // side, stack[top] % side
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                rr, cc = r + dr, c + dc
                if 0 <= rr < r1 - r0 and 0 <= cc < c1 - c0 and not mask[rr, cc] and not taken[r0 + rr, c0 + cc] \
                        and grown[r0 + rr, c0 + cc] >= level:
                    mask[rr, cc] = True
                    stack[top] = rr * side + cc
                    top += 1
        for r in range(r1 - r0):
            for c in range(c1 - c0):
                if mask[r, c]:
                    taken[r0 + r, c0 + c] = True
        boxes[n, 0], boxes[n, 1], boxes[n, 2], boxes[n, 3] = r0, r1, c0, c1
        n += 1
    return boxes[:n], masks[:n]


def _peaks(image: np.ndarray, allowed: np.ndarray) -> list[tuple[int, int]]:
    """(row, col) of the local maxima of `image` (within COUNT_PEAK_DISTANCE) where `allowed`, highest first (ties
    in row-major order).

    The highest value around each allowed pixel only (under 3 % of a view's pixels): the same peaks as a maximum
    filter over the whole view, compiled: 0.43 ms a call against 0.97 for numpy's 49 shifted gathers (the ratio and
    SNR maps of 40 views)."""
    rows, cols = np.nonzero(allowed)
    image = np.ascontiguousarray(image)
    peak = _is_peak(image, rows, cols, COUNT_PEAK_DISTANCE)
    rows, cols = rows[peak], cols[peak]
    order = np.argsort(-image[rows, cols], kind="stable")
    return [(int(rows[i]), int(cols[i])) for i in order]


@compiled
def _is_peak(image, rows, cols, reach):
    height, width = image.shape
    out = np.empty(rows.size, np.bool_)
    for index in range(rows.size):
        row, col = rows[index], cols[index]
        value, highest = image[row, col], image[row, col]
        for r in range(max(0, row - reach), min(height, row + reach + 1)):
            for c in range(max(0, col - reach), min(width, col + reach + 1)):
                highest = max(highest, image[r, c])
        out[index] = value >= highest
    return out


# What `_measure` gives per candidate, in this order (the FEATURES are computed from them).
_MEASURES = ("metastasis_peak", "metastasis_mean", "hotspot_peak", "pixels", "counts_mean", "other_view_metastasis",
             "ring_level", "counts_p90", "elongation", "count_peak_over_bone", "matched_snr", "row", "column")


def candidate_features(candidates: list[Candidate], maps: tuple[ViewMaps, ViewMaps], pixel_spacing: float,
                       study_peak: float) -> np.ndarray:
    """The FEATURES of `candidates` ([N, len(FEATURES)] float64), each measured on the ViewMaps of its view:

    - the network's metastasis probability over the candidate (peak and mean, as logits) and its hotspot peak;
    - log area (mm^2) and log uptake (mean counts over the view's normal bone);
    - the other view's metastasis peak within OTHER_VIEW_REACH of the mirrored box;
    - log contrast of the mean and of the 90th percentile of counts over the ring: the median counts of the frame
      2-5 pixels around the candidate's box;
    - log of the highest smoothed count over the local bone level, where that is known; log(1 + matched SNR peak);
    - log(1 + elongation): the ratio of the eigenvalues of the pixels' 2 x 2 covariance;
    - view, centre row (0-1), distance of the centre from the midline (0-0.5), from counts, the study's network
      peak (logit), and the skeletal region group (one-hot over REGION_GROUPS).
    A logit's probability is held within 1e-4 of 0 and 1; a log of nothing positive (no ring, no bone level) is 0.
    """
    out = np.zeros((len(candidates), len(FEATURES)))
    for view in range(2):
        chosen = [index for index, c in enumerate(candidates) if c.view == view]
        if not chosen:
            continue
        boxes = np.array([[c.window[0].start, c.window[0].stop, c.window[1].start, c.window[1].stop]
                          for c in (candidates[i] for i in chosen)], np.int64)
        masks = [np.ascontiguousarray(candidates[i].mask, bool).ravel() for i in chosen]
        offsets = np.concatenate([[0], np.cumsum([m.size for m in masks])]).astype(np.int64)
        if not all(mask.any() for mask in masks):  # the compiled pass reads a candidate's pixels unchecked
            raise ValueError("a hotspot candidate without pixels has no features")
        m = maps[view]
        measured = _measure(m.counts, m.smooth, m.hotspot, m.metastasis, m.other_metastasis,
                            m.bone_level, m.snr, boxes, np.concatenate(masks), offsets, OTHER_VIEW_REACH)
        height, width = m.counts.shape
        get = dict(zip(_MEASURES, measured.T))
        ring = get["ring_level"]
        with np.errstate(divide="ignore", invalid="ignore"):
            columns = [
                _logits(get["metastasis_peak"]), _logits(get["metastasis_mean"]), _logits(get["hotspot_peak"]),
                _logs(get["pixels"] * pixel_spacing**2),
                _logs(get["counts_mean"] / m.normal_bone) if m.normal_bone > 0 else np.zeros(len(chosen)),
                _logits(get["other_view_metastasis"]),
                np.where(ring > 0, _logs(get["counts_mean"] / ring), 0.0),
                np.where(ring > 0, _logs(get["counts_p90"] / ring), 0.0),
                _logs(get["count_peak_over_bone"]), np.log1p(np.maximum(get["matched_snr"], 0.0)),
                np.log1p(get["elongation"]), np.full(len(chosen), float(view)), get["row"] / height,
                np.abs(get["column"] / width - 0.5), [float(candidates[i].from_counts) for i in chosen],
                np.full(len(chosen), _logit(study_peak))]
        out[chosen, :len(columns)] = np.column_stack(columns)
        groups = [next((g for g in REGION_GROUPS if g in candidates[i].region), "") for i in chosen]
        out[chosen, len(columns):] = [[float(group == g) for g in REGION_GROUPS] for group in groups]
    return out


def _logits(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _logs(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64)
    return np.where(np.isfinite(values) & (values > 0), np.log(np.where(values > 0, values, 1.0)), 0.0)


@compiled
def _measure(counts, smooth, hotspot, metastasis, other_metastasis, level, snr, boxes, masks, offsets, reach):
    """The _MEASURES of each candidate: its box (row start, stop, column start, stop) and box-sized mask (flat, in
    `masks` from `offsets`). One compiled pass: numpy on a few dozen pixels at a time cost 0.15 ms a candidate."""
    height, width = counts.shape
    out = np.zeros((boxes.shape[0], 13))
    for index in range(boxes.shape[0]):
        r0, r1, c0, c1 = boxes[index, 0], boxes[index, 1], boxes[index, 2], boxes[index, 3]
        box_width = c1 - c0
        mask = masks[offsets[index]:offsets[index + 1]]
        n = 0
        for k in range(mask.size):
            n += mask[k]
        inner = np.empty(n, np.float32)
        met_peak, met_sum, hot_peak, snr_peak = -np.inf, 0.0, -np.inf, -np.inf
        over_bone, on_bone = -np.inf, False
        row_sum, col_sum, k = 0.0, 0.0, 0
        rows, cols = np.empty(n), np.empty(n)
        for position in range(mask.size):
            if not mask[position]:
                continue
            r, c = r0 + position // box_width, c0 + position % box_width
            inner[k] = counts[r, c]
            met_peak = max(met_peak, metastasis[r, c])
            met_sum += metastasis[r, c]
            hot_peak = max(hot_peak, hotspot[r, c])
            snr_peak = max(snr_peak, snr[r, c])
            on_bone = on_bone or level[r, c] > 0
            over_bone = max(over_bone, smooth[r, c] / max(level[r, c], np.float32(1e-6)))
            rows[k], cols[k] = r, c
            row_sum += r
            col_sum += c
            k += 1
        other = -np.inf  # the other view's evidence around the box
        for r in range(max(0, r0 - reach), min(height, r1 + reach)):
            for c in range(max(0, c0 - reach), min(width, c1 + reach)):
                other = max(other, other_metastasis[r, c])
        # the ring: the frame 2-5 pixels around the box (the box grown by one pixel left out)
        ring = np.empty((r1 - r0 + 10) * (c1 - c0 + 10), np.float32)
        n_ring = 0
        for r in range(max(0, r0 - 5), min(height, r1 + 5)):
            for c in range(max(0, c0 - 5), min(width, c1 + 5)):
                if r0 - 1 <= r < r1 + 1 and c0 - 1 <= c < c1 + 1:
                    continue
                ring[n_ring] = counts[r, c]
                n_ring += 1
        ring_level = np.median(ring[:n_ring]) if n_ring else 0.0
        elongation = 1.0
        if n > 2:
            mean_r, mean_c = row_sum / n, col_sum / n
            var_r, var_c, cov = 0.0, 0.0, 0.0
            for j in range(n):
                var_r += (rows[j] - mean_r) ** 2
                var_c += (cols[j] - mean_c) ** 2
                cov += (rows[j] - mean_r) * (cols[j] - mean_c)
            var_r, var_c, cov = var_r / n, var_c / n, cov / n
            half_sum, root = (var_r + var_c) / 2, np.sqrt(((var_r - var_c) / 2) ** 2 + cov**2)
            elongation = (half_sum + root) / max(half_sum - root, 1e-3)
        ordered = np.sort(inner)
        out[index, 0], out[index, 1], out[index, 2] = met_peak, met_sum / n, hot_peak
        out[index, 3], out[index, 4], out[index, 5] = n, inner.astype(np.float64).sum() / n, other
        out[index, 6], out[index, 7], out[index, 8] = ring_level, ordered[int(0.9 * (n - 1))], elongation
        out[index, 9], out[index, 10] = over_bone if on_bone else 0.0, snr_peak
        out[index, 11], out[index, 12] = row_sum / n, col_sum / n
    return out


@dataclass
class HotspotRescorer:
    """A fitted rescorer: candidate features -> malignancy; count candidates under `keep_floor` are dropped."""

    model: object  # sklearn HistGradientBoostingClassifier
    keep_floor: float
    info: dict

    def __post_init__(self) -> None:
        self._flat = FlatTrees.of(self.model)  # the same scores, without scikit-learn's loop over the trees

    @property
    def snr_limit(self) -> int:
        """The faint (SNR) count candidates per view its features were fitted on, and that it is given."""
        return int(self.info.get("snr_candidates_per_view", SNR_CANDIDATES_BEFORE_STORED))

    def score(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, np.float64).reshape(-1, len(FEATURES))
        if not len(features):
            return np.zeros(0)
        if self._flat is not None:
            return self._flat.probabilities(features)
        with one_thread():  # a study has tens of candidates, and studies are post-processed in threads already
            return self.model.predict_proba(features)[:, 1]


def fit_rescorer(features: np.ndarray, labels: np.ndarray, from_counts: np.ndarray, n_studies: int,
                 kept_per_study: float = 2.0, seed: int = 0,
                 snr_limit: int = SNR_CANDIDATES_PER_VIEW) -> HotspotRescorer:
    """Fit on candidates (rows of FEATURES, hit-a-metastasis labels) of `n_studies` studies, whose count
    candidates had `snr_limit` faint ones per view at most; the keep floor lets about `kept_per_study` count
    candidates per study through on these studies."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    features, labels = np.asarray(features, np.float64), np.asarray(labels, bool)
    if labels.all() or not labels.any():
        raise RunError("rescorer", f"needs candidates on and off metastases; got {int(labels.sum())} of "
                                   f"{labels.size} on one")
    # Early stopping on a tenth of the candidates held out (scikit-learn's default from 10,000 samples; always
    # here, so small fits behave as large ones). One OpenMP thread: as fast at these sizes (`trees`).
    model = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, max_leaf_nodes=31,
                                           l2_regularization=1.0, early_stopping=True, random_state=seed)
    with one_thread():
        model.fit(features, labels)
        scores = model.predict_proba(features)[:, 1][np.asarray(from_counts, bool)]
    allowed = int(round(kept_per_study * n_studies))
    keep_floor = float(np.sort(scores)[::-1][allowed - 1]) if 0 < allowed <= scores.size else 0.0
    info = {"features": list(FEATURES), "n_studies": n_studies, "n_candidates": int(labels.size),
            "n_on_metastases": int(labels.sum()), "n_count_candidates": int(scores.size),
            "keep_floor": keep_floor, "count_candidates_kept_per_study": kept_per_study,
            "snr_candidates_per_view": int(snr_limit),
            "model": "sklearn HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, max_leaf_nodes=31, "
                     "l2_regularization=1.0, early_stopping=True)", "iterations": int(model.n_iter_)}
    return HotspotRescorer(model, keep_floor, info)


def save_rescorer(rescorer: HotspotRescorer, run_dir: str | Path, fitted_on: dict) -> Path:
    """Write RUN/hotspot_rescorer.skops and .json (with `fitted_on` added), each atomically."""
    run_dir = Path(run_dir)
    save_trees(rescorer.model, run_dir / RESCORER_FILE)
    write_text_atomic(run_dir / RESCORER_INFO, json.dumps({**rescorer.info, **fitted_on}, indent=2) + "\n")
    return run_dir / RESCORER_FILE


def load_rescorer(run_dir: str | Path) -> HotspotRescorer | None:
    """The run's rescorer, None without one; RunError when its files are unusable."""
    path, info_path = Path(run_dir) / RESCORER_FILE, Path(run_dir) / RESCORER_INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("features") != list(FEATURES):
            differ = sorted(set(info.get("features") or ()) ^ set(FEATURES)) or ["their order"]
            raise ValueError(f"it was fitted on other features than this version computes (differing: "
                             f"{', '.join(differ)})")
        return HotspotRescorer(load_trees(path), float(info["keep_floor"]), info)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise RunError(path, f"cannot load the hotspot rescorer ({error}); fit it again with `bonescan lesions "
                             "rescorer`") from error


def view_maps(probabilities: np.ndarray, counts: tuple[np.ndarray, np.ndarray], regions: np.ndarray,
              covered: tuple[np.ndarray, np.ndarray]) -> tuple[ViewMaps, ViewMaps]:
    """Both views' ViewMaps from stored-size maps (`infer.maps_at_stored_size`), counts, and the pixels of the
    network's hotspots (left out of the normal-bone level)."""
    out = []
    for view in range(2):
        bone = regions[view] > 0
        level = bone_level(counts[view], bone)
        out.append(ViewMaps(counts[view], gaussian_filter(counts[view], COUNT_SMOOTHING),
                            probabilities[view, 0], probabilities[view, 1],
                            probabilities[1 - view, 1][:, ::-1], regions[view],
                            level, matched_snr(counts[view], level),
                            normal_bone_level(counts[view], bone, covered[view])))
    return out[0], out[1]


def all_candidates(found: list[Candidate], probabilities: np.ndarray, counts: tuple[np.ndarray, np.ndarray],
                   regions: np.ndarray, pixel_spacing: float, min_pixels: float,
                   snr_limit: int = SNR_CANDIDATES_PER_VIEW) -> tuple[list[Candidate], np.ndarray]:
    """The network's candidates `found` plus the count candidates of both views (at least `min_pixels`; at most
    `snr_limit` faint ones per view), and the FEATURES of each ([N, len(FEATURES)])."""
    covered = [np.zeros(regions.shape[1:], bool) for _ in range(2)]
    for candidate in found:
        covered[candidate.view][candidate.window] |= candidate.mask
    maps = view_maps(probabilities, counts, regions, (covered[0], covered[1]))
    # the network's strongest evidence anywhere in the study: a faint focus means more in a study with metastases
    study_peak = max((c.malignancy for c in found), default=0.0)
    found = list(found)
    for view in range(2):
        for window, mask in count_candidates(maps[view].smooth, regions[view] > 0, maps[view].bone_level,
                                             covered[view], maps[view].snr, snr_limit):
            if mask.sum() >= min_pixels:
                found.append(Candidate(view, window, mask, float(maps[view].metastasis[window][mask].max()),
                                       region_under(regions[view], window, mask), from_counts=True))
    return found, candidate_features(found, maps, pixel_spacing, study_peak)


def rescore_candidates(found: list[Candidate], probabilities: np.ndarray, counts: tuple[np.ndarray, np.ndarray],
                       regions: np.ndarray, pixel_spacing: float, rescorer: HotspotRescorer,
                       min_pixels: float) -> list[Candidate]:
    """The network's candidates and the count candidates, each with the rescorer's malignancy; count candidates
    under the rescorer's keep floor dropped."""
    candidates, features = all_candidates(found, probabilities, counts, regions, pixel_spacing, min_pixels,
                                          rescorer.snr_limit)
    scores = rescorer.score(features)
    return [Candidate(c.view, c.window, c.mask, float(score), c.region, c.from_counts)
            for c, score in zip(candidates, scores) if not c.from_counts or score >= rescorer.keep_floor]
