"""The network's pixels on the stored image: nearest enlargement, windows, bilinear reads, block means, areas."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bonescan.lesions.grid import NetworkGrid, network_grid
from bonescan.lesions.infer import maps_at_stored_size


@pytest.mark.parametrize("network, stored", [((16, 8), (32, 16)), ((16, 8), (40, 13)), ((16, 8), (16, 8)),
                                             ((16, 8), (12, 6))])
def test_the_grid_reads_the_network_maps_as_interpolate_does(network, stored):
    rng = np.random.default_rng(0)
    grid = NetworkGrid(network, stored)
    image = rng.random(network).astype(np.float32)
    labels = rng.integers(0, 21, network).astype(np.uint8)
    # nearest: each stored pixel shows the network pixel under its centre
    centre = [np.minimum(((np.arange(s) + 0.5) * n / s).astype(int), n - 1) for n, s in zip(network, stored)]
    np.testing.assert_array_equal(grid.enlarge(labels), labels[np.ix_(*centre)])
    maps = np.zeros((2, 3) + network, np.float32)
    maps[:, 0] = labels
    maps[:, 1:] = image
    regions, probabilities = maps_at_stored_size(maps, stored, mirror_posterior=True)
    np.testing.assert_array_equal(regions[0], labels[np.ix_(*centre)])
    np.testing.assert_array_equal(regions[1], labels[np.ix_(*centre)][:, ::-1])  # mirrored back
    # bilinear in any window: the whole map's interpolation there
    whole = F.interpolate(torch.from_numpy(image)[None, None], size=stored, mode="bilinear",
                          align_corners=False)[0, 0].numpy()
    for window in [(slice(0, stored[0]), slice(0, stored[1])), (slice(3, 9), slice(2, 5)),
                   (slice(stored[0] - 2, stored[0]), slice(0, 1))]:
        np.testing.assert_allclose(grid.bilinear_window(image, window), whole[window], atol=1e-6)
        np.testing.assert_allclose(probabilities[0, 1][window], whole[window], atol=1e-6)
        np.testing.assert_array_equal(grid.enlarge_window(labels, window), grid.enlarge(labels)[window])
    # a window of network pixels is shown by exactly the stored pixels whose nearest network pixel lies in it
    box = (slice(4, 9), slice(2, 6))
    inside = np.zeros(network, bool)
    inside[box] = True
    shown = grid.enlarge(inside)
    window = grid.stored_window(box)
    assert shown[window].all() and shown.sum() == shown[window].size
    # areas in stored pixels, counted at the network's size
    np.testing.assert_array_equal(grid.area(labels, 21), np.bincount(grid.enlarge(labels).ravel(), minlength=21))


def test_block_means_average_the_stored_pixels_each_network_pixel_stands_for():
    rng = np.random.default_rng(1)
    counts = rng.poisson(30, (40, 13)).astype(np.float32)
    for grid in (NetworkGrid((20, 13), (40, 13)), NetworkGrid((16, 8), (40, 13))):  # whole blocks, uneven ones
        means = grid.block_means(counts)
        for row in range(grid.network_shape[0]):
            for col in range(grid.network_shape[1]):
                shown = np.outer(grid.rows == row, grid.cols == col)
                assert means[row, col] == pytest.approx(counts[shown].mean(), rel=1e-5)
    # a stored image smaller than the network's input: the nearest stored pixel
    small = NetworkGrid((16, 8), (8, 4)).block_means(counts[:8, :4])
    assert small.shape == (16, 8) and set(np.unique(small)) <= set(np.unique(counts[:8, :4]))
    assert network_grid((16, 8), (40, 13)) is network_grid((16, 8), (40, 13))  # built once per pair of sizes


def test_hotspots_found_at_the_network_size_land_where_the_views_show_them_with_the_stored_size_bsi():
    from bonescan.lesions.bsi import bone_scan_index
    from bonescan.lesions.infer import study_lesions
    from bonescan.lesions.regions import BY_NAME

    shape = (48, 26)  # not a whole multiple of the network's 24 x 8
    maps = np.zeros((2, 3, 24, 8), np.float32)
    maps[:, 0, 2:22, 1:7] = BY_NAME["pelvis"].label
    maps[:, 0, 2:22, 1:3] = BY_NAME["femur_right"].label
    for view in range(2):  # the same focus near column 1 of the network's layout in both views
        maps[view, 1, 10:14, 1:3] = 0.95
        maps[view, 2, 10:14, 1:3] = 0.9
        maps[view, 2, 11:13, 1:3] = 0.99
    counts = np.full(shape, 10.0, np.float32)
    lesions, numbers = study_lesions(maps, counts, counts.copy(), pixel_spacing=2.4, threshold=0.95)
    anterior, posterior = lesions.hotspots
    assert anterior.view == "anterior" and posterior.view == "posterior"
    # the network saw the posterior mirrored: its focus is on the other side of the stored posterior view
    assert anterior.centroid[1] < shape[1] / 3 and posterior.centroid[1] > shape[1] * 2 / 3
    assert anterior.centroid[0] == pytest.approx(posterior.centroid[0])
    assert anterior.region == posterior.region == "femur_right"
    # the BSI counted at the network's size is the one counted pixel by pixel at the stored size
    stored = F.interpolate(torch.from_numpy(maps[:, 2:3]), size=shape, mode="bilinear", align_corners=False)
    stored = stored[:, 0].numpy().copy()
    stored[1] = stored[1, :, ::-1]
    expected, by_region = bone_scan_index(lesions.regions, (numbers > 0) & (stored >= 0.95))
    assert lesions.bsi == pytest.approx(expected) and lesions.bsi > 0
    assert lesions.bsi_by_region == pytest.approx(by_region)
    assert anterior.malignancy == pytest.approx(stored[0][numbers[0] == 1].max())
