"""Pascal VOC boxes and COCO region masks into lesion truth: conversion, validation, box supervision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as coco_mask

from bonescan.cli import main
from bonescan.errors import ConfigError
from bonescan.lesions.annotations import box_supervision, convert_annotations, load_mapping
from bonescan.lesions.regions import BY_NAME
from bonescan.lesions.truth import LesionTruth, load_truth

H, W = 256, 64


def _voc(path: Path, objects, width=W, height=H, filename="") -> str:
    body = "".join(f"<object><name>{n}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                   f"<ymax>{y1}</ymax></bndbox></object>" for n, x0, y0, x1, y1 in objects)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{width}</width>"
                    f"<height>{height}</height></size>{body}</annotation>")
    return path.name


def _coco(path: Path, case_id: str, width=W, height=H, category="thoracic_spine") -> str:
    spine = np.zeros((H, W), np.uint8)
    spine[40:120, 26:38] = 1
    rle = coco_mask.encode(np.asfortranarray(spine))
    rle["counts"] = rle["counts"].decode("ascii")
    data = {
        "images": [{"id": 1, "file_name": f"{case_id}_ant.npy", "width": width, "height": height},
                   {"id": 2, "file_name": f"{case_id}_posterior.png", "width": width, "height": height}],
        "categories": [{"id": 7, "name": "Skull"}, {"id": 8, "name": category}],
        # polygon: the skull as the rectangle x 16..48, y 4..36 (pixel corners); RLE: the thoracic spine
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "segmentation": [[16, 4, 48, 4, 48, 36, 16, 36]]},
                        {"id": 2, "image_id": 1, "category_id": 8, "segmentation": rle},
                        {"id": 3, "image_id": 2, "category_id": 8, "segmentation": rle}],
    }
    path.write_text(json.dumps(data))
    return path.name


def _cohort(tmp_path: Path) -> Path:
    """s1: VOC both views + COCO; s2: VOC anterior only; s3: no annotations; s4: broken files; s5: COCO only."""
    ann = tmp_path / "ann"
    ann.mkdir()
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for case_id in ("s1", "s2", "s3", "s4", "s5"):
        for view in ("ant", "post"):
            np.save(images / f"{case_id}_{view}.npy", np.ones((H, W), np.float32))
        rows.append({"case_id": case_id, "anterior": f"images/{case_id}_ant.npy",
                     "posterior": f"images/{case_id}_post.npy", "label": 1})
    rows[0]["boxes_anterior"] = "ann/" + _voc(ann / "s1_ant.xml", [("bladder", 20, 150, 40, 170),
                                                                   ("nidus", 30, 60, 34, 64)], filename="s1_ant.jpg")
    rows[0]["boxes_posterior"] = "ann/" + _voc(ann / "s1_post.xml", [("nidus", 28, 60, 33, 66)])
    rows[0]["regions_coco"] = "ann/" + _coco(ann / "s1.json", "s1")
    rows[1]["boxes_anterior"] = "ann/" + _voc(ann / "s2_ant.xml", [("nidus", 1, 1, 10, 10)])
    rows[3]["boxes_anterior"] = "ann/" + _voc(ann / "s4_ant.xml", [("nidus", 60, 250, 70, 260), ("tumour", 1, 1, 4, 4)],
                                              height=512)
    rows[3]["boxes_posterior"] = "ann/" + _voc(ann / "s4_post.xml", [("nidus", 1, 1, 5, 5)], filename="other.jpg")
    rows[3]["regions_coco"] = "ann/" + _coco(ann / "s4.json", "s4", width=128, category="tail")
    rows[4]["regions_coco"] = "ann/" + _coco(ann / "s5.json", "s5")
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def test_voc_boxes_and_coco_regions_become_truth_files_and_a_truth_column(tmp_path):
    report = convert_annotations(_cohort(tmp_path), tmp_path / "out")
    assert report.written == ["s1", "s2", "s5"] and report.without_annotations == ["s3"]
    table = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype=str, keep_default_na=False)
    assert table["truth"].tolist() == ["truth/s1.npz", "truth/s2.npz", "", "", "truth/s5.npz"]
    # paths are rebased to the new manifest's folder
    assert (tmp_path / "out" / table["anterior"][0]).resolve() == (tmp_path / "images" / "s1_ant.npy").resolve()

    truth = load_truth(tmp_path / "out" / table["truth"][0])
    assert truth.has_regions and truth.boxes
    # the larger bladder box is painted first; VOC corners are 1-based inclusive
    assert truth.kind == ["bladder", "nidus", "nidus"]
    assert truth.category == ["physiological", "metastasis", "metastasis"]
    assert (truth.instances[0] == 2).sum() == 5 * 5 and truth.instances[0, 59, 29] == 2
    assert truth.instances[0, 58, 29] == 0 and (truth.instances[1] == 3).sum() == 6 * 7
    assert truth.region == ["", "thoracic_spine", "thoracic_spine"]  # the bladder box lies on no bone
    skull = BY_NAME["skull"].label
    assert (truth.regions[0] == skull).sum() == 32 * 32 and truth.regions[0, 4, 16] == skull
    assert (truth.regions[1] == skull).sum() == 0  # the posterior image entry has the spine only
    assert (truth.regions == BY_NAME["thoracic_spine"].label).sum() == 2 * 80 * 12
    assert truth.malignant_mask().sum() == 25 + 42

    boxes_only = load_truth(tmp_path / "out" / "truth" / "s2.npz")
    assert not boxes_only.has_regions and boxes_only.boxes and (boxes_only.instances[1] == 0).all()
    assert truth.has_findings and boxes_only.has_findings
    regions_only = load_truth(tmp_path / "out" / "truth" / "s5.npz")
    assert regions_only.has_regions and not regions_only.has_findings and not regions_only.boxes


def test_bad_annotations_give_one_error_per_file_listing_every_problem(tmp_path):
    manifest = _cohort(tmp_path)
    report = convert_annotations(manifest, tmp_path / "out", load_mapping(_strict_mapping(tmp_path)))
    assert report.written == ["s1", "s2", "s5"] and len(report.failures) == 1  # the batch goes on past s4
    message = str(report.failures[0])
    assert message.startswith("s4")
    for expected in ("s4_ant.xml", "differs from the image's 64 x 256", "lies outside", "unknown name 'tumour'",
                     "s4_post.xml", "describes image 'other.jpg'", "s4.json", "size 128 x 256 differs"):
        assert expected in message
    assert message.count("s4_ant.xml") == 1  # one error per file, all its problems in it


def _strict_mapping(tmp_path: Path) -> Path:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps({"boxes": {"nidus": "metastasis", "bladder": "physiological"},
                                "regions": {"Skull": "skull"}}))
    return path


def test_unknown_coco_category_and_missing_view_image_are_named(tmp_path):
    ann = tmp_path / "a.json"
    _coco(ann, "x", category="tail")
    from bonescan.errors import AnnotationError
    from bonescan.lesions.annotations import StudyAnnotations, coco_regions

    with pytest.raises(AnnotationError) as err:
        coco_regions(ann, StudyAnnotations("x", image_names=("x_ant.npy", None)), (H, W), load_mapping(None))
    assert "unknown category 'tail'" in str(err.value)
    assert "no image entry for the posterior view (file name x_posterior)" not in str(err.value)
    with pytest.raises(AnnotationError) as err:
        coco_regions(ann, StudyAnnotations("y", image_names=("y_ant.npy", "y_post.npy")), (H, W),
                     load_mapping(None))
    assert "no image entry for the anterior view" in str(err.value)
    assert "no image entry for the posterior view" in str(err.value)


def test_mapping_file_is_validated(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"boxes": {"nidus": "cancer"}, "regions": {"Rib": "ribs"}}))
    with pytest.raises(ConfigError) as err:
        load_mapping(bad)
    assert "'cancer'" in str(err.value) and "'ribs'" in str(err.value) and str(bad) in str(err.value)
    default = load_mapping(None)
    assert default.category("nidus") == "metastasis" and default.category("injection") == "physiological"
    assert default.region("ribs (left)") == "ribs_left" and default.region("Rib") is None


def test_box_supervision_core_and_ignore_band():
    instances = np.zeros((2, 20, 20), np.uint16)
    instances[0, 4:14, 5:15] = 1  # a 10 x 10 box
    instances[1, 10:13, 10:13] = 2  # a 3 x 3 box: its core is its centre pixel
    truth = LesionTruth(np.zeros_like(instances, np.uint8), instances, ["metastasis"] * 2, ["nidus"] * 2, ["", ""],
                        has_regions=False, boxes=True)
    core, ignore = box_supervision(truth, band=2)
    assert (core[0] == 1).sum() == 6 * 6 and core[0, 6, 7] == 1 and core[0, 5, 7] == 0
    assert ignore[0].sum() == 14 * 14 - 36 and ignore[0, 2, 3] and not ignore[0, 1, 3]
    assert (core[1] == 2).sum() == 1 and core[1, 11, 11] == 2
    assert not (ignore & (core > 0)).any()
    outlined = LesionTruth(truth.regions, instances, truth.category, truth.kind, truth.region)
    same, nothing = box_supervision(outlined)
    assert (same == instances).all() and not nothing.any()


def test_cli_convert_reports_counts_and_refusals(tmp_path, capsys):
    manifest = _cohort(tmp_path)
    assert main(["annotations", "convert", "--manifest", str(manifest), "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert "wrote 3 truth file(s)" in captured.out and "1 refused" in captured.out
    assert "refused: s4" in captured.err
    only_bad = tmp_path / "bad.csv"
    pd.read_csv(manifest).iloc[[3]].to_csv(only_bad, index=False)
    assert main(["annotations", "convert", "--manifest", str(only_bad), "--out", str(tmp_path / "p")]) == 2
    twice = tmp_path / "twice.csv"
    pd.read_csv(manifest).iloc[[0, 0]].to_csv(twice, index=False)
    assert main(["annotations", "convert", "--manifest", str(twice), "--out", str(tmp_path / "q")]) == 2
    assert "duplicate case_id" in capsys.readouterr().err
