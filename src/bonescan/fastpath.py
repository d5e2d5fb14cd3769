"""The inference engine: the trained network run as fast as the machine allows, and checked against fp32.

Choices (measured on the 2-core development CPU, AMD EPYC with AVX2 only; see `bonescan bench predict`):
- Precision: bf16 autocast only where oneDNN has native bf16 kernels (AVX512-BF16 / AMX CPUs) or on a GPU;
  on an AVX2-only CPU bf16 is emulated and many times slower than fp32, so "auto" keeps fp32 there. On a GPU:
  bf16 where supported, else fp16 autocast.
- channels_last: on for every path; oneDNN's convolutions run NHWC without reorders (fp32 eager went from
  about 2.1 to 1.6 s per study on the development CPU, measured while the machine was shared).
- torch.compile (inductor, weights frozen as constants): on for bf16 CPU inference, where fusing the
  bf16 conversions pays; off for fp32 on CPU, where it gave no speed-up (1.8 vs 1.6 s per study) for a
  compile of about 100 s, and off on GPU, where the compile would cost more than a batch of 400 studies takes.
  A compiled engine pads every batch to one fixed size so the graph is compiled once.
- Allocator: glibc's malloc gives freed activation buffers back to the OS and faults fresh pages in on every
  forward pass (about 2.4 vs 2.0 s per study here); prediction and training call `device.tune_allocator` first.
- Exported engines (ONNX Runtime / OpenVINO, fp32 and int8; `exported`, `engine_select`, `quantize`): on the
  development CPU they beat this engine 2-4x in fp32 and more in int8, so `bonescan predict` runs them where
  they were measured faster on the machine at hand; this engine remains the reference, the GPU path, the
  fallback and the network behind heat maps.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass
from typing import Iterable, Literal

import numpy as np
import torch

from .device import choose_precision, select_device
from .errors import ConfigError
from .model import MultiViewNet

CompileMode = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class EngineSettings:
    """How the engine was built, for reports."""

    device: str
    precision: str
    channels_last: bool
    compiled: bool
    batch_size: int

    def describe(self) -> str:
        compiled = "torch.compile (inductor, frozen)" if self.compiled else "eager"
        layout = "channels_last" if self.channels_last else "contiguous"
        return f"{self.device} {self.precision} {layout} {compiled}, batch {self.batch_size}"


class InferenceEngine:
    """Turns preprocessed batches (B x 2 x H x W in [0, 1]) into probabilities of metastasis."""

    def __init__(self, model: MultiViewNet, device: str = "auto", precision: str = "auto",
                 compile: CompileMode = "auto", batch_size: int = 8):
        if batch_size < 1:
            raise ConfigError("--batch-size", f"must be at least 1, got {batch_size}")
        if compile not in ("auto", "on", "off"):
            raise ConfigError("--compile", f"unknown value {compile!r}; use auto, on or off")
        # Under torchrun each process of a node takes the GPU of its local rank (LOCAL_RANK; 0 otherwise).
        self.device = select_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        self.precision = choose_precision(self.device, precision)
        use_compile = compile == "on" or (
            compile == "auto" and self.device.type == "cpu" and self.precision.autocast_dtype is torch.bfloat16
        )
        # The engine owns a copy, so the caller's model keeps its layout (Grad-CAM runs on it in fp32).
        self.model = copy.deepcopy(model).eval().to(self.device, memory_format=torch.channels_last)
        self.batch_size = batch_size
        self.settings = EngineSettings(
            device=str(self.device), precision=self.precision.name, channels_last=True,
            compiled=use_compile, batch_size=batch_size,
        )
        self._forward = self.model
        if use_compile:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True  # weights become constants: folded BN, pre-packed oneDNN weights
            if self.device.type == "cpu":
                # torch's C++ tool lookup says "No CUDA runtime is found" on every CPU machine that has a CUDA
                # toolkit installed; nothing compiled here is for CUDA, and the line only puzzles users
                logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            self._forward = torch.compile(self.model, dynamic=False)

    def probabilities(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Probabilities of metastasis for one batch of any size (split or padded to the engine's batch)."""
        inputs = torch.as_tensor(batch)
        if inputs.dim() != 4 or inputs.shape[1] != 2:
            raise ConfigError("network input", f"expected B x 2 x H x W, got {tuple(inputs.shape)}")
        outputs = [self._run_chunk(inputs[start:start + self.batch_size])
                   for start in range(0, inputs.shape[0], self.batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.float64)

    def _run_chunk(self, chunk: torch.Tensor) -> np.ndarray:
        count = chunk.shape[0]
        if self.settings.compiled and count < self.batch_size:  # one static shape: no recompilation
            pad = chunk[-1:].expand(self.batch_size - count, *chunk.shape[1:])
            chunk = torch.cat([chunk, pad])
        chunk = chunk.to(self.device, dtype=torch.float32, non_blocking=True)
        chunk = chunk.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self.precision.autocast():
            logits = self._forward(chunk)
        return torch.sigmoid(logits.float())[:count].cpu().numpy().astype(np.float64)

    def warm_up(self, height: int, width: int) -> float:
        """Run one full batch of zeros (compiling if the engine compiles); returns the seconds it took."""
        start = time.perf_counter()
        self.probabilities(torch.zeros(self.batch_size, 2, height, width))
        self.synchronize()
        return time.perf_counter() - start

    def synchronize(self) -> None:
        """Wait for queued GPU work (timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def reference_probabilities(model: MultiViewNet, batches: Iterable[torch.Tensor | np.ndarray]) -> np.ndarray:
    """fp32 eager probabilities on the CPU: the reference every fast path is compared with."""
    model = copy.deepcopy(model).float().cpu().eval()
    outputs = []
    with torch.inference_mode():
        for batch in batches:
            logits = model(torch.as_tensor(batch, dtype=torch.float32))
            outputs.append(torch.sigmoid(logits).numpy().astype(np.float64))
    return np.concatenate(outputs) if outputs else np.zeros(0)


@dataclass(frozen=True)
class ParityReport:
    """Agreement of a fast path with the fp32 reference over a set of studies."""

    cases: int
    max_abs_diff: float
    mean_abs_diff: float
    decision_agreement: float  # fraction of studies with the same decision at `threshold`
    threshold: float

    def describe(self) -> str:
        return (f"parity vs fp32 over {self.cases} studies: max |dp| = {self.max_abs_diff:.2e}, "
                f"mean |dp| = {self.mean_abs_diff:.2e}, decisions agree {100 * self.decision_agreement:.1f}% "
                f"(threshold {self.threshold:.3f})")


def parity(reference: np.ndarray, fast: np.ndarray, threshold: float) -> ParityReport:
    """Compare fast-path probabilities with fp32 reference probabilities of the same studies."""
    reference, fast = np.asarray(reference, dtype=np.float64), np.asarray(fast, dtype=np.float64)
    if reference.shape != fast.shape or reference.size == 0:
        raise ValueError(f"need two equal, non-empty probability arrays, got {reference.shape} and {fast.shape}")
    diff = np.abs(reference - fast)
    agree = np.mean((reference >= threshold) == (fast >= threshold))
    return ParityReport(int(reference.size), float(diff.max()), float(diff.mean()), float(agree), float(threshold))
