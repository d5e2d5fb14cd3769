"""A learned judge of new lesions: which lesions unseen on the baseline are new, decided by gradient-boosted trees
over what the hand rules measure, fitted on synthetic follow-up cohorts with their truth.

The hand rules (`uptake.UptakeCheck`) call a lesion unseen on the baseline new when the lesion network calls it
malignant and its uptake rose 1.25-fold since the baseline, or when it is a fainter candidate on bone whose uptake
rose 1.4-fold: two thresholds on two measures, chosen by hand on 60 patients. The learned judge takes the same
candidates and measures (the malignancy over the run's threshold, the rise, the uptake now and before, area, both
views, region) and lets a classifier weigh them, fitted on the candidates of a follow-up cohort labelled by the
finding under them (`called_new.kind_map`: a new metastasis or not). Its threshold is chosen on out-of-fold scores
(patients kept apart in 5 folds) as the lowest whose ">= 2 new lesions" specificity per patient reaches a target.

Fitted beside a change network (`change_net`), it also weighs what that network sees under each candidate, and
its threshold is chosen for the count the verdict makes of both (`joins`); the comparison then needs that network.
It judges the first follow-up's candidates, what it was fitted on; a confirmatory scan's are left to the rules.

On the 360 patients of 6 synthetic `paper` cohorts it never saw, with the 12-epoch `cpu-small-lesion` network,
fitted on 600 others at the rules' own specificity there: ">= 2 new lesions" 57/82 at 234/278 against the rules'
57/82 at 222/278, 19 artifacts called new against 66. Beside the change network (`--join either`, threshold chosen
for specificity 0.85 out of fold): 75/82 at 251/278 against the rules' 74/82 at 217/278; with `--join union`
77/82 at 250/278 on those seeds (7-12); fitted on 1,200 patients, 79/82 at 248/278 there but 78/87 at 230/273 on
360 fresh patients (seeds 13-18), where the rules beside the network made 77/87 at 213/273 (README, "bonescan
followup").

The judge belongs to the lesion network (and change network) it was fitted with: the malignancy it weighs is that
network's. `bonescan followup-judge` fits it; `bonescan followup --judge FILE` uses it. Stored as FILE (skops) and
FILE.json: loading runs no pickled code (`trees`).
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError, ManifestError, RunError, describe
from ..fileio import write_text_atomic
from ..lesions.regions import REGIONS
from ..study import VIEWS
from ..trees import load_trees, one_thread, save_trees
from .called_new import KINDS, kind_at, kind_map
from .change_net import grid_pixels
from .joins import JOINS
from .match import Lesion
from .uptake import UptakeCheck

FEATURES = ("views", "malignancy", "least_malignancy", "rise", "uptake_now", "uptake_before", "area_mm2",
            "uptake_ratio", "on_bone", "region")
# A judge fitted beside a change network also weighs what that network sees under each candidate: its highest
# new-lesion probability there, and the best mean over one hotspot's outline.
CHANGE_FEATURES = ("change_max", "change_mean")
REGION_CODES = {region.name: code for code, region in enumerate(REGIONS, start=1)}  # 0: off the skeleton
RISE_CAP = 10.0  # where the baseline shows nothing at all
FOLDS = 5
DEFAULT_SPECIFICITY = 0.90
FITTING_JOINS = ("either", "union")  # "network" leaves the judge's count out of the verdict
THRESHOLDS = np.round(np.concatenate([np.arange(0.01, 0.1, 0.01), np.arange(0.1, 0.96, 0.05)]), 2)


def candidate_features(check: UptakeCheck, lesion: Lesion, visit: int,
                       change_map: np.ndarray | None = None) -> list[float]:
    """FEATURES of one lesion unseen on the reference visits, as it shows on `visit` (its one or two hotspots);
    and CHANGE_FEATURES when given the change network's [2, 512, 128] probability map of `visit`."""
    features = uptake_features(check, lesion.hotspots[visit], visit)
    if change_map is None:
        return features
    return features + change_features(change_map, lesion.hotspots[visit], np.shape(check.studies[visit].anterior))


def uptake_features(check: UptakeCheck, hotspots, visit: int) -> list[float]:
    """FEATURES of one lesion's hotspots on `visit`: what the lesion network and the count images show."""
    threshold = check.lesions[visit].threshold or 1.0
    uptakes = [check.ratio(h, visit) for h in hotspots]
    rises = [now / before if before > 0 else RISE_CAP for now, before in uptakes]
    steepest = int(np.argmax(rises))
    region = next((h.region for h in hotspots if h.region), "")
    return [float(len({h.view for h in hotspots})), max(h.malignancy for h in hotspots) / threshold,
            min(h.malignancy for h in hotspots) / threshold, min(rises[steepest], RISE_CAP),
            uptakes[steepest][0], uptakes[steepest][1], max(h.area_mm2 for h in hotspots),
            _finite(max(h.uptake_ratio for h in hotspots)), float(bool(region)), float(REGION_CODES.get(region, 0))]


def change_features(probability: np.ndarray, hotspots, study_shape: tuple[int, int]) -> list[float]:
    """CHANGE_FEATURES of one lesion's hotspots in the change network's probability map."""
    highest, means = 0.0, [0.0]
    for hotspot in hotspots:
        rows, cols = grid_pixels(hotspot, study_shape)
        if rows.size:
            values = probability[VIEWS.index(hotspot.view)][rows, cols]
            highest, means = max(highest, float(values.max())), means + [float(values.mean())]
    return [highest, max(means)]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


@dataclass
class NewLesionModel:
    """A fitted judge: the trees, the probability from which a candidate is new, and how it was fitted."""

    model: object
    threshold: float
    info: dict = field(default_factory=dict)

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.info.get("features", FEATURES))

    @property
    def uses_change_network(self) -> bool:
        """True when it weighs the change network's view of each candidate (fitted with --change-net)."""
        return self.features == FEATURES + CHANGE_FEATURES

    @property
    def name(self) -> str:
        beside = ", with the change network" if self.uses_change_network else ""
        return (f"learned judge ({self.info.get('fitted_on_patients', '?')} patients, threshold "
                f"{self.threshold:.2f}{beside})")

    def probabilities(self, features: Sequence[Sequence[float]]) -> np.ndarray:
        with one_thread():
            return self.model.predict_proba(np.asarray(features, float).reshape(-1, len(self.features)))[:, 1]

    def judge(self, studies, lesions, transforms, change_maps: dict[int, np.ndarray] | None = None
              ) -> "LearnedJudge":
        """The judge of one comparison (`compare.compare_visits`); `change_maps`: the change network's probability
        map of each later visit, which a judge that `uses_change_network` needs."""
        return LearnedJudge(self, studies, lesions, transforms, change_maps)


def check_change_network(judge: NewLesionModel, change_net: str | Path | None, join: str) -> list[str]:
    """ConfigError naming --judge when the judge weighs a change network and none is given; warnings to show when
    it was fitted beside another change network or chose its threshold for another --join."""
    if not judge.uses_change_network:
        return []
    fitted_with = judge.info.get("change_network")
    if change_net is None:
        raise ConfigError("--judge", f"this judge weighs what the change network sees under each candidate: give "
                                     f"the change network it was fitted with (--change-net {fitted_with})")
    warnings = []
    if fitted_with and Path(fitted_with).resolve() != Path(change_net).resolve():
        warnings.append(f"the new-lesion judge was fitted beside the change network {fitted_with}, not "
                        f"{change_net}: the probabilities it weighs are another network's")
    chosen_for = judge.info.get("join")
    if chosen_for and chosen_for != join:
        warnings.append(f"the new-lesion judge chose its threshold for --join {chosen_for}, not {join}: its "
                        f"specificity holds for that count")
    return warnings


class LearnedJudge(UptakeCheck):
    """The rules' measures of the count images (`UptakeCheck`), the fitted model's decision."""

    def __init__(self, fitted: NewLesionModel, studies, lesions, transforms,
                 change_maps: dict[int, np.ndarray] | None = None):
        super().__init__(studies, lesions, transforms)
        self.fitted = fitted
        self.change_maps = change_maps if fitted.uses_change_network else None

    def new_among(self, candidates: list[Lesion], visit: int, reference: list[int]) -> set[int]:
        # It was fitted on the lesions of one follow-up unseen on one earlier scan; a confirmatory scan's (unseen
        # on two) are the rules' to judge: with it there, PCWG3 found 41 of 55 progressing patients, with the rules
        # there 46 (README "bonescan followup").
        if visit != 1:
            return super().new_among(candidates, visit, reference)
        if not candidates:
            return set()
        change_map = self.change_maps[visit] if self.change_maps is not None else None
        scores = self.fitted.probabilities([candidate_features(self, lesion, visit, change_map)
                                            for lesion in candidates])
        return {lesion.number for lesion, score in zip(candidates, scores) if score >= self.fitted.threshold}


class CandidateRecorder:
    """Judges with the hand rules and keeps every first follow-up candidate's features (for fitting); with
    `uses_change_network`, their CHANGE_FEATURES too."""

    name = "rules"

    def __init__(self, uses_change_network: bool = False):
        self.uses_change_network = uses_change_network
        self.features: list[list[float]] = []
        self.lesions: list[Lesion] = []

    def judge(self, studies, lesions, transforms, change_maps: dict[int, np.ndarray] | None = None
              ) -> "RecordingRules":
        return RecordingRules(self, studies, lesions, transforms, change_maps)


class RecordingRules(UptakeCheck):
    """The hand rules, telling a `CandidateRecorder` of each first follow-up candidate they judge."""

    def __init__(self, recorder: CandidateRecorder, studies, lesions, transforms,
                 change_maps: dict[int, np.ndarray] | None = None):
        super().__init__(studies, lesions, transforms)
        self.recorder, self.change_maps = recorder, change_maps

    def new_among(self, candidates: list[Lesion], visit: int, reference: list[int]) -> set[int]:
        if visit == 1:
            change_map = self.change_maps[visit] if self.change_maps is not None else None
            for lesion in candidates:
                self.recorder.features.append(candidate_features(self, lesion, visit, change_map))
                self.recorder.lesions.append(lesion)
        return super().new_among(candidates, visit, reference)


@dataclass
class Candidates:
    """First follow-up candidates of many patients: features (named `names`), on a new metastasis or not, patient
    index; and per patient the truth's new-lesion count and, beside a change network, [its count, those of its new
    lesions apart from every candidate] (None without one)."""

    features: np.ndarray
    on_new_metastasis: np.ndarray
    patient: np.ndarray
    truth_new: np.ndarray
    failed: list[tuple[str, str]]
    network: np.ndarray | None = None
    names: tuple[str, ...] = FEATURES


def collect_candidates(manifests: Sequence[Path], reader, progress: Callable[[int, int], None] | None = None,
                       change_model=None) -> Candidates:
    """Compare every patient of the follow-up `manifests` (synthetic cohorts with truth) with the hand rules and
    label each candidate of the first follow-up by the finding under it; with `change_model`, measure what it sees
    under each candidate and count its new lesions too. Patients that cannot be compared are listed and left
    out."""
    from .evaluate import compare_patient, first_followup_new, manifest_patients, truth_of

    groups = [(manifest, pid, rows) for manifest in manifests for pid, rows in manifest_patients(manifest)[1].items()]
    features, labels, patients, truth_new, network, failed = [], [], [], [], [], []
    names = FEATURES + (CHANGE_FEATURES if change_model is not None else ())
    for done, (manifest, pid, rows) in enumerate(groups, start=1):
        recorder = CandidateRecorder(uses_change_network=change_model is not None)
        try:
            truths = truth_of(rows)
            comparison = compare_patient(rows, reader, judge=recorder, change_model=change_model)
        except Exception as error:  # noqa: BLE001 - reported per patient, the fit goes on
            reason = describe(error)
            failed.append((f"{manifest}:{pid}", reason))
        else:
            confluent, new_ids = first_followup_new(truths)
            codes = kind_map(truths[1], confluent[0], new_ids)
            for lesion, row in zip(recorder.lesions, recorder.features):
                kind = KINDS[kind_at(codes, lesion.hotspots[1])]
                features.append(row)
                labels.append(kind == "new metastasis")
                patients.append(len(truth_new))
            truth_new.append(len(new_ids))
            if comparison.network is not None:
                network.append([len(comparison.network.followup), len(comparison.network.followup_apart)])
        if progress is not None:
            progress(done, len(groups))
    if not truth_new:
        raise ManifestError(manifests[0], f"none of its {len(groups)} patients could be compared: "
                                          f"{failed[0][1] if failed else 'no patients'}")
    return Candidates(np.asarray(features, float).reshape(-1, len(names)), np.asarray(labels, bool),
                      np.asarray(patients, int), np.asarray(truth_new, int), failed,
                      np.asarray(network, int).reshape(-1, 2) if change_model is not None else None, names)


def patient_specificity_sensitivity(scores: np.ndarray, patient: np.ndarray, truth_new: np.ndarray,
                                    threshold: float, network: np.ndarray | None = None, join: str = "either"
                                    ) -> tuple[float, float]:
    """(">= 2 new" specificity, sensitivity) per patient when candidates scoring >= threshold are new; with
    `network` (per patient the change network's count and those apart from every candidate, `Candidates`), the
    count is `join`ed with the network's as the verdict joins them (`joins`)."""
    count = np.bincount(patient[scores >= threshold], minlength=truth_new.size)
    if network is not None:
        count = np.array([JOINS[join](int(c), int(n), int(a)) for c, (n, a) in zip(count, network)])
    called = count >= 2
    positive = truth_new >= 2
    specificity = float((~called & ~positive).sum() / max((~positive).sum(), 1))
    sensitivity = float((called & positive).sum() / max(positive.sum(), 1))
    return specificity, sensitivity


def choose_threshold(scores: np.ndarray, patient: np.ndarray, truth_new: np.ndarray,
                     specificity: float = DEFAULT_SPECIFICITY, network: np.ndarray | None = None,
                     join: str = "either") -> tuple[float, float, float]:
    """(threshold, specificity, sensitivity): the lowest of THRESHOLDS whose specificity reaches `specificity`
    (the most sensitive such), else the most specific one."""
    measured = [(t, *patient_specificity_sensitivity(scores, patient, truth_new, t, network, join))
                for t in THRESHOLDS]
    reaching = [m for m in measured if m[1] >= specificity]
    return reaching[0] if reaching else max(measured, key=lambda m: (m[1], m[2]))


def _classifier(seed: int = 0):
    from sklearn.ensemble import HistGradientBoostingClassifier

    # The region as its code, not as a categorical feature: that adds an encoder whose stored form loads code that
    # `trees` does not trust.
    return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15, l2_regularization=1.0,
                                          random_state=seed)


def check_fitting_join(join: str) -> str:
    """`join` when a judge's threshold can be chosen for it (FITTING_JOINS); otherwise one error naming --join."""
    if join not in FITTING_JOINS:
        raise ConfigError("--join", f"the judge's threshold is chosen for {' or '.join(FITTING_JOINS)}; {join!r} "
                                    "leaves nothing to it")
    return join


def fit_new_lesion_judge(candidates: Candidates, specificity: float = DEFAULT_SPECIFICITY,
                         fitted_with: dict | None = None, join: str = "either") -> NewLesionModel:
    """Fit the trees on every candidate; choose the threshold on out-of-fold scores (patients kept apart), beside a
    change network for the count `join` makes (`joins`)."""
    from sklearn.model_selection import GroupKFold

    check_fitting_join(join)
    labels = candidates.on_new_metastasis
    n_patients = candidates.truth_new.size
    if labels.all() or not labels.any():
        raise ManifestError("follow-up cohorts", f"the judge needs candidates on new metastases and elsewhere; got "
                                                 f"{int(labels.sum())} of {labels.size} on one")
    # The folds keep patients apart, so only patients with candidates count (a patient without any has no fold).
    with_candidates = np.unique(candidates.patient).size
    if with_candidates < FOLDS:
        raise ManifestError("follow-up cohorts", f"the judge needs at least {FOLDS} patients with candidates to choose "
                                                 f"its threshold out of fold; got {with_candidates} of {n_patients}")
    out_of_fold = np.zeros(labels.size)
    with one_thread():
        for train, held in GroupKFold(FOLDS).split(candidates.features, groups=candidates.patient):
            if labels[train].all() or not labels[train].any():
                out_of_fold[held] = labels[train].mean()  # a fold without both kinds: no ordering to learn
                continue
            out_of_fold[held] = _classifier().fit(candidates.features[train], labels[train]) \
                .predict_proba(candidates.features[held])[:, 1]
        model = _classifier().fit(candidates.features, labels)
    threshold, spec, sens = choose_threshold(out_of_fold, candidates.patient, candidates.truth_new, specificity,
                                             candidates.network, join)
    beside = {"join": join} if candidates.network is not None else {}
    info = {"features": list(candidates.names), "threshold": threshold, "specificity_target": specificity, **beside,
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
        if info.get("features") not in (list(FEATURES), list(FEATURES + CHANGE_FEATURES)):
            raise ValueError("it was fitted on other features than this version measures")
        threshold = float(info["threshold"])
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold {threshold} is not a probability")
        return NewLesionModel(load_trees(path), threshold, info)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise RunError(path, f"cannot use this new-lesion judge ({error}); fit one with bonescan followup-judge"
                       ) from error
