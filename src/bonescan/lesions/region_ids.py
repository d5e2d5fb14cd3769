"""The most likely skeletal region of every pixel from the lesion network's logits, fast on a CPU.

The network writes 2 views x 23 channels at its full input size, channels last; picking the largest of the 21
region logits per pixel and view reads 6 MB per study (bf16), so the pick is bound by memory. torch's argmax over
that short, strided channel dimension took 1.2 ms per study on real logits (2-core Zen 4 EPYC, bf16, batch 2;
3.3 ms on random ones), more than the float conversion, sigmoid and concatenation around it together (2.6 ms per
study in all, about as long as the network itself, 2.2-2.7 ms); this kernel (numba, over both cores) takes
0.64 ms and gives the same ids.

It compares the logits' bit patterns as integers: an IEEE float's bits order as the float does once the other bits
of a negative one are flipped, so bf16 logits need no conversion to fp32 first. Ties go to the first class, as
torch's argmax; NaN logits (a broken network) give arbitrary ids.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from numba import njit, prange

# numba's default threading layer may not be entered by two threads at once (it aborts the process); predict's
# post-processing threads and the node's request threads can both get here.
_ONE_AT_A_TIME = threading.Lock()
# Bits of each float type the kernel can read: (integer type of the same width, the shift to its sign bit).
_AS_INTEGERS = {torch.bfloat16: (torch.int16, 15), torch.float32: (torch.int32, 31)}


def region_ids(logits: torch.Tensor, n_labels: int, out: np.ndarray) -> None:
    """Write into `out` (B x views x H x W, any real dtype, may be a strided view) the index of the largest of the
    first `n_labels` channels of each view's logits (B x views x channels x H x W on the CPU, bf16 or fp32; read
    fastest from the network's channels-last output)."""
    if logits.dtype not in _AS_INTEGERS:
        raise TypeError(f"region ids from {logits.dtype} logits: expected one of {sorted(map(str, _AS_INTEGERS))}")
    integer, shift = _AS_INTEGERS[logits.dtype]
    bits = logits.detach().permute(0, 3, 4, 1, 2).view(integer).numpy()  # B x H x W x views x channels, no copy
    with _ONE_AT_A_TIME:
        _largest(bits, shift, (1 << shift) - 1, n_labels, out)


@njit(parallel=True, cache=True)  # compiled on first use, then cached on disk (about a second once)
def _largest(bits, shift, rest, n_labels, out):
    batch, height, width, n_views, _ = bits.shape
    for line in prange(batch * height):
        b, r = line // height, line % height
        for c in range(width):
            for v in range(n_views):
                best = np.int64(bits[b, r, c, v, 0])
                best ^= (best >> shift) & rest  # a negative float: the larger its magnitude, the smaller the integer
                arg = 0
                for k in range(1, n_labels):
                    key = np.int64(bits[b, r, c, v, k])
                    key ^= (key >> shift) & rest
                    if key > best:
                        best, arg = key, k
                out[b, v, r, c] = arg
