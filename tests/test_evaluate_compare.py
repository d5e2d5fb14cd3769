"""`bonescan compare`: paired DeLong test of two models' predictions on the same cases, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats
from sklearn.metrics import roc_auc_score

from bonescan.cli import main
from bonescan.errors import PredictionsError
from bonescan.evaluate.compare import compare_prediction_files

N = 160


@pytest.fixture()
def cohort() -> pd.DataFrame:
    """Labels and two models' scores: A weakly separates the classes, B clearly better."""
    rng = np.random.default_rng(7)
    label = np.r_[np.ones(N // 2, int), np.zeros(N // 2, int)]
    noise = rng.normal(size=(2, N))
    return pd.DataFrame({
        "case_id": [f"c{i:03d}" for i in range(N)],
        "label": label,
        "a": 1 / (1 + np.exp(-(noise[0] + 0.4 * label))),
        "b": 1 / (1 + np.exp(-(noise[1] + 2.5 * label))),
    })


def write(frame: pd.DataFrame, path: Path, score: str, columns=("case_id", "probability", "label")) -> Path:
    frame.rename(columns={score: "probability"})[list(columns)].to_csv(path, index=False)
    return path


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["compare", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_clearly_better_model_b(cohort, tmp_path, capsys):
    a = write(cohort, tmp_path / "a.csv", "a")
    b = write(cohort.sample(frac=1.0, random_state=1), tmp_path / "b.csv", "b")  # rows in another order
    code, out, _ = run(["--a", str(a), "--b", str(b), "--threshold", "0.5", "--out", str(tmp_path / "r.json")],
                       capsys)
    assert code == 0
    auc_a, auc_b = roc_auc_score(cohort["label"], cohort["a"]), roc_auc_score(cohort["label"], cohort["b"])
    assert f"AUC A {auc_a:.4f}" in out and f"AUC B {auc_b:.4f}" in out
    result = json.loads((tmp_path / "r.json").read_text())
    delong = result["delong"]
    assert delong["auc1"] == pytest.approx(auc_a) and delong["auc2"] == pytest.approx(auc_b)
    assert delong["difference"] == pytest.approx(auc_a - auc_b)
    assert delong["ci_high"] < 0 and delong["statistic"] < -3 and delong["p_value"] < 0.01
    # The interval and p-value are the normal ones of the same z: (A - B) / SE.
    assert delong["p_value"] == pytest.approx(2 * sstats.norm.sf(abs(delong["statistic"])))
    assert delong["ci_low"] == pytest.approx(delong["difference"] - 1.959964 * delong["se_difference"], abs=1e-5)
    assert f"z = {delong['statistic']:.3f}" in out and "95% CI" in out
    assert result["n_cases"] == N and result["n_positive"] == N // 2

    y = cohort["label"].to_numpy() == 1
    correct_a, correct_b = (cohort["a"] >= 0.5).to_numpy() == y, (cohort["b"] >= 0.5).to_numpy() == y
    mcnemar = result["mcnemar"]
    assert mcnemar["only_first_correct"] == int(np.sum(correct_a & ~correct_b))
    assert mcnemar["only_second_correct"] == int(np.sum(~correct_a & correct_b))
    assert mcnemar["p_value"] < 0.05 and "McNemar" in out


def test_identical_predictions_give_z_0_and_p_1(cohort, tmp_path, capsys):
    a = write(cohort, tmp_path / "a.csv", "a")
    b = write(cohort, tmp_path / "b.csv", "a", columns=("case_id", "probability"))  # labels from A only
    code, out, _ = run(["--a", str(a), "--b", str(b), "--out", str(tmp_path / "r.json")], capsys)
    assert code == 0
    delong = json.loads((tmp_path / "r.json").read_text())["delong"]
    assert (delong["difference"], delong["statistic"], delong["p_value"]) == (0.0, 0.0, 1.0)
    assert "z = 0.000, p = 1.0000" in out


def test_labels_and_split_from_the_manifest(cohort, tmp_path):
    manifest = cohort[["case_id", "label"]].assign(
        path="x.dcm", cancer_type="lung", sex="M", age=70, split=["test", "val"] * (N // 2))
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    a = write(cohort, tmp_path / "a.csv", "a", columns=("case_id", "probability"))
    kept = cohort[(cohort.index % 2 == 0) | cohort.index.isin([1, 3])]  # test cases and two val cases
    b = write(kept, tmp_path / "b.csv", "b", columns=("case_id", "probability"))
    report = compare_prediction_files(a, b, tmp_path / "manifest.csv", split="test")
    test = cohort[cohort.index % 2 == 0]
    assert report.n_cases == len(test)
    assert report.comparison.delong.auc1 == pytest.approx(roc_auc_score(test["label"], test["a"]))
    with pytest.raises(PredictionsError, match=r"b.csv: holds other cases.*78 case\(s\) only in .*a.csv"):
        compare_prediction_files(a, b, tmp_path / "manifest.csv", split="val")

    flipped = cohort.assign(label=1 - cohort["label"])
    write(flipped, tmp_path / "bad_labels.csv", "b")
    with pytest.raises(PredictionsError, match="bad_labels.csv.*label differs from the manifest"):
        compare_prediction_files(a, tmp_path / "bad_labels.csv", tmp_path / "manifest.csv")


@pytest.mark.parametrize("edit, named, message", [
    (lambda f: f.iloc[:-3], "b.csv", "3 case(s) only in"),
    (lambda f: f.assign(case_id=f["case_id"].str.replace("c00", "x00")), "b.csv", "only in"),
    (lambda f: f.assign(label=np.where(f.index == 5, 1 - f["label"], f["label"])), "b.csv",
     "label differs from"),
    (lambda f: f.assign(probability=np.where(f.index == 2, np.nan, f["probability"])), "b.csv",
     "probability missing or outside [0, 1] for 1 case(s): c002"),
    (lambda f: pd.concat([f, f.iloc[:1]]), "b.csv", "duplicate case_id: c000"),
    (lambda f: f.drop(columns="probability"), "b.csv", "missing column(s): probability"),
])
def test_refusals_name_the_file_and_the_reason(cohort, tmp_path, capsys, edit, named, message):
    a = write(cohort, tmp_path / "a.csv", "a")
    edit(cohort.rename(columns={"b": "probability"})[["case_id", "probability", "label"]]).to_csv(
        tmp_path / "b.csv", index=False)
    code, out, err = run(["--a", str(a), "--b", str(tmp_path / "b.csv")], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert named in err and message in err


def test_refusals_without_labels_split_or_both_classes(cohort, tmp_path, capsys):
    a = write(cohort, tmp_path / "a.csv", "a", columns=("case_id", "probability"))
    b = write(cohort, tmp_path / "b.csv", "b", columns=("case_id", "probability"))
    code, _, err = run(["--a", str(a), "--b", str(b)], capsys)
    assert code == 2 and "no labels" in err and "--manifest" in err

    code, _, err = run(["--a", str(a), "--b", str(b), "--split", "val"], capsys)
    assert code == 2 and "a.csv" in err and "no split column" in err

    positives = write(cohort[cohort["label"] == 1], tmp_path / "pos.csv", "a")
    code, _, err = run(["--a", str(positives), "--b", str(positives)], capsys)
    assert code == 2 and "0 negative" in err

    code, _, err = run(["--a", str(a), "--b", str(tmp_path / "absent.csv")], capsys)
    assert code == 2 and "absent.csv" in err
