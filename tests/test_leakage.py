"""Duplicate and leakage checks: BS-80K's known defects are found, and splits keep duplicates together."""

from __future__ import annotations

import pandas as pd
import pytest

from bonescan.cli import main
from bonescan.cohort import load_manifest, split_manifest
from bonescan.imports import import_bs80k
from bonescan.leakage import check_manifest
from bonescan.synth.bs80k import write_bs80k_tree


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """8 patients plus one written again under a new id (re-encoded), with the elbowLPOST == elbowRPOST defect."""
    base = tmp_path_factory.mktemp("leak")
    tree = write_bs80k_tree(base / "tree", cases=8, seed=5, regions=["chestR", "elbowL", "elbowR"],
                            duplicate_patients=1)
    result = import_bs80k(base / "tree", base / "out", workers=1)
    return tree, result


def _all_rows(result) -> pd.DataFrame:
    return pd.concat([load_manifest(path) for path in result.manifests.values()], ignore_index=True)


def test_known_defects_are_found_and_nothing_else(imported):
    tree, result = imported
    (original, copy), = tree.duplicates.items()
    report = check_manifest(_all_rows(result), workers=1)
    exact = report.pairs[report.pairs["kind"] == "exact"]
    assert len(exact) == 9 and set(exact["relation"]) == {"same patient, other region"}
    assert all("elbowLPOST" in a and "elbowRPOST" in b or "elbowRPOST" in a and "elbowLPOST" in b
               for a, b in zip(exact["file_a"], exact["file_b"]))
    near = report.pairs[report.pairs["kind"] == "near"]
    whole = near[~near["case_a"].str.contains("-")]
    assert {frozenset(p) for p in zip(whole["case_a"], whole["case_b"])} == {frozenset({original, copy})}
    assert set(near["relation"]) == {"different ids"} and (near["distance"] <= 32).all()
    # one group per patient, the duplicated patient's two ids (and all their crops) joined
    table = _all_rows(result)
    groups = pd.Series(report.groups, index=table.index)
    assert groups.nunique() == 8
    assert groups[table["patient_id"].astype(str).isin([original, copy])].nunique() == 1


def test_leakage_across_splits_is_reported_and_split_prevents_it(imported, tmp_path):
    tree, result = imported
    (original, copy), = tree.duplicates.items()
    table = load_manifest(result.manifests["wholeBody"])
    table["split"] = ["test" if pid == copy else "train" for pid in table["case_id"]]
    report = check_manifest(table, workers=1)
    assert len(report.crossing) == 1 and set(report.crossing.iloc[0]["cases"].split()) == {original, copy}

    for seed in range(4):
        split = split_manifest(table.drop(columns="split"), (0.5, 0.25, 0.25), seed=seed, groups=report.groups)
        rows = split.set_index("case_id")["split"]
        assert rows[original] == rows[copy]


def test_cli_check_exit_code_and_split_writes_duplicates(imported, tmp_path, capsys):
    tree, result = imported
    (original, copy), = tree.duplicates.items()
    leaky = load_manifest(result.manifests["wholeBody"])
    leaky["split"] = ["val" if pid == original else "train" for pid in leaky["case_id"]]
    path = tmp_path / "leaky.csv"
    leaky.to_csv(path, index=False)
    assert main(["cohort", "check", "--manifest", str(path), "--out", str(tmp_path / "pairs.csv"),
                 "--workers", "1"]) == 1
    assert "LEAKAGE: 1 groups" in capsys.readouterr().out
    assert main(["cohort", "split", "--manifest", str(result.manifests["wholeBody"]), "--out",
                 str(tmp_path / "split.csv"), "--ratios", "0.5,0.25,0.25", "--workers", "1"]) == 0
    split = pd.read_csv(tmp_path / "split.csv", dtype={"case_id": str}).set_index("case_id")["split"]
    assert split[original] == split[copy]
    assert (tmp_path / "split_duplicates.csv").is_file()
    # crops alone are too alike to call re-encoded copies near duplicates; the whole-body manifest links them
    for seed in range(3):
        assert main(["cohort", "split", "--manifest", str(result.manifests["chestR"]), "--also",
                     str(result.manifests["wholeBody"]), "--out", str(tmp_path / "chest.csv"), "--seed", str(seed),
                     "--ratios", "0.5,0.25,0.25", "--workers", "1"]) == 0
        chest = pd.read_csv(tmp_path / "chest.csv", dtype={"patient_id": str}).set_index("patient_id")["split"]
        assert len(chest) == 9 and chest[original] == chest[copy]
