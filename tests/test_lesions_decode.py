"""The lesion network's logits decoded into maps: region ids as torch's argmax gives them, probabilities as its
sigmoid, in bf16 and fp32, from either memory layout."""

import numpy as np
import pytest
import torch

from bonescan.lesions.decode import decode_maps


def _reference(views: torch.Tensor, n_labels: int) -> np.ndarray:
    logits = views.float()
    return torch.cat([logits[:, :, :n_labels].argmax(dim=2, keepdim=True).float(),
                      torch.sigmoid(logits[:, :, n_labels:])], 2).numpy()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("channels_last", [True, False])
def test_maps_equal_torch_argmax_and_sigmoid(dtype, channels_last):
    generator = torch.Generator().manual_seed(0)
    # logits of both signs and magnitudes from 0.01 to 100 (sigmoid saturates), 2 channels after 5 regions
    scale = torch.tensor([0.01, 1.0, 100.0]).repeat(5)[:14].view(1, 14, 1, 1)
    logits = (torch.randn(3, 14, 9, 5, generator=generator) * scale).to(dtype)
    logits[:, 5:7] = logits[:, 5:7].clamp(-5, 5) + 1e4 * (logits[:, 5:7] > 5)  # large ones must not win a region
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    views = logits.view(3, 2, 7, 9, 5)
    out = np.full((3, 2, 3, 9, 5), -1, np.float32)
    decode_maps(views, 5, out)
    expected = _reference(views, 5)
    np.testing.assert_array_equal(out[:, :, 0], expected[:, :, 0])
    np.testing.assert_allclose(out[:, :, 1:], expected[:, :, 1:], rtol=0, atol=1e-6)
    assert ((out[:, :, 1:] > 0.01) & (out[:, :, 1:] < 0.99)).mean() > 0.3  # not only saturated values


def test_ties_go_to_the_first_class_and_extreme_logits_saturate():
    logits = torch.zeros(1, 2, 6, 3, 3, dtype=torch.bfloat16)
    logits[0, 0, 2] = 1.0
    logits[0, 0, 3] = 1.0  # tied with class 2: 2 wins, as with argmax
    logits[0, 1, :4] = -1.0
    logits[0, 1, 1, 0, 0] = -0.5  # the least negative wins
    logits[0, :, 4] = float("-inf")
    logits[0, :, 5] = 1e30
    out = np.zeros((1, 2, 3, 3, 3), np.float32)
    decode_maps(logits, 4, out)
    assert (out[0, 0, 0] == 2).all()
    assert out[0, 1, 0, 0, 0] == 1 and (out[0, 1, 0].ravel()[1:] == 0).all()
    assert (out[0, :, 1] == 0).all() and (out[0, :, 2] == 1).all()


def test_other_dtypes_and_a_wrong_output_are_refused_by_name():
    with pytest.raises(TypeError, match="float16"):
        decode_maps(torch.zeros(1, 2, 3, 2, 2, dtype=torch.float16), 2, np.zeros((1, 2, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="2 maps"):
        decode_maps(torch.zeros(1, 2, 3, 2, 2), 2, np.zeros((1, 2, 3, 2, 2), np.float32))


def test_a_kernel_that_cannot_be_cached_is_compiled_without_a_cache():
    from numba import njit

    from bonescan.lesions.decode import compiled

    namespace = {}
    exec("def twice(x):\n    return 2 * x\n", namespace)  # no source file: numba finds nowhere to cache it
    with pytest.raises(RuntimeError, match="cannot cache"):
        njit(cache=True)(namespace["twice"])
    assert compiled(namespace["twice"])(21) == 42
