"""`bonescan predict` and `bonescan bench predict` end to end, on a tiny trained run and synthetic studies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image

from bonescan.cli import main
from bonescan.device import cpu_bf16_is_faster
from bonescan.predict import FALLBACK_WARNING

pytestmark = pytest.mark.slow  # trains a tiny run once (about 20 s on 2 cores)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(RUN folder of a one-epoch tiny network, folder of its synthetic studies)."""
    root = tmp_path_factory.mktemp("predict_cli")
    assert main(["synth", "--cases", "30", "--out", str(root / "syn"), "--seed", "1"]) == 0
    assert main(["train", "--manifest", str(root / "syn" / "manifest.csv"), "--out", str(root / "run"),
                 "--preset", "tiny", "--epochs", "1"]) == 0
    return root / "run", root / "syn" / "studies"


@pytest.fixture()
def inputs(tmp_path, tiny_run) -> Path:
    """Three synthetic studies and one file that is not a scan."""
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted(tiny_run[1].glob("*.dcm"))[:3]:
        shutil.copy(path, folder / path.name)
    (folder / "notes.dcm").write_text("not a DICOM file")
    return folder


def test_predict_lists_every_study_and_exits_2_when_one_failed(tiny_run, inputs, tmp_path, capsys):
    run, _ = tiny_run
    (run / "operating_points.json").unlink(missing_ok=True)
    code = main(["predict", "--run", str(run), str(inputs), "--out", str(tmp_path / "preds.csv"), "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 2
    table = pd.read_csv(tmp_path / "preds.csv")
    assert len(table) == 4
    failed = table[table["status"] == "failed"]
    assert len(failed) == 1 and "notes.dcm" in failed["error"].iloc[0]
    ok = table[table["status"] == "ok"]
    assert ok["probability"].between(0, 1).all()
    assert (ok["threshold"] == 0.5).all() and ok["warnings"].str.contains(FALLBACK_WARNING, regex=False).all()
    assert "notes.dcm" in captured.err and FALLBACK_WARNING in captured.err


def test_predict_whose_heat_maps_cannot_be_written_lists_each_study_then_says_once_what_to_do(tiny_run, inputs,
                                                                                               tmp_path, capsys):
    run, _ = tiny_run
    (tmp_path / "maps").write_text("a file where the heat-map folder should be")
    code = main(["predict", "--run", str(run), str(inputs), "--out", str(tmp_path / "preds.csv"), "--workers", "1",
                 "--heatmaps", str(tmp_path / "maps")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count(f"cannot be written: {tmp_path / 'maps'} is not a folder") == 3  # each study read
    assert ("bonescan: 3 of the failed studies were read, but their files could not be written; make room (or fix "
            "the folder's permissions) and predict them again") in err
    assert "Traceback" not in err
    table = pd.read_csv(tmp_path / "preds.csv")
    assert table["probability"].notna().sum() == 3  # the readings are kept
    # nor are they lost when the table itself cannot be written: they go to standard output
    (tmp_path / "tables").write_text("a file where the output folder should be")
    code = main(["predict", "--run", str(run), str(inputs), "--out", str(tmp_path / "tables" / "preds.csv"),
                 "--workers", "1", "--heatmaps", str(tmp_path / "maps")])
    captured = capsys.readouterr()
    assert code == 2
    printed = dict(line.split("\t")[:2] for line in captured.out.splitlines() if line.count("\t") == 2)
    assert {name: round(float(p), 4) for name, p in printed.items()} == {
        row.study_id: round(row.probability, 4) for row in table.itertuples() if row.probability == row.probability}
    assert captured.err.strip().endswith(f"bonescan: error: {tmp_path / 'tables' / 'preds.csv'}: cannot be written: "
                                         f"{tmp_path / 'tables'} is not a folder; the readings are on standard output "
                                         "instead")


def test_predict_uses_the_frozen_operating_point_and_writes_results(tiny_run, inputs, tmp_path):
    run, _ = tiny_run
    (inputs / "notes.dcm").unlink()
    thresholds = {"youden": 0.41, "rule-out": 0.07, "rule-in": 0.93, "0.5": 0.5}
    (run / "operating_points.json").write_text(json.dumps(thresholds))
    try:
        code = main(["predict", "--run", str(run), str(inputs), "--out", str(tmp_path / "preds.json"),
                     "--operating-point", "rule-out", "--heatmaps", str(tmp_path / "maps"),
                     "--dicom-out", str(tmp_path / "dicom"), "--workers", "0"])
    finally:
        (run / "operating_points.json").unlink()
    assert code == 0
    data = json.loads((tmp_path / "preds.json").read_text())
    assert data["operating_point"] == "rule-out" and data["threshold"] == 0.07 and data["failures"] == []
    assert len(data["studies"]) == 3
    for study in data["studies"]:
        assert study["decision"] == ("metastasis" if study["probability"] >= 0.07 else "no metastasis")
        assert Path(study["heatmap"]).is_file()
        source = pydicom.dcmread(study["source"], stop_before_pixels=True)
        assert pydicom.dcmread(study["dicom_sr"]).StudyInstanceUID == source.StudyInstanceUID


@pytest.fixture()
def small_manifest(tmp_path, tiny_run) -> Path:
    """Four test-split rows of the synthetic cohort's manifest (absolute paths), the third one excluded."""
    synth_dir = tiny_run[1].parent
    table = pd.read_csv(synth_dir / "manifest.csv", dtype=str, keep_default_na=False).head(4).copy()
    table["path"] = [str(synth_dir / p) for p in table["path"]]
    table["split"] = "test"
    table["exclude_reason"] = ["", "", "motion artefact", ""]
    path = tmp_path / "cases" / "manifest.csv"
    path.parent.mkdir()
    table.to_csv(path, index=False)
    return path


def test_predict_manifest_output_opens_an_ai_consulted_reader_study(tiny_run, small_manifest, tmp_path,
                                                                    monkeypatch, capsys):
    from bonescan.reader.store import ReaderStore

    run, _ = tiny_run
    monkeypatch.chdir(tmp_path)  # relative --heatmaps / --out, as typed at a prompt
    code = main(["predict", "--run", str(run), "--manifest", str(small_manifest), "--split", "test",
                 "--heatmaps", "maps", "--out", "out/preds.csv", "--workers", "0"])
    assert code == 0, capsys.readouterr().err
    manifest = pd.read_csv(small_manifest, dtype=str, keep_default_na=False)
    kept = manifest[manifest["exclude_reason"] == ""]
    table = pd.read_csv(tmp_path / "out" / "preds.csv", dtype=str, keep_default_na=False)
    assert table.columns[0] == "case_id" and list(table["case_id"]) == list(kept["case_id"])
    for row, path in zip(table.itertuples(), kept["path"]):
        assert row.study_id == pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
        assert Path(row.heatmap).name == f"{row.case_id}.png"

    code = main(["reader", "create", "--study", str(tmp_path / "study"), "--mode", "ai-consulted",
                 "--cases", str(small_manifest), "--split", "test", "--readers", "r1",
                 "--predictions", str(tmp_path / "out" / "preds.csv")])
    assert code == 0, capsys.readouterr().err
    store = ReaderStore.open(tmp_path / "study")
    ai = store.ai_records()
    assert sorted(ai) == sorted(kept["case_id"])
    for row in table.itertuples():
        record = ai[row.case_id]
        assert record.probability == pytest.approx(float(row.probability))
        assert record.decision == int(row.decision == "metastasis")
        with Image.open(store.images_dir / record.heatmap) as shown, Image.open(row.heatmap) as written:
            assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(written.convert("RGB")))


def test_predict_manifest_reports_a_missing_study_and_goes_on(tiny_run, small_manifest, tmp_path, capsys):
    table = pd.read_csv(small_manifest, dtype=str, keep_default_na=False)
    table.loc[1, "path"] = str(tmp_path / "moved_away.dcm")
    table.to_csv(small_manifest, index=False)
    code = main(["predict", "--run", str(tiny_run[0]), "--manifest", str(small_manifest),
                 "--out", str(tmp_path / "preds.json"), "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2
    missing = table.loc[1, "case_id"]
    assert f"failed: {missing}:" in err and "moved_away.dcm" in err
    data = json.loads((tmp_path / "preds.json").read_text())
    assert [s["case_id"] for s in data["studies"]] == [table.loc[0, "case_id"], table.loc[3, "case_id"]]
    assert [f["case_id"] for f in data["failures"]] == [missing]


def test_unusable_runs_are_refused_with_one_clear_line(tiny_run, inputs, tmp_path, capsys):
    assert main(["predict", "--run", str(tmp_path / "nowhere"), str(inputs)]) == 2
    assert "nowhere" in capsys.readouterr().err

    broken = tmp_path / "broken_run"
    shutil.copytree(tiny_run[0], broken)
    (broken / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    assert main(["predict", "--run", str(broken), str(inputs)]) == 2
    err = capsys.readouterr().err
    assert "best.pt" in err and err.count("\n") == 1

    # A checkpoint whose stored settings describe another network than its weights.
    payload = torch.load(tiny_run[0] / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    payload["config"]["model"]["backbone"] = "resnet18"
    torch.save(payload, broken / "checkpoints" / "best.pt")
    assert main(["predict", "--run", str(broken), str(inputs)]) == 2
    err = capsys.readouterr().err
    assert "best.pt" in err and "do not fit" in err


def test_bench_predict_prints_every_figure(tmp_path, capsys):
    code = main(["bench", "predict", "--cases", "4", "--preset", "tiny", "--data", str(tmp_path / "bench"),
                 "--batch-size", "2", "--parity-cases", "4", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0
    for figure in ("end to end: 4 studies", "model only:", "matmul peaks: fp32", "bf16", "roofline",
                   "peak RSS", "parity vs fp32 over 4 studies", "engine ready", "first study",
                   "`bonescan predict --run RUN STUDY` start to exit"):
        assert figure in out, figure
    engine = next(line for line in out.splitlines() if line.startswith("engine: "))
    assert "exported engine" in engine or "eager" in engine  # the engine predict would choose, named


def test_bench_lesions_prints_the_lesion_step_against_the_classifier(tmp_path, capsys):
    import re

    from nodekit import make_lesion_run

    lesions = make_lesion_run(tmp_path / "lesion-run")
    # one round: its ratio is the printed step over the printed classifier (several rounds print medians, whose
    # ratio is the median of the rounds' own; tested in test_lesions_pipeline)
    code = main(["bench", "lesions", "--lesions", str(lesions), "--preset", "tiny", "--cases", "4",
                 "--parts-cases", "2", "--batch-size", "2", "--data", str(tmp_path / "bench"), "--rounds", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    classifier = float(re.search(r"classifier, whole prediction: ([\d.]+) ms per study (at the margin )?\([^)]*"
                                 r"reader processes' start[^)]*; 4 studies, 0 failed\)", out).group(1))
    step, ratio = re.search(r"lesion step as predict runs it: ([\d.]+) ms per study, ([\d.]+)x the classifier",
                            out).groups()
    # all three printed to three significant digits: each off by at most 0.5 % of its value
    assert classifier > 0 and float(ratio) == pytest.approx(float(step) / classifier, rel=0.02)
    assert "medians of" not in out
    parts = re.search(r"one study at a time \(2 studies, ([\d.]+) hotspots per study\): network \((fp32|bf16)\) "
                      r"([\d.]+) ms, hotspots ([\d.]+) ms, no rescorer", out)
    assert parts and float(parts.group(1)) == 0.0 and float(parts.group(3)) > 0  # this run finds no hotspots
    # the lesion network's precision as "auto" takes it on this CPU
    assert parts.group(2) == ("bf16" if cpu_bf16_is_faster() else "fp32")
    assert "peak RSS" in out


def test_bench_lesions_refuses_zero_rounds_before_reading_anything(tmp_path, capsys):
    code = main(["bench", "lesions", "--lesions", str(tmp_path / "no-such-run"), "--rounds", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--rounds" in err and "no-such-run" not in err
