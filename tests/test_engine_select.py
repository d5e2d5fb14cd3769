"""Choosing and reusing a run's exported engine: built once, reused, rebuilt with a notice, never used corrupt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from trainkit import train_tiny_run

import bonescan.engine_select as engine_select
from bonescan.engine_store import EngineStore
from bonescan.errors import EngineError
from bonescan.exported import ExportedEngine, available_runtimes
from bonescan.fastpath import reference_probabilities
from bonescan.inference import load_run
from bonescan.io import find_studies
from bonescan.predict import iterate_batches, predict_studies

pytestmark = pytest.mark.usefixtures("one_thread", "eager_engine_timing")


@pytest.fixture(autouse=True)
def exported_measured_faster(monkeypatch):
    """The tiny network takes microseconds in any engine, so which one times faster is noise on a busy machine;
    these tests are about storing, reusing and rebuilding the exported engine, so torch is made to measure slowest
    (a test about the choice itself sets its own timings)."""
    real = engine_select.seconds_per_study

    def torch_slowest(candidates, inputs):
        measured = real(candidates, inputs)
        return {name: (10.0 * max(measured.values()) if name == "torch" else value)
                for name, value in measured.items()}

    monkeypatch.setattr(engine_select, "seconds_per_study", torch_slowest)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    return train_tiny_run(tmp_path_factory.mktemp("engine_select"))


@pytest.fixture()
def run(trained, tmp_path) -> Path:
    """A private copy of the trained run (tests write engines into it)."""
    return Path(shutil.copytree(trained[0], tmp_path / "run"))


@pytest.fixture()
def studies(trained) -> list[Path]:
    data = trained[1].parent / "data"
    return [data / f"case{i:03d}_{view}.npy" for i in (24, 25, 26) for view in ("ant", "post")]


def select(run: Path):
    notices: list[str] = []
    selection = engine_select.select_engine(run, notice=notices.append)
    return selection, notices


def arrays(studies: list[Path], config) -> np.ndarray:
    items = [item for batch in iterate_batches(find_studies(studies), config, 8, 0) for item in batch]
    return np.stack([item.inputs for item in items])


def test_first_use_builds_an_fp32_engine_that_matches_torch(run, studies):
    selection, notices = select(run)
    assert isinstance(selection.engine, ExportedEngine)
    assert len(notices) == 1 and "building the exported fp32 engine" in notices[0]
    record = selection.record
    # Every installed runtime runs the fp32 engine in fp32 (OpenVINO would run it in bf16 on an AMX CPU).
    for runtime in available_runtimes():
        assert record.parity[runtime]["max_abs_diff"] < 1e-4, runtime
    assert record.speed["seconds_per_study"]["torch"] > 0 and record.runtime in record.speed["seconds_per_study"]
    loaded = load_run(run)
    inputs = arrays(studies, selection.preprocess_cfg)
    assert selection.preprocess_cfg == loaded.preprocess_cfg  # predictions need no checkpoint: it is recorded
    np.testing.assert_allclose(selection.engine.probabilities(inputs), reference_probabilities(loaded.model, [inputs]),
                               atol=1e-5)


def test_openvino_competes_in_bf16_only_where_the_cpu_computes_bf16(run, monkeypatch):
    import bonescan.device

    monkeypatch.setattr(engine_select, "EXPORTED_BF16", True)
    native = bonescan.device.cpu_supports_bf16()
    monkeypatch.setattr(bonescan.device, "cpu_supports_bf16", lambda: False)
    assert "openvino-bf16" not in select(run)[0].record.parity
    monkeypatch.setattr(bonescan.device, "cpu_supports_bf16", lambda: True)
    record = engine_select.ensure_fp32(EngineStore(run), EngineStore(run).fingerprint(), None, [].append, force=True)
    assert "openvino-bf16" in record.parity  # forced on a CPU without bf16, OpenVINO may refuse it: an error entry
    if native:  # really bf16: close to fp32, but farther from it than an fp32 engine may be
        assert record.parity["openvino-bf16"]["tolerance"] == engine_select.BF16_PARITY_TOLERANCE
        assert (engine_select.PARITY_TOLERANCE < record.parity["openvino-bf16"]["max_abs_diff"]
                <= engine_select.BF16_PARITY_TOLERANCE)
        assert record.parity["openvino"]["max_abs_diff"] < 1e-4


def test_a_bf16_engine_chosen_by_its_timing_runs_in_bf16(run, studies, monkeypatch):
    import bonescan.device

    if not bonescan.device.cpu_supports_bf16():
        pytest.skip("this CPU computes bf16 in software: no bf16 candidate is timed here")
    monkeypatch.setattr(engine_select, "EXPORTED_BF16", True)
    monkeypatch.setattr(engine_select, "seconds_per_study",
                        lambda candidates, inputs: {name: 0.1 if name == "openvino-bf16" else 1.0
                                                    for name in candidates})
    selection, _ = select(run)
    assert selection.record.runtime == "openvino-bf16"
    assert selection.engine.settings.precision == "bf16" and selection.engine.settings.runtime == "openvino"
    inputs = arrays(studies, selection.preprocess_cfg)
    reference = reference_probabilities(load_run(run).model, [inputs])
    difference = np.abs(selection.engine.probabilities(inputs) - reference)
    assert engine_select.PARITY_TOLERANCE < difference.max() <= engine_select.BF16_PARITY_TOLERANCE
    assert "openvino bf16 exported engine" in predict_studies(run, studies, workers=0).engine


def test_for_a_few_studies_an_engine_that_starts_at_once_beats_one_that_compiles_first(run, monkeypatch):
    # torch's engine a little faster per study, but its first call compiles for seconds (bf16 CPUs)
    monkeypatch.setattr(engine_select, "seconds_per_study",
                        lambda candidates, inputs: {name: 0.010 if name == "torch" else 0.011 + 0.001 * n
                                                    for n, name in enumerate(candidates)})
    monkeypatch.setattr(engine_select, "first_call_seconds",
                        lambda candidates, inputs: {name: 8.0 if name == "torch" else 0.1 for name in candidates})
    many = engine_select.select_engine(run)
    assert many.record.runtime is None and many.engine is None  # no count given: the fastest per study
    assert many.record.speed["first_call_seconds"]["torch"] == 8.0
    fastest_exported = min((name for name in many.record.speed["seconds_per_study"] if name != "torch"),
                           key=many.record.speed["seconds_per_study"].get)
    one = engine_select.select_engine(run, studies=1)
    assert isinstance(one.engine, ExportedEngine)
    assert one.engine.settings.runtime == engine_select.runtime_and_precision(fastest_exported)[0]
    # 8 s of compiling against 2 ms saved per study: torch pays from about 4,000 studies on
    assert engine_select.select_engine(run, studies=3_000).engine is not None
    assert engine_select.select_engine(run, studies=5_000).engine is None
    # an engine file that is not sound is no stand-in: the torch engine predicts
    store = EngineStore(run)
    (store.folder / one.record.file).write_bytes(b"truncated")
    assert engine_select.select_engine(run, studies=1).engine is None


def test_predict_chooses_its_engine_for_the_studies_it_was_given(run, studies, monkeypatch):
    asked = []
    real = engine_select.select_engine
    monkeypatch.setattr(engine_select, "select_engine", lambda *args, **kwargs: asked.append(kwargs.get("studies"))
                        or real(*args, **kwargs))
    predict_studies(run, studies, workers=0)
    assert asked == [3]  # three studies of two views each


def test_a_record_without_first_calls_keeps_its_fastest_engine(run):
    selection, _ = select(run)
    record = selection.record
    record.speed.pop("first_call_seconds")
    assert engine_select.engine_for_workload(record, 1) == record.runtime
    record.runtime = None
    assert engine_select.engine_for_workload(record, 1) is None


def test_a_few_studies_never_move_the_choice_from_an_exported_engine_to_torch(run):
    record = select(run)[0].record
    assert record.runtime is not None  # made to measure fastest by this module's fixture
    # the torch engine's start understated (importing torch is not in it): it may look sooner for a few studies
    record.speed["first_call_seconds"] = {name: 0.0 if name == "torch" else 5.0
                                          for name in record.speed["seconds_per_study"]}
    assert engine_select.engine_for_workload(record, 1) == record.runtime


def test_a_stored_engine_is_reused_without_rebuilding(run, monkeypatch):
    select(run)

    def no_build(*args, **kwargs):
        raise AssertionError("the stored engine should have been reused")

    monkeypatch.setattr(engine_select, "build_fp32", no_build)
    selection, notices = select(run)
    assert isinstance(selection.engine, ExportedEngine) and notices == []


@pytest.mark.parametrize("field, value, reason", [
    ("checkpoint_sha256", "0" * 64, "checkpoint changed"),
    ("isa_flags", ["avx512f", "amx_int8"], "amx_int8"),
    ("versions", {"torch": "1.0", "onnx": None, "onnxruntime": "0.1", "openvino": None}, "versions changed"),
])
def test_a_mismatched_record_is_rebuilt_with_a_notice(run, field, value, reason):
    select(run)
    store = EngineStore(run)
    data = json.loads(store.record_path("fp32").read_text())
    data[field] = value
    store.record_path("fp32").write_text(json.dumps(data))

    selection, notices = select(run)
    assert isinstance(selection.engine, ExportedEngine)
    assert reason in notices[0] and "rebuilding" in notices[0] and "building" in notices[1]
    assert store.read("fp32").stale_reason(store.fingerprint()) is None  # the new record matches again


def test_a_corrupt_engine_file_is_named_and_rebuilt(run):
    select(run)
    store = EngineStore(run)
    store.model_path("fp32").write_bytes(b"\x00garbage, not ONNX")
    selection, notices = select(run)
    assert isinstance(selection.engine, ExportedEngine)
    assert str(store.model_path("fp32")) in notices[0] and "rebuilding" in notices[0]


def test_an_unreadable_record_is_named_and_rebuilt(run):
    select(run)
    store = EngineStore(run)
    store.record_path("fp32").write_text('{"precision": "fp32", "truncated')
    selection, notices = select(run)
    assert isinstance(selection.engine, ExportedEngine)
    assert "best-fp32.json" in notices[0] and "rebuilding" in notices[0]
    assert store.read("fp32").usable


def test_an_engine_the_runtime_cannot_load_falls_back_to_torch_and_prediction_goes_on(run, studies, monkeypatch):
    select(run)
    store = EngineStore(run)
    # Garbage whose hash matches the record: only the runtime can tell.
    store.model_path("fp32").write_bytes(b"\x00garbage, not ONNX")
    data = json.loads(store.record_path("fp32").read_text())
    data["file_sha256"] = engine_select.sha256_file(store.model_path("fp32"))
    store.record_path("fp32").write_text(json.dumps(data))

    def broken_build(*args, **kwargs):
        raise EngineError(store.model_path("fp32"), "export failed")

    monkeypatch.setattr(engine_select, "build_fp32", broken_build)
    notices: list[str] = []
    report = predict_studies(run, studies, workers=0, notice=notices.append)
    assert "onnxruntime cannot load this engine file" in notices[0] and "best-fp32.onnx" in notices[0]
    assert "using the torch engine" in notices[-1]
    # The torch engine predicted every study (at the precision this CPU's "auto" gives: fp32 eager, or bf16
    # compiled where the CPU has native bf16).
    assert report.ok and report.engine.startswith("cpu ") and "exported" not in report.engine
    assert report.notices == notices


def test_a_network_that_cannot_be_exported_runs_in_torch_with_a_notice(run, monkeypatch):
    import torch

    def unsupported(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of operator adaptive_max_pool2d")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    selection, notices = select(run)
    assert selection.engine is None  # the caller runs the torch engine
    assert "export to ONNX failed (RuntimeError: Unsupported" in notices[-1] and "using the torch engine" in notices[-1]
    assert not EngineStore(run).model_path("fp32").exists()


def test_an_engine_the_disk_cannot_hold_runs_in_torch_with_a_notice_naming_the_file(run, monkeypatch):
    import errno

    import torch

    def disk_full(net, args, path, **kwargs):
        with open(path, "wb") as handle:  # as the exporter writes the file beside its final name
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", disk_full)
    selection, notices = select(run)
    assert selection.engine is None
    path = EngineStore(run).model_path("fp32")
    assert f"building the exported engine failed ({path}: cannot be written: No space left on device)" in notices[-1]
    assert not path.exists() and not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_predict_names_the_engine_in_its_summary_csv_and_json(run, studies, tmp_path):
    report = predict_studies(run, studies, workers=0)
    assert report.ok and "fp32 exported engine" in report.engine
    table = pd.read_csv(report.write(tmp_path / "preds.csv"))
    assert (table["engine"] == report.engine).all()
    data = json.loads(report.write(tmp_path / "preds.json").read_text())
    assert data["engine"] == report.engine and data["engine_notices"] == report.notices

    # fp32 forced: "auto" means bf16 on CPUs with native bf16, whose probabilities differ by ~1e-3.
    torch_report = predict_studies(run, studies, workers=0, engine="torch", precision="fp32", compile="off")
    assert torch_report.engine == "cpu fp32 channels_last eager, batch 8"
    exported = {s.study_id: s.probability for s in report.studies}
    for study in torch_report.studies:
        assert study.probability == pytest.approx(exported[study.study_id], abs=1e-5)


def test_predicting_with_a_stored_engine_does_not_import_torch(run, studies):
    # Importing torch costs more than predicting a study with an exported engine; a fresh process shows it,
    # reader process included (three batches of one study).
    import os
    import subprocess
    import sys

    import bonescan

    select(run)
    code = ("import sys; from bonescan.predict import predict_studies; "
            "report = predict_studies(sys.argv[1], sys.argv[2:], batch_size=1, workers=1); "
            "print(report.ok, 'torch' in sys.modules, report.engine)")
    env = {**os.environ, "PYTHONPATH": str(Path(bonescan.__file__).parent.parent)}
    done = subprocess.run([sys.executable, "-c", code, str(run), *map(str, studies)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ok, torch_imported, engine = done.stdout.strip().split(" ", 2)
    assert (ok, torch_imported) == ("True", "False") and "exported engine" in engine
