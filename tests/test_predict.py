"""Batch prediction: every study gets a row, failures carry their reason, outputs match the network."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import torch
from dicom_factory import body_views, nm_dataset, save

from bonescan.errors import ConfigError, RunError
from bonescan.fastpath import InferenceEngine, reference_probabilities
from bonescan.io import find_studies, read_study
from bonescan.model import MultiViewNet
from bonescan.cli import main
from bonescan.predict import (
    FALLBACK_WARNING,
    OperatingPoint,
    manifest_studies,
    predict_sources,
    predict_studies,
    resolve_operating_point,
)
from bonescan.preprocess import PreprocessConfig, preprocess_study

CONFIG = PreprocessConfig(height=64, width=32)


@pytest.fixture(scope="module")
def model() -> MultiViewNet:
    torch.manual_seed(0)
    net = MultiViewNet(backbone="resnet10", trunk_width=8, hidden=16, dropout=0.0).eval()
    with torch.no_grad():
        net.head[-1].weight.mul_(30.0)  # spread the probabilities so thresholds separate the studies
    return net


@pytest.fixture()
def folder(tmp_path: Path, nm1_path: Path) -> Path:
    """Three readable two-view studies, one file that is not DICOM, one real single-view scan (NM1)."""
    root = tmp_path / "in"
    root.mkdir()
    for k in range(3):
        views = body_views(seed=k)
        views[:, 200 + 30 * k : 220 + 30 * k, 30:50] += 60 * k  # different hot spots -> different probabilities
        save(nm_dataset(views), root / f"study{k}.dcm")
    (root / "broken.dcm").write_bytes(b"DICM? no, just text")
    shutil.copy(nm1_path, root / "nm1_single_view.dcm")
    return root


def engine_for(model, batch_size=2) -> InferenceEngine:
    return InferenceEngine(model, device="cpu", precision="fp32", compile="off", batch_size=batch_size)


def test_every_study_gets_a_row_and_failures_do_not_stop_the_batch(folder, model):
    sources = find_studies([folder])
    report = predict_sources(sources, model, CONFIG, engine_for(model), OperatingPoint("0.5", 0.5), workers=1)

    assert len(report.studies) == len(sources) == 5
    by_file = {Path(s.source.split(" + ")[0]).name: s for s in report.studies}
    failed = {name for name, s in by_file.items() if s.status == "failed"}
    assert failed == {"broken.dcm", "nm1_single_view.dcm"}
    assert by_file["broken.dcm"].error.startswith("UnreadableInputError")
    assert by_file["nm1_single_view.dcm"].error.startswith("ViewError")
    assert "broken.dcm" in by_file["broken.dcm"].error  # the message names the input
    assert not report.ok and len(report.failures) == 2

    # Each row's probability is the fp32 reference for that very study (no mix-up across workers or batches).
    for k in range(3):
        row = by_file[f"study{k}.dcm"]
        inputs = preprocess_study(read_study(folder / f"study{k}.dcm"), CONFIG)[None]
        expected = reference_probabilities(model, [inputs])[0]
        assert row.status == "ok" and row.probability == pytest.approx(expected, abs=1e-5)
        assert row.decision == ("metastasis" if expected >= 0.5 else "no metastasis")


def test_decisions_follow_the_frozen_threshold_and_carry_its_warning(folder, model):
    sources = [s for s in find_studies([folder]) if "study" in s.source]
    first = predict_sources(sources, model, CONFIG, engine_for(model), OperatingPoint("0.5", 0.5), workers=0)
    probabilities = sorted(s.probability for s in first.studies)
    assert probabilities[0] < probabilities[-1]
    threshold = (probabilities[0] + probabilities[1]) / 2  # one study below, two above
    point = OperatingPoint("0.5", threshold, warning=FALLBACK_WARNING)
    report = predict_sources(sources, model, CONFIG, engine_for(model), point, workers=0)
    decisions = sorted((s.probability, s.decision) for s in report.studies)
    assert [d for _, d in decisions] == ["no metastasis", "metastasis", "metastasis"]
    assert all(FALLBACK_WARNING in s.warnings and s.threshold == threshold for s in report.studies)


def test_report_writes_csv_and_json_with_failures(folder, model, tmp_path):
    report = predict_sources(find_studies([folder]), model, CONFIG, engine_for(model), OperatingPoint("youden", 0.4))
    table = pd.read_csv(report.write(tmp_path / "preds.csv"))
    assert len(table) == 5 and set(table["status"]) == {"ok", "failed"}
    assert table.loc[table["status"] == "failed", "error"].notna().all()
    assert (table.loc[table["status"] == "ok", "operating_point"] == "youden").all()

    data = json.loads(report.write(tmp_path / "preds.json").read_text())
    assert data["threshold"] == 0.4 and data["n_failed"] == 2
    assert len(data["studies"]) == 3 and len(data["failures"]) == 2
    assert all({"study_id", "source", "error"} <= set(f) for f in data["failures"])
    with pytest.raises(ConfigError):
        report.write(tmp_path / "preds.txt")


def test_heat_maps_and_dicom_results_for_each_predicted_study(folder, model, tmp_path):
    sources = find_studies([folder])
    report = predict_sources(sources, model, CONFIG, engine_for(model), OperatingPoint("youden", 0.5),
                             workers=1, heatmap_dir=tmp_path / "maps", dicom_dir=tmp_path / "dicom")
    ok = [s for s in report.studies if s.status == "ok"]
    assert len(ok) == 3 and len(list((tmp_path / "maps").glob("*.png"))) == 3
    for study in ok:
        assert Path(study.heatmap).is_file()
        sr = pydicom.dcmread(study.dicom_sr)
        source = pydicom.dcmread(study.source, stop_before_pixels=True)
        assert sr.StudyInstanceUID == source.StudyInstanceUID
        numbers = [item for item in _items(sr) if item.ValueType == "NUM"
                   and item.ConceptNameCodeSequence[0].CodeValue == "122157"]
        assert float(numbers[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(study.probability, abs=1e-6)
        assert pydicom.dcmread(study.dicom_sc).Modality == "OT"


def test_an_output_that_cannot_be_written_fails_only_those_studies(folder, model, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the DICOM folder should be")
    sources = [s for s in find_studies([folder]) if "study" in s.source]
    report = predict_sources(sources, model, CONFIG, engine_for(model), OperatingPoint("0.5", 0.5),
                             dicom_dir=blocker)
    assert len(report.studies) == 3
    assert all(s.status == "failed" and s.error.startswith(f"writing results: {blocker}/") for s in report.studies)
    assert all(s.error.endswith(f": cannot be written: {blocker} is not a folder") for s in report.studies)
    assert all(s.probability is not None for s in report.studies)  # the prediction itself is kept
    assert all(s.unwritten for s in report.studies)  # the node reads such a study again later
    assert "unwritten" not in report.to_frame().columns


def test_a_batch_whose_files_will_not_fit_says_so_after_its_first_studies(folder, model, tmp_path, monkeypatch):
    from collections import namedtuple

    import bonescan.disk_forecast as disk_forecast

    sources = [s for s in find_studies([folder]) if "study" in s.source]  # 3 studies, batches of 2
    usage = namedtuple("usage", "total used free")
    notices: list[str] = []
    monkeypatch.setattr(disk_forecast.shutil, "disk_usage", lambda path: usage(10 ** 12, 0, 10 ** 12))
    roomy = predict_sources(sources, model, CONFIG, engine_for(model), OperatingPoint("0.5", 0.5),
                            heatmap_dir=tmp_path / "roomy", notice=notices.append)
    assert roomy.ok and notices == [] and roomy.notices == []
    per_study = sum(Path(s.heatmap).stat().st_size for s in roomy.studies[:2]) / 2
    monkeypatch.setattr(disk_forecast.shutil, "disk_usage", lambda path: usage(10 ** 12, 0, int(per_study * 0.9)))
    tight = predict_sources(sources, model, CONFIG, engine_for(model), OperatingPoint("0.5", 0.5),
                            heatmap_dir=tmp_path / "tight", notice=notices.append)
    assert tight.ok  # a forecast, not a refusal: the files still fit
    [said] = notices
    assert said.startswith(f"the results take about {per_study / 1e3:.1f} kB per study: the 1 study left needs "
                           f"about {per_study / 1e3:.1f} kB, but {tmp_path / 'tight'} has ")
    assert said.endswith("free; studies whose files cannot be written will be listed as failed")
    assert tight.notices == [said]
    notices.clear()  # nothing is forecast without output files
    predict_sources(sources, model, CONFIG, engine_for(model), OperatingPoint("0.5", 0.5), notice=notices.append)
    assert notices == []


def test_operating_points_from_the_run_or_fallback(tmp_path):
    point = resolve_operating_point(tmp_path, "youden")
    assert (point.name, point.threshold) == ("0.5", 0.5) and point.warning == FALLBACK_WARNING

    thresholds = {"youden": 0.31, "rule-out": 0.12, "rule-in": 0.83, "0.5": 0.5}
    (tmp_path / "operating_points.json").write_text(json.dumps({**thresholds, "main": "youden"}))
    for name, value in thresholds.items():
        point = resolve_operating_point(tmp_path, name)
        assert (point.name, point.threshold, point.warning) == (name, value, None)
    with pytest.raises(ConfigError, match="unknown operating point"):
        resolve_operating_point(tmp_path, "best")

    (tmp_path / "operating_points.json").write_text("{not json")
    with pytest.raises(RunError, match="operating_points.json"):
        resolve_operating_point(tmp_path, "youden")


def _manifest(folder: Path, rows: list[dict]) -> Path:
    """A cohort manifest in `folder` with the clinical columns filled in; rows give case_id, files and the rest."""
    clinical = {"cancer_type": "lung", "sex": "F", "age": 64, "label": 0}
    path = folder / "manifest.csv"
    pd.DataFrame([{**clinical, **row} for row in rows]).to_csv(path, index=False)
    return path


def test_manifest_rows_become_sources_keyed_by_case_id(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"")
    manifest = _manifest(tmp_path, [
        {"case_id": "c1", "path": "a.dcm", "anterior": "", "posterior": "", "split": "test", "exclude_reason": ""},
        {"case_id": "c2", "path": "", "anterior": "ant.png", "posterior": "post.png", "split": "test",
         "exclude_reason": ""},
        {"case_id": "c3", "path": "a.dcm", "anterior": "", "posterior": "", "split": "test",
         "exclude_reason": "prior surgery"},
        {"case_id": "c4", "path": "a.dcm", "anterior": "", "posterior": "", "split": "val", "exclude_reason": ""},
    ])
    every = manifest_studies(manifest)
    assert every.case_ids == ["c1", "c2", "c4"]  # the excluded row is skipped, manifest order kept
    assert every.sources[1].files == ((tmp_path / "ant.png").resolve(), (tmp_path / "post.png").resolve())
    test = manifest_studies(manifest, "test")
    assert test.case_ids == ["c1", "c2"] and test.sources[0].files == ((tmp_path / "a.dcm").resolve(),)
    with pytest.raises(ConfigError, match="unknown split"):
        manifest_studies(manifest, "tests")
    only_excluded = _manifest(tmp_path, [{"case_id": "x", "path": "a.dcm", "exclude_reason": "motion"}])
    with pytest.raises(ConfigError, match="no studies to predict"):
        manifest_studies(only_excluded)
    with pytest.raises(ConfigError, match="no split column"):
        manifest_studies(only_excluded, "test")


def test_paths_and_manifest_are_either_or(tmp_path, folder, capsys):
    manifest = _manifest(tmp_path, [{"case_id": "c1", "path": str(folder / "study0.dcm")}])
    # Refused before the run is loaded, so a run that does not exist is not what the message is about.
    for args in ([str(folder), "--manifest", str(manifest)], [], [str(folder), "--split", "test"]):
        assert main(["predict", "--run", str(tmp_path / "no_run"), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no_run" not in err
        assert "--manifest" in err
    with pytest.raises(ConfigError, match="not both or neither"):
        predict_studies(tmp_path / "no_run", [folder], manifest=manifest)


def test_manifest_studies_carry_case_id_uid_and_heat_maps_named_by_case(tmp_path, folder, model, monkeypatch):
    manifest = _manifest(tmp_path, [
        {"case_id": "case-b", "path": str(folder / "study1.dcm")},
        {"case_id": "case-a", "path": str(folder / "study0.dcm")},
        {"case_id": "case-gone", "path": str(folder / "missing.dcm")},
    ])
    studies = manifest_studies(manifest)
    monkeypatch.chdir(tmp_path)  # a relative heat-map folder must still give paths usable from anywhere
    report = predict_sources(studies.sources, model, CONFIG, engine_for(model), OperatingPoint("0.5", 0.5),
                             workers=0, heatmap_dir=Path("maps"), case_ids=studies.case_ids)
    by_case = {s.case_id: s for s in report.studies}
    assert list(by_case) == ["case-b", "case-a", "case-gone"]
    for case_id, name in (("case-b", "study1.dcm"), ("case-a", "study0.dcm")):
        outcome = by_case[case_id]
        uid = pydicom.dcmread(folder / name, stop_before_pixels=True).StudyInstanceUID
        assert outcome.status == "ok" and outcome.study_id == uid
        assert Path(outcome.heatmap) == (tmp_path / "maps" / f"{case_id}.png").resolve()
        assert Path(outcome.heatmap).is_absolute() and Path(outcome.heatmap).is_file()
    gone = by_case["case-gone"]
    assert gone.status == "failed" and "missing.dcm" in gone.error and gone.study_id == "missing"

    table = pd.read_csv(report.write(tmp_path / "out" / "preds.csv"), dtype=str, keep_default_na=False)
    assert list(table.columns[:2]) == ["case_id", "study_id"]
    assert list(table["case_id"]) == ["case-b", "case-a", "case-gone"]
    data = json.loads(report.write(tmp_path / "preds.json").read_text())
    assert [s["case_id"] for s in data["studies"]] == ["case-b", "case-a"]
    assert data["failures"][0]["case_id"] == "case-gone"

    # Without a manifest nothing changes: no case_id column.
    plain = predict_sources(find_studies([folder / "study0.dcm"]), model, CONFIG, engine_for(model),
                            OperatingPoint("0.5", 0.5), workers=0)
    assert "case_id" not in plain.to_frame().columns


def _items(dataset) -> list:
    items = []
    for item in getattr(dataset, "ContentSequence", []):
        items.append(item)
        items += _items(item)
    return items


def test_a_script_without_a_main_guard_gets_one_clear_error_not_a_broken_pool(folder, tmp_path):
    # Reader processes import the calling script again; unguarded, its top level runs in them and they stop.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from bonescan.io import find_studies\n"
        "from bonescan.predict import iterate_batches\n"
        "from bonescan.preprocess import PreprocessConfig\n"
        f"sources = find_studies([{str(folder / 'study0.dcm')!r}, {str(folder / 'study1.dcm')!r}])\n"
        "list(iterate_batches(sources, PreprocessConfig(height=64, width=32), 1, workers=1))\n"
        "print('read')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode != 0 and "read" not in done.stdout.split()
    assert "ConfigError" in done.stderr and '__name__ == "__main__"' in done.stderr and "--workers" in done.stderr
    guarded = tmp_path / "guarded.py"
    guarded.write_text("if __name__ == \"__main__\":\n" + "".join(f"    {line}\n" for line in
                                                               script.read_text().splitlines()))
    done = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.split() == ["read"], done.stderr
