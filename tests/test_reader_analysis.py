"""Readers-vs-AI analysis: the paper's Fig. 3 figures, McNemar tests, times and discordant cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from statsmodels.stats.contingency_tables import mcnemar

from bonescan.cli import main
from bonescan.reader.analysis import analyze_study, diagnostic_rates, mcnemar_correctness
from bonescan.reader.store import ReaderStore
from bonescan.reader.study import create_study
from test_reader_api import FakeClock, write_cases


def paper_reading(tp: int, tn: int, positives: int = 200, negatives: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Truth and decisions with the given true positives/negatives among 200 + 200 cases, as in Fig. 3."""
    truth = np.r_[np.ones(positives, int), np.zeros(negatives, int)]
    decision = np.r_[np.ones(tp, int), np.zeros(positives - tp, int), np.zeros(tn, int), np.ones(negatives - tn, int)]
    return truth, decision


# Zhao et al., Sci Rep 2020, Fig. 3 (accuracy, specificity, sensitivity, PPV, NPV), from their true positives
# and negatives: physician 1 human (148, 189) and AI-consulted (162, 192), physician 3 consulted (170, 173), AI (187, 187).
FIG3 = [
    ((148, 189), ["84.25%(337/400)", "94.50%(189/200)", "74.00%(148/200)", "93.08%(148/159)", "78.42%(189/241)"]),
    ((162, 192), ["88.50%(354/400)", "96.00%(192/200)", "81.00%(162/200)", "95.29%(162/170)", "83.48%(192/230)"]),
    ((170, 173), ["85.75%(343/400)", "86.50%(173/200)", "85.00%(170/200)", "86.29%(170/197)", "85.22%(173/203)"]),
    ((187, 187), ["93.50%(374/400)", "93.50%(187/200)", "93.50%(187/200)", "93.50%(187/200)", "93.50%(187/200)"]),
]


@pytest.mark.parametrize("counts, published", FIG3)
def test_rates_reproduce_the_papers_fig3(counts, published):
    rates = diagnostic_rates(*paper_reading(*counts))
    assert [rates[m].text() for m in ("accuracy", "specificity", "sensitivity", "ppv", "npv")] == published


def test_mcnemar_counts_discordant_pairs_and_uses_the_exact_binomial_test():
    truth = np.array([1] * 10 + [0] * 10)
    first = truth.copy()
    second = truth.copy()
    first[:2] = 0  # first wrong on 2 cases where second is right
    second[10:17] = 1  # second wrong on 7 cases where first is right
    test = mcnemar_correctness(truth, first, second)
    assert (test.both_correct, test.first_only, test.second_only, test.both_wrong) == (11, 7, 2, 0)
    assert test.p_value == pytest.approx(binomtest(2, 9, 0.5).pvalue)


def test_statsmodels_mcnemar_matches_agresti_textbook_value():
    # Agresti, Categorical Data Analysis (2002), Table 10.1: presidential approval; McNemar z^2 = 17.36.
    result = mcnemar([[794, 150], [86, 570]], exact=False, correction=False)
    assert result.statistic == pytest.approx(17.36, abs=0.01)


@pytest.fixture(scope="module")
def read_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return two_reader_study(tmp_path_factory.mktemp("analysis"))


def two_reader_study(folder: Path) -> Path:
    """Two readers, 4 cases (labels 0,1,0,1), both phases answered with known answers and times."""
    cases = write_cases(folder / "cases", 4)
    study = folder / "study"
    create_study(study, mode="blinded", cases_csv=cases, readers=["r1", "r2"], seed=0)
    pd.DataFrame({"case_id": ["c0", "c1", "c2", "c3"], "probability": [0.8, 0.9, 0.1, 0.7]}).to_csv(
        folder / "ai.csv", index=False)  # AI: c0 wrong (false positive), others right
    clock = FakeClock()
    store = ReaderStore.open(study, clock=clock)
    blinded = {"r1": {"c0": 0, "c1": 0, "c2": 0, "c3": 1},  # r1 misses c1
               "r2": {"c0": 0, "c1": 0, "c2": 1, "c3": 1}}  # r2 misses c1, false positive c2
    seconds = {"r1": 10.0, "r2": 20.0}

    def answer_all(reader: str, answers: dict[str, int], final: dict[str, int] | None = None) -> None:
        while (read := store.next_read(reader)) is not None:
            store.start_clock(read.read_key)
            clock.now += seconds[reader]
            store.record_own(read.read_key, answers[read.case_id], 3)
            if final is not None:
                clock.now += 5
                store.record_final(read.read_key, final[read.case_id], 4)

    for reader, answers in blinded.items():
        answer_all(reader, answers)
    create_study(study, mode="ai-consulted", predictions_csv=folder / "ai.csv", seed=0)
    truth = {"c0": 0, "c1": 1, "c2": 0, "c3": 1}
    answer_all("r1", blinded["r1"], final=truth)  # r1 fixes c1 after consulting
    answer_all("r2", blinded["r2"], final={**blinded["r2"], "c1": 1})
    return study


def test_analysis_tables(read_study, tmp_path):
    result = analyze_study(read_study, ai_seconds=2.0, out_dir=tmp_path / "out")
    fig3 = result.fig3.set_index(["reader", "reading", "metric"])
    assert fig3.loc[("r1", "human", "accuracy"), "text"] == "75.00%(3/4)"
    assert fig3.loc[("r1", "human", "sensitivity"), "text"] == "50.00%(1/2)"
    assert fig3.loc[("r1", "ai-consulted", "accuracy"), "text"] == "100.00%(4/4)"
    assert fig3.loc[("r2", "human", "ppv"), "text"] == "50.00%(1/2)"
    assert fig3.loc[("r2", "ai-consulted", "sensitivity"), "text"] == "100.00%(2/2)"
    assert fig3.loc[("AI", "ai", "specificity"), "text"] == "50.00%(1/2)"

    times = result.times.set_index(["reader", "reading"])
    assert times.loc[("r1", "human"), "total_seconds"] == pytest.approx(40.0)
    assert times.loc[("r2", "human"), "median_seconds"] == pytest.approx(20.0)
    assert times.loc[("r1", "ai-consulted"), "total_seconds"] == pytest.approx(4 * (10 + 5))
    assert times.loc[("r1", "human"), "ai_time_saving"] == pytest.approx(1 - 2.0 / 40.0)

    tests = result.mcnemar.set_index(["reader", "comparison", "cases"])
    ai_vs_r2 = tests.loc[("r2", "AI vs human", "all cases")]
    assert (ai_vs_r2["only_first_correct"], ai_vs_r2["only_second_correct"]) == (2, 1)  # AI: c1, c2; r2: c0
    consult = tests.loc[("r1", "human vs AI-consulted", "metastasis")]
    assert (consult["n"], consult["only_second_correct"]) == (2, 1)

    discordant = result.discordant.set_index("case_id")
    assert discordant.loc["c1", "kind"] == "missed by every reader, found by the AI"
    assert discordant.loc["c0", "kind"] == "missed by the AI, found by every reader"


def test_truth_from_grades_overrides_the_case_list(read_study, tmp_path):
    truth = tmp_path / "truth.csv"  # c2 becomes metastasis (grade 2): r2's answer turns right, r1's wrong
    pd.DataFrame({"case_id": ["c0", "c1", "c2", "c3"], "grade": [0, 3, 2, 3]}).to_csv(truth, index=False)
    fig3 = analyze_study(read_study, truth_csv=truth, out_dir=tmp_path / "out").fig3
    fig3 = fig3.set_index(["reader", "reading", "metric"])
    assert fig3.loc[("r2", "human", "accuracy"), "text"] == "75.00%(3/4)"
    assert fig3.loc[("r1", "human", "sensitivity"), "text"] == "33.33%(1/3)"


def test_analyze_cli_writes_html_and_csv(read_study, tmp_path, capsys):
    truth = tmp_path / "truth.csv"
    pd.DataFrame({"case_id": ["c0", "c1", "c2", "c3"], "grade": [0, 3, 1, 2]}).to_csv(truth, index=False)
    out = tmp_path / "report"
    assert main(["reader", "analyze", "--study", str(read_study), "--truth", str(truth), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "75.00%(3/4)" in html and "Time saved" not in html  # no AI time given
    assert html.count("data:image/png;base64,") == 2  # thumbnails of the two discordant cases
    assert set(pd.read_csv(out / "fig3.csv")["reader"]) == {"r1", "r2", "AI"}
    assert "r1" in capsys.readouterr().out


def test_analyze_needs_reference_labels(tmp_path, capsys):
    cases = write_cases(tmp_path / "cases", 2)
    unlabeled = pd.read_csv(cases).drop(columns=["label"])
    unlabeled.to_csv(cases.parent / "unlabeled.csv", index=False)
    create_study(tmp_path / "s", mode="blinded", cases_csv=cases.parent / "unlabeled.csv", readers=["a"])
    assert main(["reader", "analyze", "--study", str(tmp_path / "s")]) == 2
    assert "--truth" in capsys.readouterr().err
