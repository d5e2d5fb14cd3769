"""Cameras of a run's training studies, and the flag on a study from another camera."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bonescan.cameras import UNKNOWN, CameraCheck, camera_name, count_cameras, trained_cameras
from bonescan.followup.readers import NetworkReader
from bonescan.study import StudyMeta


def _header_only(path, manufacturer=None, model=None):
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.20"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    if manufacturer is not None:
        ds.Manufacturer = manufacturer
    if model is not None:
        ds.ManufacturerModelName = model
    ds.save_as(path, enforce_file_format=True)
    return path


def _meta(manufacturer, model):
    return StudyMeta(manufacturer=manufacturer, model=model)


def test_camera_names_join_what_the_header_gives():
    assert camera_name("GE Healthcare", "Discovery NM/CT 670") == "GE Healthcare Discovery NM/CT 670"
    assert camera_name(" Siemens ", None) == "Siemens" and camera_name(None, "Forte") == "Forte"
    assert camera_name("", "  ") is None and camera_name(None, None) is None


def test_cameras_are_counted_from_headers_and_files_naming_none_are_unknown(tmp_path):
    ge = [_header_only(tmp_path / f"ge{i}.dcm", "GE Healthcare", "Discovery 670") for i in range(2)]
    folder = tmp_path / "two-files"
    folder.mkdir()
    _header_only(folder / "a.dcm", "Philips", "BrightView")
    _header_only(folder / "b.dcm", "Philips", "BrightView")
    blank = _header_only(tmp_path / "blank.dcm")
    png = tmp_path / "scan.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert count_cameras([*ge, folder, blank, png, tmp_path / "missing.dcm"]) == {
        UNKNOWN: 3, "GE Healthcare Discovery 670": 2, "Philips BrightView": 1}


def test_a_study_is_flagged_only_when_the_run_saw_other_cameras_and_never_its_own(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert trained_cameras(run) is None  # a run made before the record: nothing to say
    assert CameraCheck.of_run(run).warning(_meta("GE Healthcare", "Discovery 670")) is None
    (run / "config.json").write_text(json.dumps({"manifest": {"cameras": {"Siemens Symbia": 40, UNKNOWN: 2}}}))
    check = CameraCheck.of_run(run)
    assert check.trained == {"Siemens Symbia": 40, UNKNOWN: 2}
    assert check.unseen(_meta("Siemens", "Symbia")) is None and check.warning(_meta("Siemens", "Symbia")) is None
    assert check.unseen(_meta(None, None)) is None and check.unseen(None) is None  # the study names no camera
    line = check.warning(_meta("GE Healthcare", "Discovery 670"))
    assert line.startswith("camera 'GE Healthcare Discovery 670' is not among those of the training studies of run "
                           "(Siemens Symbia (40), unknown (2))")
    # training studies that named no camera: the run cannot tell, so it says nothing
    assert CameraCheck(run, {UNKNOWN: 12}).warning(_meta("GE Healthcare", "Discovery 670")) is None


def test_followup_reader_warns_once_per_unseen_camera_and_reads_every_study(tmp_path):
    told = []
    model = SimpleNamespace(config=SimpleNamespace(preset="tiny-lesion"),
                            cameras=CameraCheck(tmp_path / "run", {"Siemens Symbia": 5}),
                            read=lambda study, study_key, one_per_focus: (study.study_id, None))
    reader = NetworkReader(tmp_path / "run", model=model, warn=told.append)

    def study(name, manufacturer, model_name):
        return SimpleNamespace(study_id=name, meta=_meta(manufacturer, model_name))

    visits = [study("a", "GE", "670"), study("b", "GE", "670"), study("c", "Siemens", "Symbia"),
              study("d", "Philips", "Forte")]
    assert [reader.read(visit, []) for visit in visits] == ["a", "b", "c", "d"]
    assert len(told) == 2 and "'GE 670'" in told[0] and "'Philips Forte'" in told[1]
