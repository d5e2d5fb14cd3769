"""Statistics for diagnostic accuracy: DeLong AUC variance and tests, Wilson intervals, chi-square, McNemar, bootstrap.

DeLong's method is written here (no maintained Python library provides it); it follows the fast midrank algorithm
of Sun & Xu (2014, IEEE Signal Process. Lett. 21:1389), which gives the same numbers as DeLong et al. (1988) and
as R's pROC. Everything else wraps scipy / statsmodels.

Degenerate inputs (one class, fewer than two cases of a class, zero variance) do not raise: the result carries NaN
and a `reason` saying why, so a subgroup table can show it and go on. Malformed inputs (labels not 0/1, scores
not finite, lengths that differ) raise PredictionsError naming the input.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..errors import PredictionsError


class _LazyScipyStats:
    """scipy.stats, imported on first use: `bonescan predict` reads operating points through this package and
    must not pay scipy's import (about a second) for it."""

    def __getattr__(self, name: str):
        from scipy import stats

        return getattr(stats, name)


sstats = _LazyScipyStats()

NAN = float("nan")


# ----------------------------------------------------------------------------------------------------------------
# Input checks


def _as_labels(labels: Sequence[int] | np.ndarray, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise PredictionsError(name, f"expected a 1-D sequence of 0/1 labels, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1, True, False)).all():
        bad = sorted({str(v) for v in arr[~np.isin(arr, (0, 1, True, False))]})[:5]
        raise PredictionsError(name, f"labels must be 0 or 1, found {', '.join(bad)}")
    return arr.astype(np.int8)


def _as_scores(scores: Sequence[float] | np.ndarray, n: int, name: str = "scores") -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.shape != (n,):
        raise PredictionsError(name, f"expected {n} scores (one per label), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise PredictionsError(name, f"{int((~np.isfinite(arr)).sum())} score(s) are NaN or infinite")
    return arr


def _class_count_reason(n_pos: int, n_neg: int) -> str | None:
    """Why an AUC variance cannot be estimated from these class sizes (None when it can)."""
    if n_pos == 0 or n_neg == 0:
        which = "positive" if n_pos == 0 else "negative"
        return f"no {which} cases: AUC is undefined with one class"
    if n_pos < 2 or n_neg < 2:
        return f"DeLong variance needs at least 2 cases per class (positives {n_pos}, negatives {n_neg})"
    return None


# ----------------------------------------------------------------------------------------------------------------
# DeLong (fast midrank algorithm)


@dataclass
class DelongComponents:
    """AUCs and DeLong structural components for k score sets on the same cases."""

    aucs: np.ndarray  # (k,)
    positive_placements: np.ndarray  # (k, m): share of negatives ranked below each positive (ties count 1/2)
    negative_placements: np.ndarray  # (k, n): share of positives ranked above each negative (ties count 1/2)

    @property
    def covariance(self) -> np.ndarray:
        """DeLong covariance matrix of the k AUCs: S10/m + S01/n."""
        m = self.positive_placements.shape[1]
        n = self.negative_placements.shape[1]
        s10 = np.atleast_2d(np.cov(self.positive_placements, ddof=1))
        s01 = np.atleast_2d(np.cov(self.negative_placements, ddof=1))
        return s10 / m + s01 / n


def delong_components(labels: np.ndarray, score_sets: np.ndarray) -> DelongComponents:
    """Placements and AUCs of each row of `score_sets` (k x N) against 0/1 `labels`, by midranks (Sun & Xu 2014)."""
    score_sets = np.atleast_2d(score_sets)
    positives = score_sets[:, labels == 1]
    negatives = score_sets[:, labels == 0]
    m, n = positives.shape[1], negatives.shape[1]
    rank_pos = sstats.rankdata(positives, axis=1)  # midranks within positives
    rank_neg = sstats.rankdata(negatives, axis=1)  # midranks within negatives
    rank_all = sstats.rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    aucs = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    positive_placements = (rank_all[:, :m] - rank_pos) / n
    negative_placements = 1.0 - (rank_all[:, m:] - rank_neg) / m
    return DelongComponents(aucs, positive_placements, negative_placements)


@dataclass
class AucEstimate:
    """An AUC with its DeLong variance and confidence interval; NaN fields come with a `reason`."""

    auc: float
    variance: float
    se: float
    ci_low: float
    ci_high: float
    n: int
    n_pos: int
    n_neg: int
    method: str = "DeLong"
    confidence: float = 0.95
    reason: str | None = None

    def as_dict(self) -> dict:
        """JSON-ready dict (NaN becomes None)."""
        return clean_for_json(asdict(self))


def _normal_ci(estimate: float, variance: float, confidence: float) -> tuple[float, float]:
    half = sstats.norm.ppf(0.5 + confidence / 2.0) * math.sqrt(variance)
    # An AUC lives in [0, 1]; pROC truncates the interval the same way.
    return float(max(0.0, estimate - half)), float(min(1.0, estimate + half))


def delong_auc(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> AucEstimate:
    """AUC of `scores` for 0/1 `labels` with DeLong's variance and a normal-approximation CI."""
    y = _as_labels(labels)
    s = _as_scores(scores, y.size)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    reason = _class_count_reason(n_pos, n_neg)
    if n_pos == 0 or n_neg == 0:
        return AucEstimate(NAN, NAN, NAN, NAN, NAN, int(y.size), n_pos, n_neg, confidence=confidence, reason=reason)
    comps = delong_components(y, s)
    auc = float(comps.aucs[0])
    if reason is not None:  # AUC is defined, its variance is not
        return AucEstimate(auc, NAN, NAN, NAN, NAN, int(y.size), n_pos, n_neg, confidence=confidence, reason=reason)
    variance = float(comps.covariance[0, 0])
    lo, hi = _normal_ci(auc, variance, confidence)
    if variance == 0.0:
        reason = (
            "all scores tied: AUC 0.5 with zero variance" if np.ptp(s) == 0 else
            "zero DeLong variance (classes perfectly separated): the interval has no width"
        )
    return AucEstimate(auc, variance, math.sqrt(variance), lo, hi, int(y.size), n_pos, n_neg,
                       confidence=confidence, reason=reason)


@dataclass
class AucComparison:
    """A test of AUC1 = AUC2; `statistic` is z (paired) or D (unpaired), as in pROC's roc.test."""

    auc1: float
    auc2: float
    difference: float
    se_difference: float
    statistic: float
    p_value: float
    ci_low: float
    ci_high: float
    paired: bool
    alternative: str = "two-sided"
    method: str = "DeLong"
    df: float | None = None  # degrees of freedom of the t reference (unpaired test); None: standard normal
    reason: str | None = None

    def as_dict(self) -> dict:
        """JSON-ready dict (NaN becomes None)."""
        return clean_for_json(asdict(self))


def _p_value(statistic: float, alternative: str, df: float | None = None) -> float:
    """P-value of a z statistic (df None) or of a Student t statistic with `df` degrees of freedom."""
    dist = sstats.norm if df is None else sstats.t(df)
    if alternative == "two-sided":
        return float(2.0 * dist.sf(abs(statistic)))
    if alternative == "greater":
        return float(dist.sf(statistic))
    if alternative == "less":
        return float(dist.cdf(statistic))
    raise PredictionsError("alternative", f"must be two-sided, greater or less, not {alternative!r}")


def _comparison(auc1: float, auc2: float, var_diff: float, paired: bool, alternative: str,
                confidence: float, df: float | None = None) -> AucComparison:
    diff = auc1 - auc2
    if alternative not in ("two-sided", "greater", "less"):
        raise PredictionsError("alternative", f"must be two-sided, greater or less, not {alternative!r}")
    if not math.isfinite(var_diff):
        return AucComparison(auc1, auc2, diff, NAN, NAN, NAN, NAN, NAN, paired, alternative,
                             reason="variance of an AUC is undefined (see the subgroup's reason)")
    if var_diff <= 0.0:
        if diff == 0.0:  # identical curves: nothing to test (pROC reports Z = 0, p = 1)
            return AucComparison(auc1, auc2, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, paired, alternative, df=df,
                                 reason="identical AUCs with zero variance of the difference")
        return AucComparison(auc1, auc2, diff, 0.0, NAN, NAN, NAN, NAN, paired, alternative, df=df,
                             reason="zero variance of the difference: the test is undefined")
    se = math.sqrt(var_diff)
    statistic = diff / se
    quantile = (sstats.norm if df is None else sstats.t(df)).ppf(0.5 + confidence / 2.0)
    return AucComparison(auc1, auc2, diff, se, statistic, _p_value(statistic, alternative, df),
                         float(diff - quantile * se), float(diff + quantile * se), paired, alternative, df=df)


def delong_paired_test(
    labels: Sequence[int] | np.ndarray,
    scores1: Sequence[float] | np.ndarray,
    scores2: Sequence[float] | np.ndarray,
    alternative: str = "two-sided",
    confidence: float = 0.95,
) -> AucComparison:
    """DeLong's test of two correlated AUCs: two score sets on the same cases (e.g. two models)."""
    y = _as_labels(labels)
    s1 = _as_scores(scores1, y.size, "scores1")
    s2 = _as_scores(scores2, y.size, "scores2")
    reason = _class_count_reason(int(y.sum()), int(y.size - y.sum()))
    if reason is not None:
        return AucComparison(NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, True, alternative, reason=reason)
    comps = delong_components(y, np.vstack([s1, s2]))
    cov = comps.covariance
    var_diff = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    return _comparison(float(comps.aucs[0]), float(comps.aucs[1]), var_diff, True, alternative, confidence)


def delong_unpaired_test(
    labels1: Sequence[int] | np.ndarray,
    scores1: Sequence[float] | np.ndarray,
    labels2: Sequence[int] | np.ndarray,
    scores2: Sequence[float] | np.ndarray,
    alternative: str = "two-sided",
    confidence: float = 0.95,
) -> AucComparison:
    """Test of two AUCs from independent groups (e.g. age < 60 vs >= 60): D = (A1 - A2) / sqrt(V1 + V2).

    As in pROC's roc.test(paired=FALSE), D is referred to a t distribution with Welch-Satterthwaite degrees of
    freedom (V1 + V2)^2 / (V1^2 / (N1 - 1) + V2^2 / (N2 - 1)), N the cases in each group; for large groups
    this is the normal z test.
    """
    first = delong_auc(labels1, scores1, confidence)
    second = delong_auc(labels2, scores2, confidence)
    for name, est in (("first group", first), ("second group", second)):
        if not math.isfinite(est.variance):
            return AucComparison(first.auc, second.auc, first.auc - second.auc, NAN, NAN, NAN, NAN, NAN, False,
                                 alternative, reason=f"{name}: {est.reason}")
    v1, v2 = first.variance, second.variance
    denominator = v1**2 / (first.n - 1) + v2**2 / (second.n - 1)
    df = (v1 + v2) ** 2 / denominator if denominator > 0 else None
    return _comparison(first.auc, second.auc, v1 + v2, False, alternative, confidence, df)


# ----------------------------------------------------------------------------------------------------------------
# Proportions


@dataclass
class Proportion:
    """x of n with a Wilson score interval; `value` and the interval are NaN when n = 0."""

    x: int
    n: int
    value: float
    ci_low: float
    ci_high: float
    method: str = "Wilson"
    reason: str | None = None

    def as_dict(self) -> dict:
        """JSON-ready dict (NaN becomes None)."""
        return clean_for_json(asdict(self))

    def text(self, digits: int = 1) -> str:
        """e.g. '93.4% (247/265; 90.0-95.6)'."""
        if self.n == 0:
            return "n/a (0/0)"
        return (f"{100 * self.value:.{digits}f}% ({self.x}/{self.n}; "
                f"{100 * self.ci_low:.{digits}f}-{100 * self.ci_high:.{digits}f})")


def wilson_interval(x: int, n: int, confidence: float = 0.95) -> Proportion:
    """Proportion x/n with its Wilson score interval (statsmodels)."""
    from statsmodels.stats.proportion import proportion_confint

    x, n = int(x), int(n)
    if n < 0 or x < 0 or x > n:
        raise PredictionsError("proportion", f"need 0 <= x <= n, got x={x}, n={n}")
    if n == 0:
        return Proportion(0, 0, NAN, NAN, NAN, reason="no cases in the denominator")
    lo, hi = proportion_confint(x, n, alpha=1.0 - confidence, method="wilson")
    return Proportion(x, n, x / n, float(lo), float(hi))


# ----------------------------------------------------------------------------------------------------------------
# Contingency tests


@dataclass
class ChiSquareResult:
    """Pearson chi-square test of homogeneity of a proportion across groups."""

    statistic: float
    dof: int
    p_value: float
    groups: list[str]
    table: list[list[int]]  # per group: [successes, failures]
    min_expected: float
    reason: str | None = None

    def as_dict(self) -> dict:
        """JSON-ready dict (NaN becomes None)."""
        return clean_for_json(asdict(self))


def chi_square_homogeneity(groups: Sequence[str], successes: Sequence[int], totals: Sequence[int]) -> ChiSquareResult:
    """Pearson chi-square (no continuity correction, as SPSS's 'Pearson Chi-Square') of x/n across groups."""
    table = [[int(x), int(n) - int(x)] for x, n in zip(successes, totals)]
    keep = [i for i, row in enumerate(table) if sum(row) > 0]
    names = [str(groups[i]) for i in keep]
    kept = np.array([table[i] for i in keep], dtype=np.int64).reshape(-1, 2)
    if kept.shape[0] < 2:
        return ChiSquareResult(NAN, 0, NAN, names, kept.tolist(), NAN, reason="fewer than two groups with cases")
    if (kept.sum(axis=0) == 0).any():
        return ChiSquareResult(NAN, 0, NAN, names, kept.tolist(), NAN,
                               reason="the proportion is 0 or 1 in every group: nothing to compare")
    stat, p, dof, expected = sstats.chi2_contingency(kept, correction=False)
    min_expected = float(expected.min())
    reason = (f"smallest expected count {min_expected:.1f} < 5: the chi-square approximation is doubtful"
              if min_expected < 5 else None)
    return ChiSquareResult(float(stat), int(dof), float(p), names, kept.tolist(), min_expected, reason)


@dataclass
class McNemarResult:
    """McNemar's test on paired correct/incorrect decisions of two readers or models."""

    both_correct: int
    only_first_correct: int
    only_second_correct: int
    both_wrong: int
    statistic: float
    p_value: float
    exact: bool

    def as_dict(self) -> dict:
        """JSON-ready dict (NaN becomes None)."""
        return clean_for_json(asdict(self))


def mcnemar_test(correct1: Sequence[bool], correct2: Sequence[bool], exact: bool | None = None) -> McNemarResult:
    """McNemar's test (statsmodels): exact binomial when fewer than 25 discordant pairs (or `exact`), else chi-square."""
    from statsmodels.stats.contingency_tables import mcnemar

    a = np.asarray(correct1, dtype=bool)
    b = np.asarray(correct2, dtype=bool)
    if a.shape != b.shape:
        raise PredictionsError("mcnemar", f"paired decisions differ in length: {a.size} vs {b.size}")
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    if exact is None:
        exact = int(table[0, 1] + table[1, 0]) < 25
    result = mcnemar(table, exact=exact, correction=True)
    return McNemarResult(int(table[0, 0]), int(table[0, 1]), int(table[1, 0]), int(table[1, 1]),
                         float(result.statistic), float(result.pvalue), exact)


# ----------------------------------------------------------------------------------------------------------------
# Two models on the same cases


@dataclass
class ModelComparison:
    """Paired DeLong test of the AUCs and, at a threshold, McNemar's test of accuracy."""

    delong: AucComparison
    threshold: float | None = None
    mcnemar: McNemarResult | None = None

    def as_dict(self) -> dict:
        """JSON-ready dict."""
        return {"delong": self.delong.as_dict(), "threshold": self.threshold,
                "mcnemar": self.mcnemar.as_dict() if self.mcnemar else None}


def compare_models(
    labels: Sequence[int] | np.ndarray,
    probabilities1: Sequence[float] | np.ndarray,
    probabilities2: Sequence[float] | np.ndarray,
    threshold: float | None = None,
    threshold2: float | None = None,
) -> ModelComparison:
    """Compare two models on the same cases: paired DeLong on AUC, plus McNemar on accuracy if a threshold is given."""
    result = ModelComparison(delong_paired_test(labels, probabilities1, probabilities2))
    if threshold is not None:
        y = _as_labels(labels)
        p1 = _as_scores(probabilities1, y.size, "probabilities1")
        p2 = _as_scores(probabilities2, y.size, "probabilities2")
        t2 = threshold if threshold2 is None else threshold2
        result.threshold = float(threshold)
        result.mcnemar = mcnemar_test((p1 >= threshold) == (y == 1), (p2 >= t2) == (y == 1))
    return result


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap


def fast_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC by midranks (NaN with one class); equals sklearn's roc_auc_score."""
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return NAN
    ranks = sstats.rankdata(scores)
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass
class BootstrapInterval:
    """Percentile bootstrap interval of a statistic, resampling patients (clusters) with replacement."""

    estimate: float
    ci_low: float
    ci_high: float
    n_boot: int
    n_valid: int
    seed: int
    unit: str
    confidence: float = 0.95
    reason: str | None = None

    def as_dict(self) -> dict:
        """JSON-ready dict (NaN becomes None)."""
        return clean_for_json(asdict(self))


def bootstrap_ci(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    statistic=fast_auc,
    patient_ids: Sequence | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapInterval:
    """Percentile CI of `statistic(labels, scores)` resampling patients (all of a patient's studies together)."""
    y = _as_labels(labels)
    s = _as_scores(scores, y.size)
    if n_boot < 1:
        raise PredictionsError("n_boot", f"need at least one bootstrap resample, got {n_boot}")
    estimate = float(statistic(y, s))
    if patient_ids is None:
        groups = np.arange(y.size)
        unit = "case"
    else:
        _, groups = np.unique(np.asarray(patient_ids).astype(str), return_inverse=True)
        unit = "patient"
    n_groups = int(groups.max()) + 1 if groups.size else 0
    if n_groups < 2:
        return BootstrapInterval(estimate, NAN, NAN, n_boot, 0, seed, unit, confidence,
                                 reason="fewer than two patients to resample")
    # Cases sorted by patient: patient g owns order[starts[g] : starts[g] + sizes[g]].
    order = np.argsort(groups, kind="stable")
    sizes = np.bincount(groups, minlength=n_groups)
    starts = np.cumsum(sizes) - sizes
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(0, n_groups, n_groups)
        lengths = sizes[picked]
        # positions of every case of every picked patient, without a Python loop over patients
        shift = np.repeat(starts[picked] - (np.cumsum(lengths) - lengths), lengths)
        idx = order[shift + np.arange(lengths.sum())]
        values[b] = statistic(y[idx], s[idx])
    valid = values[np.isfinite(values)]
    if valid.size < max(10, n_boot // 2):
        return BootstrapInterval(estimate, NAN, NAN, n_boot, int(valid.size), seed, unit, confidence,
                                 reason=f"only {valid.size} of {n_boot} resamples had both classes")
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(valid, [tail, 100.0 - tail])
    return BootstrapInterval(estimate, float(lo), float(hi), n_boot, int(valid.size), seed, unit, confidence)


# ----------------------------------------------------------------------------------------------------------------


def clean_for_json(value):
    """Recursively replace NaN/inf by None and numpy scalars by Python ones, so json.dumps writes valid JSON."""
    if isinstance(value, dict):
        return {str(k): clean_for_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_for_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return [clean_for_json(v) for v in value.tolist()]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value
