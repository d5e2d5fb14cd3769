"""Decision thresholds chosen on the validation split and frozen for the test split (and for `predict`).

A case is called positive when its probability is >= the threshold. Four points are kept side by side:
Youden (max sensitivity + specificity - 1), rule-out (the highest threshold whose sensitivity is >= 0.95),
rule-in (the lowest threshold whose specificity is >= 0.95) and the conventional 0.5.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import PredictionsError
from ..fileio import write_text_atomic
from .stats import Proportion, _as_labels, _as_scores, clean_for_json, wilson_interval

POINT_NAMES = ("youden", "rule-out", "rule-in", "0.5")
MAIN_POINT = "youden"
RULE_OUT_SENSITIVITY = 0.95
RULE_IN_SPECIFICITY = 0.95
DECISION_RULE = "positive when probability >= threshold"


@dataclass
class ConfusionCounts:
    """Counts of a binary decision against the reference standard."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        """All cases."""
        return self.tp + self.fp + self.tn + self.fn

    def metrics(self, confidence: float = 0.95) -> dict[str, Proportion]:
        """Sensitivity, specificity, accuracy, PPV and NPV as x/n with Wilson intervals."""
        return {
            "sensitivity": wilson_interval(self.tp, self.tp + self.fn, confidence),
            "specificity": wilson_interval(self.tn, self.tn + self.fp, confidence),
            "accuracy": wilson_interval(self.tp + self.tn, self.n, confidence),
            "ppv": wilson_interval(self.tp, self.tp + self.fp, confidence),
            "npv": wilson_interval(self.tn, self.tn + self.fn, confidence),
        }


def confusion_counts(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray,
                     threshold: float) -> ConfusionCounts:
    """TP/FP/TN/FN when a case is called positive at probability >= `threshold`."""
    y = _as_labels(labels).astype(bool)
    called = _as_scores(probabilities, y.size, "probabilities") >= threshold
    return ConfusionCounts(int(np.sum(called & y)), int(np.sum(called & ~y)), int(np.sum(~called & ~y)),
                           int(np.sum(~called & y)))


@dataclass
class OperatingPoints:
    """Frozen thresholds and how they were chosen; `chosen_on` names the split (or 'evaluated set' when no val)."""

    thresholds: dict[str, float]
    chosen_on: str
    n: int
    n_pos: int
    performance: dict[str, dict[str, float]] = field(default_factory=dict)  # on the choosing split
    temperature: float | None = None
    warning: str | None = None

    def to_json_dict(self) -> dict:
        """The operating_points.json layout read by `predict`: {"youden": t, "rule-out": t, ...} plus provenance."""
        out: dict = {name: float(self.thresholds[name]) for name in POINT_NAMES}
        out.update({
            "decision_rule": DECISION_RULE,
            "chosen_on": self.chosen_on,
            "n_val": self.n if self.chosen_on == "val" else None,
            "n_chosen_on": self.n,
            "n_pos_chosen_on": self.n_pos,
            "val_performance" if self.chosen_on == "val" else "performance_where_chosen": self.performance,
            "rule_out_min_sensitivity": RULE_OUT_SENSITIVITY,
            "rule_in_min_specificity": RULE_IN_SPECIFICITY,
            "main": MAIN_POINT,
            "temperature": self.temperature,
            "temperature_note": "thresholds apply to uncalibrated model probabilities",
            "warning": self.warning,
        })
        return clean_for_json(out)

    def save(self, path: str | Path) -> Path:
        """Write operating_points.json atomically."""
        return write_text_atomic(path, json.dumps(self.to_json_dict(), indent=2) + "\n")


def load_operating_points(path: str | Path) -> dict[str, float]:
    """Read the thresholds of an operating_points.json as {name: threshold}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PredictionsError(path, f"cannot read operating points: {error}") from error
    missing = [name for name in POINT_NAMES if not isinstance(data.get(name), (int, float))]
    if missing:
        raise PredictionsError(path, f"operating points file lacks numeric thresholds for: {', '.join(missing)}")
    return {name: float(data[name]) for name in POINT_NAMES}


def _sweep(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (descending: one above the maximum, then every distinct score) with sens and spec."""
    distinct = np.unique(p)[::-1]
    thresholds = np.concatenate([[np.nextafter(distinct[0], np.inf)], distinct])
    pos = np.sort(p[y == 1])
    neg = np.sort(p[y == 0])
    # number of scores >= t, by binary search on the sorted scores
    tp = pos.size - np.searchsorted(pos, thresholds, side="left")
    fp = neg.size - np.searchsorted(neg, thresholds, side="left")
    return thresholds, tp / pos.size, 1.0 - fp / neg.size


def roc_points(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, threshold) at every distinct threshold, from (0, 0) to (1, 1)."""
    y = _as_labels(labels)
    p = _as_scores(probabilities, y.size, "probabilities")
    thresholds, sens, spec = _sweep(y, p)
    return 1.0 - spec, sens, thresholds


def choose_operating_points(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    chosen_on: str = "val",
    warning: str | None = None,
) -> OperatingPoints:
    """Choose the Youden, rule-out, rule-in and 0.5 thresholds on these cases (normally the validation split)."""
    y = _as_labels(labels)
    p = _as_scores(probabilities, y.size, "probabilities")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise PredictionsError(chosen_on, f"cannot choose operating points: the {y.size} case(s) here are all "
                                          f"{'positive' if n_pos else 'negative'}")
    thresholds, sens, spec = _sweep(y, p)
    youden = sens + spec - 1.0
    chosen = {
        "youden": float(thresholds[int(np.argmax(youden))]),  # first maximum = highest threshold among ties
        # sensitivity grows as the threshold falls: the first (highest) threshold that reaches the target
        "rule-out": float(thresholds[int(np.argmax(sens >= RULE_OUT_SENSITIVITY))]),
        # specificity falls as the threshold falls: the last (lowest) threshold that keeps the target
        "rule-in": float(thresholds[int(np.flatnonzero(spec >= RULE_IN_SPECIFICITY)[-1])]),
        "0.5": 0.5,
    }
    performance = {}
    for name, t in chosen.items():
        counts = confusion_counts(y, p, t)
        performance[name] = {"sensitivity": counts.tp / n_pos, "specificity": counts.tn / (y.size - n_pos)}
    return OperatingPoints(chosen, chosen_on, int(y.size), n_pos, performance, warning=warning)
