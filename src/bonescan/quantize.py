"""int8 engine of a trained run: post-training static quantisation calibrated on the run's validation studies,
kept only when a parity gate on the validation split passes.

Method (chosen by measurement, see `exported`): ONNX Runtime static quantisation of the exported fp32 network,
QDQ format, uint8 activations and per-channel int8 weights, MinMax calibration on the `val` studies of the run's
manifest. On CPUs without VNNI (AVX2 only) the weights use 7 bits (`reduce_range`): the AVX2 int8 kernels sum
pairs of uint8 x int8 products in int16 (VPMADDUBSW), which can saturate with full-range weights. The QDQ file
runs in ONNX Runtime and OpenVINO alike; each is gated and timed here and the fastest passing one is recorded.

The gate, on every readable `val` study: |AUC(int8) - AUC(fp32)| <= 0.005 and the same decision for >= 99 % of
studies at the run's frozen operating point (`predict.resolve_operating_point`; 0.5 when the run has none).
fp32 here is the exported fp32 engine, which agrees with torch's fp32 to its recorded parity (~1e-7). The gate's
figures are written to RUN/engines/<checkpoint>-int8.json whatever the verdict; a refused int8 engine is not
kept and `quantize_run` raises EngineError with the figures. A passing one is used by `bonescan predict` only if
it was also measured faster than the fp32 engines here.

Floor: this job runs a run's val studies the way `predict` reads them and scores them with `evaluate`'s AUC, so
it sits beside `predict`, above the engine modules (`engine_store`, `exported`, `engine_select`) it builds on.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .engine_select import TIMING_BATCH, ensure_fp32, runtime_and_precision
from .engine_store import EngineRecord, EngineStore, sha256_file
from .errors import ConfigError, EngineError, RunError
from .exported import available_runtimes, open_session, seconds_per_study, sigmoid
from .fileio import atomic_path
from .preprocess import PreprocessConfig


@dataclass(frozen=True)
class Gate:
    """The parity an int8 engine must reach against fp32 on the validation split."""

    max_auc_diff: float = 0.005
    min_agreement: float = 0.99


GATE = Gate()  # read at call time, so a test (or a stricter site policy) can replace it


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize_run` wrote and measured."""

    record: EngineRecord
    record_path: Path

    def lines(self) -> list[str]:
        """The printed report: the gate per runtime, the timings, the verdict."""
        gate = self.record.gate
        lines = [f"int8 calibrated on {gate['calibration_cases']} val studies; gate on {gate['cases']} val studies "
                 f"at operating point {gate['operating_point']} (threshold {gate['threshold']:.4f})"]
        for runtime, figures in gate["runtimes"].items():
            lines.append(f"  {runtime}: {_figures(figures)} -> {'passed' if figures['passed'] else 'refused'}")
        speed = self.record.speed["seconds_per_study"]
        lines.append("seconds per study (batch {}): ".format(self.record.speed["batch"])
                     + ", ".join(f"{name} {value:.4f}" for name, value in speed.items()))
        if self.record.runtime:
            lines.append(f"int8 engine {self.record.file} ({self.record.runtime}) will be used by `bonescan predict`")
        else:
            lines.append("int8 passed its gate but is not faster than fp32 here: `bonescan predict` keeps fp32")
        lines.append(f"record: {self.record_path}")
        return lines


def quantize_run(run_dir: str | Path, manifest: str | Path | None = None, checkpoint: str = "best",
                 operating_point: str = "youden", calibration_cases: int = 300, batch_size: int = 8,
                 notice: Callable[[str], None] | None = None) -> QuantizeResult:
    """Build RUN's int8 engine from its validation studies and gate it; EngineError (with figures) when refused."""
    from .predict import iterate_batches, manifest_studies, resolve_operating_point

    say = notice or (lambda message: None)
    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise ConfigError("--checkpoint", f"use best or last, got {checkpoint!r}")
    if calibration_cases < 1:
        raise ConfigError("--calibration-cases", f"must be at least 1, got {calibration_cases}")
    if "onnxruntime" not in available_runtimes():
        raise EngineError(run_dir, "int8 needs ONNX Runtime (pip install onnxruntime)")
    store = EngineStore(run_dir, checkpoint)
    now = store.fingerprint()
    manifest = Path(manifest) if manifest else _run_manifest(run_dir)
    point = resolve_operating_point(run_dir, operating_point)

    fp32 = ensure_fp32(store, now, None, say)
    if fp32 is None:
        raise EngineError(run_dir, "the fp32 engine could not be exported, so there is nothing to quantise")
    config = PreprocessConfig(**fp32.preprocess)
    studies = manifest_studies(manifest, "val")
    labels_by_case = _labels(manifest)
    arrays, labels = [], []
    for batch in iterate_batches(studies.sources, config, batch_size, workers=0):
        for item in batch:
            if item.error is not None:
                say(f"val study {studies.case_ids[item.index]} skipped: {item.error}")
                continue
            arrays.append(item.inputs)
            labels.append(labels_by_case[studies.case_ids[item.index]])
    if not arrays or len(set(labels)) < 2:
        raise EngineError(manifest, "the gate needs readable val studies of both labels; "
                                    f"found {len(arrays)} with labels {sorted(set(labels))}")
    inputs, labels = np.stack(arrays), np.asarray(labels, dtype=int)

    fp32_path = store.folder / fp32.file
    say(f"calibrating int8 on {min(calibration_cases, len(inputs))} val studies")
    int8_path = store.model_path("int8")
    # 7-bit weights where int8 products are summed in int16 (AVX2's VPMADDUBSW); VNNI / AMX sum in int32.
    reduce_range = not any("vnni" in flag or "amx_int8" in flag for flag in now.isa_flags)
    _quantize(fp32_path, int8_path, inputs[:calibration_cases], batch_size, reduce_range)

    record = store.new_record("int8", now, fp32.input_shape, fp32.preprocess)
    record.torch_cpu_capability = fp32.torch_cpu_capability
    say(f"gate: {len(inputs)} val studies through fp32 and int8")
    reference = _probabilities(open_session(fp32_path, "onnxruntime"), inputs, batch_size)
    runtimes: dict[str, dict] = {}
    sessions = {}
    for runtime in available_runtimes():
        try:
            sessions[runtime] = open_session(int8_path, runtime, precision="int8")
        except EngineError as error:
            runtimes[runtime] = {"passed": False, "error": error.reason}
            continue
        runtimes[runtime] = gate_figures(labels, reference, _probabilities(sessions[runtime], inputs, batch_size),
                                         point.threshold, GATE)
    record.gate = {"max_auc_diff": GATE.max_auc_diff, "min_agreement": GATE.min_agreement,
                   "operating_point": point.name, "threshold": point.threshold, "cases": int(len(inputs)),
                   "calibration_cases": int(min(calibration_cases, len(inputs))), "calibration": "MinMax",
                   "reduce_range": reduce_range,
                   "passed": any(f["passed"] for f in runtimes.values()), "runtimes": runtimes}
    record.parity = {name: {k: v for k, v in f.items() if k != "passed"} for name, f in runtimes.items()}

    probe = inputs[:TIMING_BATCH]
    passed = {f"int8 {runtime}": sessions[runtime] for runtime, figures in runtimes.items() if figures["passed"]}
    speed = _speeds(store, fp32, passed, probe) if passed else {}
    record.speed = {"batch": len(probe), "seconds_per_study": speed}
    int8_speeds = {name: value for name, value in speed.items() if name.startswith("int8 ")}
    if int8_speeds:
        fastest = min(speed, key=speed.get)
        record.runtime = fastest.split(" ", 1)[1] if fastest.startswith("int8 ") else None
        record.file_sha256 = sha256_file(int8_path)
        store.write(record)
        return QuantizeResult(record, store.record_path("int8"))
    sessions.clear()
    int8_path.unlink(missing_ok=True)  # refused: nothing of it may be picked up later
    store.write(record)
    best = min((f for f in runtimes.values() if "auc_diff" in f), key=lambda f: f["auc_diff"], default=None)
    figures = _figures(best) if best else "; ".join(f"{k}: {v.get('error')}" for k, v in runtimes.items())
    raise EngineError(run_dir, f"int8 refused by its parity gate on {len(inputs)} val studies: {figures} "
                               f"(needs |dAUC| <= {GATE.max_auc_diff} and agreement >= {GATE.min_agreement:.0%}); "
                               f"figures in {store.record_path('int8')}; prediction keeps fp32")


def gate_figures(labels: np.ndarray, reference: np.ndarray, int8: np.ndarray, threshold: float,
                 gate: Gate) -> dict:
    """AUC of fp32 and int8, their difference, decision agreement at `threshold`, max |dp|, and the verdict."""
    from .evaluate.stats import delong_auc

    auc_fp32 = float(delong_auc(labels, reference).auc)
    auc_int8 = float(delong_auc(labels, int8).auc)
    agreement = float(np.mean((reference >= threshold) == (int8 >= threshold)))
    diff = abs(auc_int8 - auc_fp32)
    return {"auc_fp32": auc_fp32, "auc_int8": auc_int8, "auc_diff": diff, "agreement": agreement,
            "max_abs_diff": float(np.abs(reference - int8).max()),
            "passed": bool(diff <= gate.max_auc_diff and agreement >= gate.min_agreement)}


def _figures(figures: dict) -> str:
    if "error" in figures:
        return f"cannot run ({figures['error']})"
    return (f"AUC fp32 {figures['auc_fp32']:.4f}, int8 {figures['auc_int8']:.4f} (|d| {figures['auc_diff']:.4f}), "
            f"decisions agree {100 * figures['agreement']:.1f}%, max |dp| {figures['max_abs_diff']:.3g}")


def _quantize(fp32_path: Path, int8_path: Path, calibration: np.ndarray, batch_size: int,
              reduce_range: bool) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"views": calibration[i:i + batch_size]}
                                 for i in range(0, len(calibration), batch_size)])

        def get_next(self):
            return next(self.batches, None)

    work = Path(tempfile.mkdtemp(prefix="bonescan-quantize-"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = work / "prepared.onnx"
            quant_pre_process(str(fp32_path), str(prepared))  # shape inference + graph optimisation first
            quantize_static(str(prepared), str(work / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            reduce_range=reduce_range, calibrate_method=CalibrationMethod.MinMax)
        with atomic_path(int8_path) as tmp:  # the temporary folder may be on another file system
            shutil.copyfile(work / "int8.onnx", tmp)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _probabilities(run, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    chunks = [run(inputs[i:i + batch_size]).reshape(-1) for i in range(0, len(inputs), batch_size)]
    return sigmoid(np.concatenate(chunks))


def _speeds(store: EngineStore, fp32: EngineRecord, int8: dict, probe: np.ndarray) -> dict[str, float]:
    """Seconds per study of the passing int8 sessions and the fp32 record's runtimes, timed together now (same
    load on the machine); the torch engine's figure comes from the fp32 record (timing it needs torch and the
    model), named by the precision it ran in."""
    candidates = dict(int8)
    for name, figures in fp32.parity.items():  # the fp32 file's candidates that passed their parity gate
        runtime, precision = runtime_and_precision(name)
        if runtime in available_runtimes() and figures.get("max_abs_diff", 1.0) <= figures.get("tolerance", 0.0):
            candidates[f"{precision} {runtime}"] = open_session(store.folder / fp32.file, runtime, precision=precision)
    # torch's engine runs in the precision it chose (bf16 on CPUs that compute it)
    return {f"{fp32.speed.get('torch_precision', 'fp32')} torch": fp32.speed["seconds_per_study"]["torch"],
            **seconds_per_study(candidates, probe)}


def _run_manifest(run_dir: Path) -> Path:
    path = run_dir / "config.json"
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))["manifest"]["path"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunError(path, f"cannot read the run's manifest path ({type(error).__name__}: {error}); "
                             "give --manifest") from error
    if not recorded:
        raise RunError(path, "the run does not record its manifest's path; give --manifest")
    if not Path(recorded).is_file():
        raise RunError(path, f"the run's manifest {recorded} is not there any more; give --manifest")
    return Path(recorded)


def _labels(manifest: Path) -> dict[str, int]:
    from .cohort import load_manifest

    table = load_manifest(manifest, check_files=False)
    return {str(case): int(label) for case, label in zip(table["case_id"], table["label"])}
