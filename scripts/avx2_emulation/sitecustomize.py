"""Makes a Python process see the CPU as one without native bf16 (AVX2 only, as an AMD EPYC of the Zen 2/3
generations): torch's cpuinfo queries for AVX-512, VNNI, BF16 and AMX answer no, and oneDNN stops at AVX2
(ONEDNN_MAX_CPU_ISA). bonescan then chooses as it would there: fp32 by default for training and inference, no bf16
engine among the exported ones. Put this folder on PYTHONPATH (`scripts/test_as_avx2.sh` does); torch is patched
when something imports it, so processes that never import torch stay as they are. Not emulated: ONNX Runtime and
OpenVINO read the CPU themselves (their kernels stay the real CPU's), and the ISA flags that engine records and the
int8 weight range follow /proc/cpuinfo.
"""

import importlib.abc
import importlib.util
import os
import sys

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
ANSWER_NO = ("_is_avx512_supported", "_is_avx512_vnni_supported", "_is_avx512_bf16_supported",
             "_is_amx_tile_supported", "_is_amx_fp16_supported")


class _TorchCpuWithoutBf16(importlib.abc.MetaPathFinder):
    """Loads torch.cpu as usual, then makes its ISA queries answer no."""

    def find_spec(self, name, path, target=None):
        if name != "torch.cpu":
            return None
        sys.meta_path.remove(self)  # find the real module without finding ourselves again
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            for query in ANSWER_NO:
                if hasattr(module, query):
                    setattr(module, query, lambda: False)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _TorchCpuWithoutBf16())
