"""Preprocessing: posterior mirroring, resize to the network input, [0, 1] normalisation, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from bonescan.errors import ConfigError, ViewError
from bonescan.preprocess import PreprocessConfig, preprocess_study, preprocess_views
from bonescan.study import Study


def asymmetric_pair(rows: int = 64, cols: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Anterior and posterior views, each brighter on its own left (column 0) than its right."""
    ramp = np.linspace(10.0, 1.0, cols, dtype=np.float32)
    anterior = np.tile(ramp, (rows, 1))
    posterior = 2.0 * anterior
    posterior[5, 2] = 100.0  # a hot spot near the posterior view's left edge
    return anterior, posterior


def minmax(image: np.ndarray) -> np.ndarray:
    return (image - image.min()) / (image.max() - image.min())


def test_only_the_posterior_is_mirrored():
    anterior, posterior = asymmetric_pair()
    cfg = PreprocessConfig(height=64, width=16)  # same size: no resampling in the way
    out = preprocess_views(anterior, posterior, cfg)
    np.testing.assert_allclose(out[0], minmax(anterior), atol=1e-6)
    np.testing.assert_allclose(out[1], minmax(posterior[:, ::-1]), atol=1e-6)
    assert out[1, 5, 16 - 1 - 2] == pytest.approx(1.0)  # the hot spot moved to the mirrored column


def test_mirroring_can_be_switched_off():
    anterior, posterior = asymmetric_pair()
    out = preprocess_views(anterior, posterior, PreprocessConfig(height=64, width=16, mirror_posterior=False))
    np.testing.assert_allclose(out[1], minmax(posterior), atol=1e-6)


def test_inputs_are_not_modified():
    anterior, posterior = asymmetric_pair()
    before = posterior.copy()
    preprocess_views(anterior, posterior, PreprocessConfig(height=64, width=16))
    np.testing.assert_array_equal(posterior, before)


def test_paper_size_shape_dtype_and_range():
    rng = np.random.default_rng(0)
    anterior = rng.poisson(5.0, size=(1024, 256)).astype(np.float32)
    posterior = rng.poisson(5.0, size=(1024, 256)).astype(np.float32)
    out = preprocess_views(anterior, posterior, PreprocessConfig())
    assert out.shape == (2, 768, 256)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out[0].min() == pytest.approx(0.0) and out[0].max() == pytest.approx(1.0)  # minmax per view


def test_resize_keeps_head_to_feet_layout():
    anterior = np.ones((1024, 256), dtype=np.float32)
    anterior[100:110, 30:40] = 500.0  # a lesion high on the patient's right
    out = preprocess_views(anterior, anterior.copy(), PreprocessConfig())
    row, col = np.unravel_index(np.argmax(out[0]), out[0].shape)
    assert 70 <= row <= 85 and 28 <= col <= 42  # 100-110 rows scale by 0.75; columns unchanged


def test_counts_normalisation_keeps_the_view_ratio_minmax_does_not():
    anterior, posterior = asymmetric_pair()
    posterior[5, 2] = 20.0  # no outlier: posterior is exactly twice the anterior except one pixel
    cfg = PreprocessConfig(height=64, width=16, normalization="counts", mirror_posterior=False)
    out = preprocess_views(anterior, posterior, cfg)
    scale = np.percentile(np.stack([anterior, posterior]), 99.5)
    np.testing.assert_allclose(out[0], np.clip(anterior / scale, 0, 1), atol=1e-6)
    mask = out[1] < 1.0
    np.testing.assert_allclose(out[1][mask], 2 * out[0][mask], atol=1e-5)
    by_minmax = preprocess_views(anterior, posterior, PreprocessConfig(height=64, width=16, mirror_posterior=False))
    assert by_minmax[1].max() == by_minmax[0].max() == pytest.approx(1.0)  # minmax loses the 2x ratio
    assert not np.allclose(out, by_minmax)


def test_flat_view_normalises_to_zero_not_nan():
    flat = np.full((64, 16), 7.0, dtype=np.float32)
    out = preprocess_views(flat, flat, PreprocessConfig(height=64, width=16))
    assert np.isfinite(out).all() and (out == 0).all()


def test_deterministic():
    rng = np.random.default_rng(5)
    anterior, posterior = (rng.poisson(4.0, size=(512, 128)).astype(np.float32) for _ in range(2))
    cfg = PreprocessConfig(height=384, width=128, normalization="counts")
    first = preprocess_views(anterior, posterior, cfg)
    np.testing.assert_array_equal(first, preprocess_views(anterior, posterior, cfg))


def test_study_with_both_views_and_single_view_refusal():
    anterior, posterior = asymmetric_pair()
    study = Study("pair", anterior, posterior, (2.4, 2.4))
    assert preprocess_study(study, PreprocessConfig(height=32, width=8)).shape == (2, 32, 8)
    single = Study("nm1.dcm", anterior, None, (2.26, 2.26), view_rule="single-view")
    with pytest.raises(ViewError, match="nm1.dcm.*only: anterior"):
        preprocess_study(single, PreprocessConfig())


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"height": 4}, "too small"),
        ({"width": 0}, "too small"),
        ({"normalization": "zscore"}, "unknown normalization"),
        ({"normalization": "counts", "counts_percentile": 30.0}, "counts_percentile"),
    ],
)
def test_bad_config_is_refused(settings, fragment):
    with pytest.raises(ConfigError, match=fragment):
        PreprocessConfig(**settings)


@pytest.mark.parametrize("shape, size", [((1024, 256), (768, 256)), ((1024, 256), (384, 128)), ((256, 64), (64, 32)),
                                         ((300, 70), (768, 256)), ((700, 200), (64, 32))])
def test_numpy_resize_reproduces_torch_antialiased_bilinear(shape, size):
    # The numpy resize replaced torch's F.interpolate(antialias=True) so that prediction needs no torch; networks
    # trained before must see the same pixels (shrinking and enlarging, odd ratios).
    import torch
    import torch.nn.functional as F

    from bonescan.preprocess import _resize

    pair = np.random.default_rng(0).poisson(20.0, size=(2, *shape)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(pair)[None], size=size, mode="bilinear", antialias=True,
                             align_corners=False)[0].numpy()
    resized = _resize(pair, *size)
    assert resized.shape == (2, *size) and resized.dtype == np.float32
    assert np.abs(resized - expected).max() <= 3e-5 * pair.max()


def test_percentile_equals_numpys_to_the_last_bit():
    from bonescan.preprocess import percentile

    rng = np.random.default_rng(0)
    for trial in range(400):
        n = int(rng.integers(1, 2000))
        values = [rng.poisson(rng.uniform(0.5, 50), n).astype(np.float32), rng.normal(size=n),
                  rng.integers(0, 4, n).astype(np.uint16)][trial % 3]  # counts, floats, many ties
        for percent in (0.0, 37.0, 99.5, 100.0, rng.uniform(50, 100)):
            assert percentile(values, percent) == float(np.percentile(values, percent)), (trial, percent)
    assert np.isnan(percentile(np.array([1.0, np.nan]), 50.0))
