"""Cohort manifest: validation, the stratified 8:1:1 split, and Table 1 (numbers worked out by hand)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bonescan import cli
from bonescan.cohort import load_manifest, split_manifest, table1, table1_markdown
from bonescan.errors import ConfigError, ManifestError

HEADER = "case_id,path,cancer_type,sex,age,grade,label,exclude_reason,split,site\n"


def write_manifest(folder, rows: str, header: str = HEADER, touch: bool = True):
    """Write a manifest CSV and, unless told not to, an empty file for every path it names."""
    path = folder / "manifest.csv"
    path.write_text(header + rows)
    if touch:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        for column in ("path", "anterior", "posterior"):
            for name in table.get(column, []):
                if name:
                    (folder / name).parent.mkdir(parents=True, exist_ok=True)
                    (folder / name).touch()
    return path


# --- load_manifest --------------------------------------------------------------------------------------------


def test_valid_manifest_is_normalised(tmp_path):
    path = write_manifest(
        tmp_path,
        "c1,studies/c1.dcm,Lung,m,63,2,,,train,A\n"
        "c2,studies/c2.dcm,breast,F,45.5,0,0,,,B\n"
        "c3,studies/c3.dcm,other,M,70,,1,,,C\n",
    )
    df = load_manifest(path)
    assert list(df["case_id"]) == ["c1", "c2", "c3"]
    assert df.loc[0, "path"] == str((tmp_path / "studies" / "c1.dcm").resolve())
    assert list(df["cancer_type"]) == ["lung", "breast", "other"]
    assert list(df["sex"]) == ["M", "F", "M"]
    assert list(df["age"]) == [63.0, 45.5, 70.0]
    assert list(df["label"]) == [1, 0, 1]  # grade 2 -> 1, grade 0 -> 0, label given
    assert df["label"].dtype == np.int64
    assert list(df["split"]) == ["train", "", ""]
    assert list(df["site"]) == ["A", "B", "C"]  # extra columns kept


def test_anterior_posterior_columns_are_resolved(tmp_path):
    header = "case_id,anterior,posterior,cancer_type,sex,age,label\n"
    path = write_manifest(tmp_path, "c1,img/c1_ant.png,img/c1_post.png,prostate,M,71,0\n", header=header)
    df = load_manifest(path)
    assert df.loc[0, "anterior"] == str(tmp_path / "img" / "c1_ant.png")
    assert df.loc[0, "posterior"] == str(tmp_path / "img" / "c1_post.png")
    assert "grade" not in df.columns


def test_every_bad_row_is_listed_in_one_error(tmp_path):
    path = write_manifest(
        tmp_path,
        "c1,c1.dcm,lung,M,63,2,,,,\n"  # fine
        "c2,c2.dcm,kidney,M,50,1,,,,\n"  # unknown cancer type
        "c2,c2b.dcm,lung,X,50,1,,,,\n"  # duplicate id, bad sex
        "c4,c4.dcm,lung,F,50,4,,,,\n"  # grade out of range
        "c5,missing.dcm,lung,F,50,3,,,,\n"  # file missing
        "c6,c6.dcm,lung,F,50,3,0,,,\n"  # label conflicts with grade
        "c7,c7.dcm,lung,F,old,,,,,\n"  # bad age, no grade or label
        "c8,c8.dcm,lung,F,50,0,,,holdout,\n",  # unknown split
        touch=False,
    )
    for name in ("c1.dcm", "c2.dcm", "c2b.dcm", "c4.dcm", "c6.dcm", "c7.dcm", "c8.dcm"):
        (tmp_path / name).touch()
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    message = str(caught.value)
    expected = [
        "line 3 (case_id 'c2'): unknown cancer_type 'kidney'",
        "duplicate case_id 'c2' on lines 3, 4",
        "line 4 (case_id 'c2'): sex 'X' is not M or F",
        "line 5 (case_id 'c4'): grade '4' is not an integer 0-3",
        "line 6 (case_id 'c5'): path file not found",
        "line 7 (case_id 'c6'): label 0 conflicts with grade 3",
        "line 8 (case_id 'c7'): age 'old'",
        "line 8 (case_id 'c7'): neither grade nor label given",
        "line 9 (case_id 'c8'): split 'holdout'",
    ]
    for fragment in expected:
        assert fragment in message
    assert message.startswith(f"{path}: 9 problems")
    assert len(caught.value.problems) == 9
    assert "c1" not in message.replace("c1.dcm", "")


def test_missing_columns_are_named(tmp_path):
    path = write_manifest(tmp_path, "c1,lung\n", header="case_id,cancer_type\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    for column in ("grade or label", "path or anterior + posterior"):
        assert f"missing column: {column}" in str(caught.value)
    assert "sex" not in str(caught.value) and "age" not in str(caught.value)  # demographics are optional


def test_demographics_missing_or_blank_are_unknown(tmp_path):
    path = write_manifest(tmp_path, "a,a.png,lung,,,1\nb,b.png,,F,70,0\nc,c.png,Unknown,unknown,,1\n",
                          header="case_id,path,cancer_type,sex,age,label\n")
    df = load_manifest(path)
    assert list(df["cancer_type"]) == ["lung", "unknown", "unknown"]
    assert list(df["sex"]) == ["unknown", "F", "unknown"]
    assert df["age"].isna().tolist() == [True, False, True]
    table = table1(df).set_index(["cohort", "cancer_type"])
    total = table.loc[("all", "total")]
    assert (total.n, total.female, total.sex_unknown, total.age_unknown, total.age_ge_60) == (3, 1, 2, 2, 1)
    assert table.loc[("all", "unknown")].n == 2 and total.age_mean == pytest.approx(70.0)
    markdown = table1_markdown(df)
    assert "Cancer type unknown" in markdown and "| Sex unknown | 1 | 0 | 0 | 0 | 1 | 2 |" in markdown

    no_columns = write_manifest(tmp_path, "a,a.png,1\nb,b.png,0\n", header="case_id,path,label\n")
    df = load_manifest(no_columns)
    assert set(df["cancer_type"]) == {"unknown"} and set(df["sex"]) == {"unknown"} and df["age"].isna().all()
    assert "Age unknown" in table1_markdown(df)


def test_split_without_cancer_type_still_stratifies_by_label():
    df = pd.DataFrame({"case_id": [f"c{i}" for i in range(100)], "label": [1] * 30 + [0] * 70})
    df = split_manifest(df, seed=3)
    counts = df.groupby(["split", "label"]).size()
    assert (counts["val"][1], counts["test"][1], counts["val"][0], counts["test"][0]) == (3, 3, 7, 7)


def test_grouped_split_keeps_each_group_in_one_split():
    df = cohort_frame(EVEN_STRATA)
    groups = [i // 3 for i in range(len(df))]  # every three consecutive rows are one patient
    out = split_manifest(df, seed=1, groups=groups)
    assert out.groupby(pd.Series(groups, index=out.index))["split"].nunique().max() == 1
    shares = out["split"].value_counts(normalize=True)
    assert 0.7 < shares["train"] < 0.9 and 0.05 < shares["val"] < 0.15 and 0.05 < shares["test"] < 0.15


def test_file_check_can_be_skipped_and_excluded_rows_need_no_file(tmp_path):
    rows = "c1,gone.dcm,lung,M,63,2,,,,\n"
    path = write_manifest(tmp_path, rows, touch=False)
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(path)
    assert len(load_manifest(path, check_files=False)) == 1
    excluded = write_manifest(tmp_path, "c1,gone.dcm,lung,M,63,2,,unreadable file,,\n", touch=False)
    assert load_manifest(excluded).loc[0, "exclude_reason"] == "unreadable file"


def test_missing_manifest_file(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest file"):
        load_manifest(tmp_path / "absent.csv")


# --- split ----------------------------------------------------------------------------------------------------

# cases per (cancer type, label) stratum; each divides by 10
EVEN_STRATA = {
    ("lung", 0): 40, ("lung", 1): 30, ("prostate", 0): 20, ("prostate", 1): 10,
    ("breast", 0): 10, ("breast", 1): 20, ("other", 0): 10, ("other", 1): 10,
}  # fmt: skip


def cohort_frame(strata: dict, n_excluded: int = 0) -> pd.DataFrame:
    rows = []
    for (cancer, label), count in strata.items():
        rows += [{"cancer_type": cancer, "label": label, "exclude_reason": ""}] * count
    rows += [{"cancer_type": "lung", "label": 1, "exclude_reason": "no follow-up"}] * n_excluded
    df = pd.DataFrame(rows)
    df.insert(0, "case_id", [f"c{i}" for i in range(len(df))])
    return df


def stratum_counts(df: pd.DataFrame, split: str) -> dict:
    part = df[df["split"] == split]
    return {key: len(group) for key, group in part.groupby(["cancer_type", "label"])}


def test_even_strata_split_8_1_1_with_identical_val_and_test(tmp_path):
    df = split_manifest(cohort_frame(EVEN_STRATA, n_excluded=3), seed=7)
    assert (df.loc[df["exclude_reason"] != "", "split"] == "excluded").all()
    assert (df["split"] == "excluded").sum() == 3
    val, test, train = (stratum_counts(df, s) for s in ("val", "test", "train"))
    assert val == test == {key: n // 10 for key, n in EVEN_STRATA.items()}
    assert train == {key: n * 8 // 10 for key, n in EVEN_STRATA.items()}


def test_split_reproduces_the_papers_table1_counts():
    """Zhao et al. Table 1: per-stratum totals in, the published train/val/test counts out (val == test)."""
    paper = {  # (cancer, label): (train, val, test)
        ("lung", 0): (2697, 337, 337), ("lung", 1): (2120, 265, 265),
        ("prostate", 0): (756, 95, 95), ("prostate", 1): (718, 90, 90),
        ("breast", 0): (1066, 133, 133), ("breast", 1): (614, 77, 77),
        ("other", 0): (1138, 142, 142), ("other", 1): (667, 84, 84),
    }  # fmt: skip
    df = split_manifest(cohort_frame({key: sum(counts) for key, counts in paper.items()}), seed=0)
    for index, split in enumerate(("train", "val", "test")):
        assert stratum_counts(df, split) == {key: counts[index] for key, counts in paper.items()}
    assert (df["split"] == "train").sum() == 9776
    assert (df["split"] == "val").sum() == (df["split"] == "test").sum() == 1223


def test_split_is_seeded_and_preserves_rows():
    base = cohort_frame(EVEN_STRATA)
    first, again, other = split_manifest(base, seed=1), split_manifest(base, seed=1), split_manifest(base, seed=2)
    assert list(first["split"]) == list(again["split"])
    assert list(first["split"]) != list(other["split"])
    assert list(first["case_id"]) == list(base["case_id"])
    assert "split" not in base.columns  # the input is not modified


def test_custom_ratios_and_bad_ratios():
    df = split_manifest(cohort_frame(EVEN_STRATA), ratios=(0.6, 0.2, 0.2), seed=0)
    assert stratum_counts(df, "val")[("lung", 0)] == 8
    assert stratum_counts(df, "train")[("lung", 0)] == 24
    for bad in [(0.8, 0.1), (0.8, 0.3, 0.1), (1.2, -0.1, -0.1)]:
        with pytest.raises(ConfigError, match="ratios"):
            split_manifest(df, ratios=bad, seed=0)


# --- Table 1 ---------------------------------------------------------------------------------------------------

KNOWN_ROWS = (
    "t1,a.dcm,lung,M,50,0,,,train,\n"
    "t2,a.dcm,lung,M,60,2,,,train,\n"
    "t3,a.dcm,lung,F,70,3,,,train,\n"
    "t4,a.dcm,breast,F,45,1,,,train,\n"
    "t5,a.dcm,breast,F,55,,1,,train,\n"
    "v1,a.dcm,prostate,M,72,2,,,val,\n"
    "v2,a.dcm,other,F,58,0,,,val,\n"
    "x1,a.dcm,lung,M,80,3,,motion,excluded,\n"
)


def test_table1_numbers_on_a_known_manifest(tmp_path):
    table = table1(load_manifest(write_manifest(tmp_path, KNOWN_ROWS)))
    assert list(table["cohort"].unique()) == ["train", "val"]  # no test rows; excluded row left out
    cell = table.set_index(["cohort", "cancer_type"])
    lung = cell.loc[("train", "lung")]
    assert (lung.n, lung.male, lung.female, lung.age_lt_60, lung.age_ge_60) == (3, 2, 1, 1, 2)
    assert (lung.no_metastasis, lung.metastasis) == (1, 2)
    assert lung.age_mean == pytest.approx(60.0) and lung.age_sd == pytest.approx(10.0)
    assert lung.metastasis_rate == pytest.approx(2 / 3)
    breast = cell.loc[("train", "breast")]
    assert (breast.n, breast.female, breast.age_lt_60, breast.metastasis) == (2, 2, 2, 1)
    assert breast.age_sd == pytest.approx(math.sqrt(50))
    total = cell.loc[("train", "total")]
    assert (total.n, total.male, total.female, total.age_lt_60, total.age_ge_60) == (5, 2, 3, 3, 2)
    assert total.age_mean == pytest.approx(56.0) and total.age_sd == pytest.approx(math.sqrt(92.5))
    assert total.metastasis_rate == pytest.approx(0.6)
    assert cell.loc[("train", "prostate")].n == 0
    val = cell.loc[("val", "total")]
    assert (val.n, val.male, val.female, val.metastasis) == (2, 1, 1, 1)
    assert val.age_mean == pytest.approx(65.0) and val.age_sd == pytest.approx(math.sqrt(98))
    assert math.isnan(cell.loc[("val", "prostate")].age_sd)  # one case: no SD


def test_table1_markdown_layout(tmp_path):
    text = table1_markdown(load_manifest(write_manifest(tmp_path, KNOWN_ROWS)))
    lines = text.splitlines()
    assert lines[0] == "| Characteristic | Lung cancer | Prostate cancer | Breast cancer | Other cancers | Total |"
    assert "| **Training cohort** |" in lines[2]
    assert "| Age, mean ± SD | 60.0 ± 10.0 | - | 50.0 ± 7.1 | - | 56.0 ± 9.6 |" in lines
    assert "| Metastasis rate | 66.67% | - | 50.00% | - | 60.00% |" in lines
    assert any("Validating cohort" in line for line in lines)


# --- CLI --------------------------------------------------------------------------------------------------------


def test_cli_split_then_table1(tmp_path, capsys):
    rows = "".join(
        f"{cancer}{i},{cancer}{i}.dcm,{cancer},{'F' if cancer == 'breast' else 'M'},{40 + i},{2 * (i % 2)},,,,\n"
        for cancer in ("lung", "prostate", "breast", "other")
        for i in range(20)
    ) + "z1,z1.dcm,lung,M,50,0,,unreadable,,\n"
    manifest = write_manifest(tmp_path, rows)
    out = tmp_path / "out" / "split.csv"
    assert cli.main(["cohort", "split", "--manifest", str(manifest), "--out", str(out), "--seed", "3"]) == 0
    assert "train 64, val 8, test 8, excluded 1" in capsys.readouterr().out
    reloaded = load_manifest(out)  # relative paths rewritten for the new folder
    original = load_manifest(manifest)
    assert list(reloaded["path"]) == list(original["path"])
    assert reloaded.set_index("case_id").loc["z1", "split"] == "excluded"

    csv = tmp_path / "table1.csv"
    assert cli.main(["cohort", "table1", "--manifest", str(out), "--out", str(csv)]) == 0
    printed = capsys.readouterr().out
    assert "| **Training cohort** |" in printed and "| **Testing cohort** |" in printed
    written = pd.read_csv(csv)
    assert list(written.loc[written["cancer_type"] == "total", "n"]) == [64, 8, 8]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left

    # Without --out the CSV goes beside the manifest.
    assert cli.main(["cohort", "table1", "--manifest", str(out)]) == 0
    beside = pd.read_csv(out.with_name("split_table1.csv"))
    assert beside.equals(written)


def test_cli_bad_manifest_exits_2_and_writes_nothing(tmp_path, capsys):
    manifest = write_manifest(tmp_path, "c1,c1.dcm,kidney,M,63,2,,,,\n")
    out = tmp_path / "split.csv"
    assert cli.main(["cohort", "split", "--manifest", str(manifest), "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "unknown cancer_type 'kidney'" in err[0]
    assert not out.exists()


def test_cli_bad_ratios_exit_2(tmp_path, capsys):
    manifest = write_manifest(tmp_path, "c1,c1.dcm,lung,M,63,2,,,,\n")
    out = tmp_path / "split.csv"
    for ratios in ("0.5,0.5", "a,b,c", "0.8,0.3,0.1"):
        assert cli.main(["cohort", "split", "--manifest", str(manifest), "--out", str(out), "--ratios", ratios]) == 2
        assert "--ratios" in capsys.readouterr().err
    assert not out.exists()


def test_extra_column_names_are_stripped_like_the_others(tmp_path):
    header = "case_id,path,cancer_type,sex,age,grade, site \n"
    df = load_manifest(write_manifest(tmp_path, "c1,c1.dcm,lung,M,63,2,7\n", header=header))
    assert df.loc[0, "path"] == str(tmp_path / "c1.dcm")
    assert list(df["site"]) == [7]  # pandas' own type inference, under the stripped name


def test_rows_marked_excluded_stay_excluded_without_a_reason(tmp_path):
    rows = "".join(f"c{i},c{i}.dcm,lung,M,{50 + i},{2 * (i % 2)},,,,\n" for i in range(10))
    rows += "x1,gone.dcm,lung,M,80,3,,,excluded,\n"  # marked by hand, no reason, no file
    df = load_manifest(_touched(tmp_path, rows))
    assert df.set_index("case_id").loc["x1", "split"] == "excluded"
    result = split_manifest(df, seed=0)
    assert result.set_index("case_id").loc["x1", "split"] == "excluded"
    assert (result["split"] != "excluded").sum() == 10
    totals = table1(result).set_index(["cohort", "cancer_type"])
    assert sum(totals.loc[(split, "total"), "n"] for split in ("train", "val", "test")) == 10


def _touched(folder, rows):
    """A manifest whose files exist, except gone.dcm."""
    path = write_manifest(folder, rows)
    (folder / "gone.dcm").unlink()
    return path


def test_merged_manifests_keep_splits_and_files_and_prefix_shared_case_ids(tmp_path, capsys):
    for name, site in (("generic", "generic"), ("mixed", "ge-discovery")):
        folder = tmp_path / name
        (folder / "studies").mkdir(parents=True)
        rows = []
        for i, split in enumerate(("train", "val", "test")):
            (folder / "studies" / f"syn{i}.dcm").write_bytes(b"x")
            rows.append({"case_id": f"syn{i}", "path": f"studies/syn{i}.dcm", "label": i % 2, "split": split,
                         "site": site, **({"patient_id": f"p{i}"} if name == "mixed" else {})})
        pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    out = tmp_path / "merged" / "manifest.csv"
    assert cli.main(["cohort", "merge", str(tmp_path / "generic" / "manifest.csv"),
                     str(tmp_path / "mixed" / "manifest.csv"), "--out", str(out)]) == 0
    assert "3 case ids occur in more than one manifest" in capsys.readouterr().err
    merged = load_manifest(out)  # every file found from the merged manifest's folder
    assert merged["case_id"].tolist() == [f"{c}-syn{i}" for c in ("generic", "mixed") for i in range(3)]
    assert merged["split"].tolist() == ["train", "val", "test"] * 2
    assert merged["cohort"].tolist() == ["generic"] * 3 + ["mixed"] * 3
    assert merged["path"].iloc[4].endswith("mixed/studies/syn1.dcm")
    assert merged["patient_id"].iloc[3:].tolist() == ["mixed-p0", "mixed-p1", "mixed-p2"]
    assert merged["patient_id"].iloc[:3].isna().all()  # no patient ids in that cohort: none invented
    # Named cohorts; without shared ids nothing is prefixed.
    pd.read_csv(tmp_path / "mixed" / "manifest.csv").assign(case_id=lambda m: "ge" + m["case_id"]) \
        .to_csv(tmp_path / "mixed" / "manifest.csv", index=False)
    assert cli.main(["cohort", "merge", str(tmp_path / "generic" / "manifest.csv"),
                     str(tmp_path / "mixed" / "manifest.csv"), "--out", str(out), "--name", "a", "--name", "b"]) == 0
    merged = load_manifest(out)
    assert merged["case_id"].tolist()[:4] == ["syn0", "syn1", "syn2", "gesyn0"]
    assert merged["cohort"].tolist() == ["a"] * 3 + ["b"] * 3
    # Bad input: every manifest's problem in one error, exit code 2, nothing written.
    (tmp_path / "generic" / "studies" / "syn1.dcm").unlink()
    assert cli.main(["cohort", "merge", str(tmp_path / "generic" / "manifest.csv"), str(tmp_path / "none.csv"),
                     "--out", str(tmp_path / "bad.csv")]) == 2
    error = capsys.readouterr().err
    assert "syn1" in error and "none.csv" in error and not (tmp_path / "bad.csv").exists()
    assert cli.main(["cohort", "merge", str(tmp_path / "mixed" / "manifest.csv"), "--out", str(out)]) == 2
