"""Region ids from the lesion network's logits: the same as torch's argmax, in bf16 and fp32, either memory layout."""

import numpy as np
import pytest
import torch

from bonescan.lesions.region_ids import region_ids


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("channels_last", [True, False])
def test_region_ids_equal_torch_argmax_over_the_region_channels(dtype, channels_last):
    generator = torch.Generator().manual_seed(0)
    # negative and positive logits of several magnitudes, and 2 channels after the regions that must be ignored
    logits = (torch.randn(3, 2 * 7, 9, 5, generator=generator) * torch.tensor([0.01, 1.0, 100.0]).repeat(5)[:14]
              .view(1, 14, 1, 1)).to(dtype)
    logits[:, 5::7] = 1e4  # the channels after the 5 regions are the largest: they must not be picked
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    views = logits.view(3, 2, 7, 9, 5)
    out = np.full((3, 2, 9, 5), -1, np.float32)
    region_ids(views, 5, out)
    np.testing.assert_array_equal(out, views[:, :, :5].argmax(dim=2).numpy())


def test_ties_go_to_the_first_class_and_the_output_may_be_a_strided_view():
    logits = torch.zeros(1, 2, 4, 3, 3, dtype=torch.bfloat16)
    logits[0, 0, 2] = 1.0
    logits[0, 0, 3] = 1.0  # tied with class 2: 2 wins, as with argmax
    logits[0, 1] = -1.0
    logits[0, 1, 1, 0, 0] = -0.5
    maps = np.zeros((1, 2, 3, 3, 3), np.float32)
    region_ids(logits, 4, maps[:, :, 0])
    assert (maps[0, 0, 0] == 2).all()
    assert maps[0, 1, 0, 0, 0] == 1 and (maps[0, 1, 0].ravel()[1:] == 0).all()
    assert (maps[:, :, 1:] == 0).all()  # the other maps untouched


def test_other_dtypes_are_refused_by_name():
    with pytest.raises(TypeError, match="float16"):
        region_ids(torch.zeros(1, 2, 3, 2, 2, dtype=torch.float16), 2, np.zeros((1, 2, 2, 2)))
