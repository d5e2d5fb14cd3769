"""Which engine runs a trained network on this machine: a stored exported engine (int8 or fp32) or torch's.

The choice is made by measurement and remembered in the RUN (`engine_store`):
- int8 (`bonescan quantize`) runs when its record still matches the checkpoint, CPU ISA and versions, its file
  is intact, it passed its parity gate and it was measured faster than the fp32 engines when it was quantised;
- else the exported fp32 engine, when it was measured faster than the torch engine when it was built;
- else the torch engine (`fastpath.InferenceEngine`), unless the caller says how many studies it will predict and
  the torch engine's first call (compiling the network in bf16: seconds) would cost more than its faster studies
  save over them; then the fastest exported engine (`engine_for_workload`).
The fp32 engine is built on first use (export, parity with torch, timing: once per run and machine). A stale
record is rebuilt with a notice, never used silently; an engine file that is corrupt or cannot be loaded gives
one notice naming it and the fallback taken (rebuild, fp32, or the torch engine), and prediction goes on.

Nothing here imports torch unless an engine has to be built: reusing a stored engine costs milliseconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .engine_store import EngineRecord, EngineStore, Fingerprint, sha256_file
from .errors import BoneScanError, EngineError
from .exported import ExportedEngine, available_runtimes, export_onnx, open_session, seconds_per_study, sigmoid
from .preprocess import PreprocessConfig

PARITY_TOLERANCE = 1e-4  # max |dp| of an fp32 export against torch's fp32 probabilities (measured: ~1e-7)
# On CPUs that compute bf16 natively, torch's engine runs in bf16 and OpenVINO may too: the same file, compiled
# for bf16 (ResNet-50 at 768 x 256 on a 2-core Xeon with AMX, idle: 0.030 s per study against 0.10 for torch's
# eager bf16 and 0.18 for ONNX Runtime's fp32; max |d logit| 0.012). Its gate is bf16's own rounding, not fp32's.
BF16_PARITY_TOLERANCE = 1e-2
BF16_SUFFIX = "-bf16"
EXPORTED_BF16 = True  # tests set False where they compare an exported engine with torch's fp32 at 1e-5
TIMING_BATCH = 2  # studies per timed call when choosing an engine: short enough for ResNet-50 on 2 cores
# The torch engine timed against the exported ones is the one `predict` would build ("auto": compiled bf16 on AMX
# CPUs, eager fp32 here); tests set "off" so that tiny networks are not compiled on every CPU kind.
TORCH_COMPILE = "auto"
Notice = Callable[[str], None]


@dataclass
class Selection:
    """The engine chosen for a run: an exported engine, or None for the torch engine, and why."""

    engine: ExportedEngine | None
    record: EngineRecord | None
    preprocess_cfg: PreprocessConfig | None
    notices: list[str] = field(default_factory=list)


def select_engine(run_dir: str | Path, checkpoint: str = "best", batch_size: int = 8,
                  load_model: Callable[[], tuple] | None = None, notice: Notice | None = None,
                  studies: int | None = None) -> Selection:
    """The stored engine to use for RUN/checkpoints/<checkpoint>.pt, building the fp32 one when needed.

    `load_model` returns (model, preprocess_cfg) and is called only when an engine must be built (it imports
    torch); by default it loads the run. `notice` receives every message about a rebuild or fallback. `studies`:
    how many studies the caller will predict (None: many), so that an engine whose first call
    costs seconds is not chosen for a few studies (`engine_for_workload`).
    """
    notices: list[str] = []

    def say(message: str) -> None:
        notices.append(message)
        if notice is not None:
            notice(message)

    store = EngineStore(Path(run_dir), checkpoint)
    now = store.fingerprint()
    chosen = _open_int8(store, now, batch_size, say)
    if chosen is not None:
        return Selection(chosen[0], chosen[1], _preprocess(chosen[1]), notices)
    record = ensure_fp32(store, now, load_model, say)
    runtime = engine_for_workload(record, studies) if record is not None else None
    if runtime is not None and record.runtime is None and store.file_problem(record) is not None:
        runtime = None  # the file is checked where it is the chosen one; as a stand-in, only a sound one serves
    if runtime is None:
        return Selection(None, record, _preprocess(record) if record else None, notices)
    try:
        engine = ExportedEngine(store.folder / record.file, *runtime_and_precision(runtime), batch_size)
    except EngineError as error:
        say(f"{error}; rebuilding it")
        record = ensure_fp32(store, now, load_model, say, force=True)
        runtime = engine_for_workload(record, studies) if record is not None else None
        if runtime is None:
            return Selection(None, record, _preprocess(record) if record else None, notices)
        try:
            engine = ExportedEngine(store.folder / record.file, *runtime_and_precision(runtime), batch_size)
        except EngineError as again:
            say(f"{again}; using the torch engine")
            return Selection(None, None, None, notices)
    return Selection(engine, record, _preprocess(record), notices)


def engine_for_workload(record: EngineRecord, studies: int | None) -> str | None:
    """The engine of `record` for predicting `studies` studies; None means the torch engine.

    The fastest per study (`record.runtime`), except where that is the torch engine and an exported one would be
    done sooner: its first call (recorded when the engines were built: loading, compiling) plus `studies` times its
    seconds per study. On a CPU with native bf16 the torch engine compiles the network on its first call (6-7 s for
    `cpu-small` on a 2-core EPYC) and may then run a little faster per study than OpenVINO in bf16; `bonescan
    predict` on one study took 17 s from start to exit with it instead of 1.5 s. The torch engine's start is
    understated (importing torch, seconds more, is not in it), so the choice leans towards it and never moves to it
    from an exported engine. None for `studies` (many) or a record without first calls keeps the fastest per
    study."""
    per_study = record.speed.get("seconds_per_study", {})
    first_call = record.speed.get("first_call_seconds", {})
    if record.runtime is not None or studies is None or not first_call:
        return record.runtime
    totals = {name: first_call.get(name, 0.0) + studies * seconds for name, seconds in per_study.items()}
    fastest = min(totals, key=totals.get)
    return None if fastest == "torch" else fastest


def first_call_seconds(candidates: dict[str, Callable[[np.ndarray], object]], inputs: np.ndarray) -> dict[str, float]:
    """Seconds of each candidate's first call on `inputs`: what a process pays before its first batch (the torch
    engine compiles then where it runs bf16)."""
    seconds = {}
    for name, run in candidates.items():
        start = time.perf_counter()
        run(inputs)
        seconds[name] = time.perf_counter() - start
    return seconds


def ensure_fp32(store: EngineStore, now: Fingerprint, load_model: Callable[[], tuple] | None, say: Notice,
                force: bool = False) -> EngineRecord | None:
    """The valid fp32 record of the store, (re)built when absent, stale, corrupt or `force`d.

    None when no runtime is installed or building failed (said through `say`; the torch engine runs then).
    """
    if not available_runtimes():
        return None
    with store.build_lock():
        return _ensure_fp32_locked(store, now, load_model, say, force)


def _ensure_fp32_locked(store: EngineStore, now: Fingerprint, load_model: Callable[[], tuple] | None, say: Notice,
                        force: bool) -> EngineRecord | None:
    problem = None  # why a stored engine is set aside (None: there is none, or `force` was said by the caller)
    if not force:
        try:
            record = store.read("fp32")
            if record is not None:
                problem = record.stale_reason(now) or (store.file_problem(record) if record.runtime else None)
                if problem is None:
                    return record
        except BoneScanError as error:
            problem = str(error)
    # Load first: a checkpoint that cannot be read is the run's error (no engine can serve it), not a notice.
    model, preprocess_cfg = (load_model or _run_loader(store))()
    if problem is not None:
        say(f"stored engine {store.record_path('fp32')} not used: {problem}; rebuilding it")
    say(f"building the exported fp32 engine in {store.folder} (once per run and machine: export, parity, timing)")
    try:
        return build_fp32(store, now, model, preprocess_cfg)
    except BoneScanError as error:
        say(f"building the exported engine failed ({error}); using the torch engine")
        return None


def build_fp32(store: EngineStore, now: Fingerprint, model, preprocess_cfg: PreprocessConfig) -> EngineRecord:
    """Export the network, check each runtime's parity with torch, time them and torch's engine; write the record."""
    import torch

    from .device import cpu_supports_bf16
    from .fastpath import InferenceEngine, reference_probabilities

    height, width = preprocess_cfg.height, preprocess_cfg.width
    path = export_onnx(model, height, width, store.model_path("fp32"))
    record = store.new_record("fp32", now, [2, height, width], preprocess_cfg.to_dict())
    record.torch_cpu_capability = torch.backends.cpu.get_cpu_capability()
    inputs = _probe_inputs(height, width)
    reference = reference_probabilities(model, [inputs])
    torch_engine = InferenceEngine(model, device="cpu", precision="auto", compile=TORCH_COMPILE,
                                   batch_size=TIMING_BATCH)
    candidates = {"torch": torch_engine.probabilities}
    opening = {}  # seconds to open each exported engine (OpenVINO compiles it then): part of its first call
    for name, (runtime, precision, tolerance) in exported_candidates(EXPORTED_BF16 and cpu_supports_bf16()).items():
        try:
            start = time.perf_counter()
            run = open_session(path, runtime, precision=precision)
            opening[name] = time.perf_counter() - start
        except EngineError as error:
            record.parity[name] = {"error": error.reason}
            continue
        probabilities = sigmoid(run(inputs))
        max_diff = float(np.abs(probabilities - reference).max())
        record.parity[name] = {"max_abs_diff": max_diff, "cases": len(inputs), "tolerance": tolerance}
        if max_diff <= tolerance:
            candidates[name] = run
    first_calls = {name: seconds + opening.get(name, 0.0)
                   for name, seconds in first_call_seconds(candidates, inputs).items()}
    speed = seconds_per_study(candidates, inputs)
    record.speed = {"batch": len(inputs), "torch_engine": torch_engine.settings.describe(),
                    "torch_precision": torch_engine.settings.precision, "seconds_per_study": speed,
                    "first_call_seconds": first_calls}
    fastest = min(speed, key=speed.get)
    record.runtime = None if fastest == "torch" else fastest
    record.file_sha256 = sha256_file(path)
    store.write(record)
    return record


def exported_candidates(native_bf16: bool) -> dict[str, tuple[str, str, float]]:
    """Name -> (runtime, precision, parity tolerance) of the exported engines timed against torch's: every
    installed runtime in fp32, and OpenVINO in bf16 where the CPU computes bf16 natively."""
    candidates = {runtime: (runtime, "fp32", PARITY_TOLERANCE) for runtime in available_runtimes()}
    if native_bf16 and "openvino" in candidates:
        candidates["openvino" + BF16_SUFFIX] = ("openvino", "bf16", BF16_PARITY_TOLERANCE)
    return candidates


def runtime_and_precision(candidate: str) -> tuple[str, str]:
    """(runtime, precision) of a candidate's name as recorded ("openvino-bf16" -> ("openvino", "bf16"))."""
    if candidate.endswith(BF16_SUFFIX):
        return candidate[:-len(BF16_SUFFIX)], "bf16"
    return candidate, "fp32"


def _open_int8(store: EngineStore, now: Fingerprint, batch_size: int, say: Notice):
    """(engine, record) of a usable int8 engine, else None (with a notice when one exists but cannot be used)."""
    try:
        record = store.read("int8")
    except BoneScanError as error:
        say(f"{error}; using the fp32 engines")
        return None
    if record is None or not record.usable:
        return None  # none, refused by its gate, or not faster: decided (and said) at quantise time
    problem = record.stale_reason(now) or store.file_problem(record)
    if problem is not None:
        say(f"int8 engine {store.record_path('int8')} not used: {problem}; run `bonescan quantize --run "
            f"{store.run_dir}` again to rebuild it; using the fp32 engines meanwhile")
        return None
    try:
        return ExportedEngine(store.folder / record.file, record.runtime, "int8", batch_size), record
    except EngineError as error:
        say(f"{error}; using the fp32 engines")
        return None


def _probe_inputs(height: int, width: int) -> np.ndarray:
    """Seeded inputs for parity and timing; varied brightness so probabilities differ between studies."""
    rng = np.random.default_rng(0)
    base = rng.random((TIMING_BATCH, 2, height, width), dtype=np.float32)
    return base * np.linspace(0.3, 1.0, TIMING_BATCH, dtype=np.float32)[:, None, None, None]


def _preprocess(record: EngineRecord) -> PreprocessConfig:
    return PreprocessConfig(**record.preprocess)


def _run_loader(store: EngineStore) -> Callable[[], tuple]:
    def load() -> tuple:
        from .inference import load_run

        loaded = load_run(store.run_dir, store.checkpoint, device="cpu", precision="fp32")
        return loaded.model, loaded.preprocess_cfg

    return load
