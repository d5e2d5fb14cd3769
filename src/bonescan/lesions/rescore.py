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
from scipy import ndimage

from ..errors import RunError
from ..fileio import write_text_atomic
from ..trees import load_trees, one_thread, save_trees
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
# SNR 5 in ~60 places per view, and each candidate costs its features (~0.2 ms).
SNR_CANDIDATES_PER_VIEW = 25
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


def _log(value: float) -> float:
    return float(np.log(value)) if np.isfinite(value) and value > 0 else 0.0


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
    padding = ((0, -height % factor), (0, -width % factor))

    def blocks(image: np.ndarray) -> np.ndarray:
        padded = np.pad(image, padding)
        return padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).sum((1, 3))

    weight = ndimage.gaussian_filter(blocks(bone.astype(np.float32)), BONE_LEVEL_SIGMA / factor)
    level = ndimage.gaussian_filter(blocks(counts * bone), BONE_LEVEL_SIGMA / factor)
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
    matched = ndimage.gaussian_filter(counts, MATCHED_SIGMA)
    safe = np.maximum(level, 1e-6)
    return np.where(level > 0, (matched - level) * np.sqrt(4.0 * np.pi * MATCHED_SIGMA**2 / safe), 0.0)


def count_candidates(smooth: np.ndarray, bone: np.ndarray, level: np.ndarray, covered: np.ndarray,
                     snr: np.ndarray | None = None) -> list[tuple[tuple[slice, slice], np.ndarray]]:
    """(window, mask) of each count candidate of one view, on bone and outside `covered` (the network's hotspots):
    first the peaks of the smoothed counts over the local bone level reaching COUNT_CANDIDATE_RATIO, brightest
    first; then, with a `snr` map (`matched_snr`), its peaks reaching SNR_CANDIDATE: faint foci that stand out of
    the noise by their size rather than their brightness, the SNR_CANDIDATES_PER_VIEW strongest. At most
    COUNT_CANDIDATES_PER_VIEW in all."""
    on_bone = bone & (level > 0)
    safe = np.maximum(level, 1e-6)
    ratio = np.where(on_bone, smooth / safe, 0.0)
    # each seed grows over the map it was found on: a faint focus's outline from the noise-filtered counts
    seeds = [(peak, ratio) for peak in _peaks(ratio, ratio >= COUNT_CANDIDATE_RATIO)]
    if snr is not None:
        matched_ratio = np.where(on_bone, 1.0 + snr / np.sqrt(4.0 * np.pi * MATCHED_SIGMA**2 * safe), 0.0)
        faint = _peaks(snr, on_bone & (snr >= SNR_CANDIDATE) & ~covered)[:SNR_CANDIDATES_PER_VIEW]
        seeds += [(peak, matched_ratio) for peak in faint]
    found = []
    height, width = smooth.shape
    taken = covered.copy()
    for (row, col), grown in seeds:
        if len(found) == COUNT_CANDIDATES_PER_VIEW:
            break
        if taken[row, col]:
            continue  # inside an earlier peak's candidate
        window = (slice(max(0, row - COUNT_REACH), min(height, row + COUNT_REACH + 1)),
                  slice(max(0, col - COUNT_REACH), min(width, col + COUNT_REACH + 1)))
        above = (grown[window] >= 1 + 0.5 * (grown[row, col] - 1)) & ~taken[window]
        labels, _ = ndimage.label(above)
        mask = labels == labels[row - window[0].start, col - window[1].start]
        taken[window] |= mask
        found.append((window, mask))
    return found


def _peaks(image: np.ndarray, allowed: np.ndarray) -> list[tuple[int, int]]:
    """(row, col) of the local maxima of `image` (within COUNT_PEAK_DISTANCE) where `allowed`, highest first.

    The highest value around each allowed pixel only (under 3 % of a view's pixels): the same peaks as a maximum
    filter over the whole view, for less than half its time (5.4 against 12.0 ms per study, 20 studies of `synth
    --seed 41`, Xeon with AMX)."""
    rows, cols = np.nonzero(allowed)
    reach = COUNT_PEAK_DISTANCE
    padded = np.pad(image, reach, constant_values=-np.inf)
    highest = np.full(rows.size, -np.inf, padded.dtype)
    for d_row in range(2 * reach + 1):
        for d_col in range(2 * reach + 1):
            np.maximum(highest, padded[rows + d_row, cols + d_col], out=highest)
    peak = image[rows, cols] >= highest
    return sorted(((int(r), int(c)) for r, c in zip(rows[peak], cols[peak])), key=lambda rc: -image[rc])


def candidate_features(view: int, window: tuple[slice, slice], mask: np.ndarray, maps: ViewMaps,
                       from_counts: bool, pixel_spacing: float, region: str, study_peak: float) -> list[float]:
    """The FEATURES of one candidate (a box-sized mask at `window`) of view `view` (0 anterior, 1 posterior)."""
    height, width = maps.counts.shape
    inner = maps.counts[window][mask]
    reach = OTHER_VIEW_REACH
    near = tuple(slice(max(0, s.start - reach), min(size, s.stop + reach)) for s, size in zip(window, (height, width)))
    # ring: the frame 2-5 pixels around the candidate's box (slices only: per-candidate filters cost 1 ms each)
    outer = tuple(slice(max(0, s.start - 5), min(size, s.stop + 5)) for s, size in zip(window, (height, width)))
    ring = np.ones((outer[0].stop - outer[0].start, outer[1].stop - outer[1].start), bool)
    ring[max(0, window[0].start - 1) - outer[0].start:window[0].stop + 1 - outer[0].start,
         max(0, window[1].start - 1) - outer[1].start:window[1].stop + 1 - outer[1].start] = False
    ring_level = float(np.median(maps.counts[outer][ring])) if ring.any() else 0.0
    rows, cols = np.nonzero(mask)
    elongation = 1.0
    if rows.size > 2:  # ratio of the eigenvalues of the pixels' 2 x 2 covariance, in closed form
        var_r, var_c = rows.var(), cols.var()
        cov = float(((rows - rows.mean()) * (cols - cols.mean())).mean())
        half_sum, root = (var_r + var_c) / 2, float(np.sqrt(((var_r - var_c) / 2) ** 2 + cov**2))
        elongation = float((half_sum + root) / max(half_sum - root, 1e-3))
    level = maps.bone_level[window][mask]
    over_bone = float(np.max(maps.smooth[window][mask] / np.maximum(level, 1e-6))) if (level > 0).any() else 0.0
    centre_row = (rows.mean() + window[0].start) / height
    centre_col = (cols.mean() + window[1].start) / width
    group = next((g for g in REGION_GROUPS if g in region), "")
    return [_logit(maps.metastasis[window][mask].max()), _logit(maps.metastasis[window][mask].mean()),
            _logit(maps.hotspot[window][mask].max()), _log(mask.sum() * pixel_spacing**2),
            _log(inner.mean() / maps.normal_bone) if maps.normal_bone > 0 else 0.0,
            _logit(maps.other_metastasis[near].max()),
            _log(inner.mean() / ring_level) if ring_level > 0 else 0.0,
            _log(np.sort(inner)[int(0.9 * (inner.size - 1))] / ring_level) if ring_level > 0 else 0.0,
            _log(over_bone), float(np.log1p(max(float(maps.snr[window][mask].max()), 0.0))),
            float(np.log1p(elongation)),
            float(view), float(centre_row), float(abs(centre_col - 0.5)), float(from_counts), _logit(study_peak)] + \
        [float(group == g) for g in REGION_GROUPS]


@dataclass
class HotspotRescorer:
    """A fitted rescorer: candidate features -> malignancy; count candidates under `keep_floor` are dropped."""

    model: object  # sklearn HistGradientBoostingClassifier
    keep_floor: float
    info: dict

    def score(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, np.float64).reshape(-1, len(FEATURES))
        if not len(features):
            return np.zeros(0)
        with one_thread():  # a study has tens of candidates, and studies are post-processed in threads already
            return self.model.predict_proba(features)[:, 1]


def fit_rescorer(features: np.ndarray, labels: np.ndarray, from_counts: np.ndarray, n_studies: int,
                 kept_per_study: float = 2.0, seed: int = 0) -> HotspotRescorer:
    """Fit on candidates (rows of FEATURES, hit-a-metastasis labels) of `n_studies` studies; the keep floor lets
    about `kept_per_study` count candidates per study through on these studies."""
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
        out.append(ViewMaps(counts[view], ndimage.gaussian_filter(counts[view], COUNT_SMOOTHING),
                            probabilities[view, 0], probabilities[view, 1],
                            probabilities[1 - view, 1][:, ::-1], regions[view],
                            level, matched_snr(counts[view], level),
                            normal_bone_level(counts[view], bone, covered[view])))
    return out[0], out[1]


def all_candidates(found: list[Candidate], probabilities: np.ndarray, counts: tuple[np.ndarray, np.ndarray],
                   regions: np.ndarray, pixel_spacing: float, min_pixels: float) -> tuple[list[Candidate], np.ndarray]:
    """The network's candidates `found` plus the count candidates of both views (at least `min_pixels`), and the
    FEATURES of each ([N, len(FEATURES)])."""
    covered = [np.zeros(regions.shape[1:], bool) for _ in range(2)]
    for candidate in found:
        covered[candidate.view][candidate.window] |= candidate.mask
    maps = view_maps(probabilities, counts, regions, (covered[0], covered[1]))
    # the network's strongest evidence anywhere in the study: a faint focus means more in a study with metastases
    study_peak = max((c.malignancy for c in found), default=0.0)
    found = list(found)
    for view in range(2):
        for window, mask in count_candidates(maps[view].smooth, regions[view] > 0, maps[view].bone_level,
                                             covered[view], maps[view].snr):
            if mask.sum() >= min_pixels:
                found.append(Candidate(view, window, mask, float(maps[view].metastasis[window][mask].max()),
                                       region_under(regions[view], window, mask), from_counts=True))
    features = np.array([candidate_features(c.view, c.window, c.mask, maps[c.view], c.from_counts, pixel_spacing,
                                            c.region, study_peak) for c in found],
                        np.float64).reshape(-1, len(FEATURES))
    return found, features


def rescore_candidates(found: list[Candidate], probabilities: np.ndarray, counts: tuple[np.ndarray, np.ndarray],
                       regions: np.ndarray, pixel_spacing: float, rescorer: HotspotRescorer,
                       min_pixels: float) -> list[Candidate]:
    """The network's candidates and the count candidates, each with the rescorer's malignancy; count candidates
    under the rescorer's keep floor dropped."""
    candidates, features = all_candidates(found, probabilities, counts, regions, pixel_spacing, min_pixels)
    scores = rescorer.score(features)
    return [Candidate(c.view, c.window, c.mask, float(score), c.region, c.from_counts)
            for c, score in zip(candidates, scores) if not c.from_counts or score >= rescorer.keep_floor]
