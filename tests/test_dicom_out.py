"""DICOM results: the Secondary Capture and the SR read back, join the source study, and pass validation."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import body_views, nm_dataset, save
from srkit import content_items

from bonescan.dicom_out import AlgorithmInfo, ReadingResult, write_dicom_results
from bonescan.io import read_study

DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture()
def nm_study(tmp_path: Path):
    path = save(nm_dataset(body_views()), tmp_path / "scan.dcm")
    return path, read_study(path)


@pytest.fixture()
def overlay() -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.random((120, 70, 3)) * 255).astype(np.uint8)


def _coded_value(items, code_value: str) -> str:
    [item] = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == code_value and i.ValueType == "CODE"]
    return item.ConceptCodeSequence[0].CodeMeaning


def _numeric(items, code_value: str) -> float:
    [item] = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == code_value and i.ValueType == "NUM"]
    return float(item.MeasuredValueSequence[0].NumericValue)


def test_results_join_the_source_study_and_carry_the_reading(tmp_path, nm_study, overlay):
    path, study = nm_study
    source = pydicom.dcmread(path, stop_before_pixels=True)
    result = ReadingResult(probability=0.8125, positive=True, operating_point="youden", threshold=0.4375)
    written = write_dicom_results(tmp_path / "out", study, overlay, result, [path],
                                  AlgorithmInfo(name="bonescan test net", version="9.9"))

    sc = pydicom.dcmread(written.secondary_capture)
    sr = pydicom.dcmread(written.structured_report)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    for result_ds in (sc, sr):
        assert result_ds.StudyInstanceUID == source.StudyInstanceUID
        assert result_ds.PatientID == source.PatientID
        assert result_ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert np.array_equal(sc.pixel_array, overlay)
    assert sc.PhotometricInterpretation == "RGB"

    items = content_items(sr)
    assert _numeric(items, "122157") == pytest.approx(0.8125)  # Probability
    assert _numeric(items, "122411") == pytest.approx(0.4375)  # Threshold Value
    assert _coded_value(items, "94222008") == "Present"  # Bony metastasis
    assert _coded_value(items, "111071") == "youden threshold"  # CAD Operating Point
    texts = {i.TextValue for i in items if i.ValueType == "TEXT"}
    assert {"bonescan test net", "9.9", "operating_point=youden"} <= texts
    referenced = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in items if i.ValueType == "IMAGE"}
    assert source.SOPInstanceUID in referenced
    evidence = {
        ref.ReferencedSOPInstanceUID
        for seq in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence")
        for study_item in getattr(sr, seq, [])
        for series in study_item.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert {source.SOPInstanceUID, sc.SOPInstanceUID} <= evidence
    assert written.warnings == []


def test_negative_decision_is_coded_absent(tmp_path, nm_study, overlay):
    path, study = nm_study
    written = write_dicom_results(tmp_path, study, overlay, ReadingResult(0.1, False, "rule-out", 0.2), [path])
    items = content_items(pydicom.dcmread(written.structured_report))
    assert _coded_value(items, "94222008") == "Absent"


def test_image_file_source_gets_a_new_study_and_says_so(tmp_path, overlay):
    views = body_views().astype(np.float32)
    np.save(tmp_path / "case_ant.npy", views[0])
    np.save(tmp_path / "case_post.npy", views[1])
    files = [tmp_path / "case_ant.npy", tmp_path / "case_post.npy"]
    study = read_study(files)
    written = write_dicom_results(tmp_path / "out", study, overlay, ReadingResult(0.3, False, "0.5", 0.5), files)
    sc, sr = pydicom.dcmread(written.secondary_capture), pydicom.dcmread(written.structured_report)
    assert sc.StudyInstanceUID == sr.StudyInstanceUID
    assert any("new study" in w for w in written.warnings)


def test_an_overlay_that_is_not_rgb_is_refused_and_nothing_is_written(tmp_path, nm_study):
    path, study = nm_study
    with pytest.raises(ValueError, match="H x W x 3"):
        write_dicom_results(tmp_path / "out", study, np.zeros((10, 10), np.uint8),
                            ReadingResult(0.5, True, "0.5", 0.5), [path])
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_highdicom_construction_checks_refuse_a_non_finite_probability(tmp_path, nm_study, overlay):
    path, study = nm_study
    with pytest.raises(ValueError, match="non-finite"):
        write_dicom_results(tmp_path / "out", study, overlay, ReadingResult(float("nan"), True, "0.5", 0.5), [path])
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_results_pass_dciodvfy(tmp_path, nm_study, nm1_path, overlay):
    path, study = nm_study
    outputs = []
    for source_path in (path, nm1_path):  # synthetic NM, and a real GE scan (single view, JPEG lossless)
        written = write_dicom_results(tmp_path / source_path.stem, study, overlay,
                                      ReadingResult(0.7, True, "youden", 0.5), [source_path])
        outputs += [written.secondary_capture, written.structured_report]
    for output in outputs:
        check = subprocess.run([DCIODVFY, "-new", str(output)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{output.name}: {errors}"
