"""Statistics of bonescan.evaluate checked against published reference values and independent computations.

Reference values:
- pROC (Robin et al., BMC Bioinformatics 2011;12:77) on its `aSAH` data set (Turck et al., Intensive Care Med
  2010;36:107-115; 113 patients, 41 poor outcomes): AUCs, DeLong variances (pROC tests/testthat/test-var.R),
  ci.auc of s100b "95% CI: 0.6301-0.8326 (DeLong)" (pROC documentation), roc.test paired and unpaired
  statistics, p-values and CIs (pROC tests/testthat/test-roc.test.R).
- Newcombe (Stat Med 1998;17:857-872), Table I: Wilson score intervals for 81/263, 15/148, 0/20, 1/29, 29/29.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sstats
from sklearn.metrics import brier_score_loss, roc_auc_score

from bonescan.errors import PredictionsError
from bonescan.evaluate.calibration import apply_temperature, calibration_summary, fit_temperature
from bonescan.evaluate.operating_points import choose_operating_points, confusion_counts, roc_points
from bonescan.evaluate.stats import (
    bootstrap_ci,
    chi_square_homogeneity,
    compare_models,
    delong_auc,
    delong_components,
    delong_paired_test,
    delong_unpaired_test,
    fast_auc,
    mcnemar_test,
    wilson_interval,
)

# aSAH: outcome (P = poor = positive, G = good), wfns (1-5), s100b, ndka; rows in the data set's order.
ASAH = """
G 1 0.13 3.01|G 1 0.14 8.54|G 1 0.10 8.09|G 1 0.04 10.42|P 3 0.13 17.40|P 2 0.10 12.75|G 5 0.47 6.00|P 4 0.16 13.20
G 1 0.18 15.54|G 2 0.10 6.01|P 5 0.12 15.96|G 2 0.10 17.86|P 5 0.44 5.18|P 5 0.71 8.90|G 1 0.04 13.41|G 2 0.08 20.75
P 5 0.49 11.60|G 2 0.04 16.11|P 2 0.07 32.37|P 5 0.33 54.82|P 2 0.09 32.41|G 1 0.09 49.94|P 1 0.07 40.34|G 1 0.11 9.47
G 1 0.07 6.29|G 2 0.17 12.53|G 1 0.07 6.54|G 2 0.11 6.30|G 1 0.13 80.30|G 1 0.19 12.80|G 3 0.05 9.80|G 4 0.16 9.81
P 2 0.41 9.85|G 1 0.14 18.21|G 4 0.34 5.03|P 5 0.35 14.04|P 4 0.48 21.93|G 1 0.09 8.02|P 4 0.96 7.42|P 2 0.25 8.38
G 5 0.50 6.59|G 5 0.46 9.63|G 1 0.16 13.12|G 1 0.07 7.96|G 2 0.43 14.34|G 4 0.45 41.43|G 1 0.11 7.63|G 1 0.08 7.06
G 2 0.09 12.59|P 5 0.86 13.56|P 5 0.52 3.87|G 2 0.08 9.44|G 1 0.06 7.66|G 2 0.13 12.98|P 5 2.07 419.19|G 1 0.10 27.19
G 2 0.14 22.27|G 2 0.15 9.95|P 2 0.07 21.22|G 1 0.06 11.73|P 5 0.77 10.40|G 1 0.05 58.83|G 1 0.09 6.39|P 2 0.30 11.09
P 5 0.03 12.22|P 2 0.09 13.67|G 1 0.04 17.21|P 4 0.23 22.63|P 5 0.70 12.90|G 2 0.09 9.70|P 4 0.27 21.57|P 4 0.71 8.23
P 1 0.08 72.57|P 4 0.26 15.54|G 1 0.08 10.51|G 2 0.16 10.60|G 1 0.09 14.57|P 4 0.13 5.19|P 2 0.10 9.63|G 1 0.08 4.61
P 2 0.11 21.48|G 3 0.33 17.30|G 2 0.11 12.71|G 4 0.28 9.44|G 2 0.07 11.07|G 1 0.10 19.46|G 4 0.32 10.83|P 5 0.22 5.37
G 1 0.07 11.97|G 1 0.05 7.75|G 5 0.24 9.83|G 4 0.38 10.55|G 2 0.10 28.49|G 2 0.15 8.53|G 1 0.08 12.57|G 1 0.14 12.90
G 1 0.10 46.83|G 3 0.07 11.68|G 1 0.04 12.67|G 2 0.19 9.01|P 5 0.56 9.57|P 2 0.14 34.06|P 2 0.58 11.72|P 5 0.32 14.26
P 5 0.82 47.61|P 5 0.74 11.67|G 2 0.15 24.58|G 4 0.47 10.33|G 4 0.17 13.87|P 5 0.44 15.89|G 1 0.15 22.43|G 1 0.50 6.79
G 1 0.48 13.45
"""


def _asah() -> dict[str, np.ndarray]:
    rows = [r.split() for r in ASAH.replace("\n", "|").split("|") if r.strip()]
    return {
        "outcome": np.array([r[0] == "P" for r in rows], dtype=int),
        "wfns": np.array([float(r[1]) for r in rows]),
        "s100b": np.array([float(r[2]) for r in rows]),
        "ndka": np.array([float(r[3]) for r in rows]),
    }


ASAH_DATA = _asah()


def test_asah_table_is_complete():
    assert ASAH_DATA["outcome"].size == 113
    assert ASAH_DATA["outcome"].sum() == 41


# ---------------------------------------------------------------------------------------------------- DeLong / pROC


@pytest.mark.parametrize("marker, auc, variance", [
    ("wfns", 0.823678861788618, 0.00146991470882363),
    ("ndka", 0.611957994579946, 0.0031908105493913),
    ("s100b", 0.731368563685637, 0.00266868245717244),
])
def test_delong_auc_and_variance_match_proc(marker, auc, variance):
    est = delong_auc(ASAH_DATA["outcome"], ASAH_DATA[marker])
    assert est.auc == pytest.approx(auc, rel=1e-12)
    assert est.variance == pytest.approx(variance, rel=1e-10)
    assert (est.n, est.n_pos, est.n_neg) == (113, 41, 72)
    assert est.reason is None


def test_delong_ci_matches_proc_ci_auc():
    s100b = delong_auc(ASAH_DATA["outcome"], ASAH_DATA["s100b"])
    assert (round(s100b.ci_low, 4), round(s100b.ci_high, 4)) == (0.6301, 0.8326)
    ndka = delong_auc(ASAH_DATA["outcome"], ASAH_DATA["ndka"])
    assert ndka.ci_low == pytest.approx(0.501244999271703, rel=1e-10)
    assert ndka.ci_high == pytest.approx(0.722670989888189, rel=1e-10)


def test_delong_placements_match_proc_for_s100b():
    # pROC's delongPlacements for s100b (tests/testthat/helper-deLongPlacementsCpp-expected.R), first values.
    comps = delong_components(ASAH_DATA["outcome"], ASAH_DATA["s100b"])
    assert comps.positive_placements[0, :4] == pytest.approx([0.5625, 0.4375, 0.715277777777778, 0.541666666666667])
    assert comps.negative_placements[0, :4] == pytest.approx(
        [0.707317073170732, 0.670731707317073, 0.804878048780488, 0.975609756097561])


@pytest.mark.parametrize("first, second, z, p, lo, hi", [
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, 0.0104061769564846, 0.174214419249478),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, 0.0634011709339876, 0.3600405634833566),
    ("ndka", "s100b", -1.39077002573558, 0.164295175223054, -0.2876917446341914, 0.0488706064228094),
])
def test_paired_delong_test_matches_proc_roc_test(first, second, z, p, lo, hi):
    result = delong_paired_test(ASAH_DATA["outcome"], ASAH_DATA[first], ASAH_DATA[second])
    assert result.statistic == pytest.approx(z, rel=1e-10)
    assert result.p_value == pytest.approx(p, rel=1e-10)
    assert (result.ci_low, result.ci_high) == pytest.approx((lo, hi), rel=1e-10)
    swapped = delong_paired_test(ASAH_DATA["outcome"], ASAH_DATA[second], ASAH_DATA[first])
    assert swapped.statistic == pytest.approx(-z, rel=1e-10)
    assert swapped.p_value == pytest.approx(p, rel=1e-10)


def test_one_sided_paired_and_unpaired_p_values_match_proc():
    y, w, s = ASAH_DATA["outcome"], ASAH_DATA["wfns"], ASAH_DATA["s100b"]
    assert delong_paired_test(y, w, s, alternative="greater").p_value == pytest.approx(0.0135878911145941, rel=1e-10)
    assert delong_paired_test(y, w, s, alternative="less").p_value == pytest.approx(0.986412108885406, rel=1e-10)
    assert delong_unpaired_test(y, w, y, s, alternative="greater").p_value == pytest.approx(0.076412689404398,
                                                                                         rel=1e-10)


@pytest.mark.parametrize("first, second, d, p", [
    ("wfns", "s100b", 1.43490640926908, 0.152825378808796),
    ("wfns", "ndka", 3.10125096778969, 0.00220950791756457),
    ("ndka", "s100b", -1.55995743389685, 0.120192832430845),
])
def test_unpaired_delong_test_matches_proc(first, second, d, p):
    y = ASAH_DATA["outcome"]
    result = delong_unpaired_test(y, ASAH_DATA[first], y, ASAH_DATA[second])
    assert result.statistic == pytest.approx(d, rel=1e-10)
    assert result.p_value == pytest.approx(p, rel=1e-10)
    assert not result.paired


def test_identical_curves_give_z_zero_p_one():
    result = delong_paired_test(ASAH_DATA["outcome"], ASAH_DATA["wfns"], ASAH_DATA["wfns"])
    assert (result.statistic, result.p_value) == (0.0, 1.0)


def _brute_force_delong(y, s1, s2):
    """DeLong 1988 by its definition: psi kernel over every positive-negative pair, explicit loops."""
    def psi(a, b):
        return 1.0 if a > b else 0.5 if a == b else 0.0

    pos = [i for i in range(len(y)) if y[i] == 1]
    neg = [i for i in range(len(y)) if y[i] == 0]
    v10 = np.array([[np.mean([psi(s[i], s[j]) for j in neg]) for i in pos] for s in (s1, s2)])
    v01 = np.array([[np.mean([psi(s[i], s[j]) for i in pos]) for j in neg] for s in (s1, s2)])
    cov = np.cov(v10) / len(pos) + np.cov(v01) / len(neg)
    return v10.mean(axis=1), cov


def test_fast_delong_equals_definition_with_ties():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 60)
    s1 = np.round(rng.normal(size=60) + y, 1)  # rounding makes ties
    s2 = np.round(0.5 * s1 + rng.normal(size=60), 1)
    aucs, cov = _brute_force_delong(y, s1, s2)
    assert delong_auc(y, s1).auc == pytest.approx(aucs[0], abs=1e-12)
    assert delong_auc(y, s1).variance == pytest.approx(cov[0, 0], rel=1e-10)
    expected_z = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert delong_paired_test(y, s1, s2).statistic == pytest.approx(expected_z, rel=1e-10)


def test_auc_equals_sklearn():
    rng = np.random.default_rng(3)
    for n in (10, 57, 400):
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        s = np.round(rng.random(n) + 0.4 * y, 2)
        assert delong_auc(y, s).auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert fast_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_delong_variance_agrees_with_bootstrap_and_simulation():
    rng = np.random.default_rng(11)

    def sample():
        y = np.r_[np.ones(80, int), np.zeros(120, int)]
        return y, rng.normal(size=200) + 1.0 * y

    y, s = sample()
    delong_var = delong_auc(y, s).variance
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    boot = [fast_auc(y[idx], s[idx]) for idx in
            (np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)] for _ in range(1500))]
    assert np.var(boot, ddof=1) / delong_var == pytest.approx(1.0, abs=0.2)
    # Across fresh samples from the same binormal model, the AUC's spread matches the mean DeLong variance.
    draws = [sample() for _ in range(400)]
    spread = np.var([fast_auc(a, b) for a, b in draws], ddof=1)
    mean_var = np.mean([delong_auc(a, b).variance for a, b in draws[:100]])
    assert spread / mean_var == pytest.approx(1.0, abs=0.25)


# ---------------------------------------------------------------------------------------------------- degenerate


def test_one_class_gives_nan_with_reason():
    est = delong_auc([1, 1, 1], [0.2, 0.5, 0.9])
    assert math.isnan(est.auc) and math.isnan(est.variance)
    assert "no negative cases" in est.reason
    assert est.as_dict()["auc"] is None  # JSON-safe


def test_fewer_than_two_per_class_keeps_auc_but_not_variance():
    est = delong_auc([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.5])
    assert est.auc == 1.0
    assert math.isnan(est.variance) and math.isnan(est.ci_low)
    assert "at least 2 cases per class" in est.reason


def test_all_ties_give_half_with_zero_variance_and_reason():
    est = delong_auc([0, 1, 0, 1, 1], [0.3] * 5)
    assert est.auc == 0.5 and est.variance == 0.0
    assert "tied" in est.reason


def test_unpaired_test_with_degenerate_group_is_nan_with_reason():
    result = delong_unpaired_test([0, 1, 1, 0], [0.1, 0.8, 0.7, 0.3], [1, 1], [0.5, 0.6])
    assert math.isnan(result.statistic) and "second group" in result.reason


def test_paired_test_with_one_class_is_nan_with_reason():
    result = delong_paired_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    assert math.isnan(result.p_value) and "one class" in result.reason


@pytest.mark.parametrize("labels, scores, message", [
    ([0, 2, 1], [0.1, 0.2, 0.3], "0 or 1"),
    ([0, 1, 1], [0.1, float("nan"), 0.3], "NaN"),
    ([0, 1, 1], [0.1, 0.3], "expected 3 scores"),
])
def test_malformed_inputs_raise_a_named_error(labels, scores, message):
    with pytest.raises(PredictionsError, match=message):
        delong_auc(labels, scores)


# ---------------------------------------------------------------------------------------------------- proportions


@pytest.mark.parametrize("x, n, lo, hi", [
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0000, 0.1611), (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0000),
])
def test_wilson_matches_newcombe_1998(x, n, lo, hi):
    p = wilson_interval(x, n)
    assert (round(p.ci_low, 4), round(p.ci_high, 4)) == (lo, hi)


def test_wilson_matches_hand_computed_formula():
    x, n, z = 8, 10, 1.959963984540054
    centre = (x + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(x * (n - x) / n + z * z / 4)
    p = wilson_interval(x, n)
    assert (p.ci_low, p.ci_high) == pytest.approx((centre - half, centre + half), rel=1e-12)
    assert p.text() == "80.0% (8/10; 49.0-94.3)"


def test_wilson_empty_denominator_is_nan_with_reason():
    p = wilson_interval(0, 0)
    assert math.isnan(p.value) and p.reason and p.text() == "n/a (0/0)"
    with pytest.raises(PredictionsError):
        wilson_interval(5, 3)


def test_chi_square_is_pearson_without_continuity_correction():
    successes, totals = [30, 45, 12, 20], [40, 50, 20, 35]
    observed = np.array([[x, n - x] for x, n in zip(successes, totals)], dtype=float)
    expected = observed.sum(1, keepdims=True) * observed.sum(0, keepdims=True) / observed.sum()
    hand = ((observed - expected) ** 2 / expected).sum()
    result = chi_square_homogeneity(["lung", "prostate", "breast", "other"], successes, totals)
    assert result.statistic == pytest.approx(hand, rel=1e-12)
    assert result.dof == 3
    two = chi_square_homogeneity(["a", "b"], [30, 45], [40, 50])  # 2x2: still no Yates correction
    obs = np.array([[30, 10], [45, 5]], float)
    exp = obs.sum(1, keepdims=True) * obs.sum(0, keepdims=True) / obs.sum()
    assert two.statistic == pytest.approx(((obs - exp) ** 2 / exp).sum(), rel=1e-12)


def test_chi_square_degenerate_tables_give_reason():
    assert chi_square_homogeneity(["a"], [3], [5]).reason == "fewer than two groups with cases"
    assert "nothing to compare" in chi_square_homogeneity(["a", "b"], [5, 7], [5, 7]).reason
    small = chi_square_homogeneity(["a", "b"], [1, 3], [4, 6])
    assert "expected count" in small.reason and not math.isnan(small.statistic)


def test_mcnemar_matches_hand_computed_continuity_corrected_statistic():
    # Agresti's approval ratings: 794 both, 150 first only, 86 second only, 570 neither
    first = [True] * 794 + [True] * 150 + [False] * 86 + [False] * 570
    second = [True] * 794 + [False] * 150 + [True] * 86 + [False] * 570
    result = mcnemar_test(first, second)
    assert (result.only_first_correct, result.only_second_correct) == (150, 86)
    assert result.statistic == pytest.approx((abs(150 - 86) - 1) ** 2 / (150 + 86), rel=1e-12)
    assert not result.exact


def test_mcnemar_can_be_forced_exact_with_many_discordant_pairs():
    # 30 + 10 discordant pairs would get the chi-square form; exact=True gives the two-sided binomial p instead.
    first = [True] * 5 + [True] * 30 + [False] * 10 + [False] * 3
    second = [True] * 5 + [False] * 30 + [True] * 10 + [False] * 3
    result = mcnemar_test(first, second, exact=True)
    assert result.exact and result.p_value == pytest.approx(sstats.binomtest(10, 40, 0.5).pvalue, rel=1e-9)


def test_compare_models_combines_paired_delong_and_mcnemar():
    y = ASAH_DATA["outcome"]
    w = ASAH_DATA["wfns"] / 5.0
    s = np.clip(ASAH_DATA["s100b"], 0, 1)
    result = compare_models(y, w, s, threshold=0.5)
    assert result.delong.statistic == pytest.approx(delong_paired_test(y, w, s).statistic)
    correct_w = (w >= 0.5) == (y == 1)
    correct_s = (s >= 0.5) == (y == 1)
    assert result.mcnemar.only_first_correct == int(np.sum(correct_w & ~correct_s))
    assert result.as_dict()["threshold"] == 0.5


def test_patient_level_bootstrap_widens_ci_for_repeated_studies():
    rng = np.random.default_rng(5)
    y = np.r_[np.ones(30, int), np.zeros(40, int)]
    s = rng.normal(size=70) + 1.2 * y
    y2, s2 = np.repeat(y, 3), np.repeat(s, 3)  # three studies per patient
    patients = np.repeat(np.arange(70), 3)
    naive = bootstrap_ci(y2, s2, n_boot=400, seed=1)
    clustered = bootstrap_ci(y2, s2, patient_ids=patients, n_boot=400, seed=1)
    assert clustered.unit == "patient" and naive.unit == "case"
    assert (clustered.ci_high - clustered.ci_low) > 1.3 * (naive.ci_high - naive.ci_low)
    assert clustered.ci_low < clustered.estimate < clustered.ci_high
    again = bootstrap_ci(y2, s2, patient_ids=patients, n_boot=400, seed=1)
    assert (again.ci_low, again.ci_high) == (clustered.ci_low, clustered.ci_high)


# ---------------------------------------------------------------------------------------------------- thresholds


def test_operating_points_are_the_defined_extremes():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1)
    points = choose_operating_points(y, p)
    candidates = np.r_[np.unique(p), 1.5]

    def sens_spec(t):
        c = confusion_counts(y, p, t)
        return c.tp / (c.tp + c.fn), c.tn / (c.tn + c.fp)

    best = max(sum(sens_spec(t)) for t in candidates)
    assert sum(sens_spec(points.thresholds["youden"])) == pytest.approx(best)
    rule_out = points.thresholds["rule-out"]
    assert sens_spec(rule_out)[0] >= 0.95
    assert all(sens_spec(t)[0] < 0.95 for t in candidates if t > rule_out)
    rule_in = points.thresholds["rule-in"]
    assert sens_spec(rule_in)[1] >= 0.95
    assert all(sens_spec(t)[1] < 0.95 for t in candidates if t < rule_in)
    assert points.thresholds["0.5"] == 0.5
    assert points.performance["rule-out"]["sensitivity"] == pytest.approx(sens_spec(rule_out)[0])


def test_operating_points_refuse_a_single_class():
    with pytest.raises(PredictionsError, match="all negative"):
        choose_operating_points([0, 0, 0], [0.1, 0.2, 0.3])


def test_roc_points_span_the_unit_square_and_integrate_to_auc():
    y = ASAH_DATA["outcome"]
    fpr, tpr, _ = roc_points(y, ASAH_DATA["s100b"])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.731368563685637, rel=1e-12)


# ---------------------------------------------------------------------------------------------------- calibration


def test_brier_and_ece():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.85, 0.95, 0.55, 0.45])
    cal = calibration_summary(y, p, n_bins=2)
    assert cal.brier == pytest.approx(brier_score_loss(y, p))
    # bin [0, .5): p .05 .15 .45 -> mean .2167, rate 0; bin [.5, 1]: p .85 .95 .55 -> mean .7833, rate 1
    assert cal.ece == pytest.approx(0.5 * (0.65 / 3) + 0.5 * (1 - 2.35 / 3))
    assert [b.n for b in cal.bins] == [3, 3]


def test_temperature_scaling_recovers_overconfidence():
    rng = np.random.default_rng(4)
    z = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)
    overconfident = 1 / (1 + np.exp(-2.0 * z))  # logits doubled
    t = fit_temperature(y, overconfident)
    assert t == pytest.approx(2.0, rel=0.12)
    calibrated = apply_temperature(overconfident, t)
    assert calibration_summary(y, calibrated).ece < calibration_summary(y, overconfident).ece
    assert roc_auc_score(y, calibrated) == pytest.approx(roc_auc_score(y, overconfident))

