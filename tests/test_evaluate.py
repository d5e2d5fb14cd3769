"""The evaluation pipeline and `bonescan evaluate`: files written, operating points frozen on val, report content."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bonescan.cli import main
from bonescan.errors import PredictionsError
from bonescan.evaluate import (
    choose_operating_points,
    delong_auc,
    evaluate_predictions,
    load_operating_points,
    load_predictions,
)


def _cohort(n: int = 160, seed: int = 0, with_split: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cancer = np.array(["lung", "prostate", "breast", "other"])[np.arange(n) % 4]
    sex = np.where(cancer == "prostate", "M", np.where(cancer == "breast", "F", np.where(np.arange(n) % 3, "M", "F")))
    label = (np.arange(n) % 5 < 2).astype(int)
    z = rng.normal(size=n) + 2.0 * label
    frame = pd.DataFrame({
        "case_id": [f"case{i:03d}" for i in range(n)],
        "label": label,
        "probability": 1 / (1 + np.exp(-(z - 1.0))),
        "cancer_type": cancer,
        "sex": sex,
        "age": 40 + (np.arange(n) * 7) % 45,
    })
    if with_split:
        frame["split"] = np.where((np.arange(n) // 4) % 2 == 0, "val", "test")  # every cancer type in both
    return frame


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One full evaluation (with report) of the default cohort, shared by the tests that read its files."""
    out = tmp_path_factory.mktemp("evaluation")
    frame = _cohort()
    return frame, out, evaluate_predictions(frame, out, inputs={"predictions": "generated"})


def test_evaluate_writes_all_outputs_with_val_chosen_thresholds(evaluated):
    frame, out, result = evaluated
    for name in ("predictions.csv", "metrics.json", "operating_points.json", "report.html"):
        assert (out / name).is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind

    val = frame[frame["split"] == "val"]
    test = frame[frame["split"] == "test"]
    expected = choose_operating_points(val["label"], val["probability"])
    saved = json.loads((out / "operating_points.json").read_text())
    assert saved["chosen_on"] == "val" and saved["n_val"] == len(val)
    for name in ("youden", "rule-out", "rule-in", "0.5"):
        assert saved[name] == pytest.approx(expected.thresholds[name])
        assert set(saved["val_performance"][name]) == {"sensitivity", "specificity"}
    assert load_operating_points(out / "operating_points.json")["youden"] == pytest.approx(saved["youden"])

    metrics = json.loads((out / "metrics.json").read_text())  # strict JSON: NaN was turned into null
    overall = metrics["auc"][0]
    assert (overall["dimension"], overall["n"]) == ("overall", len(test))
    assert overall["auc"] == pytest.approx(delong_auc(test["label"], test["probability"]).auc)
    dims = {(row["dimension"], row["group"]) for row in metrics["auc"]}
    assert {("cancer_type", "prostate"), ("sex", "F"), ("age_group", "<60"), ("cancer_age", "prostate >=60")} <= dims

    # Test-split sensitivity at the frozen Youden threshold, counted by hand from predictions.csv
    table = pd.read_csv(out / "predictions.csv")
    t = saved["youden"]
    tested = table[table["split"] == "test"]
    tp = int(((tested["probability"] >= t) & (tested["label"] == 1)).sum())
    youden_overall = metrics["threshold_metrics"]["youden"]["rows"][0]
    assert youden_overall["sensitivity"]["x"] == tp
    assert youden_overall["sensitivity"]["n"] == int(tested["label"].sum())
    assert (tested["positive_youden"] == (tested["probability"] >= t)).all()
    chi = metrics["threshold_metrics"]["youden"]["chi_square_across_cancer_types"]
    assert set(chi) == {"accuracy", "sensitivity", "specificity", "ppv", "npv"} and chi["accuracy"]["dof"] == 3
    assert result.operating_points.chosen_on == "val"


def test_report_is_self_contained_and_marks_published_numbers(evaluated):
    html = (evaluated[1] / "report.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in html and "@media print" in html
    assert "Different data" in html
    for published in ("0.858", "0.932", "0.964", "0.988"):  # EXINIbone, BONENAVI v2, Zhao 2020 totals, breast
        assert published in html
    assert "Table 1" in html and "Youden" in html and "Rule-out" in html and "Brier" in html


def test_without_a_val_split_the_choice_is_flagged(tmp_path):
    result = evaluate_predictions(_cohort(with_split=False), tmp_path)
    assert result.operating_points.chosen_on == "evaluated set"
    assert any("optimistic" in w for w in result.metrics["warnings"])
    assert "optimistic" in (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "operating_points.json").read_text())["n_val"] is None


def test_frozen_operating_points_are_used_as_given(tmp_path):
    given = {"youden": 0.61, "rule-out": 0.2, "rule-in": 0.9, "0.5": 0.5}
    result = evaluate_predictions(_cohort(), tmp_path, operating_points=given, report=False)
    assert not (tmp_path / "report.html").exists()
    assert result.operating_points.thresholds == given
    assert result.metrics["threshold_metrics"]["rule-in"]["threshold"] == 0.9
    assert result.operating_points.chosen_on == "given"
    # An OperatingPoints object keeps where it was chosen (e.g. on an earlier validation split)
    earlier = _cohort(seed=9)
    chosen = choose_operating_points(earlier["label"], earlier["probability"], "val")
    again = evaluate_predictions(_cohort(seed=5), tmp_path, operating_points=chosen, report=False)
    assert again.operating_points.chosen_on == "val"
    assert again.operating_points.thresholds == chosen.thresholds and again.operating_points is not chosen
    with pytest.raises(PredictionsError, match="no threshold given for: rule-out"):
        evaluate_predictions(_cohort(), tmp_path, operating_points={"youden": 0.5, "rule-in": 0.9, "0.5": 0.5},
                             report=False)


def test_single_class_test_split_does_not_crash(tmp_path):
    frame = _cohort()
    frame.loc[frame["split"] == "test", "label"] = 0
    result = evaluate_predictions(frame, tmp_path)
    overall = result.metrics["auc"][0]
    assert overall["auc"] is None and "one class" in overall["reason"]
    assert (tmp_path / "report.html").is_file()


def test_temperature_scaling_and_bootstrap_are_reported(tmp_path):
    result = evaluate_predictions(_cohort(), tmp_path, temperature_scaling=True, bootstrap=50, seed=3, report=False)
    assert result.metrics["calibration"]["temperature"] > 0
    assert result.metrics["calibration"]["calibrated"]["brier"] is not None
    boot = result.metrics["auc"][0]["bootstrap"]
    assert boot["n_boot"] == 50 and boot["ci_low"] <= boot["estimate"] <= boot["ci_high"]
    assert "calibrated_probability" in result.predictions.columns


def test_bad_predictions_are_refused_with_the_reason(tmp_path):
    frame = _cohort()
    frame.loc[3, "probability"] = 1.5
    with pytest.raises(PredictionsError, match="outside \\[0, 1\\].*case003"):
        evaluate_predictions(frame, tmp_path)
    with pytest.raises(PredictionsError, match="no cases in split 'train'"):
        evaluate_predictions(_cohort(), tmp_path, split="train")
    assert not (tmp_path / "report.html").exists()


def _write_views(folder: Path, case_id: str, seed: int) -> tuple[str, str]:
    rng = np.random.default_rng(seed)
    names = []
    for view in ("ant", "post"):
        image = rng.poisson(20, size=(512, 128)).astype(np.float32)
        image[200:220, 50:70] += 300  # a hot spot
        path = folder / f"{case_id}_{view}.npy"
        np.save(path, image)
        names.append(path.name)
    return names[0], names[1]


def _manifest_and_predictions(tmp_path: Path) -> tuple[Path, Path, pd.DataFrame]:
    frame = _cohort(n=40, seed=1)
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i, row in frame.iterrows():
        ant, post = _write_views(images, row["case_id"], i)
        rows.append({"case_id": row["case_id"], "anterior": f"images/{ant}", "posterior": f"images/{post}",
                     "cancer_type": row["cancer_type"], "sex": row["sex"], "age": row["age"],
                     "label": row["label"], "split": row["split"]})
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    predictions = tmp_path / "predictions.csv"
    frame[["case_id", "probability"]].to_csv(predictions, index=False)
    return manifest, predictions, frame


def test_cli_with_manifest_shows_thumbnails_heatmaps_and_notes_unreadable_studies(tmp_path, capsys):
    manifest, predictions, frame = _manifest_and_predictions(tmp_path)
    broken = set(frame["case_id"][::2])  # every other study cannot be read
    for case_id in broken:
        (tmp_path / "images" / f"{case_id}_ant.npy").write_bytes(b"not an array")
    heatmaps = tmp_path / "heatmaps"
    heatmaps.mkdir()
    from PIL import Image

    for case_id in frame["case_id"]:
        Image.new("RGB", (32, 96), (255, 0, 0)).save(heatmaps / f"{case_id}.png")
    out = tmp_path / "report"
    code = main(["evaluate", "--predictions", str(predictions), "--manifest", str(manifest), "--out", str(out),
                 "--heatmaps", str(heatmaps), "--max-errors", "3"])
    assert code == 0, capsys.readouterr().err
    assert "operating points chosen on val" in capsys.readouterr().out

    # The error cases the report must show: 3 false negatives and 3 false positives at the Youden threshold
    table = pd.read_csv(out / "predictions.csv")
    tested = table[table["split"] == "test"]
    t = json.loads((out / "operating_points.json").read_text())["youden"]
    fn = tested[(tested["label"] == 1) & (tested["probability"] < t)].nsmallest(3, "probability")
    fp = tested[(tested["label"] == 0) & (tested["probability"] >= t)].nlargest(3, "probability")
    shown = list(fn["case_id"]) + list(fp["case_id"])
    readable = [c for c in shown if c not in broken]
    assert readable and len(readable) < len(shown)
    html = (out / "report.html").read_text()
    assert html.count('alt="anterior view of') == len(readable)
    assert html.count('alt="posterior view of') == len(readable)
    assert html.count('alt="heat map of') == len(shown)
    assert html.count("study not shown") == len(shown) - len(readable)
    assert html.index(f'alt="anterior view of {readable[0]}"') > 0


def test_manifest_join_refuses_unknown_cases_and_disagreeing_labels(tmp_path):
    manifest, predictions, frame = _manifest_and_predictions(tmp_path)
    extra = tmp_path / "extra.csv"
    pd.concat([frame[["case_id", "probability"]],
               pd.DataFrame({"case_id": ["nobody"], "probability": [0.3]})]).to_csv(extra, index=False)
    with pytest.raises(PredictionsError, match="not in the manifest: nobody"):
        load_predictions(extra, manifest)
    wrong = tmp_path / "wrong.csv"
    flipped = frame[["case_id", "probability", "label"]].copy()
    flipped.loc[0, "label"] = 1 - flipped.loc[0, "label"]
    flipped.to_csv(wrong, index=False)
    with pytest.raises(PredictionsError, match="label differs from the manifest.*case000"):
        load_predictions(wrong, manifest)
    joined = load_predictions(predictions, manifest)
    assert (joined.set_index("case_id").loc[frame["case_id"], "label"].to_numpy() == frame["label"]).all()


@pytest.mark.parametrize("args, message", [
    ([], "exactly one of --predictions or --run"),
    (["--predictions", "p.csv", "--run", "r"], "exactly one of --predictions or --run"),
    (["--predictions", "missing.csv"], "missing.csv: no such file"),
])
def test_cli_refusals_exit_2_with_one_line(tmp_path, capsys, args, message):
    code = main(["evaluate", "--out", str(tmp_path / "o"), *[str(tmp_path / a) if a.endswith(".csv") else a
                                                             for a in args]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_to_write_over_the_predictions_it_evaluates(tmp_path, capsys):
    manifest, predictions, frame = _manifest_and_predictions(tmp_path)
    # predict's table carries lesion columns that the evaluation's own predictions.csv does not
    with_lesions = frame[["case_id", "probability"]].assign(bsi=0.5, n_malignant=1)
    with_lesions.to_csv(predictions, index=False)
    written = predictions.read_bytes()
    code = main(["evaluate", "--predictions", str(predictions), "--manifest", str(manifest),
                 "--out", str(tmp_path / "images" / ".."), "--no-report"])  # the same folder, spelled otherwise
    err = capsys.readouterr().err
    assert code == 2 and "holds the predictions being evaluated" in err and len(err.strip().splitlines()) == 1
    assert predictions.read_bytes() == written and not (tmp_path / "metrics.json").exists()
    assert main(["evaluate", "--predictions", str(predictions), "--manifest", str(manifest),
                 "--out", str(tmp_path / "eval"), "--no-report"]) == 0
    assert predictions.read_bytes() == written and (tmp_path / "eval" / "predictions.csv").exists()
    # the library refuses it too, for a caller that names its source
    from bonescan.errors import ConfigError
    from bonescan.evaluate import evaluate_predictions, load_predictions

    with pytest.raises(ConfigError, match="holds the predictions being evaluated"):
        evaluate_predictions(load_predictions(predictions, manifest), tmp_path, inputs={"predictions": str(predictions)})
    assert predictions.read_bytes() == written


def test_cli_refuses_predictions_without_labels(tmp_path, capsys):
    path = tmp_path / "p.csv"
    pd.DataFrame({"case_id": ["a", "b"], "probability": [0.1, 0.9]}).to_csv(path, index=False)
    assert main(["evaluate", "--predictions", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "missing column(s): label" in capsys.readouterr().err


def test_run_mode_predicts_val_and_test_and_freezes_points_into_the_run(tmp_path, monkeypatch, capsys):
    manifest, _, frame = _manifest_and_predictions(tmp_path)
    probability = dict(zip(frame["case_id"], frame["probability"]))
    calls, loads = [], []

    def load_run(run_dir, device, precision):
        loads.append((device, precision))
        return run_dir

    def predict_manifest(loaded, manifest_df, split):
        calls.append((loaded, split))
        part = manifest_df[manifest_df["split"] == split]
        return pd.DataFrame({"case_id": part["case_id"], "probability": [probability[c] for c in part["case_id"]]})

    fake = types.ModuleType("bonescan.inference")
    fake.predict_manifest, fake.load_run = predict_manifest, load_run
    monkeypatch.setitem(sys.modules, "bonescan.inference", fake)
    run = tmp_path / "run"
    run.mkdir()
    assert main(["evaluate", "--run", str(run), "--manifest", str(manifest), "--out", str(tmp_path / "o"),
                 "--no-report", "--device", "cpu"]) == 0
    assert not (tmp_path / "o" / "report.html").exists()
    # The run is loaded once, on the CPU in fp32, and predicts the val split (operating points) and the test split.
    assert loads == [("cpu", "fp32")] and calls == [(run, "val"), (run, "test")]
    frozen = json.loads((run / "operating_points.json").read_text())
    written = json.loads((tmp_path / "o" / "operating_points.json").read_text())
    assert frozen["youden"] == written["youden"] and frozen["chosen_on"] == "val"
    if not torch.cuda.is_available():
        assert main(["evaluate", "--run", str(run), "--manifest", str(manifest), "--out", str(tmp_path / "g"),
                     "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err and len(loads) == 1


def test_cli_refuses_predictions_with_no_rows(tmp_path, capsys):
    path = tmp_path / "p.csv"
    path.write_text("case_id,label,probability\n")
    assert main(["evaluate", "--predictions", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "p.csv" in err and "no cases" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
