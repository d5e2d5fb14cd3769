"""The inference engine: same probabilities as the fp32 reference (exactly in fp32, loosely in bf16), any batch size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bonescan.errors import ConfigError
from bonescan.fastpath import InferenceEngine, parity, reference_probabilities
from bonescan.model import MultiViewNet

HEIGHT, WIDTH = 96, 32


@pytest.fixture(scope="module")
def cohort() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    base = torch.rand(24, 2, HEIGHT, WIDTH, generator=generator)
    return base * torch.linspace(0.2, 1.0, 24).view(24, 1, 1, 1)  # varied brightness -> varied logits


@pytest.fixture(scope="module")
def tiny_model(cohort) -> MultiViewNet:
    torch.manual_seed(0)
    model = MultiViewNet(backbone="resnet10", trunk_width=8, hidden=16).eval()
    # Spread the logits and centre them on this cohort, so both decisions occur at 0.5 (an untrained head
    # gives nearly one value to every study).
    with torch.no_grad():
        model.head[-1].weight.mul_(40.0)
        model.head[-1].bias.sub_(model(cohort).median())
    return model


def test_parity_figures_from_known_probabilities():
    report = parity(np.array([0.1, 0.49, 0.7, 0.9]), np.array([0.1, 0.51, 0.69, 0.95]), threshold=0.5)
    assert report.cases == 4
    assert report.max_abs_diff == pytest.approx(0.05)
    assert report.mean_abs_diff == pytest.approx((0 + 0.02 + 0.01 + 0.05) / 4)
    assert report.decision_agreement == pytest.approx(0.75)  # 0.49 vs 0.51 crosses the threshold
    with pytest.raises(ValueError):
        parity(np.array([0.1]), np.array([0.1, 0.2]), threshold=0.5)


def test_fp32_engine_matches_reference_for_any_batch_split(tiny_model, cohort):
    reference = reference_probabilities(tiny_model, [cohort])
    assert 0 < (reference >= 0.5).mean() < 1  # both decisions present, so agreement is a real check
    engine = InferenceEngine(tiny_model, device="cpu", precision="fp32", compile="off", batch_size=5)
    fast = engine.probabilities(cohort)  # 24 = 4 full batches of 5 + 4
    assert fast.shape == (24,)
    assert np.abs(fast - reference).max() < 1e-5
    assert engine.settings.precision == "fp32" and engine.settings.channels_last


def test_engine_leaves_the_callers_model_untouched(tiny_model):
    InferenceEngine(tiny_model, device="cpu", precision="fp32", compile="off")
    assert tiny_model.trunk.conv1.weight.is_contiguous()  # the engine converted its own copy to channels_last


def test_bf16_engine_agrees_loosely_with_fp32(tiny_model, cohort):
    reference = reference_probabilities(tiny_model, [cohort])
    engine = InferenceEngine(tiny_model, device="cpu", precision="bf16", compile="off", batch_size=8)
    report = parity(reference, engine.probabilities(cohort), threshold=0.5)
    assert report.max_abs_diff < 0.05
    assert report.decision_agreement >= 0.9
    assert report.max_abs_diff > 0  # bf16 really ran (it is not bit-identical to fp32)


@pytest.mark.slow
def test_compiled_engine_pads_the_last_batch_and_matches_reference(tiny_model, cohort):
    engine = InferenceEngine(tiny_model, device="cpu", precision="fp32", compile="on", batch_size=8)
    assert engine.settings.compiled
    subset = cohort[:11]  # one full batch and a padded one of 3
    fast = engine.probabilities(subset)
    assert fast.shape == (11,)
    assert np.abs(fast - reference_probabilities(tiny_model, [subset])).max() < 1e-4


def test_refusals(tiny_model):
    with pytest.raises(ConfigError, match="fp16"):
        InferenceEngine(tiny_model, device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="batch"):
        InferenceEngine(tiny_model, device="cpu", batch_size=0)
    engine = InferenceEngine(tiny_model, device="cpu", precision="fp32", compile="off")
    with pytest.raises(ConfigError, match="B x 2 x H x W"):
        engine.probabilities(torch.zeros(2, 3, HEIGHT, WIDTH))
