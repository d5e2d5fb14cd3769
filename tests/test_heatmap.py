"""Heat maps: Grad-CAM per view lands where the evidence is, on the original grid, posterior un-mirrored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bonescan.heatmap import ViewHeatMaps, caption_text, grad_cam, panel_title, render_overlay, write_png
from bonescan.model import MultiViewNet
from bonescan.preprocess import PreprocessConfig, preprocess_views

ORIGINAL = (512, 256)  # rows, columns of the "acquisition" grid (half the real 1024 x 256 in rows)
ANTERIOR_SPOT = (160, 200)  # (row, column) centre, patient's left side of the anterior view
POSTERIOR_SPOT = (352, 48)  # as stored (seen from behind)


def monotone_net(aggregation: str = "max") -> MultiViewNet:
    """A tiny network whose logit rises with local brightness: all weights positive, biases zero.

    Its Grad-CAM must therefore peak where the bright spot of each view is, which makes localisation testable
    without training. A black image gives all-zero activations (no biases, BatchNorm at identity).
    """
    torch.manual_seed(0)
    model = MultiViewNet(backbone="resnet10", trunk_width=8, hidden=8, dropout=0.0, aggregation=aggregation).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.abs_()
                if module.bias is not None:
                    module.bias.zero_()
    return model


def spot_views() -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[: ORIGINAL[0], : ORIGINAL[1]]
    anterior = np.exp(-((rows - ANTERIOR_SPOT[0]) ** 2 + (cols - ANTERIOR_SPOT[1]) ** 2) / (2 * 8.0**2))
    posterior = np.exp(-((rows - POSTERIOR_SPOT[0]) ** 2 + (cols - POSTERIOR_SPOT[1]) ** 2) / (2 * 8.0**2))
    return (100 * anterior).astype(np.float32), (100 * posterior).astype(np.float32)


@pytest.mark.parametrize("mirror, aggregation", [(True, "max"), (False, "max"), (True, "mean"), (True, "concat")])
def test_maps_peak_at_each_views_spot_on_the_original_grid(mirror, aggregation):
    anterior, posterior = spot_views()
    config = PreprocessConfig(height=256, width=128, mirror_posterior=mirror)
    inputs = torch.from_numpy(preprocess_views(anterior, posterior, config))[None]
    [maps] = grad_cam(monotone_net(aggregation), inputs, [ORIGINAL], mirror_posterior=mirror)

    for heat in (maps.anterior, maps.posterior):
        assert heat.shape == ORIGINAL
        assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert max(maps.anterior.max(), maps.posterior.max()) == pytest.approx(1.0)
    # The trunk's final grid is 8 x 4 cells, 64 x 64 original pixels each: the peak must fall within one cell
    # of the spot, which also puts it on the right side of the view (a mirrored map would miss by ~150 px).
    for heat, spot in ((maps.anterior, ANTERIOR_SPOT), (maps.posterior, POSTERIOR_SPOT)):
        peak = np.unravel_index(np.argmax(heat), heat.shape)
        assert abs(peak[0] - spot[0]) <= 64 and abs(peak[1] - spot[1]) <= 64, (peak, spot)


def test_batch_gives_one_map_pair_per_case_in_order():
    anterior, posterior = spot_views()
    config = PreprocessConfig(height=256, width=128, mirror_posterior=False)
    first = preprocess_views(anterior, posterior, config)
    second = preprocess_views(posterior, anterior, config)  # views swapped: max aggregation is symmetric
    maps = grad_cam(monotone_net(), torch.from_numpy(np.stack([first, second])), [ORIGINAL, ORIGINAL],
                    mirror_posterior=False)
    assert len(maps) == 2
    assert not np.allclose(maps[0].anterior, maps[0].posterior, atol=0.05)
    assert np.allclose(maps[0].anterior, maps[1].posterior, atol=1e-4)
    assert np.allclose(maps[0].posterior, maps[1].anterior, atol=1e-4)


def test_max_aggregation_gives_a_view_that_supplied_nothing_no_heat_and_says_so():
    # Only the anterior view has counts: through the max, every feature the head saw came from the anterior.
    anterior, _ = spot_views()
    config = PreprocessConfig(height=256, width=128, normalization="counts")
    inputs = torch.from_numpy(preprocess_views(anterior, np.zeros_like(anterior), config))[None]
    [maps] = grad_cam(monotone_net("max"), inputs, [ORIGINAL])
    assert maps.anterior.max() == pytest.approx(1.0) and maps.posterior.max() == 0.0
    assert maps.anterior_share == pytest.approx(1.0) and maps.posterior_share == 0.0
    assert panel_title("Posterior", maps.posterior_share).startswith("Posterior: no heat")
    assert panel_title("Anterior", maps.anterior_share) == "Anterior: 100% of the heat"


def test_shares_split_the_heat_between_views_with_evidence():
    anterior, posterior = spot_views()
    config = PreprocessConfig(height=256, width=128)
    inputs = torch.from_numpy(preprocess_views(anterior, 0.5 * posterior, config))[None]
    [maps] = grad_cam(monotone_net("max"), inputs, [ORIGINAL])
    assert maps.anterior_share + maps.posterior_share == pytest.approx(1.0)
    assert 0.0 < maps.anterior_share < 1.0 and 0.0 < maps.posterior_share < 1.0


def test_grad_cam_refuses_shapes_that_do_not_match_the_batch():
    with pytest.raises(ValueError):
        grad_cam(monotone_net(), torch.zeros(2, 2, 64, 32), [ORIGINAL])


def test_overlay_puts_anterior_left_posterior_right_and_colours_only_the_heat(tmp_path):
    anterior, posterior = spot_views()
    heat = ViewHeatMaps(anterior=np.zeros(ORIGINAL, np.float32), posterior=np.zeros(ORIGINAL, np.float32))
    heat.posterior[:100, :100] = 1.0
    image = render_overlay(anterior, posterior, heat, caption_text(0.9, True, "youden", 0.4))
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] >= ORIGINAL[0] and image.shape[1] >= 2 * ORIGINAL[1]
    # Strongly coloured pixels (channels far apart) exist only in the right half, where the posterior heat is.
    colour = image.max(axis=2).astype(int) - image.min(axis=2).astype(int)
    colour = colour[60:]  # below the titles and the blue R / L side markers
    half = image.shape[1] // 2
    assert (colour[:, half:] > 60).sum() > 1000
    assert (colour[:, :half] > 60).sum() == 0

    path = write_png(tmp_path / "overlay.png", image)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), image)


def test_caption_names_probability_decision_and_operating_point():
    text = caption_text(0.8766, False, "rule-in", 0.912)
    assert "0.877" in text and "no metastasis" in text and "rule-in" in text and "0.912" in text
    assert "no metastasis" not in caption_text(0.95, True, "rule-in", 0.912)
