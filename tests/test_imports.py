"""`bonescan import bs80k` / `import pairs` on small synthetic trees shaped like the public sets, defects included."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bonescan.cli import main
from bonescan.cohort import load_manifest
from bonescan.errors import ConfigError
from bonescan.imports import import_bs80k, import_pairs, load_layout
from bonescan.synth.bs80k import write_bs80k_tree


@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("bs80k") / "BS-80K"
    write_bs80k_tree(root, cases=5, seed=3, regions=["chestR", "elbowL", "elbowR"])
    return root


def _damaged(clean_tree, tmp_path):
    """A copy of the tree with one of each defect the importer must list."""
    root = tmp_path / "BS-80K"
    shutil.copytree(clean_tree, root)
    ant, post = root / "wholeBodyANT", root / "wholeBodyPOST"
    (post / "2.jpg").unlink()  # missing partner view
    with open(ant / "wholeBodyANT.txt", "a") as labels:
        labels.write("99.jpg\t1\nnot a label line\n")  # label line without image; bad line
    shutil.copy(ant / "3.jpg", ant / "60.jpg")  # image without label
    data = (ant / "4.jpg").read_bytes()
    (ant / "4.jpg").write_bytes(data[: len(data) // 3])  # corrupt (truncated) JPEG
    xml = post / "post" / "1.xml"
    xml.write_text(xml.read_text().replace("<width>256</width>", "<width>512</width>"))  # XML of another size
    shutil.copy(ant / "5.jpg", ant / "005.jpg")  # two files for id 5
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(root / "chestRANT" / "3.jpg")  # no crop is 8 x 8
    (post / "notes.docx").write_bytes(b"x")  # not an image
    chest_labels = root / "chestRPOST" / "chestRPOST.txt"
    label_5 = dict(line.split("\t") for line in chest_labels.read_text().splitlines())["5.jpg"]
    with open(chest_labels, "a") as labels:
        labels.write(f"5.jpg\t{1 - int(label_5)}\n")  # conflicting label lines
    return root


def test_bs80k_import_lists_every_defect_and_goes_on(clean_tree, tmp_path):
    root = _damaged(clean_tree, tmp_path)
    result = import_bs80k(root, tmp_path / "out", workers=1)

    whole = load_manifest(result.manifests["wholeBody"])  # a valid bonescan manifest, demographics unknown
    assert sorted(whole["case_id"]) == ["1", "3"]
    assert set(whole["cancer_type"]) == {"unknown"} and whole["age"].isna().all()
    labels = pd.read_csv(clean_tree / "wholeBodyANT" / "wholeBodyANT.txt", sep="\t", header=None, dtype=str)
    assert len(labels) == 5
    one = pd.read_csv(result.manifests["wholeBody"], dtype=str, keep_default_na=False).set_index("case_id").loc["1"]
    assert one["voc_posterior"] == "" and one["voc_anterior"].endswith("ant/1.xml")  # wrong-size XML not linked
    assert (tmp_path / "out" / one["voc_anterior"]).is_file()  # relative to the manifest's folder

    problems = pd.read_csv(tmp_path / "out" / "problems.csv", dtype=str)
    listed = {(p, f.split("/")[-1]) for p, f in zip(problems["problem"], problems["file"])}
    for expected in [("missing partner view", "2.jpg"), ("label line without image", "99.jpg"),
                     ("bad label line", "wholeBodyANT.txt"), ("image without label", "60.jpg"),
                     ("unreadable image", "4.jpg"), ("annotation unusable", "1.xml"),
                     ("duplicate id", "5.jpg"), ("duplicate id", "005.jpg"), ("not a usable view", "3.jpg"),
                     ("unexpected file", "notes.docx"), ("conflicting label lines", "5.jpg")]:
        assert expected in listed, expected
    wrong_size = problems[problems["problem"] == "annotation unusable"].iloc[0]
    assert "512 x 1024" in wrong_size["reason"] and wrong_size["effect"] == "row kept without boxes"

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rows_removed"]["wholeBody"] == {"missing partner view": 1, "unreadable image": 1,
                                                    "duplicate id": 1, "image without label": 1}
    assert summary["rows_removed"]["chestR"] == {"not a usable view": 1, "conflicting label lines": 1}
    chest = load_manifest(result.manifests["chestR"])
    assert sorted(chest["patient_id"].astype(str)) == ["1", "2", "4"] and set(chest["region"]) == {"chestR"}
    counts = pd.read_csv(tmp_path / "out" / "counts.csv").set_index("folder")
    assert counts.loc["wholeBodyANT", "images"] == 7 and counts.loc["wholeBodyANT", "usable"] == 3


def test_clean_tree_labels_follow_either_view_and_boxes(clean_tree, tmp_path):
    result = import_bs80k(clean_tree, tmp_path / "out", workers=1)
    assert [p.problem for p in result.problems] == ["missing folder"] * 20  # 10 of the 13 regions not written
    table = pd.read_csv(result.manifests["wholeBody"])
    assert (table["label"] == table[["label_anterior", "label_posterior"]].max(axis=1)).all()
    # synthetic truth: a view is abnormal exactly when its VOC file has a nidus box
    assert ((table["nidus_anterior"] > 0).astype(int) == table["label_anterior"]).all()
    assert len(result.manifests) == 4 and set(result.rows.values()) == {5}


def test_layout_file_overrides_folder_names(clean_tree, tmp_path):
    root = tmp_path / "renamed"
    shutil.copytree(clean_tree, root)
    (root / "wholeBodyANT").rename(root / "WB_ANT")
    (root / "WB_ANT" / "wholeBodyANT.txt").rename(root / "WB_ANT" / "WB_ANT.txt")
    layout_file = tmp_path / "layout.json"
    layout_file.write_text(json.dumps({"whole_body": {"anterior": "WB_ANT", "posterior": "wholeBodyPOST"},
                                       "annotations": {"anterior": "WB_ANT/ant", "posterior": "wholeBodyPOST/post"},
                                       "regions": {"chestR": {"anterior": "chestRANT", "posterior": "chestRPOST"}}}))
    result = import_bs80k(root, tmp_path / "out", load_layout(layout_file), workers=1)
    assert result.rows == {"wholeBody": 5, "chestR": 5} and not result.problems
    layout_file.write_text(json.dumps({"wholebody": {}}))
    with pytest.raises(ConfigError, match="unknown layout key"):
        load_layout(layout_file)


def test_cli_import_prints_summary(clean_tree, tmp_path, capsys):
    assert main(["import", "bs80k", str(clean_tree), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "wholeBody: 5 rows" in printed and "missing folder: 20 listed, no manifest for this pair of folders" in printed
    assert main(["import", "bs80k", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")]) == 2


def test_pairs_import_16_bit_png(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "IICS"
    folder.mkdir()
    for pid in ("p1", "p2", "p3"):
        for view in ("ant", "post"):
            counts = rng.poisson(40, size=(1024, 256)).astype(np.uint16)
            Image.fromarray(counts).save(folder / f"{pid}_{view}.png")
    (folder / "p3_post.png").unlink()  # missing partner
    (folder / "notes_scan.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # no view in the name
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label,sex\np1,1,F\np2,0,\np3,1,M\np9,0,M\np2,1,\n")
    result = import_pairs(folder, labels, tmp_path / "out")
    table = load_manifest(result.manifests["pairs"])
    assert list(table["case_id"]) == ["p1"]  # p2: conflicting labels; p3: no posterior view
    assert list(table["sex"]) == ["F"]
    problems = pd.read_csv(tmp_path / "out" / "problems.csv")
    assert set(problems["problem"]) == {"missing partner view", "label line without image", "conflicting label lines",
                                        "no view in file name", "image without label"}


def test_bench_import_prints_its_figures(tmp_path, capsys):
    assert main(["bench", "import", "--data", str(tmp_path), "--patients", "3", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "import bs80k:" in printed and "cohort check:" in printed
    assert "patients written twice: 1, found as whole-body near duplicates: 1" in printed
