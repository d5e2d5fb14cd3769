"""int8 engines: calibrated on the val split, kept only through the parity gate, used only where faster."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from trainkit import train_tiny_run

import bonescan.quantize as quantize
from bonescan.cli import main
from bonescan.cohort import load_manifest
from bonescan.engine_select import select_engine
from bonescan.engine_store import EngineStore
from bonescan.errors import EngineError, RunError
from bonescan.evaluate.stats import delong_auc
from bonescan.exported import ExportedEngine
from bonescan.fastpath import reference_probabilities
from bonescan.inference import load_run
from bonescan.predict import iterate_batches, manifest_studies, predict_studies

pytestmark = pytest.mark.usefixtures("one_thread", "eager_engine_timing")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    return train_tiny_run(tmp_path_factory.mktemp("quantize"))


@pytest.fixture()
def run(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained[0], tmp_path / "run"))


@pytest.fixture()
def int8_faster(monkeypatch):
    """Tiny networks take microseconds either way; make the other engines measure slow so int8 wins."""
    real = quantize._speeds

    def slow_fp32(store, fp32, int8, probe):
        measured = real(store, fp32, int8, probe)
        return {name: (value if name.startswith("int8") else 1.0) for name, value in measured.items()}

    monkeypatch.setattr(quantize, "_speeds", slow_fp32)


def val_inputs(manifest: Path, config) -> tuple[np.ndarray, np.ndarray]:
    studies = manifest_studies(manifest, "val")
    labels = dict(zip(*(load_manifest(manifest, check_files=False)[c] for c in ("case_id", "label"))))
    items = [item for batch in iterate_batches(studies.sources, config, 8, 0) for item in batch]
    return np.stack([i.inputs for i in items]), np.array([labels[studies.case_ids[i.index]] for i in items])


def test_int8_passes_its_gate_and_agrees_with_fp32(run, trained, int8_faster):
    result = quantize.quantize_run(run)  # the val studies come from the manifest recorded in config.json
    gate = result.record.gate
    assert gate["passed"] and gate["cases"] == 24 and gate["threshold"] == 0.5  # no operating points: 0.5
    assert result.record.runtime in ("onnxruntime", "openvino")
    assert json.loads(result.record_path.read_text())["gate"]["passed"] is True
    # torch's engine is named by the precision it ran in (auto: bf16 where it is faster, on AMX)
    from bonescan.device import cpu_bf16_is_faster

    torch_timed = [name for name in result.record.speed["seconds_per_study"] if name.endswith(" torch")]
    assert torch_timed == [f"{'bf16' if cpu_bf16_is_faster() else 'fp32'} torch"]

    # Independently of the gate's own figures: int8 probabilities against torch's fp32 on the val split.
    loaded = load_run(run)
    inputs, labels = val_inputs(trained[1], loaded.preprocess_cfg)
    engine = ExportedEngine(EngineStore(run).model_path("int8"), result.record.runtime, "int8")
    int8, fp32 = engine.probabilities(inputs), reference_probabilities(loaded.model, [inputs])
    assert 0 < np.abs(int8 - fp32).max() < 0.05  # really quantised, and close
    assert abs(delong_auc(labels, int8).auc - delong_auc(labels, fp32).auc) <= 0.005
    assert np.mean((int8 >= 0.5) == (fp32 >= 0.5)) >= 0.99

    studies = [trained[1].parent / "data" / f"case030_{view}.npy" for view in ("ant", "post")]
    report = predict_studies(run, studies, workers=0)
    assert "int8 exported engine" in report.engine
    assert report.studies[0].probability == pytest.approx(float(fp32[30 - 24]), abs=0.05)


def test_int8_is_timed_against_the_bf16_engine_where_the_cpu_computes_bf16(run, monkeypatch):
    import bonescan.device
    import bonescan.engine_select as engine_select

    if not bonescan.device.cpu_supports_bf16():
        pytest.skip("this CPU computes bf16 in software: no bf16 engine to time int8 against")
    monkeypatch.setattr(engine_select, "EXPORTED_BF16", True)
    result = quantize.quantize_run(run)
    speeds = result.record.speed["seconds_per_study"]
    torch_name = f"{'bf16' if bonescan.device.cpu_bf16_is_faster() else 'fp32'} torch"  # torch: auto
    assert {"bf16 openvino", "fp32 openvino", "fp32 onnxruntime", torch_name} <= set(speeds)
    assert result.record.runtime is None or speeds[f"int8 {result.record.runtime}"] == min(speeds.values())


def test_int8_not_faster_than_fp32_is_kept_out_of_predict(run, trained, monkeypatch):
    real = quantize._speeds
    monkeypatch.setattr(quantize, "_speeds", lambda *args: {**real(*args), "fp32 torch": 1e-9})
    result = quantize.quantize_run(run)
    assert result.record.gate["passed"] and result.record.runtime is None
    assert "not faster" in result.lines()[-2]
    assert select_engine(run).engine.settings.precision == "fp32"


def test_the_gate_refuses_with_its_figures_and_nothing_is_kept(run, monkeypatch):
    monkeypatch.setattr(quantize, "GATE", quantize.Gate(max_auc_diff=-1.0))  # no int8 can pass
    with pytest.raises(EngineError) as refused:
        quantize.quantize_run(run)
    message = str(refused.value)
    assert "refused by its parity gate" in message and "AUC fp32" in message and "agree" in message
    store = EngineStore(run)
    assert not store.model_path("int8").exists()
    record = store.read("int8")
    assert record.gate["passed"] is False and not record.usable and record.gate["max_auc_diff"] == -1.0
    assert select_engine(run).engine.settings.precision == "fp32"


def test_the_gate_counts_disagreeing_decisions(monkeypatch):
    labels = np.array([0, 0, 1, 1] * 25)
    reference = np.where(labels == 1, 0.8, 0.2)
    flipped = reference.copy()
    flipped[:2] = 0.6  # two of 100 negatives cross the threshold: 98 % agreement < 99 %
    figures = quantize.gate_figures(labels, reference, flipped, 0.5, quantize.GATE)
    assert figures["agreement"] == pytest.approx(0.98) and not figures["passed"]
    assert quantize.gate_figures(labels, reference, reference + 0.01, 0.5, quantize.GATE)["passed"]


def test_cli_exits_2_with_one_line_when_refused(run, monkeypatch, capsys):
    monkeypatch.setattr(quantize, "GATE", quantize.Gate(min_agreement=1.01))
    assert main(["quantize", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bonescan: error:") and "refused by its parity gate" in err[-1]


def test_a_stale_int8_engine_is_set_aside_with_a_notice(run, int8_faster):
    quantize.quantize_run(run)
    store = EngineStore(run)
    data = json.loads(store.record_path("int8").read_text())
    data["versions"]["onnxruntime"] = "0.0.1"
    store.record_path("int8").write_text(json.dumps(data))
    notices: list[str] = []
    selection = select_engine(run, notice=notices.append)
    assert selection.engine.settings.precision == "fp32"
    assert "int8" in notices[0] and "versions changed" in notices[0] and "bonescan quantize" in notices[0]


def test_the_manifest_must_be_known(run, tmp_path):
    config = json.loads((run / "config.json").read_text())
    config["manifest"]["path"] = str(tmp_path / "gone.csv")
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match="--manifest"):
        quantize.quantize_run(run)


def test_a_corrupt_int8_file_is_named_and_fp32_predicts(run, trained, int8_faster):
    quantize.quantize_run(run)
    store = EngineStore(run)
    store.model_path("int8").write_bytes(b"truncated")
    notices: list[str] = []
    studies = [trained[1].parent / "data" / f"case030_{view}.npy" for view in ("ant", "post")]
    report = predict_studies(run, studies, workers=0, notice=notices.append)
    assert report.ok and "fp32 exported engine" in report.engine
    assert str(store.model_path("int8")) in notices[0] and "using the fp32 engines" in notices[0]
