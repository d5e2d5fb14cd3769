"""What the machine can do: device choice, bf16 / mixed precision, channels_last, and the glibc allocator setting."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator, Literal

import torch

from .errors import ConfigError

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]

# glibc malloc returns freed activation buffers to the OS and maps fresh ones every step, which on CPU training
# and inference costs a large share of the time. These settings keep freed memory in the process.
GLIBC_TUNABLES_VALUE = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def cpu_supports_bf16() -> bool:
    """True when oneDNN has fast bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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


@dataclass(frozen=True)
class Precision:
    """How to run the network: autocast dtype (None = fp32), loss scaling, memory format."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    grad_scaling: bool  # fp16 on GPU needs loss scaling; bf16 does not

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for forward passes (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def choose_precision(device: torch.device, requested: PrecisionName = "auto") -> Precision:
    """Pick the fastest safe precision: bf16 autocast on bf16-capable CPUs and GPUs, fp16 + scaling on older GPUs.

    channels_last goes with reduced precision: oneDNN's bf16 convolutions and tensor-core kernels want NHWC,
    while fp32 on a CPU without bf16 gains nothing from it.
    """
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError("--precision", f"unknown precision {requested!r}; use auto, fp32, bf16 or fp16")
    if requested == "auto":
        if device.type == "cuda":
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            requested = "bf16" if cpu_supports_bf16() else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16", "fp16 training is only supported on a CUDA GPU; use bf16 or fp32")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[requested]
    return Precision(
        device=device,
        autocast_dtype=dtype,
        channels_last=dtype is not None,
        grad_scaling=dtype is torch.float16,
    )


def allocator_tuned() -> bool:
    """True when the process runs with a tuned allocator (GLIBC_TUNABLES set, or tcmalloc/jemalloc preloaded)."""
    preload = os.environ.get("LD_PRELOAD", "")
    return "GLIBC_TUNABLES" in os.environ or "tcmalloc" in preload or "jemalloc" in preload


def reexec_with_tuned_allocator(argv: list[str] | None = None) -> None:
    """Restart this process with GLIBC_TUNABLES set, unless an allocator setting is already in place.

    glibc reads its tunables only at start-up, so the setting cannot be applied from inside Python. Does nothing
    off Linux, when BONESCAN_KEEP_ALLOCATOR=1, or when the allocator is already tuned; otherwise never returns.
    """
    if not sys.platform.startswith("linux") or allocator_tuned() or os.environ.get("BONESCAN_KEEP_ALLOCATOR") == "1":
        return
    env = dict(os.environ, GLIBC_TUNABLES=GLIBC_TUNABLES_VALUE)
    args = list(sys.argv if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *args], env)


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
