"""`bonescan reader create/export/password`: study creation, refusals with clear errors, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bonescan.cli import main
from bonescan.reader.auth import verify_password
from bonescan.reader.store import ReaderStore
from test_reader_api import write_cases, write_predictions


@pytest.fixture(scope="module")
def case_list(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cases(tmp_path_factory.mktemp("cases"), 3)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_create_prints_passwords_once_and_stores_their_hashes(tmp_path, case_list, capsys):
    study = tmp_path / "study"
    code, out, _ = run_cli(["reader", "create", "--study", str(study), "--cases", str(case_list),
                            "--readers", "a,b", "--mode", "blinded", "--seed", "1"], capsys)
    assert code == 0
    passwords = dict(line.strip().split("\t") for line in out.splitlines() if line.startswith("  "))
    store = ReaderStore.open(study)
    assert set(passwords) == {"a", "b"} == set(store.reader_names())
    assert verify_password(passwords["a"], store.password_hash("a"))
    assert not verify_password(passwords["b"], store.password_hash("a"))
    assert len(list((study / "images").glob("*.png"))) == 6  # two views per case, rendered once
    assert store.cases()["c1"].label == 1


def test_refuses_a_folder_that_is_not_a_reader_study(tmp_path, case_list, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a study")
    code, _, err = run_cli(["reader", "create", "--study", str(other), "--cases", str(case_list),
                            "--readers", "a", "--mode", "blinded"], capsys)
    assert code == 2 and "not a reader study" in err and str(other) in err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    for command in (["reader", "serve", "--study", str(other)], ["reader", "export", "--study", str(other)],
                    ["reader", "analyze", "--study", str(other)]):
        code, _, err = run_cli(command, capsys)
        assert code == 2 and "not a reader study" in err
    code, _, err = run_cli(["reader", "export", "--study", str(tmp_path / "missing")], capsys)
    assert code == 2 and "no such study folder" in err


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.drop(columns=["case_id"]), "missing column: case_id"),
        (lambda t: t.drop(columns=["anterior"]), "missing column: path or anterior + posterior"),
        (lambda t: t.assign(case_id=["c0", "c0", "c2"]), "duplicate case_id"),
        (lambda t: t.assign(anterior=["nope.npy", "c1_ant.npy", "c2_ant.npy"]), "file not found"),
        (lambda t: t.assign(label=["0", "2", "1"]), "label '2' is not one of [0, 1]"),
        (lambda t: t.assign(readers=["a", "zed", ""]), "unknown reader(s) zed"),
    ],
)
def test_bad_case_lists_are_refused_with_the_line_and_reason(tmp_path, case_list, capsys, edit, message):
    table = edit(pd.read_csv(case_list, dtype=str, keep_default_na=False))
    bad = case_list.parent / f"bad_{tmp_path.name}.csv"
    table.to_csv(bad, index=False)
    study = tmp_path / "study"
    code, _, err = run_cli(["reader", "create", "--study", str(study), "--cases", str(bad), "--readers", "a",
                            "--mode", "blinded"], capsys)
    assert code == 2 and message in err and bad.name in err
    assert not study.exists()  # nothing half-created


def test_unreadable_study_file_leaves_no_study_behind(tmp_path, case_list, capsys):
    folder = case_list.parent
    np.save(folder / "square.npy", np.ones((64, 64), dtype=np.float32))
    table = pd.read_csv(case_list, dtype=str, keep_default_na=False)
    table.loc[1, "anterior"] = "square.npy"
    bad = folder / "square_cases.csv"
    table.to_csv(bad, index=False)
    code, _, err = run_cli(["reader", "create", "--study", str(tmp_path / "s"), "--cases", str(bad),
                            "--readers", "a", "--mode", "blinded"], capsys)
    assert code == 2 and "case c1" in err and "whole-body" in err
    assert list(tmp_path.iterdir()) == []


def test_reader_names_and_modes_are_checked(tmp_path, case_list, capsys):
    base = ["reader", "create", "--study", str(tmp_path / "s"), "--cases", str(case_list)]
    code, _, err = run_cli(base + ["--readers", "a,a", "--mode", "blinded"], capsys)
    assert code == 2 and "reader named twice: a" in err
    code, _, err = run_cli(base + ["--readers", "a b", "--mode", "blinded"], capsys)
    assert code == 2 and "reader names may use" in err
    code, _, err = run_cli(base + ["--readers", "a", "--mode", "second-opinion"], capsys)
    assert code == 2 and "unknown mode" in err
    code, _, err = run_cli(base + ["--readers", "a", "--mode", "ai-consulted"], capsys)
    assert code == 2 and "--predictions" in err


def test_predictions_problems_are_named(tmp_path, case_list, capsys):
    predictions = write_predictions(case_list.parent, 3)
    table = pd.read_csv(predictions)
    base = ["reader", "create", "--study", str(tmp_path / "s"), "--cases", str(case_list), "--readers", "a",
            "--mode", "ai-consulted", "--predictions"]
    for edit, message in [
        (table.drop(columns=["probability"]), "missing column: probability"),
        (table.assign(probability=[0.2, 1.5, 0.3]), "probability '1.5' is not a number between 0 and 1"),
        (table.iloc[:2], "no prediction for 1 case(s) of the study: c2"),
    ]:
        bad = case_list.parent / "bad_predictions.csv"
        edit.to_csv(bad, index=False)
        code, _, err = run_cli(base + [str(bad)], capsys)
        assert code == 2 and message in err
    code, _, err = run_cli(base + [str(predictions), "--decision-column", "verdict"], capsys)
    assert code == 2 and "missing column: verdict" in err


def test_ai_consulted_study_from_scratch_uses_decisions_and_threshold(tmp_path, case_list):
    from bonescan.reader.study import create_study

    predictions = write_predictions(case_list.parent, 3)  # probabilities 0.7, 0.9, 0.2
    created = create_study(tmp_path / "s", mode="ai-consulted", cases_csv=case_list, readers=["a"],
                           predictions_csv=predictions, threshold=0.8)
    ai = ReaderStore.open(created.study_dir).ai_records()
    assert {c: r.decision for c, r in ai.items()} == {"c0": 0, "c1": 1, "c2": 0}
    worded = pd.read_csv(predictions).assign(decision=["metastasis", "no metastasis", "metastasis"])
    worded.to_csv(case_list.parent / "worded.csv", index=False)  # the words `bonescan predict` writes
    created = create_study(tmp_path / "w", mode="ai-consulted", cases_csv=case_list, readers=["a"],
                           predictions_csv=case_list.parent / "worded.csv")
    ai = ReaderStore.open(created.study_dir).ai_records()
    assert {c: r.decision for c, r in ai.items()} == {"c0": 1, "c1": 0, "c2": 1}
    assert all(r.heatmap and (created.study_dir / "images" / r.heatmap).is_file() for r in ai.values())


def test_second_phase_refusals(tmp_path, case_list, capsys):
    study = tmp_path / "s"
    assert main(["reader", "create", "--study", str(study), "--cases", str(case_list), "--readers", "a",
                 "--mode", "blinded"]) == 0
    capsys.readouterr()
    code, _, err = run_cli(["reader", "create", "--study", str(study), "--mode", "blinded"], capsys)
    assert code == 2 and "already has a blinded phase" in err
    predictions = write_predictions(case_list.parent, 3)
    code, _, err = run_cli(["reader", "create", "--study", str(study), "--mode", "ai-consulted",
                            "--predictions", str(predictions), "--readers", "zed", "--close-open-reads"], capsys)
    assert code == 2 and "not readers of this study: zed" in err


def test_export_writes_every_read_and_password_reset(tmp_path, case_list, capsys):
    from bonescan.reader.study import create_study

    created = create_study(tmp_path / "s", mode="blinded", cases_csv=case_list, readers=["a", "b"], seed=2)
    store = ReaderStore.open(created.study_dir)
    first = store.next_read("a")
    store.start_clock(first.read_key)
    store.record_own(first.read_key, 1, 3)
    code, out, _ = run_cli(["reader", "export", "--study", str(created.study_dir)], capsys)
    assert code == 0
    exported = pd.read_csv(out.strip())
    assert len(exported) == 6 and set(exported["reader"]) == {"a", "b"}
    answered = exported.dropna(subset=["own_answer"])
    assert answered[["reader", "case_id", "own_answer", "own_confidence"]].values.tolist() == [
        ["a", first.case_id, 1, 3]]
    assert answered["own_answered_at"].str.endswith("Z").all()

    old_hash = store.password_hash("b")
    code, out, _ = run_cli(["reader", "password", "--study", str(created.study_dir), "--reader", "b"], capsys)
    assert code == 0 and store.password_hash("b") != old_hash
    assert verify_password(out.strip().split("\t")[1], store.password_hash("b"))
