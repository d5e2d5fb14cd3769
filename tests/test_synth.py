"""Synthetic bone scans: determinism, anatomy and findings truth, Table 1 demographics, realism against NM1."""

from __future__ import annotations

import numpy as np
import pytest

from bonescan.synth import TABLE1, case_seed, difficulty_profile, generate_case
from bonescan.synth.case import poisson_counts
from bonescan.synth.cohort import sample_demographics
from bonescan.synth.findings import benign_count_mean


def _first_case(predicate, difficulty="paper", seed=11, tries=60):
    for index in range(tries):
        case = generate_case(f"t{index}", case_seed(seed, index), difficulty)
        if predicate(case):
            return case
    raise AssertionError("no case matched")


def test_same_seed_gives_identical_pixels_and_another_seed_does_not():
    a = generate_case("a", 123, "paper")
    b = generate_case("a", 123, "paper")
    c = generate_case("a", 124, "paper")
    assert np.array_equal(a.anterior, b.anterior) and np.array_equal(a.posterior, b.posterior)
    assert [f.to_json() for f in a.findings] == [f.to_json() for f in b.findings]
    assert not np.array_equal(a.anterior, c.anterior)


def test_case_seeds_are_distinct_within_and_across_cohorts():
    assert len({case_seed(5, i) for i in range(200)}) == 200
    assert case_seed(5, 3) != case_seed(6, 3)


def test_images_are_whole_body_uint16_views_with_clinical_counts():
    case = generate_case("x", 7, "paper")
    for view in (case.anterior, case.posterior):
        assert view.shape == (1024, 256) and view.dtype == np.uint16
        # Whole-body scans hold 0.3-3 M counts per view (both views share one acquisition scale).
        assert 0.2e6 < view.sum() < 4.0e6


def test_poisson_counts_have_poisson_mean_and_variance():
    rng = np.random.default_rng(0)
    for lam in (0.05, 0.25, 3.0, 40.0):
        counts = poisson_counts(rng, np.full(200_000, lam, np.float32))
        # Standard errors at n = 200k are < 0.5 % of the mean; 3 % leaves room for the variance estimate.
        assert counts.mean() == pytest.approx(lam, rel=0.03)
        assert counts.var() == pytest.approx(lam, rel=0.03)


@pytest.mark.parametrize("lam", [0.07, 0.1, 0.85, 4.33, 12.0, 24.95, 31.7, 260.0])
def test_poisson_counts_follow_the_poisson_distribution(lam):
    # Means below one grid step, on and between grid values, at the table's end and split into pieces.
    stats = pytest.importorskip("scipy.stats")
    n = 200_000
    counts = poisson_counts(np.random.default_rng(int(lam * 100)), np.full(n, lam, np.float32))
    assert counts.dtype == np.int32 and counts.shape == (n,)
    # Chi-square goodness of fit over the counts expected at least 20 times (tails pooled into the end bins).
    ks = np.arange(int(lam + 8 * np.sqrt(lam) + 8))
    pmf = stats.poisson.pmf(ks, lam)
    keep = ks[pmf * n >= 20]
    lo, hi = int(keep[0]), int(keep[-1])
    observed = np.bincount(np.clip(counts, lo, hi) - lo, minlength=hi - lo + 1)
    expected = pmf[lo:hi + 1] * n
    expected[0] = stats.poisson.cdf(lo, lam) * n
    expected[-1] = stats.poisson.sf(hi - 1, lam) * n
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    # A sampler whose mean is 1 % off, or a rounded normal approximation, gives p < 1e-14 at these means; an exact
    # one fails 1 time in 10,000 (and the seeds are fixed).
    assert stats.chi2.sf(chi2, len(observed) - 1) > 1e-4, (lam, chi2)


def test_poisson_counts_keep_the_shape_and_mean_of_an_image():
    rng = np.random.default_rng(3)
    expected = np.linspace(0.0, 60.0, 2 * 64 * 32, dtype=np.float32).reshape(2, 64, 32)
    counts = np.stack([poisson_counts(rng, expected) for _ in range(200)])
    assert counts.shape == (200, 2, 64, 32)
    assert counts[:, 0, 0, 0].max() == 0  # a mean of 0 gives no counts
    # Per-pixel means over 200 draws: SE = sqrt(lambda / 200) <= 0.55; the brightest rows must not be biased.
    means = counts.mean(axis=0)
    assert np.abs(means - expected).max() < 2.5
    assert abs(means.sum() / expected.sum() - 1.0) < 0.002


def test_views_differ_by_depth_as_real_ones_do():
    case = _first_case(lambda c: c.demographics.grade == 0 and not c.findings)
    a, p = case.anterior.astype(float), case.posterior.astype(float)
    ratio = a.sum() / p.sum()
    bladder_row = int(np.argmax(a[:, 100:156].max(axis=1)))
    # The bladder lies in front: hotter in the anterior view (after allowing for the overall count ratio).
    assert a[bladder_row - 3:bladder_row + 4, 100:156].max() > 1.3 * ratio * p[bladder_row - 3:bladder_row + 4, 100:156].max()
    # The thoracic spine lies at the back: a midline strip of the chest is hotter in the posterior view.
    top = int(np.nonzero(a.sum(axis=1) > 0.02 * a.sum(axis=1).max())[0][0])
    length = case.patient.height_px
    chest = slice(top + int(0.2 * length), top + int(0.3 * length))
    mid_a = int(round(case.patient.centre_col))
    mid_p = 255 - mid_a  # the posterior view is stored as seen from behind
    assert p[chest, mid_p - 4:mid_p + 5].mean() > 1.3 * ratio * a[chest, mid_a - 4:mid_a + 5].mean()


def test_findings_sit_where_recorded_and_posterior_is_seen_from_behind():
    case = _first_case(lambda c: c.demographics.grade == 3 and not c.demographics.superscan, difficulty="easy")
    checked = 0
    for f in case.findings:
        if f.category != "metastasis":
            continue
        for view, image, (row, col) in (("anterior", case.anterior, f.centre_anterior),
                                        ("posterior", case.posterior, f.centre_posterior)):
            if f.view not in (view, "both"):
                continue
            midline = case.patient.centre_col if view == "anterior" else 255 - case.patient.centre_col
            mirror = 2 * midline - col
            others = [g.centre_anterior if view == "anterior" else g.centre_posterior for g in case.findings if g is not f]
            near_other = any(np.hypot(o[0] - row, o[1] - mirror) < 15 for o in others)
            if abs(col - midline) < 20 or not 3 <= mirror < 253 or near_other:
                continue
            r, c, m = int(round(row)), int(round(col)), int(round(mirror))
            spot = image[r - 2:r + 3, c - 2:c + 3].mean()
            other_side = image[r - 2:r + 3, m - 2:m + 3].mean()
            assert spot > other_side, (f.to_json(), view)
            checked += 1
    assert checked >= 2
    # The patient's left lies on the viewer's right of the anterior view and the viewer's left of the posterior.
    left = [f for f in case.findings if f.bone.startswith("left ")]
    for f in left:
        assert f.centre_anterior[1] > case.patient.centre_col - 2
        assert f.centre_posterior[1] < 255 - case.patient.centre_col + 2


def test_table1_mix_sex_age_and_metastasis_rates():
    profile = difficulty_profile("paper")
    rng = np.random.default_rng(0)
    rows = [sample_demographics(rng, profile) for _ in range(6000)]
    for group in TABLE1:
        sub = [r for r in rows if r.cancer_type == group.name]
        # Binomial SE of a share at n = 6000 is <= 0.0065; of a rate within a group <= 0.02 (n >= 800).
        assert len(sub) / len(rows) == pytest.approx(group.patients / 12222, abs=0.025)
        assert np.mean([r.sex == "M" for r in sub]) == pytest.approx(group.male / group.patients, abs=0.04)
        assert np.mean([r.age for r in sub]) == pytest.approx(group.age_mean, abs=1.2)
        assert np.std([r.age for r in sub]) == pytest.approx(group.age_sd, abs=1.2)
        assert np.mean([r.label for r in sub]) == pytest.approx(group.metastasis_rate, abs=0.05)
    # Older patients carry more benign findings, so grade 1 is commoner among older non-metastatic prostates.
    negatives = [r for r in rows if r.label == 0]
    old = np.mean([r.grade == 1 for r in negatives if r.cancer_type == "prostate" and r.age >= 60])
    young = np.mean([r.grade == 1 for r in negatives if r.cancer_type == "breast" and r.age < 60])
    assert old > young + 0.2
    assert benign_count_mean(75, profile) > 2 * benign_count_mean(45, profile)


def test_grades_match_their_findings():
    for index in range(12):
        case = generate_case(f"g{index}", case_seed(3, index), "paper")
        grade, kinds = case.demographics.grade, {f.category for f in case.findings}
        if grade == 0:
            assert kinds <= {"artifact"}
        elif grade == 1:
            assert "benign" in kinds and "metastasis" not in kinds
        else:
            assert case.n_metastases >= 1
            assert case.demographics.label == 1


def test_unknown_difficulty_is_a_config_error():
    from bonescan.errors import ConfigError

    with pytest.raises(ConfigError, match="medium"):
        generate_case("x", 1, "medium")


# --- realism against the real scan NM1 (pydicom-data JPEG-LL.dcm: an anterior whole-body view, 2.26 mm) -------


def _body_rows(image: np.ndarray) -> tuple[int, int]:
    rows = image.sum(axis=1)
    inside = np.nonzero(rows > 0.02 * rows.max())[0]
    return int(inside[0]), int(inside[-1])


def _row_profile(image: np.ndarray, bins: int = 100) -> np.ndarray:
    """Head-to-foot count profile resampled to `bins` between the first and last body row (aligns head and feet)."""
    top, bottom = _body_rows(image)
    rows = image.sum(axis=1)[top:bottom + 1].astype(float)
    profile = np.interp(np.linspace(0, len(rows) - 1, bins), np.arange(len(rows)), rows)
    return profile / profile.sum()


def test_normal_case_resembles_the_real_scan_nm1():
    pydicom = pytest.importorskip("pydicom")
    data = pytest.importorskip("pydicom.data")
    pytest.importorskip("pylibjpeg")
    nm1 = pydicom.dcmread(data.get_testdata_file("JPEG-LL.dcm")).pixel_array.astype(float)
    top, bottom = _body_rows(nm1)
    nm1_length_mm = (bottom - top) * 2.26
    nm1_hot_ratio = nm1.max() / np.median(nm1[nm1 > 2])
    case = _first_case(lambda c: c.demographics.grade == 0 and not c.findings, seed=7)
    image = case.anterior.astype(float)
    # Counts: the clinical range of whole-body views (GE Discovery 670 here: 0.36-0.68 M; NM1: 3.6 M).
    assert 0.3e6 <= image.sum() <= 3.6e6
    # Hottest pixel relative to the median body pixel: NM1 has ~10 (its bladder). A phantom without a bladder or
    # with a saturating one would fall outside 0.4x-2.5x of that.
    hot_ratio = image.max() / np.median(image[image > 2])
    assert 0.4 * nm1_hot_ratio <= hot_ratio <= 2.5 * nm1_hot_ratio
    # Body length: NM1 is 1.72 m; adult statures span 1.45-1.90 m, i.e. within 0.8x-1.2x of it.
    top, bottom = _body_rows(image)
    assert 0.8 * nm1_length_mm <= (bottom - top) * case.patient.pixel_spacing <= 1.2 * nm1_length_mm
    # Head-to-foot profile after aligning head and feet: the phantom reaches r ~ 0.8-0.87 against NM1, while a
    # uniform body gives r ~ 0 and NM1's own profile flipped feet-to-head gives r ~ -0.46; 0.75 separates them.
    r = np.corrcoef(_row_profile(nm1), _row_profile(image))[0, 1]
    assert r >= 0.75
    flat = np.zeros_like(nm1)
    flat[top:bottom, 80:180] = 10.0
    assert np.corrcoef(_row_profile(nm1), _row_profile(flat))[0, 1] < 0.75
