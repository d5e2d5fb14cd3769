"""What the machine can do: device choice, bf16 / mixed precision, channels_last, and the glibc allocator setting."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import torch

from .cpuinfo import CPUINFO, cpuinfo_field
from .errors import ConfigError

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]

# glibc malloc returns freed activation buffers to the OS and maps fresh ones every step, which on CPU training
# and inference costs a large share of the time. These settings keep freed memory in the process.
GLIBC_TUNABLES_VALUE = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
# mallopt parameter numbers from glibc's malloc.h (the in-process equivalent of the tunables above).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

# Exact (bit-reproducible) training on CPUs with AMX: oneDNN's AMX bf16 kernels do not repeat bit for bit from
# run to run (on a Xeon with AMX two identical one-thread bf16 training runs diverged from epoch 1), while capped
# at AVX512-BF16 -- still native bf16 -- the same runs repeat exactly. oneDNN reads the cap once, when it first
# dispatches (a convolution, or torch's bf16-support query), so it must be in the environment before that.
ONEDNN_ISA_VARIABLE = "ONEDNN_MAX_CPU_ISA"
EXACT_ONEDNN_ISA = "AVX512_CORE_BF16"


def cpu_supports_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX) and oneDNN has bf16 kernels for it.

    oneDNN also reports bf16 support on AVX-512 CPUs without the BF16 extension (Skylake and Cascade Lake
    Xeons), where it converts in software: there a ResNet-18 ran 3.2x slower in bf16 than in fp32 (one thread,
    batch 4 at 256 x 96), so such a CPU counts as without bf16 and "auto" keeps fp32.
    """
    return cpu_has_native_bf16() and onednn_reports_bf16()


def cpu_bf16_is_faster() -> bool:
    """True where bf16 pays on this CPU: AMX tiles, or AVX512-BF16 on an AMD CPU (Zen 4 and later), with oneDNN's
    bf16 kernels.

    With AVX512-BF16 alone on an Intel Xeon (no AMX; one whose AMX the hypervisor hides) bf16 was no faster than
    fp32, 2 threads: training steps 0.046-0.052 against 0.038-0.047 s per study for `cpu-small`, 0.072-0.083 against
    0.076-0.088 for `cpu-small-lesion`, a ResNet-18 forward 25.4 against 25.2 ms, matmul 164 against 300 GFLOP/s.
    There fp32 costs nothing and rounds nothing, so "auto" keeps it. On an AMD EPYC with AVX512-BF16 (no AMX, 2
    threads) bf16 was faster: matmul 400 against 141 GFLOP/s, training steps 0.028-0.031 against 0.053-0.054 s per
    study for `cpu-small`, 0.71 against 1.52 for `paper`, 0.070 against 0.081 for `cpu-small-lesion`
    (`bonescan bench train`). AMX made bf16 3-8x faster.
    """
    return cpu_supports_bf16() and (cpu_has_amx() or cpu_vendor() == "AuthenticAMD")


def cpu_vendor(cpuinfo: str | Path = CPUINFO) -> str:
    """The CPU's vendor as /proc/cpuinfo names it ("GenuineIntel", "AuthenticAMD"); "" where it cannot be read."""
    return cpuinfo_field("vendor_id", cpuinfo) or ""


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX, as cpuinfo reports them (not oneDNN, which counts emulation as support)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported()) or cpu_has_amx()
    except (AttributeError, RuntimeError):
        return False


def onednn_reports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_has_amx() -> bool:
    """True when the CPU has AMX tiles (Sapphire Rapids and later Xeons); asks cpuinfo, not oneDNN."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def cap_onednn_for_exact_runs() -> str | None:
    """Keep oneDNN off its AMX kernels so that runs repeat bit for bit; returns the cap in force (None: no cap).

    Acts only on CPUs with AMX and only when the user has not set ONEDNN_MAX_CPU_ISA. It takes effect only if
    nothing in this process has used oneDNN yet: the CLI calls it before any computation; a Python caller who
    has already run a convolution must set the variable before starting Python instead.
    """
    if ONEDNN_ISA_VARIABLE not in os.environ and cpu_has_amx():
        os.environ[ONEDNN_ISA_VARIABLE] = EXACT_ONEDNN_ISA
    return os.environ.get(ONEDNN_ISA_VARIABLE)


def select_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" -> this process's GPU when CUDA is available, else CPU; "cpu" / "cuda" force one."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda", "no CUDA GPU is available on this machine")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if requested != "cpu":
        raise ConfigError("--device", f"unknown device {requested!r}; use auto, cpu or cuda")
    return torch.device("cpu")


# The precisions a network runs in, by name, and their autocast dtypes (None: fp32, no autocast).
PRECISION_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """How to run the network: autocast dtype (None = fp32), loss scaling, memory format."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    grad_scaling: bool  # fp16 on GPU needs loss scaling; bf16 does not

    @property
    def name(self) -> str:
        return next(name for name, dtype in PRECISION_DTYPES.items() if dtype is self.autocast_dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for forward passes (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def choose_precision(device: torch.device, requested: PrecisionName = "auto") -> Precision:
    """Pick the fastest safe precision: bf16 autocast on CPUs where it is faster (`cpu_bf16_is_faster`) and on
    bf16-capable GPUs, fp16 + scaling on older GPUs.

    channels_last goes with reduced precision here (training): oneDNN's bf16 convolutions and tensor-core
    kernels want NHWC. The inference engine sets its own layout (see `bonescan.fastpath`).
    """
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError("--precision", f"unknown precision {requested!r}; use auto, fp32, bf16 or fp16")
    if requested == "auto":
        if device.type == "cuda":
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            requested = "bf16" if cpu_bf16_is_faster() else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16", "fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
    dtype = PRECISION_DTYPES[requested]
    return Precision(
        device=device,
        autocast_dtype=dtype,
        channels_last=dtype is not None,
        grad_scaling=dtype is torch.float16,
    )


def allocator_tuned() -> bool:
    """True when the process runs with a tuned allocator (glibc malloc tunables set, or tcmalloc/jemalloc preloaded)."""
    tunables, preload = os.environ.get("GLIBC_TUNABLES", ""), os.environ.get("LD_PRELOAD", "")
    return ("glibc.malloc.mmap_max" in tunables or "glibc.malloc.trim_threshold" in tunables
            or "tcmalloc" in preload or "jemalloc" in preload)


def tune_allocator() -> str:
    """Keep freed memory in the process (glibc mallopt), unless an allocator setting is already in place.

    mallopt applies the settings of GLIBC_TUNABLES_VALUE from inside the running process, so library callers get
    them without a restart; GLIBC_TUNABLES is also exported for processes started from here. Forked
    DataLoader workers inherit the setting. Returns a short description of the allocator for benchmark output.
    """
    if allocator_tuned():
        return "tuned (GLIBC_TUNABLES or preloaded allocator)"
    if not sys.platform.startswith("linux"):
        return "system default (not glibc)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return "system default (glibc mallopt unavailable)"
    if not ok:
        return "system default (mallopt refused)"
    os.environ.setdefault("GLIBC_TUNABLES", GLIBC_TUNABLES_VALUE)
    return "tuned in-process (mallopt: no mmap, no trim)"


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None leaves it)."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
