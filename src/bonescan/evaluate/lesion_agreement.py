"""Agreement of lesion readings with truth: Dice per skeletal region, BSI agreement, lesion-count agreement.

Plain functions of arrays. Definitions:

- **Dice per region** (Dice 1945): 2 |P & T| / (|P| + |T|) over both views of a study together (the two views are
  pooled, so a region is scored once per study). A region absent from truth and prediction is not scored (NaN),
  one absent from truth but predicted scores 0 (nnU-Net's convention, Isensee et al., Nat Methods 2021). The
  cohort figure is the mean over the studies in which the region is scored.
- **BSI agreement**: Pearson r with its Fisher-z confidence interval (scipy); Bland-Altman (Lancet 1986): bias =
  mean(predicted - truth), limits of agreement = bias +/- 1.96 SD of the differences (ddof 1), the bias with a
  t interval.
- **Lesion-count agreement**: per study, predicted malignant hotspots against truth metastases: mean difference,
  mean absolute difference, share of studies with the exact count, the intraclass correlation ICC(A,1) (two-way,
  absolute agreement, single measures; McGraw & Wong, Psychol Methods 1996, case A) and Cohen's quadratic-weighted
  kappa on count classes 0, 1, 2, 3-5, >= 6 (capped so one study with 40 lesions does not dominate the weights).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..errors import PredictionsError
from ..lesions.regions import REGIONS
from .stats import clean_for_json, sstats

NAN = float("nan")
COUNT_CLASSES = ((0, 0, "0"), (1, 1, "1"), (2, 2, "2"), (3, 5, "3-5"), (6, None, ">=6"))


def region_dice(predicted: np.ndarray, truth: np.ndarray, labels: Sequence[int] | None = None) -> np.ndarray:
    """Dice of each label over all views of one study ([V, H, W] label maps); NaN where both are empty."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise PredictionsError("regions", f"predicted {predicted.shape} and truth {truth.shape} differ in shape")
    labels = np.asarray([r.label for r in REGIONS] if labels is None else list(labels), dtype=np.int64)
    # one joint histogram of (predicted, truth) labels gives every region's overlap and sizes in a single pass
    size = int(max(predicted.max(initial=0), truth.max(initial=0), labels.max(initial=0))) + 1
    joint = np.bincount(predicted.astype(np.int64).ravel() * size + truth.astype(np.int64).ravel(),
                        minlength=size * size).reshape(size, size)
    overlap = np.diagonal(joint)[labels]
    total = joint.sum(axis=1)[labels] + joint.sum(axis=0)[labels]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * overlap / total, NAN)


@dataclass
class BsiAgreement:
    """Predicted BSI against truth BSI over studies."""

    n: int
    pearson_r: float
    r_ci_low: float
    r_ci_high: float
    bias: float
    bias_ci_low: float
    bias_ci_high: float
    sd_difference: float
    loa_low: float
    loa_high: float
    confidence: float = 0.95
    reason: str | None = None

    def as_dict(self) -> dict:
        """JSON-ready dict (NaN becomes None)."""
        return clean_for_json(asdict(self))


def bsi_agreement(predicted: Sequence[float], truth: Sequence[float], confidence: float = 0.95) -> BsiAgreement:
    """Pearson r (Fisher-z CI) and Bland-Altman bias and 95 % limits of agreement of predicted vs truth BSI."""
    p, t = _paired(predicted, truth, "BSI")
    n = p.size
    if n < 3:
        return BsiAgreement(n, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, confidence,
                            reason=f"{n} studies: agreement needs at least 3")
    difference = p - t
    bias = float(difference.mean())
    sd = float(difference.std(ddof=1))
    half = float(sstats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n)
    reason = None
    r = lo = hi = NAN
    if np.ptp(p) == 0 or np.ptp(t) == 0:
        reason = "BSI constant in one of the readings: Pearson r undefined"
    else:
        result = sstats.pearsonr(p, t)
        r = float(result.statistic)
        interval = result.confidence_interval(confidence_level=confidence)
        lo, hi = float(interval.low), float(interval.high)
    return BsiAgreement(n, r, lo, hi, bias, bias - half, bias + half, sd, bias - 1.96 * sd, bias + 1.96 * sd,
                        confidence, reason)


@dataclass
class CountAgreement:
    """Predicted malignant-hotspot counts against truth metastasis counts over studies."""

    n: int
    mean_difference: float
    mean_absolute_difference: float
    exact_share: float
    icc: float
    weighted_kappa: float
    confusion: list[list[int]]  # truth class (rows) x predicted class (columns), COUNT_CLASSES order
    classes: list[str]
    reason: str | None = None

    def as_dict(self) -> dict:
        """JSON-ready dict (NaN becomes None)."""
        return clean_for_json(asdict(self))


def count_class(counts: Sequence[int]) -> np.ndarray:
    """Index in COUNT_CLASSES of each count."""
    counts = np.asarray(counts, dtype=np.int64)
    out = np.zeros(counts.size, dtype=np.int64)
    for k, (low, _high, _name) in enumerate(COUNT_CLASSES):
        out[counts >= low] = k
    return out


def icc_absolute_agreement(ratings: np.ndarray) -> float:
    """ICC(A,1) of an [n subjects, k raters] table: two-way model, absolute agreement, single measures."""
    x = np.asarray(ratings, dtype=np.float64)
    n, k = x.shape
    if n < 2 or k < 2:
        return NAN
    grand = x.mean()
    ms_rows = k * ((x.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    ms_cols = n * ((x.mean(axis=0) - grand) ** 2).sum() / (k - 1)
    ss_error = ((x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + grand) ** 2).sum()
    ms_error = ss_error / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n
    return float((ms_rows - ms_error) / denominator) if denominator > 0 else NAN


def count_agreement(predicted: Sequence[int], truth: Sequence[int]) -> CountAgreement:
    """Agreement of per-study lesion counts: differences, exact share, ICC(A,1), quadratic-weighted kappa."""
    from sklearn.metrics import cohen_kappa_score

    p, t = _paired(predicted, truth, "lesion counts")
    names = [name for _low, _high, name in COUNT_CLASSES]
    if p.size == 0:
        return CountAgreement(0, NAN, NAN, NAN, NAN, NAN, [], names, reason="no studies")
    pc, tc = count_class(p), count_class(t)
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (tc, pc), 1)
    reason = None
    if np.unique(np.concatenate([pc, tc])).size < 2:
        kappa = NAN
        reason = "every count falls in one class: kappa undefined"
    else:
        kappa = float(cohen_kappa_score(tc, pc, weights="quadratic", labels=list(range(len(names)))))
    difference = p - t
    return CountAgreement(int(p.size), float(difference.mean()), float(np.abs(difference).mean()),
                          float((difference == 0).mean()), icc_absolute_agreement(np.stack([t, p], axis=1)),
                          kappa, confusion.tolist(), names, reason)


def _paired(predicted: Sequence[float], truth: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    t = np.asarray(truth, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise PredictionsError(what, f"{p.size} predicted values for {t.size} truth values")
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise PredictionsError(what, "values must be finite")
    return p, t
