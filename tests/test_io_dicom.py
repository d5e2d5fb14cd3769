"""Reading NM DICOM whole-body scans: the real NM1 scan, two-frame files, view rules, two-file studies, compression."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom import uid

from bonescan.errors import ViewError
from bonescan.io import find_studies, read_study
from dicom_factory import (
    ANTERIOR_MARKER,
    ANTERIOR_MARKER_VALUE,
    ANTERIOR_SCT,
    ANTERIOR_SRT,
    POSTERIOR_MARKER,
    POSTERIOR_MARKER_VALUE,
    POSTERIOR_SCT,
    POSTERIOR_SRT,
    SECONDARY_CAPTURE,
    body_views,
    nm_dataset,
    save,
)


def assert_views_right(study, views):
    """The study's anterior is the factory's anterior frame (marker included), likewise posterior."""
    np.testing.assert_array_equal(study.anterior, views[0].astype(np.float32))
    np.testing.assert_array_equal(study.posterior, views[1].astype(np.float32))
    assert study.anterior[ANTERIOR_MARKER].min() == ANTERIOR_MARKER_VALUE
    assert study.posterior[POSTERIOR_MARKER].min() == POSTERIOR_MARKER_VALUE


# --- NM1: a real GE whole-body scan (Secondary Capture, modality NM, one view, JPEG lossless) ------------------


def test_nm1_reads_as_single_anterior_view_with_published_measurements(nm1_path):
    study = read_study(nm1_path)
    assert study.views == ["anterior"]
    assert study.posterior is None
    assert study.view_rule == "single-view"
    image = study.anterior
    assert image.shape == (1024, 256) and image.dtype == np.float32
    assert study.pixel_spacing == pytest.approx((2.26, 2.26))
    # Published figures for NM1: 3.6 M counts, max 278; the header's own Counts Accumulated and Largest Image
    # Pixel Value are independent records of the same numbers.
    header = pydicom.dcmread(nm1_path, stop_before_pixels=True)
    assert image.sum(dtype=np.float64) == pytest.approx(3.6e6, rel=0.01)
    assert image.sum(dtype=np.float64) == int(header.CountsAccumulated)
    assert image.max() == 278 == int(header.LargestImagePixelValue)
    assert image.min() >= 0


def test_nm1_metadata(nm1_path):
    meta = read_study(nm1_path).meta
    assert meta.sex == "M"
    assert meta.age is None  # Patient's Age is empty and there is no birth date
    assert meta.study_date == "20040826"
    assert meta.manufacturer == "GE Medical Systems"
    assert meta.model == "MILLENNIUM MG"
    assert meta.study_uid == "1.3.6.1.4.1.5962.1.2.8.20040826185059.5457"
    assert len(meta.sop_instance_uids) == 1


def test_nm1_is_refused_where_two_views_are_needed(nm1_path):
    study = read_study(nm1_path)
    with pytest.raises(ViewError, match="only: anterior") as caught:
        study.both_views()
    assert str(nm1_path) in str(caught.value)


def test_nm1_counts_are_a_body_not_noise(nm1_path):
    """Sanity of the decoded image: counts concentrated in the body's middle columns, not spread uniformly."""
    image = read_study(nm1_path).anterior
    middle = image[:, 64:192].sum()
    assert middle > 0.8 * image.sum()


# --- two-frame NM files: which frame is anterior -----------------------------------------------------------------


def test_ge_style_detector_vector_decides(tmp_path):
    views = body_views()
    path = save(nm_dataset(views), tmp_path / "ge.dcm")  # no view codes, no view text, Detector Vector [1, 2]
    study = read_study(path)
    assert study.view_rule == "detector-vector"
    assert_views_right(study, views)
    assert study.pixel_spacing == pytest.approx((2.4, 2.4))
    assert study.warnings == []


def test_detector_vector_order_is_followed_not_frame_order(tmp_path):
    views = body_views()
    stored = np.stack([views[1], views[0]])  # posterior stored first, from detector 2
    path = save(nm_dataset(stored, detector_vector=(2, 1)), tmp_path / "swapped.dcm")
    assert_views_right(read_study(path), views)


@pytest.mark.parametrize("codes", [(POSTERIOR_SCT, ANTERIOR_SCT), (POSTERIOR_SRT, ANTERIOR_SRT)], ids=["SCT", "SRT"])
def test_view_codes_decide_before_detector_vector(tmp_path, codes):
    views = body_views()
    stored = np.stack([views[1], views[0]])  # codes say frame 0 is posterior; the detector vector says otherwise
    path = save(nm_dataset(stored, view_codes=codes, detector_vector=(1, 2)), tmp_path / "codes.dcm")
    study = read_study(path)
    assert study.view_rule == "view-code"
    assert_views_right(study, views)
    assert any("detector-vector" in note for note in study.warnings)  # the disagreement is reported


def test_view_code_meaning_is_read_when_the_code_is_local(tmp_path):
    views = body_views()
    codes = (("L-POST", "99LOCAL", "Posterior whole body"), ("L-ANT", "99LOCAL", "Anterior whole body"))
    stored = np.stack([views[1], views[0]])
    path = save(nm_dataset(stored, view_codes=codes, detector_vector=None), tmp_path / "local.dcm")
    study = read_study(path)
    assert study.view_rule == "view-code"
    assert_views_right(study, views)


def test_antero_posterior_meaning_is_ambiguous_and_does_not_decide(tmp_path):
    views = body_views()
    codes = (("X1", "99LOCAL", "antero-posterior"), ("X2", "99LOCAL", "postero-anterior"))
    path = save(nm_dataset(views, view_codes=codes), tmp_path / "ap.dcm")
    study = read_study(path)
    assert study.view_rule == "detector-vector"
    assert_views_right(study, views)


@pytest.mark.parametrize(
    "keyword, text",
    [("SeriesDescription", "WB POST/ANT"), ("ImageID", "WB_POST_ANT"), ("ViewPosition", "POST ANT")],
)
def test_text_gives_frame_order(tmp_path, keyword, text):
    views = body_views()
    stored = np.stack([views[1], views[0]])
    path = save(nm_dataset(stored, detector_vector=None, text={keyword: text}), tmp_path / "text.dcm")
    study = read_study(path)
    assert study.view_rule == "text"
    assert_views_right(study, views)


def test_text_naming_one_view_does_not_decide_two_frames(tmp_path):
    ds = nm_dataset(body_views(), detector_vector=None, text={"SeriesDescription": "BONE ANT"})
    path = save(ds, tmp_path / "a.dcm")
    with pytest.raises(ViewError, match="cannot tell which frame is anterior"):
        read_study(path)


def test_post_injection_text_is_not_a_posterior_view(tmp_path):
    views = body_views()
    ds = nm_dataset(views[0], detector_vector=None, text={"SeriesDescription": "WB 3H POST INJ"})
    study = read_study(save(ds, tmp_path / "delayed.dcm"))
    assert study.views == ["anterior"]
    assert any("taken as anterior" in w for w in study.warnings)


def test_two_frames_without_any_view_information_are_refused(tmp_path):
    path = save(nm_dataset(body_views(), detector_vector=None), tmp_path / "anonymous.dcm")
    with pytest.raises(ViewError, match="anonymous.dcm.*cannot tell which frame"):
        read_study(path)


def test_secondary_capture_with_modality_nm_is_accepted(tmp_path):
    views = body_views()
    path = save(nm_dataset(views, sop_class=SECONDARY_CAPTURE), tmp_path / "sc.dcm")
    assert_views_right(read_study(path), views)


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    views = body_views()
    path = save(nm_dataset(views, rescale=(2.0, 1.0)), tmp_path / "rescaled.dcm")
    study = read_study(path)
    np.testing.assert_allclose(study.anterior, views[0] * 2.0 + 1.0)
    np.testing.assert_allclose(study.posterior, views[1] * 2.0 + 1.0)


@pytest.mark.parametrize(
    "age, years", [("063Y", 63.0), ("006M", 0.5), ("026W", 26 / 52.1775), ("", None)]
)
def test_patient_age(tmp_path, age, years):
    path = save(nm_dataset(body_views(), patient_age=age, patient_sex="F"), tmp_path / "age.dcm")
    meta = read_study(path).meta
    assert meta.age == (pytest.approx(years) if years is not None else None)
    assert meta.sex == "F"


def test_age_from_birth_date_when_patient_age_is_absent(tmp_path):
    ds = nm_dataset(body_views(), patient_age="")
    ds.PatientBirthDate = "19590315"  # study date 20190315: exactly 60 years
    meta = read_study(save(ds, tmp_path / "birth.dcm")).meta
    assert meta.age == pytest.approx(60.0, abs=0.01)


def test_spacing_falls_back_to_imager_pixel_spacing_then_warns(tmp_path):
    ds = nm_dataset(body_views(), pixel_spacing=None)
    ds.ImagerPixelSpacing = [4.0, 4.2]
    assert read_study(save(ds, tmp_path / "imager.dcm")).pixel_spacing == pytest.approx((4.0, 4.2))
    bare = read_study(save(nm_dataset(body_views(), pixel_spacing=None), tmp_path / "bare.dcm"))
    assert bare.pixel_spacing is None
    assert "no pixel spacing in the file" in bare.warnings


# --- single-view files and two-file studies ----------------------------------------------------------------------


def _single_view_files(tmp_path, views, posterior_first_name: bool = True, **kwargs):
    study_uid = pydicom.uid.generate_uid()
    ant = nm_dataset(views[0], detector_vector=(1,), study_uid=study_uid, **kwargs)
    post = nm_dataset(views[1], detector_vector=(2,), study_uid=study_uid, **kwargs)
    names = ("b.dcm", "a.dcm") if posterior_first_name else ("a.dcm", "b.dcm")
    return save(ant, tmp_path / names[0]), save(post, tmp_path / names[1]), study_uid


def test_two_files_given_in_order(tmp_path):
    views = body_views()
    ant, post, study_uid = _single_view_files(tmp_path, views)
    study = read_study([ant, post])
    assert study.view_rule == "file-pair"
    assert_views_right(study, views)
    assert study.meta.study_uid == study_uid
    assert len(study.meta.sop_instance_uids) == 2
    assert not any("given as" in note for note in study.warnings)


def test_two_files_given_in_the_wrong_order_keep_the_order_but_warn(tmp_path):
    views = body_views()
    ant, post, _ = _single_view_files(tmp_path, views)
    study = read_study([post, ant])
    np.testing.assert_array_equal(study.anterior, views[1])
    assert any("given as the anterior view but its detector-vector says posterior" in w for w in study.warnings)


def test_two_files_found_in_a_folder_are_ordered_by_their_contents(tmp_path):
    views = body_views()
    _single_view_files(tmp_path, views, posterior_first_name=True)  # the posterior file sorts first by name
    (source,) = find_studies([tmp_path])
    assert len(source.files) == 2 and not source.ordered
    study = read_study(source)
    assert study.view_rule == "file-pair:detector-vector"
    assert_views_right(study, views)


def test_single_view_file_with_posterior_text(tmp_path):
    views = body_views()
    path = save(nm_dataset(views[1], detector_vector=None, text={"ViewPosition": "POSTERIOR"}), tmp_path / "p.dcm")
    study = read_study(path)
    assert study.views == ["posterior"] and study.view_rule == "single-view"
    np.testing.assert_array_equal(study.posterior, views[1])


def test_single_view_without_view_information_is_taken_as_anterior_with_a_warning(tmp_path):
    views = body_views()
    study = read_study(save(nm_dataset(views[0], detector_vector=None), tmp_path / "x.dcm"))
    assert study.views == ["anterior"]
    assert any("taken as anterior" in w for w in study.warnings)


def test_two_frame_file_cannot_be_half_of_a_pair(tmp_path):
    two = save(nm_dataset(body_views()), tmp_path / "two.dcm")
    with pytest.raises(ViewError, match="holds both views"):
        read_study([two, two])


# --- compressed transfer syntaxes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "syntax", [uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless], ids=["RLE", "JPEG-LS", "JPEG2000"]
)
def test_compressed_two_frame_files_read_back_exactly(tmp_path, syntax):
    views = body_views(seed=3)
    path = save(nm_dataset(views), tmp_path / "compressed.dcm", transfer_syntax=syntax)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    assert_views_right(read_study(path), views)


def test_jpeg_lossless_nm1_matches_its_uncompressed_copy(tmp_path, nm1_path):
    ds = pydicom.dcmread(nm1_path)
    assert ds.file_meta.TransferSyntaxUID == uid.JPEGLosslessSV1
    ds.decompress()
    plain = tmp_path / "nm1_plain.dcm"
    ds.save_as(plain, enforce_file_format=True)
    np.testing.assert_array_equal(read_study(nm1_path).anterior, read_study(plain).anterior)


def test_single_view_file_is_decoded_once(tmp_path, monkeypatch):
    from bonescan.io import read as read_module

    calls = []
    real = read_module.read_dicom
    monkeypatch.setattr(read_module, "read_dicom", lambda path: calls.append(path) or real(path))
    path = save(nm_dataset(body_views()[0], detector_vector=(1,)), tmp_path / "one.dcm")
    assert read_study(path).views == ["anterior"]
    assert calls == [path]
