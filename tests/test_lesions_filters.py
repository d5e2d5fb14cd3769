"""The rescorer's compiled whole-view filters against scipy and numpy, which they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bonescan.lesions.filters import block_sums, gaussian_filter


@pytest.mark.parametrize("shape", [(1024, 256), (40, 7), (3, 30), (1, 1)])
@pytest.mark.parametrize("sigma", [1.0, 2.5, 8.0])
def test_gaussian_filter_is_scipys_to_the_bit(shape, sigma):
    rng = np.random.default_rng(int(sigma * 10) + shape[0])
    counts = rng.poisson(30.0, shape).astype(np.float32)
    counts[0, 0] = 500.0  # a hot pixel at the corner: the reflected edges matter
    # images narrower than the kernel reflect more than once; scipy's mode 'reflect' does the same
    np.testing.assert_array_equal(gaussian_filter(counts, sigma), ndimage.gaussian_filter(counts, sigma))


def test_gaussian_filter_takes_other_types_and_refuses_what_is_not_an_image():
    image = np.arange(60, dtype=np.float64).reshape(6, 10)
    smoothed = gaussian_filter(image, 1.0)
    assert smoothed.dtype == np.float32
    np.testing.assert_array_equal(smoothed, ndimage.gaussian_filter(image.astype(np.float32), 1.0))
    np.testing.assert_array_equal(gaussian_filter(image, 0), image.astype(np.float32))
    with pytest.raises(ValueError, match="2-D"):
        gaussian_filter(np.zeros((2, 3, 4), np.float32), 1.0)


@pytest.mark.parametrize("shape", [(64, 32), (66, 35), (3, 2)])
def test_block_sums_are_numpys_over_the_image_padded_with_zeros(shape):
    rng = np.random.default_rng(shape[0])
    image = rng.random(shape).astype(np.float32) * 100
    padded = np.pad(image, ((0, -shape[0] % 4), (0, -shape[1] % 4)))
    expected = padded.reshape(padded.shape[0] // 4, 4, padded.shape[1] // 4, 4).sum((1, 3))
    found = block_sums(image, 4)
    assert found.shape == expected.shape and found.dtype == np.float32
    np.testing.assert_allclose(found, expected, rtol=1e-6)
    np.testing.assert_array_equal(block_sums(image > 50, 4), (padded > 50).reshape(expected.shape[0], 4, -1, 4)
                                  .sum((1, 3)))
    with pytest.raises(ValueError, match="factor"):
        block_sums(image, 0)
