"""`bonescan inspect`: one JSON line per study, failures reported and counted, exit code 2 if any failed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bonescan import cli
from dicom_factory import body_views, nm_dataset, save


def run_inspect(capsys, *paths):
    code = cli.main(["inspect", *map(str, paths)])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    return code, lines, captured.err.splitlines()


def test_ge_two_frame_study_and_nm1(tmp_path, capsys, nm1_path):
    views = body_views()
    ge = save(nm_dataset(views, study_uid="1.2.3.9"), tmp_path / "ge.dcm")
    nm1 = shutil.copy(nm1_path, tmp_path / "nm1.dcm")
    code, lines, err = run_inspect(capsys, tmp_path)
    assert code == 0 and err == []
    by_source = {line["source"]: line for line in lines}
    wb = by_source[str(ge)]
    assert wb["id"] == "1.2.3.9"
    assert wb["views"] == ["anterior", "posterior"]
    assert wb["shape"] == [512, 128]
    assert wb["pixel_spacing"] == [2.4, 2.4]
    assert wb["view_rule"] == "detector-vector"
    assert wb["counts"]["anterior"] == {"total": float(views[0].sum()), "max": 900.0}
    assert wb["counts"]["posterior"] == {"total": float(views[1].sum()), "max": 700.0}
    assert wb["meta"]["age"] == 63.0 and wb["meta"]["sex"] == "M"
    single = by_source[str(nm1)]
    assert single["views"] == ["anterior"] and single["view_rule"] == "single-view"
    assert single["shape"] == [1024, 256]
    assert single["counts"]["anterior"]["max"] == 278.0
    assert single["counts"]["anterior"]["total"] == pytest.approx(3.6e6, rel=0.01)


def test_failures_are_reported_and_the_batch_goes_on(tmp_path, capsys):
    good = save(nm_dataset(body_views()), tmp_path / "good.dcm")
    thyroid = save(nm_dataset(np.full((256, 256), 5, dtype=np.uint16), detector_vector=(1,)), tmp_path / "thy.dcm")
    text = tmp_path / "notes.dcm"
    text.write_text("not a scan")
    code, lines, err = run_inspect(capsys, text, thyroid, good)
    assert code == 2
    assert len(lines) == 3
    errors = {line["source"]: line["error"] for line in lines if "error" in line}
    assert set(errors) == {str(text), str(thyroid)}
    assert "cannot be a whole-body scan" in errors[str(thyroid)]
    assert "not a DICOM or image file" in errors[str(text)]
    assert [line for line in lines if "error" not in line][0]["source"] == str(good)
    assert len(err) == 2 and all(line.startswith("bonescan: error: ") for line in err)


def test_empty_folder_is_an_error(tmp_path, capsys):
    code, lines, err = run_inspect(capsys, tmp_path)
    assert code == 2 and lines == []
    assert "no DICOM or image files found" in err[0]
