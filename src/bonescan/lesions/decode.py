"""The lesion network's logits -> its maps: the most likely skeletal region of every pixel and the probabilities.

The network writes 2 views x 23 channels at its full input size, channels last (21 region classes, then hotspot and
metastasis). Decoding them reads 6 MB per study in bf16. In torch it took about as long as the network itself
(2-core Zen 4 EPYC, bf16, batch 2, per study): 1.9-2.4 ms for argmax over the short, strided region dimension
(1.2 ms of it on real logits, 3.3 on random ones), the float conversion, the sigmoids and the concatenation, against
2.4-2.6 ms for the network. This kernel (numba, over both cores) reads each pixel's logits once and gives the same
ids and probabilities (within 1e-6) in 1.0 ms.

It compares the logits' bit patterns as integers: an IEEE float's bits order as the float does once the other bits
of a negative one are flipped, so bf16 logits need no conversion first. Ties go to the first class, as torch's
argmax; NaN logits (a broken network) give arbitrary ids.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
from numba import prange

from ..jit import compiled

# numba's workqueue threading layer (its fallback where no OpenMP or TBB is found) aborts the process when two
# threads enter it at once; predict's post-processing threads and the node's request threads can both get here.
_ONE_AT_A_TIME = threading.Lock()
# Each float type the kernel reads: (integer type of the same width, bits of its mantissa).
_AS_INTEGERS = {torch.bfloat16: (torch.int16, 7), torch.float32: (torch.int32, 23)}


def decode_maps(logits: torch.Tensor, n_labels: int, out: np.ndarray) -> None:
    """Write into `out` (float32 B x views x (1 + probabilities) x H x W) each pixel's region id (the largest of the
    first `n_labels` logits of its view) and the sigmoid of each logit after them; `logits` B x views x channels x
    H x W on the CPU, bf16 or fp32, read fastest from the network's channels-last output."""
    if logits.dtype not in _AS_INTEGERS:
        raise TypeError(f"maps from {logits.dtype} logits: expected one of {sorted(map(str, _AS_INTEGERS))}")
    if out.shape[2] != 1 + logits.shape[2] - n_labels or out.dtype != np.float32:
        raise ValueError(f"out {out.shape} {out.dtype} must be float32 with {1 + logits.shape[2] - n_labels} maps")
    integer, mantissa = _AS_INTEGERS[logits.dtype]
    bits = logits.detach().permute(0, 3, 4, 1, 2).view(integer).numpy()  # B x H x W x views x channels, no copy
    with _ONE_AT_A_TIME:
        _decode(bits, mantissa, n_labels, out)


@compiled(parallel=True)
def _decode(bits, mantissa, n_labels, out):
    batch, height, width, n_views, n_channels = bits.shape
    sign = mantissa + 8
    rest = (1 << sign) - 1
    widen = 31 - sign  # a bf16 pattern is the upper half of the fp32 one with the same value
    for line in prange(batch * height):
        b, r = line // height, line % height
        pattern = np.empty(1, np.int32)
        value = pattern.view(np.float32)
        for c in range(width):
            for v in range(n_views):
                best = np.int64(bits[b, r, c, v, 0])
                best ^= (best >> sign) & rest  # a negative float: the larger its magnitude, the smaller the integer
                arg = 0
                for k in range(1, n_labels):
                    key = np.int64(bits[b, r, c, v, k])
                    key ^= (key >> sign) & rest
                    if key > best:
                        best, arg = key, k
                out[b, v, 0, r, c] = arg
                for k in range(n_labels, n_channels):
                    pattern[0] = np.int32(np.int64(bits[b, r, c, v, k]) << widen)
                    out[b, v, 1 + k - n_labels, r, c] = np.float32(1.0) / (np.float32(1.0) + math.exp(-value[0]))
