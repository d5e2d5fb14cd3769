"""The demo end to end at a tiny size: every stage writes its outputs, and a rerun reuses them."""

from __future__ import annotations

import json

import pandas as pd
import pydicom
import pytest

from bonescan import cli
from bonescan.demo import DemoSettings, run_demo
from bonescan.errors import ConfigError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    result = run_demo(out, DemoSettings(cases=40, preset="tiny", workers=1, predict_examples=2, difficulty="easy"),
                      say=lines.append, progress=False)
    return out, result, lines


def test_demo_writes_report_summary_and_results(demo_run):
    out, result, lines = demo_run
    assert result.report == out / "evaluation" / "report.html"
    html = result.report.read_text()
    assert "<img" in html and "data:image/png;base64," in html
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stage_seconds"]) == {"cohort", "table 1", "training", "evaluation", "heat maps and DICOM"}
    manifest = pd.read_csv(out / "cohort" / "manifest.csv")
    assert summary["test_auc"]["n"] == (manifest["split"] == "test").sum() > 0
    # The demo's 5:1:4 split: the test split outnumbers validation, so its AUC has a usable CI.
    assert (manifest["split"] == "test").sum() > 2 * (manifest["split"] == "val").sum()
    settings = DemoSettings()
    assert 2 <= summary["studies_predicted"] <= settings.error_examples + 2 and summary["studies_failed"] == 0
    assert list((out / "predict" / "heatmaps").glob("*.png"))
    assert len(list((out / "predict" / "dicom").rglob("*.dcm"))) >= 2  # SC + SR per study
    assert (out / "run" / "operating_points.json").is_file()
    assert any(line.startswith("report: ") for line in lines)


def test_demo_rerun_reuses_finished_stages(demo_run):
    out, first, _ = demo_run
    lines: list[str] = []
    again = run_demo(out, DemoSettings(cases=40, preset="tiny", workers=1, predict_examples=2, difficulty="easy"),
                     say=lines.append, progress=False)
    assert any("0 written, 40 reused" in line for line in lines)
    # The finished run is resumed, not retrained: same best epoch and validation AUC.
    assert again.summary["best_val_auc"] == first.summary["best_val_auc"]
    assert again.summary["best_epoch"] == first.summary["best_epoch"]


def test_demo_cli_names_the_report_and_offers_the_lesion_stages_only_to_a_demo_without_them(tmp_path, monkeypatch,
                                                                                          capsys):
    from types import SimpleNamespace

    import bonescan.demo as demo

    report = tmp_path / "d" / "evaluation" / "report.html"
    asked = []
    monkeypatch.setattr(demo, "run_demo", lambda out, settings, **kwargs: asked.append(settings.lesions)
                        or SimpleNamespace(report=report))
    assert cli.main(["demo", "--out", str(tmp_path / "d")]) == 0
    printed = capsys.readouterr().out
    assert f"Open the report: {report.resolve()}" in printed
    assert f"`bonescan demo --out {tmp_path / 'd'} --lesions` adds hotspots, skeletal regions and the Bone Scan " \
           "Index" in printed
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--lesions"]) == 0
    printed = capsys.readouterr().out
    assert "Open the report: " in printed and "--lesions` adds" not in printed
    assert asked == [False, True]


def test_fresh_refuses_to_delete_a_folder_the_demo_did_not_write(tmp_path):
    (tmp_path / "thesis.docx").write_text("precious")
    with pytest.raises(ConfigError, match="thesis.docx"):
        run_demo(tmp_path, DemoSettings(cases=40, preset="tiny"), fresh=True, say=lambda _: None)
    assert (tmp_path / "thesis.docx").read_text() == "precious"


def test_demo_cli_refuses_too_few_cases_and_bad_ratios(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--cases", "5"]) == 2
    assert "--cases" in capsys.readouterr().err
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--ratios", "0.9,0.2,0.1"]) == 2
    assert "--ratios" in capsys.readouterr().err
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--cases", "100", "--ratios", "0.99,0.01,0"]) == 2
    assert "fewer than 2" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    for preset in ("tiny", "no-such-preset"):  # a classifier's, and none at all
        assert cli.main(["demo", "--out", str(tmp_path / "d"), "--lesions", "--lesion-preset", preset]) == 2
        assert "--lesion-preset" in capsys.readouterr().err
    for option, value in (("--lesion-preset", "tiny-lesion"), ("--lesion-epochs", "2")):  # ignored without it
        assert cli.main(["demo", "--out", str(tmp_path / "d"), option, value]) == 2
        assert option in capsys.readouterr().err and not (tmp_path / "d").exists()


LESION_DEMO = DemoSettings(cases=40, preset="tiny", workers=1, predict_examples=2, difficulty="easy", lesions=True,
                           lesion_preset="tiny-lesion", lesion_epochs=2)


@pytest.fixture(scope="module")
def lesion_demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lesion-demo")
    lines: list[str] = []
    result = run_demo(out, LESION_DEMO, say=lines.append, progress=False)
    return out, result, lines


def test_lesion_demo_evaluates_hotspots_of_every_test_study(lesion_demo_run):
    out, result, lines = lesion_demo_run
    manifest = pd.read_csv(out / "cohort" / "manifest.csv")
    test_ids = set(manifest.loc[manifest["split"] == "test", "case_id"])
    assert {p.stem for p in (out / "test_lesions" / "lesions").glob("*.json")} == test_ids
    threshold = json.loads((out / "lesion_run" / "malignancy_threshold.json").read_text())
    assert threshold["chosen_on"] == "val" and threshold["fp_per_study_budget"] == 1.0
    lesions = json.loads((out / "evaluation" / "metrics.json").read_text())["lesions"]
    assert lesions["n_studies"] == len(test_ids) and lesions["n_lesions"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lesions"]["n_lesions"] == lesions["n_lesions"]
    assert summary["lesions"]["sensitivity_at_1_fp"]["fp_per_study"] == 1.0
    assert {"lesion network", "lesions of the test split"} <= set(summary["stage_seconds"])
    assert 'id="lesions"' in result.report.read_text()
    assert any(line.startswith("lesions: ") and "test studies" in line for line in lines)
    # The example studies carry their hotspots: overlays, and DICOM Segmentations beside the SR.
    assert list((out / "predict" / "lesions").glob("*.png"))
    modalities = {pydicom.dcmread(path, stop_before_pixels=True).Modality
                  for path in (out / "predict" / "dicom").rglob("*.dcm")}
    assert {"SEG", "SR"} <= modalities


def test_lesion_demo_rerun_reuses_its_network_threshold_and_readings(lesion_demo_run):
    out, first, _ = lesion_demo_run
    written = {path: path.stat().st_mtime_ns for path in (out / "lesion_run" / "malignancy_threshold.json",
                                                          out / "test_lesions" / "predictions.csv")}
    again = run_demo(out, LESION_DEMO, say=lambda _: None, progress=False)
    assert {path: path.stat().st_mtime_ns for path in written} == written
    assert again.summary["lesions"]["best_val_score"] == first.summary["lesions"]["best_val_score"]
    assert again.summary["lesions"]["sensitivity_at_1_fp"] == first.summary["lesions"]["sensitivity_at_1_fp"]
    # a threshold chosen before hotspots were reported once per focus is chosen again, and the test split read again
    threshold_path, predictions_path = written
    record = json.loads(threshold_path.read_text())
    del record["hotspots"]
    threshold_path.write_text(json.dumps(record))
    run_demo(out, LESION_DEMO, say=lambda _: None, progress=False)
    assert json.loads(threshold_path.read_text())["hotspots"] == "one per focus"
    assert predictions_path.stat().st_mtime_ns > threshold_path.stat().st_mtime_ns > written[threshold_path]
