"""find_studies: folders of DICOM files grouped into studies; unreadable files become failed sources."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from bonescan.errors import NotABoneScanError, UnreadableInputError
from bonescan.io import StudySource, find_studies, read_study
from dicom_factory import body_views, nm_dataset, save


@pytest.fixture()
def archive(tmp_path):
    """A folder as a PACS export leaves it: two-frame studies, a two-file study, junk, a corrupt file."""
    views = body_views()
    (tmp_path / "ge").mkdir()
    ge = nm_dataset(views, study_uid="1.2.3.1")
    save(ge, tmp_path / "ge" / "IM0001")  # no extension, as PACS exports often are
    uid2 = "1.2.3.2"
    save(nm_dataset(views[0], detector_vector=(1,), study_uid=uid2), tmp_path / "pair_1.dcm")
    save(nm_dataset(views[1], detector_vector=(2,), study_uid=uid2), tmp_path / "pair_2.dcm")
    # a study with a whole-body file and an extra single view: each file on its own
    uid3 = "1.2.3.3"
    save(nm_dataset(views, study_uid=uid3), tmp_path / "s3_wb.dcm")
    save(nm_dataset(views[0], detector_vector=(1,), study_uid=uid3), tmp_path / "s3_spot.dcm")
    (tmp_path / "README").write_text("exported 2019-03-15")  # skipped: no extension, not a scan
    (tmp_path / "report.json").write_text("{}")  # skipped
    (tmp_path / "broken.dcm").write_bytes(b"\x00" * 50)  # considered (.dcm), fails
    (tmp_path / ".hidden.dcm").write_bytes(b"\x00" * 50)  # hidden: skipped
    return tmp_path, views


def test_folder_is_grouped_into_studies(archive):
    folder, views = archive
    sources = find_studies([folder])
    by_id = {source.id: source for source in sources}
    assert set(by_id) == {"1.2.3.1", "1.2.3.2", "1.2.3.3#1", "1.2.3.3#2", str(folder / "broken.dcm")}
    assert by_id["1.2.3.1"].files == (folder / "ge" / "IM0001",)
    assert set(by_id["1.2.3.2"].files) == {folder / "pair_1.dcm", folder / "pair_2.dcm"}
    assert not by_id["1.2.3.2"].ordered
    broken = by_id[str(folder / "broken.dcm")]
    assert broken.failed and isinstance(broken.error, UnreadableInputError)
    assert "broken.dcm" in str(broken.error)


def test_every_good_source_reads_and_the_failed_one_raises(archive):
    folder, views = archive
    outcomes = {}
    for source in find_studies([folder]):
        try:
            outcomes[source.id] = read_study(source)
        except UnreadableInputError as error:
            outcomes[source.id] = error
    np.testing.assert_array_equal(outcomes["1.2.3.1"].anterior, views[0])
    np.testing.assert_array_equal(outcomes["1.2.3.2"].posterior, views[1])
    assert outcomes["1.2.3.3#2"].view_rule == "detector-vector"
    assert outcomes["1.2.3.3#1"].views == ["anterior"]
    assert isinstance(outcomes[str(folder / "broken.dcm")], UnreadableInputError)


def test_explicit_files_that_are_not_scans_are_failed_sources(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    sources = find_studies([notes, tmp_path / "missing.dcm"])
    assert [s.failed for s in sources] == [True, True]
    reasons = sorted(str(s.error) for s in sources)
    assert "missing.dcm: no such file or folder" in reasons[0]
    assert "notes.txt: not a DICOM or image file" in reasons[1]


def test_a_readable_non_nm_file_fails_when_read_not_when_found(tmp_path):
    save(nm_dataset(body_views(), modality="MR"), tmp_path / "mr.dcm")
    (source,) = find_studies(tmp_path)
    assert not source.failed
    with pytest.raises(NotABoneScanError, match="modality MR"):
        read_study(source)


def test_same_file_named_twice_is_one_source(tmp_path):
    path = save(nm_dataset(body_views()), tmp_path / "a.dcm")
    assert len(find_studies([path, path, tmp_path])) == 1


def test_study_source_from_find_studies_is_what_read_study_accepts(tmp_path):
    path = save(nm_dataset(body_views()), tmp_path / "a.dcm")
    (source,) = find_studies([path])
    assert isinstance(source, StudySource)
    assert source.id == pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
    assert read_study(source).source == str(path)
