"""Every kind of input bonescan.io refuses: one BoneScanError subclass, naming the file and the reason."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import Decoder

from bonescan.errors import (
    BoneScanError,
    MissingDecoderError,
    NotABoneScanError,
    UnreadableInputError,
    ViewError,
)
from bonescan.io import read_study
from bonescan.preprocess import PreprocessConfig, preprocess_study
from dicom_factory import CT_IMAGE_STORAGE, body_views, nm_dataset, save


def refusal(exc_type, source, *fragments):
    """Read `source`, expect `exc_type`, and check the message names the file and each fragment of the reason."""
    with pytest.raises(exc_type) as caught:
        read_study(source)
    message = str(caught.value)
    first = source[0] if isinstance(source, list) else source
    assert str(first) in message
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(caught.value, BoneScanError)
    return caught.value


def test_text_file_is_not_a_dicom_or_image(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("patient 17: whole body bone scan, see PACS\n" * 5)
    refusal(UnreadableInputError, path, "not a DICOM or image file")


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    refusal(UnreadableInputError, empty, "empty file")
    refusal(UnreadableInputError, tmp_path / "absent.dcm", "no such file")
    refusal(UnreadableInputError, tmp_path, "is a folder")


def test_truncated_compressed_dicom(tmp_path, nm1_path):
    data = nm1_path.read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) // 2])
    refusal(UnreadableInputError, path, "truncated")


def test_truncated_uncompressed_dicom(tmp_path):
    whole = save(nm_dataset(body_views()), tmp_path / "whole.dcm")
    data = whole.read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) - 5000])
    refusal(UnreadableInputError, path, "truncated")


def test_truncated_png(tmp_path):
    path = tmp_path / "cut_ant.png"
    Image.fromarray(body_views()[0]).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refusal(UnreadableInputError, path, "truncated or corrupt image")


def test_no_pixel_data(tmp_path):
    ds = nm_dataset(body_views())
    del ds.PixelData
    refusal(NotABoneScanError, save(ds, tmp_path / "header_only.dcm"), "no pixel data")


def test_modality_other_than_nm(tmp_path):
    path = save(nm_dataset(body_views(), modality="CT", sop_class=CT_IMAGE_STORAGE), tmp_path / "ct.dcm")
    refusal(NotABoneScanError, path, "modality CT", "nuclear medicine (NM)")


def test_thyroid_static_is_not_a_whole_body_scan(tmp_path):
    thyroid = np.random.default_rng(0).poisson(20, size=(256, 256)).astype(np.uint16)
    path = save(nm_dataset(thyroid, detector_vector=(1,)), tmp_path / "thyroid.dcm")
    refusal(NotABoneScanError, path, "256 x 256", "cannot be a whole-body scan")


def test_landscape_image_is_not_a_whole_body_scan(tmp_path):
    path = tmp_path / "wide.npy"
    np.save(path, np.ones((256, 1024), dtype=np.float32))
    refusal(NotABoneScanError, path, "256 x 1024")


def test_more_than_two_frames(tmp_path):
    frames = np.concatenate([body_views(), body_views(seed=1)])
    path = save(nm_dataset(frames, detector_vector=None), tmp_path / "dynamic.dcm")
    refusal(NotABoneScanError, path, "4 frames")


def test_views_of_different_shapes(tmp_path):
    ant, post = tmp_path / "c_ant.npy", tmp_path / "c_post.npy"
    np.save(ant, np.ones((512, 128), dtype=np.float32))
    np.save(post, np.ones((600, 150), dtype=np.float32))
    refusal(ViewError, [ant, post], "different shapes", "512 x 128", "600 x 150")


def test_non_finite_pixels(tmp_path):
    image = np.ones((512, 128), dtype=np.float32)
    image[100, 50] = np.nan
    image[101, 50] = np.inf
    path = tmp_path / "nan_ant.npy"
    np.save(path, image)
    refusal(NotABoneScanError, path, "2 non-finite pixel values")


def test_all_zero_pixels(tmp_path):
    ds = nm_dataset(np.zeros((2, 512, 128), dtype=np.uint16))
    refusal(NotABoneScanError, save(ds, tmp_path / "blank.dcm"), "holds no counts")


def test_missing_decoder_names_the_package_to_install(monkeypatch, nm1_path):
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    error = refusal(MissingDecoderError, nm1_path, "JPEG Lossless", "pip install pylibjpeg pylibjpeg-libjpeg")
    assert isinstance(error, UnreadableInputError)


def test_missing_jpeg_ls_decoder_names_pyjpegls(monkeypatch, tmp_path):
    path = save(nm_dataset(body_views()), tmp_path / "jls.dcm", transfer_syntax=uid.JPEGLSLossless)
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    refusal(MissingDecoderError, path, "pip install pyjpegls")


def test_transfer_syntax_without_any_decoder(tmp_path):
    ds = nm_dataset(body_views())
    ds.file_meta.TransferSyntaxUID = uid.MPEG2MPML
    ds.PixelData = encapsulate([b"\x00" * 64, b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "video.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == uid.MPEG2MPML
    refusal(MissingDecoderError, path, "no decoder", "MPEG2")


def test_corrupt_compressed_pixel_data(tmp_path):
    ds = nm_dataset(body_views())
    ds.file_meta.TransferSyntaxUID = uid.JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60, b"garbage" * 8])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "broken_j2k.dcm"
    ds.save_as(path, enforce_file_format=True)
    refusal(UnreadableInputError, path, "pixel data cannot be decoded")


def test_single_view_study_is_refused_by_preprocessing(nm1_path):
    study = read_study(nm1_path)
    with pytest.raises(ViewError, match="needs both anterior and posterior"):
        preprocess_study(study, PreprocessConfig())
