"""A learned judge of new lesions: which lesions unseen on the baseline are new, decided by gradient-boosted trees
over what the hand rules measure, fitted on synthetic follow-up cohorts with their truth.

The hand rules (`uptake.UptakeCheck`) call a lesion unseen on the baseline new when the lesion network calls it
malignant and its uptake rose 1.25-fold since the baseline, or when it is a fainter candidate on bone whose uptake
rose 1.4-fold: two thresholds on two measures, chosen by hand on 60 patients. The learned judge takes the same
candidates and measures (the malignancy over the run's threshold, the rise, the uptake now and before, area, both
views, region) and lets a classifier weigh them, fitted on the candidates of a follow-up cohort labelled by the
finding under them (`called_new.kind_map`: a new metastasis or not). Its threshold is chosen on out-of-fold scores
(patients kept apart in 5 folds) as the lowest whose ">= 2 new lesions" specificity per patient reaches a target.

On the 360 patients of 6 synthetic `paper` cohorts it never saw, with the 12-epoch `cpu-small-lesion` network,
fitted on 600 others at the rules' own specificity there: ">= 2 new lesions" 57/82 at 234/278 against the rules'
57/82 at 222/278, 19 artifacts called new against 66 (README, "bonescan followup").

The judge belongs to the lesion network it was fitted with: the malignancy it weighs is that network's. `bonescan
followup-judge` fits it; `bonescan followup --judge FILE` uses it. Stored as FILE (skops) and FILE.json: loading
runs no pickled code (`trees`).
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import BoneScanError, ManifestError, RunError
from ..fileio import write_text_atomic
from ..lesions.regions import REGIONS
from ..trees import load_trees, one_thread, save_trees
from .called_new import KINDS, kind_at, kind_map
from .match import Lesion
from .uptake import UptakeCheck

FEATURES = ("views", "malignancy", "least_malignancy", "rise", "uptake_now", "uptake_before", "area_mm2",
            "uptake_ratio", "on_bone", "region")
REGION_CODES = {region.name: code for code, region in enumerate(REGIONS, start=1)}  # 0: off the skeleton
RISE_CAP = 10.0  # where the baseline shows nothing at all
FOLDS = 5
DEFAULT_SPECIFICITY = 0.90
THRESHOLDS = np.round(np.concatenate([np.arange(0.01, 0.1, 0.01), np.arange(0.1, 0.96, 0.05)]), 2)


def candidate_features(check: UptakeCheck, lesion: Lesion, visit: int) -> list[float]:
    """FEATURES of one lesion unseen on the reference visits, as it shows on `visit` (its one or two hotspots)."""
    hotspots = lesion.hotspots[visit]
    threshold = check.lesions[visit].threshold or 1.0
    uptakes = [check.ratio(h, visit) for h in hotspots]
    rises = [now / before if before > 0 else RISE_CAP for now, before in uptakes]
    steepest = int(np.argmax(rises))
    region = next((h.region for h in hotspots if h.region), "")
    return [float(len({h.view for h in hotspots})), max(h.malignancy for h in hotspots) / threshold,
            min(h.malignancy for h in hotspots) / threshold, min(rises[steepest], RISE_CAP),
            uptakes[steepest][0], uptakes[steepest][1], max(h.area_mm2 for h in hotspots),
            _finite(max(h.uptake_ratio for h in hotspots)), float(bool(region)), float(REGION_CODES.get(region, 0))]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


@dataclass
class NewLesionModel:
    """A fitted judge: the trees, the probability from which a candidate is new, and how it was fitted."""

    model: object
    threshold: float
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"learned judge ({self.info.get('fitted_on_patients', '?')} patients, threshold {self.threshold:.2f})"

    def probabilities(self, features: Sequence[Sequence[float]]) -> np.ndarray:
        with one_thread():
            return self.model.predict_proba(np.asarray(features, float).reshape(-1, len(FEATURES)))[:, 1]

    def judge(self, studies, lesions, transforms) -> "LearnedJudge":
        """The judge of one comparison (`compare.compare_visits`)."""
        return LearnedJudge(self, studies, lesions, transforms)


class LearnedJudge(UptakeCheck):
    """The rules' measures of the count images (`UptakeCheck`), the fitted model's decision."""

    def __init__(self, fitted: NewLesionModel, studies, lesions, transforms):
        super().__init__(studies, lesions, transforms)
        self.fitted = fitted

    def new_among(self, candidates: list[Lesion], visit: int, reference: list[int]) -> set[int]:
        if not candidates:
            return set()
        scores = self.fitted.probabilities([candidate_features(self, lesion, visit) for lesion in candidates])
        return {lesion.number for lesion, score in zip(candidates, scores) if score >= self.fitted.threshold}


class CandidateRecorder:
    """Judges with the hand rules and keeps every first follow-up candidate's features (for fitting)."""

    name = "rules"

    def __init__(self):
        self.features: list[list[float]] = []
        self.lesions: list[Lesion] = []

    def judge(self, studies, lesions, transforms) -> "RecordingRules":
        return RecordingRules(self, studies, lesions, transforms)


class RecordingRules(UptakeCheck):
    """The hand rules, telling a `CandidateRecorder` of each first follow-up candidate they judge."""

    def __init__(self, recorder: CandidateRecorder, studies, lesions, transforms):
        super().__init__(studies, lesions, transforms)
        self.recorder = recorder

    def new_among(self, candidates: list[Lesion], visit: int, reference: list[int]) -> set[int]:
        if visit == 1:
            for lesion in candidates:
                self.recorder.features.append(candidate_features(self, lesion, visit))
                self.recorder.lesions.append(lesion)
        return super().new_among(candidates, visit, reference)


@dataclass
class Candidates:
    """First follow-up candidates of many patients: features, on a new metastasis or not, patient index; and per
    patient the truth's new-lesion count."""

    features: np.ndarray
    on_new_metastasis: np.ndarray
    patient: np.ndarray
    truth_new: np.ndarray
    failed: list[tuple[str, str]]


def collect_candidates(manifests: Sequence[Path], reader, progress: Callable[[int, int], None] | None = None
                       ) -> Candidates:
    """Compare every patient of the follow-up `manifests` (synthetic cohorts with truth) with the hand rules and
    label each candidate of the first follow-up by the finding under it. Patients that cannot be compared are
    listed and left out."""
    from .evaluate import compare_patient, manifest_patients, new_lesion_ids, shown_identities, truth_of

    groups = [(manifest, pid, rows) for manifest in manifests for pid, rows in manifest_patients(manifest)[1].items()]
    features, labels, patients, truth_new, failed = [], [], [], [], []
    for done, (manifest, pid, rows) in enumerate(groups, start=1):
        recorder = CandidateRecorder()
        try:
            truths = truth_of(rows)
            compare_patient(rows, reader, judge=recorder)
        except Exception as error:  # noqa: BLE001 - reported per patient, the fit goes on
            reason = str(error) if isinstance(error, BoneScanError) else f"{type(error).__name__}: {error}"
            failed.append((f"{manifest}:{pid}", reason))
        else:
            confluent = truths[1].confluent_metastases()
            new_ids = new_lesion_ids(truths[1], shown_identities(truths[0]), confluent)
            codes = kind_map(truths[1], confluent[0], new_ids)
            for lesion, row in zip(recorder.lesions, recorder.features):
                kind = KINDS[kind_at(codes, lesion.hotspots[1])]
                features.append(row)
                labels.append(kind == "new metastasis")
                patients.append(len(truth_new))
            truth_new.append(len(new_ids))
        if progress is not None:
            progress(done, len(groups))
    if not truth_new:
        raise ManifestError(manifests[0], f"none of its {len(groups)} patients could be compared: "
                                          f"{failed[0][1] if failed else 'no patients'}")
    return Candidates(np.asarray(features, float).reshape(-1, len(FEATURES)), np.asarray(labels, bool),
                      np.asarray(patients, int), np.asarray(truth_new, int), failed)


def patient_specificity_sensitivity(scores: np.ndarray, patient: np.ndarray, truth_new: np.ndarray,
                                    threshold: float) -> tuple[float, float]:
    """(">= 2 new" specificity, sensitivity) per patient when candidates scoring >= threshold are new."""
    called = np.bincount(patient[scores >= threshold], minlength=truth_new.size) >= 2
    positive = truth_new >= 2
    specificity = float((~called & ~positive).sum() / max((~positive).sum(), 1))
    sensitivity = float((called & positive).sum() / max(positive.sum(), 1))
    return specificity, sensitivity


def choose_threshold(scores: np.ndarray, patient: np.ndarray, truth_new: np.ndarray,
                     specificity: float = DEFAULT_SPECIFICITY) -> tuple[float, float, float]:
    """(threshold, specificity, sensitivity): the lowest of THRESHOLDS whose specificity reaches `specificity`
    (the most sensitive such), else the most specific one."""
    measured = [(t, *patient_specificity_sensitivity(scores, patient, truth_new, t)) for t in THRESHOLDS]
    reaching = [m for m in measured if m[1] >= specificity]
    return reaching[0] if reaching else max(measured, key=lambda m: (m[1], m[2]))


def _classifier(seed: int = 0):
    from sklearn.ensemble import HistGradientBoostingClassifier

    # The region as its code, not as a categorical feature: that adds an encoder whose stored form loads code that
    # `trees` does not trust.
    return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15, l2_regularization=1.0,
                                          random_state=seed)


def fit_new_lesion_judge(candidates: Candidates, specificity: float = DEFAULT_SPECIFICITY,
                         fitted_with: dict | None = None) -> NewLesionModel:
    """Fit the trees on every candidate; choose the threshold on out-of-fold scores (patients kept apart)."""
    from sklearn.model_selection import GroupKFold

    labels = candidates.on_new_metastasis
    n_patients = candidates.truth_new.size
    if labels.all() or not labels.any():
        raise ManifestError("follow-up cohorts", f"the judge needs candidates on new metastases and elsewhere; got "
                                                 f"{int(labels.sum())} of {labels.size} on one")
    if n_patients < FOLDS:
        raise ManifestError("follow-up cohorts", f"the judge needs at least {FOLDS} patients to choose its threshold "
                                                 f"out of fold; got {n_patients}")
    out_of_fold = np.zeros(labels.size)
    with one_thread():
        for train, held in GroupKFold(FOLDS).split(candidates.features, groups=candidates.patient):
            if labels[train].all() or not labels[train].any():
                out_of_fold[held] = labels[train].mean()  # a fold without both kinds: no ordering to learn
                continue
            out_of_fold[held] = _classifier().fit(candidates.features[train], labels[train]) \
                .predict_proba(candidates.features[held])[:, 1]
        model = _classifier().fit(candidates.features, labels)
    threshold, spec, sens = choose_threshold(out_of_fold, candidates.patient, candidates.truth_new, specificity)
    info = {"features": list(FEATURES), "threshold": threshold, "specificity_target": specificity,
            "out_of_fold_specificity": spec, "out_of_fold_sensitivity": sens, "fitted_on_patients": n_patients,
            "patients_with_two_new": int((candidates.truth_new >= 2).sum()), "candidates": int(labels.size),
            "on_new_metastases": int(labels.sum()), "failed_patients": len(candidates.failed),
            "model": "sklearn HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15, "
                     "l2_regularization=1.0)", **(fitted_with or {})}
    return NewLesionModel(model, threshold, info)


def info_path(path: str | Path) -> Path:
    return Path(f"{path}.json")


def save_new_lesion_judge(judge: NewLesionModel, path: str | Path) -> Path:
    """Write the trees (skops) and FILE.json, each atomically."""
    save_trees(judge.model, path)
    write_text_atomic(info_path(path), json.dumps(judge.info, indent=2) + "\n")
    return Path(path)


def load_new_lesion_judge(path: str | Path) -> NewLesionModel:
    """The judge in `path` (and path.json); RunError naming the file when it cannot be used."""
    path = Path(path)
    try:
        info = json.loads(info_path(path).read_text(encoding="utf-8"))
        if info.get("features") != list(FEATURES):
            raise ValueError("it was fitted on other features than this version measures")
        threshold = float(info["threshold"])
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold {threshold} is not a probability")
        return NewLesionModel(load_trees(path), threshold, info)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise RunError(path, f"cannot use this new-lesion judge ({error}); fit one with bonescan followup-judge"
                       ) from error
