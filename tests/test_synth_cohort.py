"""Synthetic cohort folders: NM DICOM round trip, manifest, resume after interruption, bad input, CLI, preview."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from bonescan.cli import main
from bonescan.errors import ConfigError
from bonescan.synth import generate_case, generate_cohort, write_preview
from bonescan.synth import writer as synth_writer


def _pixel_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(pydicom.dcmread(p).PixelData).hexdigest()
            for p in sorted((folder / "studies").glob("*.dcm"))}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    generate_cohort(out, 4, seed=5, difficulty="paper")
    return out


def test_dicom_is_a_two_frame_nm_whole_body_study(cohort):
    ds = pydicom.dcmread(cohort / "studies" / "syn00000.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.20"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    assert int(ds.NumberOfFrames) == 2 and ds.pixel_array.dtype == np.uint16
    assert ds.pixel_array.shape == (2, 1024, 256)
    assert ds.FrameIncrementPointer == 0x00540020 and list(ds.DetectorVector) == [1, 2]
    codes = [item.ViewCodeSequence[0].CodeValue for item in ds.DetectorInformationSequence]
    assert codes == ["399321004", "399001007"]  # SCT anterior, posterior projection (CID 26)
    assert [float(v) for v in ds.PixelSpacing] == [2.4, 2.4]
    record = json.loads((cohort / "studies" / "syn00000.json").read_text())
    assert ds.PatientSex == record["sex"] and ds.PatientAge == f"{record['age']:03d}Y"
    assert ds.Manufacturer == "bonescan synthetic"
    uids = {pydicom.dcmread(p).StudyInstanceUID for p in (cohort / "studies").glob("*.dcm")}
    assert len(uids) == 4


def test_round_trip_through_read_study_and_load_manifest(cohort):
    from bonescan.cohort import load_manifest
    from bonescan.io import read_study

    df = load_manifest(cohort / "manifest.csv")
    assert list(df["case_id"]) == [f"syn{i:05d}" for i in range(4)]
    assert set(df["split"]) <= {"train", "val", "test"}
    assert (df["label"] == (df["grade"] >= 2).astype(int)).all()
    for row in df.itertuples():
        study = read_study(row.path)
        assert study.view_rule == "view-code" and not study.warnings
        assert study.pixel_spacing == (2.4, 2.4)
        assert study.meta.sex == row.sex and study.meta.age == row.age
        again = generate_case(row.case_id, int(row.seed), "paper")
        assert np.array_equal(study.anterior, again.anterior.astype(np.float32))
        assert np.array_equal(study.posterior, again.posterior.astype(np.float32))
        record = json.loads(Path(row.path).with_suffix(".json").read_text())
        assert record["grade"] == row.grade and record["n_metastases"] == row.n_metastases


def test_rerun_resumes_after_interruption_with_identical_pixels(tmp_path, monkeypatch):
    out = tmp_path / "c"
    generate_cohort(out, 3, seed=9)
    before = _pixel_hashes(out)
    # Interrupt the run while the second study's DICOM is being written.
    (out / "studies" / "syn00001.dcm").unlink()
    real_write = synth_writer.write_case_dicom

    def interrupted(case, target):
        if case.case_id == "syn00001":
            from bonescan.fileio import atomic_path

            with atomic_path(target) as tmp:
                tmp.write_bytes(b"DICM partial")
                raise KeyboardInterrupt
        return real_write(case, target)

    monkeypatch.setattr(synth_writer, "write_case_dicom", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_cohort(out, 3, seed=9)
    assert not (out / "studies" / "syn00001.dcm").exists()
    assert not [p for p in (out / "studies").iterdir() if p.name.startswith(".")]  # no half-written file
    monkeypatch.setattr(synth_writer, "write_case_dicom", real_write)
    result = generate_cohort(out, 3, seed=9)
    assert (result.written, result.skipped) == (1, 2)
    assert _pixel_hashes(out) == before


def test_two_workers_give_the_same_pixels_as_one(tmp_path):
    generate_cohort(tmp_path / "one", 4, seed=2, workers=1)
    generate_cohort(tmp_path / "two", 4, seed=2, workers=2)
    assert _pixel_hashes(tmp_path / "one") == _pixel_hashes(tmp_path / "two")
    assert (tmp_path / "one" / "manifest.csv").read_text() == (tmp_path / "two" / "manifest.csv").read_text()


def test_bad_settings_and_foreign_folders_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="--cases"):
        generate_cohort(tmp_path / "a", -2)
    with pytest.raises(ConfigError, match="difficulty"):
        generate_cohort(tmp_path / "a", 2, difficulty="impossible")
    with pytest.raises(ConfigError, match="pixel-spacing"):
        generate_cohort(tmp_path / "a", 2, pixel_spacing=5.0)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):
        generate_cohort(busy, 2)
    assert (busy / "notes.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1
    made = tmp_path / "made"
    generate_cohort(made, 1, seed=1)
    with pytest.raises(ConfigError, match="same settings"):
        generate_cohort(made, 1, seed=2)


def test_cli_writes_a_cohort_and_refuses_bad_input(tmp_path, capsys):
    assert main(["synth", "--cases", "2", "--out", str(tmp_path / "c"), "--seed", "4"]) == 0
    lines = (tmp_path / "c" / "manifest.csv").read_text().splitlines()
    assert lines[0].split(",")[:8] == ["case_id", "path", "cancer_type", "sex", "age", "grade", "label", "split"]
    assert len(lines) == 3
    capsys.readouterr()
    assert main(["synth", "--cases", "-1", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cases" in err[0]
    assert main(["synth", "--difficulty", "nightmare", "--out", str(tmp_path / "d")]) == 2
    assert "nightmare" in capsys.readouterr().err


def test_ratios_set_the_manifest_split_and_a_rerun_only_resplits(tmp_path, capsys):
    import pandas as pd

    from bonescan.cohort import split_manifest

    out = tmp_path / "c"
    assert main(["synth", "--cases", "12", "--out", str(out), "--seed", "4", "--difficulty", "easy",
                 "--ratios", "0.25,0.25,0.5"]) == 0
    first = pd.read_csv(out / "manifest.csv")
    expected = split_manifest(first.drop(columns="split"), (0.25, 0.25, 0.5), seed=4)
    assert list(first["split"]) == list(expected["split"])
    assert (first["split"] == "test").sum() > (first["split"] == "val").sum()
    capsys.readouterr()
    assert main(["synth", "--cases", "12", "--out", str(out), "--seed", "4", "--difficulty", "easy"]) == 0
    assert "wrote 0 studies" in capsys.readouterr().out
    again = pd.read_csv(out / "manifest.csv")
    assert list(again["split"]) == list(split_manifest(first.drop(columns="split"), seed=4)["split"])
    assert main(["synth", "--cases", "2", "--out", str(tmp_path / "bad"), "--ratios", "0.5,0.6,0.1"]) == 2
    assert "--ratios" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_a_smaller_cohort_holds_the_same_first_studies(cohort, tmp_path):
    generate_cohort(tmp_path / "two", 2, seed=5, difficulty="paper")
    first_two = dict(list(_pixel_hashes(cohort).items())[:2])
    assert _pixel_hashes(tmp_path / "two") == first_two


def test_preview_sheet_circles_metastases_in_red_only_when_asked(tmp_path):
    from PIL import Image

    from bonescan.synth import case_seed

    def red_pixels(path):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 300
            rgb = np.asarray(image.convert("RGB")).astype(int)
        return int(((rgb[..., 0] > 180) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)).sum())

    cases = [c for c in (generate_case(f"p{i}", case_seed(40, i), "easy") for i in range(40))
             if c.demographics.grade == 3 and not c.demographics.superscan][:1]
    assert cases, "no grade-3 case among the first 40"
    marked = write_preview(cases, tmp_path / "marked.png")
    plain = write_preview(cases, tmp_path / "plain.png", mark_findings=False)
    assert red_pixels(marked) > 50 and red_pixels(plain) == 0


def test_baseline_refuses_too_few_cases(capsys):
    assert main(["synth", "--baseline", "--cases", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "too few" in err[0]


def test_unreadable_settings_file_is_a_config_error(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "synth.json").write_text("{not json")
    with pytest.raises(ConfigError, match="synth.json.*cannot be read"):
        generate_cohort(out, 1, seed=1)


def test_a_script_generating_with_workers_without_a_main_guard_gets_one_clear_error(tmp_path):
    # Spawned workers import the calling script again; unguarded, its top level runs in them and they stop.
    script = tmp_path / "unguarded.py"
    script.write_text("from bonescan.synth import generate_cohort\n"
                      f"generate_cohort({str(tmp_path / 'cohort')!r}, 4, seed=1, difficulty='demo', workers=2)\n"
                      "print('written')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode != 0 and "written" not in done.stdout.split()
    assert "ConfigError" in done.stderr and '__name__ == "__main__"' in done.stderr and "workers=1" in done.stderr
    assert not (tmp_path / "cohort" / "manifest.csv").exists()  # no manifest of a cohort that was not written
    guarded = tmp_path / "guarded.py"
    guarded.write_text("if __name__ == \"__main__\":\n" + "".join(f"    {line}\n" for line in
                                                               script.read_text().splitlines()))
    done = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.split() == ["written"], done.stderr
    assert (tmp_path / "cohort" / "manifest.csv").is_file()
