"""Obuchowski–Rockette / Hillis MRMC analysis: published Van Dyke results, covariance estimators, study hook-up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from bonescan.errors import ConfigError
from bonescan.reader.analysis import analyze_study
from bonescan.reader.mrmc import MrmcResult, answer_rating, obuchowski_rockette, study_mrmc
from bonescan.reader.store import ReaderStore
from bonescan.reader.study import create_study
from test_reader_analysis import two_reader_study
from test_reader_api import write_cases

DATA = Path(__file__).parent / "data" / "vandyke_roc.csv"


@pytest.fixture(scope="module")
def read_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two readers, confidences 3 and 4 (`test_reader_analysis`)."""
    return two_reader_study(tmp_path_factory.mktemp("analysis"))


def vandyke() -> tuple[np.ndarray, np.ndarray]:
    """Van Dyke et al. (1993) cine vs spin-echo MRI: 5 readers, 69 + 45 cases, 5-point ratings.

    tests/data/vandyke_roc.csv is RJafroc's inst/extdata/datasets/VD.lrc (dataset02) in long form.
    """
    table = pd.read_csv(DATA)
    grid = table.pivot_table(index=["treatment", "reader"], columns="case", values="rating")
    labels = table.drop_duplicates("case").set_index("case")["truth"][grid.columns].to_numpy()
    return labels, grid.to_numpy().reshape(2, 5, -1)


def test_van_dyke_reproduces_published_or_hillis_analysis():
    # Published for dataset02 with the jackknife and empirical AUC: MRMCaov README (summary of
    # mrmc(empirical_auc(truth, rating), treatment, reader, case, data = VanDyke)) and the RJafroc book,
    # "Obuchowski Rockette applications" (StSignificanceTesting(dataset02, FOM = "Wilcoxon", method = "OR")).
    labels, ratings = vandyke()
    assert (int(labels.sum()), int((labels == 0).sum())) == (45, 69)
    result = obuchowski_rockette(labels, ratings, modalities=("0", "1"), method="jackknife")

    np.testing.assert_allclose(result.reader_aucs, [
        [0.91964573, 0.85877617, 0.90386473, 0.97310789, 0.82979066],
        [0.94782609, 0.90531401, 0.92173913, 0.99935588, 0.92995169]], atol=5e-9)
    assert result.mean_aucs[0] == pytest.approx(0.89703704, abs=5e-9)
    assert result.mean_aucs[1] == pytest.approx(0.94083736, abs=5e-9)
    assert result.difference == pytest.approx(-0.043800322, abs=5e-10)
    assert result.error_variance == pytest.approx(0.0008022883, abs=5e-11)
    assert result.cov1 == pytest.approx(0.0003466137, abs=5e-11)
    assert result.cov2 == pytest.approx(0.0003440748, abs=5e-11)
    assert result.cov3 == pytest.approx(0.0002390284, abs=5e-11)
    assert result.ms_treatment == pytest.approx(0.004796171, abs=5e-10)
    assert result.ms_treatment_reader == pytest.approx(0.0005510306, abs=5e-11)
    assert result.f_statistic == pytest.approx(4.456319, abs=5e-7)
    assert result.df1 == 1
    assert result.ddf == pytest.approx(15.25967, abs=5e-6)
    assert result.p_value == pytest.approx(0.05166569, abs=5e-9)
    assert result.std_error == pytest.approx(0.02074862, abs=5e-9)
    assert result.ci_low == pytest.approx(-0.0879594986, abs=5e-11)
    assert result.ci_high == pytest.approx(0.0003588544, abs=5e-11)


def brute_force_aucs(labels: np.ndarray, score_sets: np.ndarray) -> np.ndarray:
    return np.array([roc_auc_score(labels, scores) for scores in score_sets])


def small_study(seed: int = 3, readers: int = 3, cases: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(cases // 3, int), np.zeros(cases - cases // 3, int)]
    ratings = rng.integers(1, 6, size=(2, readers, cases)) + 2 * labels  # ties on purpose
    return labels, ratings.astype(float)


def test_jackknife_covariances_match_leave_one_case_out_by_hand():
    labels, ratings = small_study()
    flat = ratings.reshape(6, -1)
    cases = len(labels)
    leave_out = np.array([brute_force_aucs(np.delete(labels, k), np.delete(flat, k, axis=1)) for k in range(cases)])
    covariance = (cases - 1) / cases * (leave_out - leave_out.mean(axis=0)).T @ (leave_out - leave_out.mean(axis=0))
    result = obuchowski_rockette(labels, ratings, method="jackknife")
    np.testing.assert_allclose(result.reader_aucs.ravel(), brute_force_aucs(labels, flat))
    # Modality-major order: entries (i, j) with i = modality, j = reader.
    assert result.error_variance == pytest.approx(np.mean(np.diag(covariance)))
    assert result.cov1 == pytest.approx(np.mean([covariance[j, 3 + j] for j in range(3)]))
    assert result.cov2 == pytest.approx(np.mean([covariance[3 * i + a, 3 * i + b] for i in range(2)
                                                 for a in range(3) for b in range(3) if a != b]))
    assert result.cov3 == pytest.approx(np.mean([covariance[a, 3 + b] for a in range(3) for b in range(3) if a != b]))


def test_delong_covariances_match_the_kernel_formula():
    labels, ratings = small_study(seed=5)
    flat = ratings.reshape(6, -1)
    positives, negatives = flat[:, labels == 1], flat[:, labels == 0]
    kernel = (positives[:, :, None] > negatives[:, None, :]) + 0.5 * (positives[:, :, None] == negatives[:, None, :])
    v10, v01 = kernel.mean(axis=2), kernel.mean(axis=1)  # DeLong, DeLong & Clarke-Pearson (1988) components
    covariance = np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]
    result = obuchowski_rockette(labels, ratings, method="delong")
    assert result.error_variance == pytest.approx(np.mean(np.diag(covariance)))
    assert result.cov1 == pytest.approx(np.mean([covariance[j, 3 + j] for j in range(3)]))
    assert result.cov3 == pytest.approx(np.mean([covariance[a, 3 + b] for a in range(3) for b in range(3) if a != b]))


def test_swapping_modalities_flips_the_difference_only():
    labels, ratings = small_study(seed=7)
    forward = obuchowski_rockette(labels, ratings)
    backward = obuchowski_rockette(labels, ratings[::-1])
    assert backward.difference == pytest.approx(-forward.difference)
    assert (backward.ci_low, backward.ci_high) == pytest.approx((-forward.ci_high, -forward.ci_low))
    assert (backward.f_statistic, backward.ddf, backward.p_value) == pytest.approx(
        (forward.f_statistic, forward.ddf, forward.p_value))


def test_identical_modalities_have_no_error_term():
    labels, ratings = small_study(seed=7)
    with pytest.raises(ConfigError, match="no variability"):  # MS(TR) = 0 and Cov2 = Cov3
        obuchowski_rockette(labels, np.stack([ratings[0], ratings[0]]))


@pytest.mark.parametrize("bad, reason", [
    (lambda l, r: (l, r[:, :1]), "two readers"),
    (lambda l, r: (np.zeros_like(l), r), "with and without"),
    (lambda l, r: (l, np.where(np.arange(r.shape[2]) == 0, np.nan, r)), "every case"),
    (lambda l, r: (l[:-1], r), "labels"),
])
def test_refuses_unusable_input(bad, reason):
    labels, ratings = bad(*small_study())
    with pytest.raises(ConfigError, match=reason):
        obuchowski_rockette(labels, ratings)


def test_answer_and_confidence_make_a_ten_level_scale():
    levels = sorted({answer_rating(a, c) for a in (0, 1) for c in range(1, 6)})
    assert levels == [-5, -4, -3, -2, -1, 1, 2, 3, 4, 5]
    assert answer_rating(1, 1) > answer_rating(0, 1) > answer_rating(0, 5)


def reads_frame(labels: np.ndarray, ratings: np.ndarray, readers: list[str]) -> pd.DataFrame:
    """A store-like reads table: blinded own answers and AI-consulted final answers from signed ratings."""
    rows = []
    for modality, phase in enumerate(("blinded", "ai-consulted")):
        for j, reader in enumerate(readers):
            for k in range(len(labels)):
                rating = int(ratings[modality, j, k])
                answer, conf = int(rating > 0), abs(rating)
                own = (answer, conf) if phase == "blinded" else (1 - answer, 2)  # own answer ignored when consulted
                rows.append({"phase": phase, "reader": reader, "case_id": f"k{k}", "own_answer": own[0],
                             "own_confidence": own[1], "final_answer": answer if phase == "ai-consulted" else None,
                             "final_confidence": conf if phase == "ai-consulted" else None})
    return pd.DataFrame(rows)


def test_study_mrmc_uses_blinded_and_final_answers():
    labels, raw = small_study(seed=11)
    ratings = np.where(raw > 3, raw - 2, raw - 5)  # signed confidences in -4..-1, 1..5
    ratings[ratings == 0] = 1
    readers = ["a", "b", "c"]
    truth = pd.Series(labels, index=[f"k{k}" for k in range(len(labels))])
    result = study_mrmc(reads_frame(labels, ratings, readers), truth)
    assert isinstance(result, MrmcResult)
    expected = obuchowski_rockette(labels, ratings, modalities=("human", "ai-consulted"), readers=tuple(readers))
    assert result.f_statistic == pytest.approx(expected.f_statistic)
    assert result.mean_aucs == pytest.approx(expected.mean_aucs)
    assert result.readers == ("a", "b", "c")


def test_study_mrmc_says_why_it_is_not_computed():
    labels, raw = small_study(seed=11)
    ratings = np.where(raw > 3, 2.0, -2.0)
    truth = pd.Series(labels, index=[f"k{k}" for k in range(len(labels))])
    reads = reads_frame(labels, ratings, ["a", "b"])
    missing = reads.copy()
    missing.loc[missing["phase"] == "ai-consulted", "final_confidence"] = None
    assert "no confidence score" in study_mrmc(missing, truth)
    one_reader = reads[reads["reader"] == "a"]
    assert "at least two readers" in study_mrmc(one_reader, truth)
    assert "AI-consulted" in study_mrmc(reads[reads["phase"] == "blinded"], truth)


def test_analyze_study_writes_mrmc_section_and_csv(read_study, tmp_path):
    out = tmp_path / "out"
    result = analyze_study(read_study, out_dir=out)
    # By hand from the fixture's answers (rating = ±confidence): human AUCs r1 0.75, r2 0.5;
    # AI-consulted r1 1.0, r2 0.75.
    assert result.mrmc is not None
    np.testing.assert_allclose(result.mrmc.reader_aucs, [[0.75, 0.5], [1.0, 0.75]])
    assert result.mrmc.difference == pytest.approx(-0.25)
    summary = pd.read_csv(out / "mrmc.csv").set_index("quantity")["value"]
    assert float(summary["difference"]) == pytest.approx(-0.25)
    assert float(summary["ci95_low"]) < float(summary["ci95_high"])
    assert set(pd.read_csv(out / "mrmc_readers.csv")["reader"]) == {"r1", "r2"}
    html = (out / "report.html").read_text()
    assert "Obuchowski" in html and "0.6250" in html and "0.8750" in html


def test_analyze_study_without_confidence_says_not_computed(tmp_path):
    cases = write_cases(tmp_path / "cases", 4)
    study = tmp_path / "study"
    create_study(study, mode="blinded", cases_csv=cases, readers=["r1", "r2"], seed=0)
    store = ReaderStore.open(study)
    for reader in ("r1", "r2"):
        while (read := store.next_read(reader)) is not None:
            store.start_clock(read.read_key)
            store.record_own(read.read_key, int(read.case_id in ("c1", "c3")), None)
    out = tmp_path / "out"
    result = analyze_study(study, out_dir=out)
    assert result.mrmc is None and "AI-consulted" in result.mrmc_note
    assert "Not computed: no AI-consulted final answers yet" in (out / "report.html").read_text()
    assert pd.read_csv(out / "mrmc.csv")["quantity"].tolist() == ["not computed"]
