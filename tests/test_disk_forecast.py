"""The forecast of whether a batch's output files fit on the disk."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import bonescan.disk_forecast as disk_forecast
from bonescan.disk_forecast import output_files, shortfall
from bonescan.predict import StudyOutcome

usage = namedtuple("usage", "total used free")


def test_a_studys_output_files_are_those_its_outcome_names_with_the_lesion_files_beside_its_json():
    outcome = StudyOutcome("1.2", "a.dcm", "ok", heatmap="h/1.2.png", dicom_sc="d/sc.dcm", dicom_sr="d/sr.dcm",
                           dicom_seg="d/seg_anterior.dcm;d/seg_posterior.dcm", dicom_hotspots_sc="d/hot.dcm",
                           lesions="l/lesions/1.2.json")
    assert output_files(outcome) == [Path(p) for p in (
        "h/1.2.png", "d/sc.dcm", "d/sr.dcm", "d/hot.dcm", "d/seg_anterior.dcm", "d/seg_posterior.dcm",
        "l/lesions/1.2.json", "l/lesions/1.2.npz", "l/lesions/1.2.png")]
    assert output_files(StudyOutcome("1.3", "b.dcm", "ok")) == []


def test_shortfall_compares_the_size_per_study_times_the_studies_left_with_the_free_space(tmp_path, monkeypatch):
    files = []
    for k in range(4):  # two studies' files, 3,000 bytes each
        files.append(tmp_path / f"{k}.dcm")
        files[-1].write_bytes(b"x" * 1500)
    files.append(tmp_path / "never-written.png")  # a named file that is not there counts nothing
    monkeypatch.setattr(disk_forecast.shutil, "disk_usage", lambda path: usage(10 ** 9, 0, 30_000))
    assert shortfall(files, studies_done=2, studies_left=10) is None  # 30 kB needed, 30 kB free
    said = shortfall(files, studies_done=2, studies_left=11)
    assert said == (f"the results take about 3.0 kB per study: the 11 studies left need about 33.0 kB, but {tmp_path} "
                    "has 30.0 kB free; studies whose files cannot be written will be listed as failed")
    assert shortfall(files, studies_done=2, studies_left=0) is None
    assert shortfall([], studies_done=2, studies_left=100) is None
