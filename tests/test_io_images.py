"""Image-file studies: anterior/posterior pairs as PNG (8/16-bit), TIFF, JPEG or .npy, and their naming rule."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from bonescan.io import find_studies, read_study
from dicom_factory import ANTERIOR_MARKER, POSTERIOR_MARKER, body_views


def _write(path, image):
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, image)
    elif suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, image)
    else:
        Image.fromarray(image).save(path)
    return path


def _pair(tmp_path, suffix, dtype, case="c1"):
    views = body_views()
    # 8-bit files hold display levels: markers saturate at 255 rather than wrapping around
    views = np.clip(views, 0, 255).astype(dtype) if dtype == np.uint8 else views.astype(dtype)
    ant = _write(tmp_path / f"{case}_ant{suffix}", views[0])
    post = _write(tmp_path / f"{case}_post{suffix}", views[1])
    return views, ant, post


@pytest.mark.parametrize(
    "suffix, dtype",
    [(".png", np.uint16), (".png", np.uint8), (".tif", np.uint16), (".tiff", np.float32), (".npy", np.float32)],
    ids=["png16", "png8", "tif16", "tiff-float", "npy"],
)
def test_lossless_image_pairs_read_back_exactly(tmp_path, suffix, dtype):
    views, ant, post = _pair(tmp_path, suffix, dtype)
    study = read_study([ant, post])
    assert study.view_rule == "image-pair"
    assert study.anterior.dtype == np.float32
    np.testing.assert_array_equal(study.anterior, views[0].astype(np.float32))
    np.testing.assert_array_equal(study.posterior, views[1].astype(np.float32))
    assert study.pixel_spacing is None
    eight_bit_warned = any("8-bit" in w for w in study.warnings)
    assert eight_bit_warned == (dtype == np.uint8)


def test_jpeg_pair_is_close_and_warned_lossy(tmp_path):
    views, ant, post = _pair(tmp_path, ".jpg", np.uint8)
    study = read_study([ant, post])
    assert np.abs(study.anterior - views[0]).mean() < 3.0  # lossy, but the same picture
    assert study.anterior[ANTERIOR_MARKER].mean() > 200 and study.posterior[POSTERIOR_MARKER].mean() > 200
    assert study.anterior[POSTERIOR_MARKER].mean() < 100
    assert any("lossy" in w for w in study.warnings)


def test_grey_saved_as_rgb_png_is_read_as_grey(tmp_path):
    views = np.clip(body_views(), 0, 255).astype(np.uint8)
    rgb = np.repeat(views[0][..., None], 3, axis=2)
    ant = _write(tmp_path / "c_ant.png", rgb)
    post = _write(tmp_path / "c_post.png", views[1])
    study = read_study([ant, post])
    np.testing.assert_array_equal(study.anterior, views[0])
    assert not any("colour" in w for w in study.warnings)


def test_single_image_named_posterior_is_a_posterior_view(tmp_path):
    views = body_views().astype(np.uint16)
    path = _write(tmp_path / "case9-posterior.png", views[1])
    study = read_study(path)
    assert study.views == ["posterior"] and study.view_rule == "single-view"
    np.testing.assert_array_equal(study.posterior, views[1])


def test_image_pairs_found_by_name(tmp_path):
    views = body_views().astype(np.uint16)
    _write(tmp_path / "c1_ant.png", views[0])
    _write(tmp_path / "c1_post.png", views[1])
    _write(tmp_path / "c2-ANTERIOR.tif", views[0])
    _write(tmp_path / "c2-Posterior.npy", views[1].astype(np.float32))  # extensions may differ
    (tmp_path / "c3").mkdir()
    _write(tmp_path / "c3" / "posterior.png", views[1])
    _write(tmp_path / "c3" / "anterior.png", views[0])
    _write(tmp_path / "lonely_ant.png", views[0])
    (tmp_path / "notes.txt").write_text("not a scan")  # skipped: found in a folder, not an image
    sources = {source.id: source for source in find_studies([tmp_path])}
    assert set(sources) == {"c1", "c2", "c3", "lonely_ant"}
    for case in ("c1", "c2", "c3"):
        study = read_study(sources[case])
        assert study.view_rule == "image-pair"
        np.testing.assert_array_equal(study.anterior, views[0])
        np.testing.assert_array_equal(study.posterior, views[1])
    assert read_study(sources["lonely_ant"]).views == ["anterior"]
