"""An exported network (ONNX) run by ONNX Runtime or OpenVINO, with the InferenceEngine's interface.

Why exported engines. Measured on the 2-core development CPU (AMD EPYC, AVX2 + FMA only, no VNNI), with two
other jobs loading the machine (load average about 3; figures noisy, ratios more reliable than values); seconds
per study of the forward pass, candidates interleaved, best of 3 rounds (batch 8 for cpu-small, 2 for paper):

    network                                torch fp32   ORT fp32   OpenVINO fp32   ORT int8   OpenVINO int8
    cpu-small trained (ResNet-18/2, 384x128)  0.066       0.035       0.036          0.015        0.016
    paper untrained (ResNet-50, 768x256)      2.03        0.98        1.06           0.52         0.58

(torch: eager, channels_last; int8: `quantize`'s QDQ recipe.) On this CPU kind an exported fp32 engine runs
about 2x faster than torch's and int8 about 2x faster again. Which runtime wins changes from run to run (at a
quieter moment OpenVINO fp32 took 0.43 s per paper study against ONNX Runtime's 0.82), so each engine is timed
on the machine when it is built and the record names the winner (`engine_select`). Both runtimes start fast
(import: ONNX Runtime 0.05 s, OpenVINO 0.2 s; OpenVINO compiles ResNet-50 in 0.9 s, 0.2 s from its cache),
against 1-2 s (up to 7 s on the loaded machine) to import torch.

On an Intel Xeon with AMX / AVX512-VNNI (the project's other CPU kind; not available here, so not measured)
int8 should win by more: VNNI and AMX run int8 dot products natively (AMX int8 about twice AMX bf16); OpenVINO's
oneDNN kernels use both, ONNX Runtime's MLAS kernels at least VNNI, and no 7-bit weights are needed there (see
`quantize`).
OpenVINO, Intel's own runtime, is the likelier winner on that kind; there the competitor is torch's compiled bf16
engine, and the same timing at build time decides.

The ONNX graph: torch's exporters have no adaptive max pooling, so `ExportNet` writes the pyramid pooling as
explicit max-reductions over the same bins (`adaptive_max_pool2d`'s floor/ceil bins) for the run's fixed input
size; the batch dimension stays dynamic. Torch is imported only to export.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ConfigError, EngineError, OutputError


OPENVINO_CACHE = "openvino-cache"  # beside the engine files, in RUN/engines/


def available_runtimes() -> list[str]:
    """The installed runtimes able to run an exported engine, in order of preference on a tie."""
    from importlib.util import find_spec

    return [name for name in ("onnxruntime", "openvino") if find_spec(name) is not None]


def default_threads() -> int:
    """Threads for the runtime: every core this process may use (as torch does)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def open_session(path: str | Path, runtime: str, threads: int | None = None,
                 cache_dir: str | Path | None = None, precision: str = "fp32") -> Callable[[np.ndarray], np.ndarray]:
    """Load an engine file into `runtime`; returns a function from N x 2 x H x W float32 to N logits.

    `cache_dir` (OpenVINO): where compiled networks are kept, keyed by OpenVINO on the file's contents, its
    version and the settings; loading from it takes a fraction of compiling (ResNet-50: 0.9 s here).
    `precision` "fp32" keeps OpenVINO in fp32: on CPUs with AMX its default is to run an fp32 network in bf16
    (ResNet-50 logits off by 0.01, so the fp32 parity gate refused it); "bf16" asks OpenVINO for bf16 (only
    OpenVINO runs an fp32 file in bf16); "int8" leaves the file's own mix.
    EngineError naming the file when the runtime cannot load it (a corrupt or foreign file).
    """
    path = Path(path)
    threads = threads or default_threads()
    if precision == "bf16" and runtime != "openvino":
        raise ConfigError("runtime", f"{runtime} does not run an fp32 engine in bf16; only openvino does")
    try:
        if runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's business
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            return lambda batch: session.run(None, {name: batch})[0]
        if runtime == "openvino":
            import openvino as ov

            settings = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
            if precision in ("fp32", "bf16"):
                settings["INFERENCE_PRECISION_HINT"] = {"fp32": "f32", "bf16": "bf16"}[precision]
            if cache_dir is not None:
                settings["CACHE_DIR"] = str(cache_dir)
            compiled = ov.Core().compile_model(str(path), "CPU", settings)
            request = compiled.create_infer_request()
            return lambda batch: np.array(request.infer({0: batch})[0])
    except ImportError as error:
        raise EngineError(path, f"runtime {runtime} is not installed (pip install {runtime})") from error
    except Exception as error:  # runtimes raise their own types for a file they cannot parse
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EngineError(path, f"{runtime} cannot load this engine file ({first})") from error
    raise ConfigError("runtime", f"unknown runtime {runtime!r}; use onnxruntime or openvino")


@dataclass(frozen=True)
class ExportedSettings:
    """How an exported engine runs, for reports (the `settings` of the InferenceEngine interface)."""

    runtime: str
    precision: str
    file: str
    batch_size: int
    device: str = "cpu"

    def describe(self) -> str:
        return f"{self.runtime} {self.precision} exported engine ({self.file}), batch {self.batch_size}"


class ExportedEngine:
    """Turns preprocessed batches (B x 2 x H x W in [0, 1]) into probabilities with an exported network."""

    def __init__(self, path: str | Path, runtime: str, precision: str, batch_size: int = 8,
                 threads: int | None = None):
        if batch_size < 1:
            raise ConfigError("--batch-size", f"must be at least 1, got {batch_size}")
        self.path = Path(path)
        self.batch_size = batch_size
        self.settings = ExportedSettings(runtime, precision, str(self.path), batch_size)
        self._run = open_session(self.path, runtime, threads, cache_dir=self.path.parent / OPENVINO_CACHE,
                                 precision=precision)

    def probabilities(self, batch) -> np.ndarray:
        """Probabilities of metastasis for one batch of any size (run in chunks of the engine's batch)."""
        inputs = np.asarray(batch, dtype=np.float32)
        if inputs.ndim != 4 or inputs.shape[1] != 2:
            raise ConfigError("network input", f"expected B x 2 x H x W, got {tuple(inputs.shape)}")
        outputs = [self._run(np.ascontiguousarray(inputs[start:start + self.batch_size]))
                   for start in range(0, inputs.shape[0], self.batch_size)]
        if not outputs:
            return np.zeros(0, dtype=np.float64)
        return sigmoid(np.concatenate(outputs))

    def warm_up(self, height: int, width: int) -> float:
        """Run one full batch of zeros; returns the seconds it took."""
        start = time.perf_counter()
        self.probabilities(np.zeros((self.batch_size, 2, height, width), np.float32))
        return time.perf_counter() - start

    def synchronize(self) -> None:
        """Nothing is queued on a CPU runtime (the interface of InferenceEngine)."""


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits, in float64 (a logit of -1000 gives 0.0 without an overflow warning)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64).reshape(-1)))


def seconds_per_study(candidates: dict[str, Callable[[np.ndarray], object]], inputs: np.ndarray,
                      rounds: int = 2) -> dict[str, float]:
    """Seconds per study of each candidate on `inputs`: one warm-up call each, then `rounds` rounds of one call
    per candidate, best round kept. Interleaving matters on a shared machine: another job's load then falls on
    every candidate alike instead of deciding the race."""
    for run in candidates.values():
        run(inputs)
    best = {name: float("inf") for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            start = time.perf_counter()
            run(inputs)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds / len(inputs) for name, seconds in best.items()}


def export_onnx(model, height: int, width: int, path: str | Path) -> Path:
    """Export a MultiViewNet (fp32, eval) to an ONNX file for `height` x `width` input, dynamic batch."""
    import torch

    from .fileio import atomic_path

    net = ExportNet(model, height, width)
    example = torch.zeros(1, 2, height, width)
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter about the legacy exporter
            try:
                # The TorchScript exporter takes under a second for these networks; the dynamo one ~10x longer.
                torch.onnx.export(net, (example,), str(tmp), dynamo=False, input_names=["views"],
                                  output_names=["logits"], opset_version=17,
                                  dynamic_axes={"views": {0: "batch"}, "logits": {0: "batch"}})
            except TypeError:  # a torch without the legacy exporter
                torch.onnx.export(net, (example,), str(tmp), dynamo=True, input_names=["views"],
                                  output_names=["logits"],
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}})
    except OutputError:  # a full disk: already says which file and why
        raise
    except Exception as error:  # the exporters raise many types; the caller falls back to the torch engine
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EngineError(path, f"export to ONNX failed ({type(error).__name__}: {first})") from error
    return Path(path)


def _bins(size: int, cells: int) -> list[tuple[int, int]]:
    """adaptive_max_pool2d's bins: cell i covers [floor(i * size / cells), ceil((i + 1) * size / cells))."""
    return [((i * size) // cells, -(-((i + 1) * size) // cells)) for i in range(cells)]


def _export_net_class():
    import torch
    import torch.nn as nn

    from .model import PYRAMID_GRIDS

    class _ExportNet(nn.Module):
        """MultiViewNet with its pyramid pooling spelt out for a fixed input size (exportable to ONNX)."""

        def __init__(self, model, height: int, width: int):
            super().__init__()
            self.model = model.float().cpu().eval()
            with torch.no_grad():
                _, _, self.rows, self.cols = self.model.features(torch.zeros(1, 2, height, width)).shape

        def forward(self, x):
            maps = self.model.features(x)
            if self.model.config.pooling == "gap":
                pooled = maps.mean(dim=(2, 3))
            else:
                parts = []
                for grid_rows, grid_cols in PYRAMID_GRIDS:
                    cells = [maps[:, :, r0:r1, c0:c1].amax(dim=(2, 3))
                             for r0, r1 in _bins(self.rows, grid_rows) for c0, c1 in _bins(self.cols, grid_cols)]
                    parts.append(torch.stack(cells, dim=2).flatten(1))  # row-major cells, as .flatten(1) orders them
                pooled = torch.cat(parts, dim=1)
            return self.model.head(pooled).squeeze(1)

    return _ExportNet


def ExportNet(model, height: int, width: int):
    """The exportable form of a MultiViewNet (same logits; see the module docstring)."""
    import copy

    return _export_net_class()(copy.deepcopy(model), height, width)
