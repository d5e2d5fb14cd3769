"""Hit criterion, FROC and sensitivity at fixed false positives per study, against cases computed by hand."""

import numpy as np
import pytest

from bonescan.evaluate.froc import (
    froc_curve,
    lesion_sensitivity_by,
    match_hotspots,
    sensitivity_at_fp,
    sensitivity_at_fp_ci,
    study_detections,
)
from bonescan.evaluate.lesion_agreement import (
    bsi_agreement,
    count_agreement,
    count_class,
    icc_absolute_agreement,
    region_dice,
)


def _study_a():
    instances = np.zeros((2, 20, 20), np.uint16)
    instances[0, 2:5, 2:5] = 1  # metastasis 1, anterior ...
    instances[1, 2:5, 15:18] = 1  # ... and posterior (as seen from behind)
    instances[0, 10:13, 10:13] = 2  # metastasis 2
    instances[0, 15:18, 2:5] = 3  # benign
    views = [0, 1, 0, 0, 0]
    centroids = np.array([[3, 3], [3.2, 16], [16, 3], [14, 11], [19, 19]], float)
    scores = [0.9, 0.6, 0.8, 0.3, 0.5]
    return instances, [1, 2], views, centroids, scores


def test_hit_criterion_by_hand():
    instances, lesions, views, centroids, _ = _study_a()
    # h1 inside lesion 1; h2 the same lesion from behind; h3 on the benign finding; h4 two rows below lesion 2;
    # h5 on nothing
    assert match_hotspots(instances, lesions, views, centroids).tolist() == [1, 1, 0, 2, 0]
    # lesion 2 covers rows 10-12, cols 10-12: distance from its corner (12, 12)
    probe = np.array([[14, 14], [15, 12], [16, 12], [15.4, 12.4], [15.6, 12]], float)
    assert match_hotspots(instances, [2], [0] * 5, probe, tolerance=3).tolist() == [2, 2, 0, 2, 0]
    assert match_hotspots(instances, [2], [0] * 5, probe, tolerance=0).tolist() == [0] * 5
    # the right view only: lesion 2 is not in the posterior view
    assert match_hotspots(instances, [2], [1], np.array([[11, 11]])).tolist() == [0]
    # two lesions in reach: the nearer one wins; equal distance: the lower id
    two = np.zeros((2, 10, 20), np.uint16)
    two[0, 5, 4], two[0, 5, 9] = 1, 2
    assert match_hotspots(two, [1, 2], [0, 0], np.array([[5, 7], [5, 6.4]])).tolist() == [2, 1]
    two[0, 5, 5] = 3
    assert match_hotspots(two, [1, 2, 3], [0, 0], np.array([[5, 7], [5, 6.5]])).tolist() == [2, 2]  # ties; 6.5 rounds up


def _three_studies():
    instances, lesions, views, centroids, scores = _study_a()
    a = study_detections(lesions, match_hotspots(instances, lesions, views, centroids), scores)
    b_inst = np.zeros((2, 20, 20), np.uint16)
    b_inst[1, 5:7, 5:7] = 1
    b_views, b_cent, b_scores = [0, 1], np.array([[5, 5], [5.4, 6.2]]), [0.7, 0.2]
    b = study_detections([1], match_hotspots(b_inst, [1], b_views, b_cent), b_scores)
    c = study_detections([], [0], [0.95])
    return [a, b, c]


def test_froc_and_sensitivity_at_fp_by_hand():
    a, b, c = _three_studies()
    assert a.lesion_scores.tolist() == [0.9, 0.3] and sorted(a.fp_scores.tolist()) == [0.5, 0.8]
    assert b.lesion_scores.tolist() == [0.2] and b.fp_scores.tolist() == [0.7]
    curve = froc_curve([a, b, c])
    assert curve.n_lesions == 3 and curve.n_studies == 3
    assert curve.thresholds[1:].tolist() == [0.95, 0.9, 0.8, 0.7, 0.5, 0.3, 0.2]
    np.testing.assert_allclose(curve.sensitivity, [0, 0, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(curve.fp_per_study, [0, 1 / 3, 1 / 3, 2 / 3, 1, 4 / 3, 4 / 3, 4 / 3])
    np.testing.assert_allclose(sensitivity_at_fp(curve, (0.25, 0.5, 1, 2, 4)), [0, 1 / 3, 1 / 3, 1, 1])
    # an undetected lesion caps sensitivity below 1 at any rate
    missed = study_detections([1], [0], [0.4])
    assert sensitivity_at_fp(froc_curve([a, b, c, missed]), (4,))[0] == pytest.approx(3 / 4)


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimate():
    rng = np.random.default_rng(1)
    studies = []
    for _ in range(30):
        n = int(rng.integers(0, 3))
        studies.append(study_detections(list(range(1, n + 1)), list(range(1, n + 1)) + [0, 0],
                                        list(rng.uniform(0.3, 1.0, n)) + list(rng.uniform(0.0, 0.7, 2))))
    first = sensitivity_at_fp_ci(studies, n_boot=200, seed=3)
    again = sensitivity_at_fp_ci(studies, n_boot=200, seed=3)
    other = sensitivity_at_fp_ci(studies, n_boot=200, seed=4)
    assert [r.as_dict() for r in first] == [r.as_dict() for r in again]
    assert [r.ci_low for r in first] != [r.ci_low for r in other]
    for row in first:
        assert row.ci_low <= row.sensitivity <= row.ci_high
    assert [r.sensitivity for r in first] == sorted(r.sensitivity for r in first)  # more FPs allowed, no less found


def test_sensitivity_by_group_at_a_threshold():
    out = lesion_sensitivity_by(["ribs", "ribs", "skull"], np.array([0.9, -np.inf, 0.4]), 0.5)
    assert (out["ribs"]["x"], out["ribs"]["n"]) == (1, 2) and out["skull"]["x"] == 0
    assert out["ribs"]["ci_low"] < 0.5 < out["ribs"]["ci_high"]


def test_region_dice_pools_views_and_skips_regions_absent_from_both():
    truth = np.zeros((2, 4, 4), np.uint8)
    pred = np.zeros_like(truth)
    truth[0, :2] = 1  # 8 px anterior
    truth[1, :1] = 1  # 4 px posterior
    pred[0, :1] = 1  # 4 px, all inside
    pred[1, :1] = 1  # 4 px, all inside
    pred[1, 3, 0] = 2  # predicted, absent from truth
    dice = region_dice(pred, truth, [1, 2, 3])
    assert dice[0] == pytest.approx(2 * 8 / (12 + 8)) and dice[1] == 0.0 and np.isnan(dice[2])


def test_bsi_agreement_matches_the_textbook_formulas():
    truth = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
    pred = truth * 1.1 + np.array([0.1, -0.1, 0.2, 0.0, -0.3, 0.4])
    out = bsi_agreement(pred, truth)
    d = pred - truth
    assert out.pearson_r == pytest.approx(np.corrcoef(pred, truth)[0, 1])
    assert out.r_ci_low < out.pearson_r < out.r_ci_high
    assert out.bias == pytest.approx(d.mean())
    assert out.loa_high - out.loa_low == pytest.approx(2 * 1.96 * d.std(ddof=1))
    assert out.bias_ci_low < out.bias < out.bias_ci_high
    assert bsi_agreement([1, 2], [1, 2]).reason


def test_count_agreement_icc_and_classes():
    assert icc_absolute_agreement(np.array([[1, 2], [3, 4], [5, 6]])) == pytest.approx(8 / 9)
    assert icc_absolute_agreement(np.array([[1, 1], [3, 3], [7, 7]])) == pytest.approx(1.0)
    assert count_class([0, 1, 2, 3, 5, 6, 40]).tolist() == [0, 1, 2, 3, 3, 4, 4]
    out = count_agreement([0, 1, 3, 7], [0, 2, 3, 9])
    assert out.mean_difference == pytest.approx(-0.75) and out.exact_share == pytest.approx(0.5)
    assert out.confusion[1][2] == 0 and out.confusion[2][1] == 1  # truth 2 read as 1
    assert out.weighted_kappa < 1.0
    assert count_agreement([0, 1, 2], [0, 1, 2]).weighted_kappa == pytest.approx(1.0)
