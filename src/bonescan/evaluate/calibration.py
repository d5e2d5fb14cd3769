"""Calibration of predicted probabilities: Brier score, reliability bins, expected calibration error, temperature.

ECE uses equal-width bins on [0, 1] (default 10), weighting each bin's |observed rate - mean probability| by its
share of cases; empty bins contribute nothing. Temperature scaling divides the logit by T, fitted by maximum
likelihood on the validation split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import optimize
from scipy.special import expit, logit

from .stats import _as_labels, _as_scores, clean_for_json

# Probabilities of exactly 0 or 1 have infinite logits; clip them this far inside (float32 model outputs).
_EPS = 1e-7


@dataclass
class ReliabilityBin:
    """One equal-width probability bin of the reliability diagram."""

    low: float
    high: float
    n: int
    mean_probability: float
    observed_rate: float


@dataclass
class Calibration:
    """Brier score, ECE and the reliability bins of one set of probabilities."""

    brier: float
    ece: float
    n_bins: int
    bins: list[ReliabilityBin]
    binning: str = "equal-width bins on [0, 1]; ECE weights each bin by its share of cases"

    def as_dict(self) -> dict:
        """JSON-ready dict."""
        return clean_for_json(asdict(self))


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 10) -> list[ReliabilityBin]:
    """Equal-width bins on [0, 1] (the last one closed) with mean probability and observed positive rate."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(probabilities, edges[1:-1], right=False), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        members = index == b
        n = int(members.sum())
        mean_p = float(probabilities[members].mean()) if n else float("nan")
        rate = float(labels[members].mean()) if n else float("nan")
        bins.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), n, mean_p, rate))
    return bins


def calibration_summary(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray,
                        n_bins: int = 10) -> Calibration:
    """Brier score, expected calibration error and reliability bins."""
    y = _as_labels(labels).astype(np.float64)
    p = _as_scores(probabilities, y.size, "probabilities")
    bins = reliability_bins(y, p, n_bins)
    brier = float(np.mean((p - y) ** 2)) if y.size else float("nan")
    ece = float(sum(b.n * abs(b.observed_rate - b.mean_probability) for b in bins if b.n) / y.size) \
        if y.size else float("nan")
    return Calibration(brier, ece, n_bins, bins)


def fit_temperature(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray) -> float:
    """Temperature T > 0 minimising the log-loss of sigmoid(logit(p) / T) on these (validation) cases."""
    y = _as_labels(labels).astype(np.float64)
    z = logit(np.clip(_as_scores(probabilities, y.size, "probabilities"), _EPS, 1 - _EPS))

    def negative_log_likelihood(log_t: float) -> float:
        q = np.clip(expit(z / np.exp(log_t)), _EPS, 1 - _EPS)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    # Search log T so that T stays positive; [-5, 5] spans T from 0.007 to 148.
    result = optimize.minimize_scalar(negative_log_likelihood, bounds=(-5.0, 5.0), method="bounded")
    return float(np.exp(result.x))


def apply_temperature(probabilities: Sequence[float] | np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities by a fitted temperature (monotone: AUC and rankings do not change)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1 - _EPS)
    return expit(logit(p) / temperature)
