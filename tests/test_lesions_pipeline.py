"""Lesion network end to end: truth in network geometry, training task, hotspots from maps, predict outputs, SR."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from bonescan.cohort import load_manifest
from bonescan.errors import ManifestError, RunError
from bonescan.lesions.bsi import bone_scan_index
from bonescan.lesions.dataset import FLIP_LABELS, LesionScans, LesionTargets, targets_in_network_geometry
from bonescan.lesions.infer import load_lesion_run, study_lesions
from bonescan.lesions.regions import BY_NAME, N_LABELS
from bonescan.predict import predict_studies
from bonescan.preprocess import PreprocessConfig
from bonescan.presets import AugmentConfig, preset_config
from bonescan.synth import generate_cohort
from bonescan.train import train

DCIODVFY = shutil.which("dciodvfy")


def test_small_lesions_survive_downscaling_and_posterior_targets_are_mirrored():
    regions = np.zeros((2, 64, 32), np.uint8)
    regions[:, 10:20, 2:8] = BY_NAME["ribs_right"].label
    instances = np.zeros((2, 64, 32), np.uint16)
    instances[0, 40:42, 4:6] = 1  # 2 x 2 stored pixels: one pixel at half size
    instances[0, 50, 10] = 1  # one stored pixel: a quarter of a network pixel, still hot
    instances[1, 40:42, 24:26] = 2  # mirrored: stored columns 7 and 6
    small_regions, hot = targets_in_network_geometry(regions, instances, [1], PreprocessConfig(height=32, width=16))
    assert hot[0, 20, 2] == 2 and hot[0, 25, 5] == 2 and (hot[0] > 0).sum() == 2
    # The posterior is mirrored into the anterior's layout, like its image.
    assert hot[1, 20, 3] == 1 and (hot[1] > 0).sum() == 1
    assert (small_regions[1, 5:10, 12:15] == BY_NAME["ribs_right"].label).all()
    assert (small_regions[0, 5:10, 1:4] == BY_NAME["ribs_right"].label).all()


def test_flip_augmentation_swaps_left_and_right_regions():
    assert FLIP_LABELS[BY_NAME["femur_left"].label] == BY_NAME["femur_right"].label
    assert FLIP_LABELS[BY_NAME["skull"].label] == BY_NAME["skull"].label

    class Cache:
        arrays = np.zeros((1, 2, 8, 8), np.float16)

    regions = np.zeros((1, 2, 8, 8), np.uint8)
    regions[0, :, :, :4] = BY_NAME["ribs_right"].label
    targets = LesionTargets(regions, np.zeros_like(regions), np.array([True]), np.array([True]), [])
    augment = AugmentConfig(gain=0.0, poisson_probability=0.0, shift=0.0, scale=0.0, flip_probability=1.0)
    _, flipped, _, weights = LesionScans(Cache(), targets, [0], augment)[0]
    assert (flipped[:, :, 4:] == BY_NAME["ribs_left"].label).all() and (flipped[:, :, :4] == 0).all()
    assert weights.tolist() == [1.0, 1.0]


def test_hotspots_are_numbered_components_with_region_malignancy_uptake_and_bsi():
    shape = (64, 32)
    maps = np.zeros((2, 3, 32, 16), np.float32)  # network size: half the stored size
    maps[:, 0, 4:28, 4:12] = BY_NAME["pelvis"].label
    maps[0, 1, 8:12, 6:10] = 0.9  # a hotspot in the pelvis, anterior
    maps[0, 2, 6:14, 4:12] = 0.8
    maps[0, 1, 20:24, 6:10] = 0.9  # a second one lower down, benign
    maps[0, 2, 18:26, 4:12] = 0.1
    maps[1, 1, 30, 1] = 0.4  # below the hotspot threshold
    anterior = np.full(shape, 10.0, np.float32)
    anterior[16:24, 12:20] = 40.0
    lesions, numbers = study_lesions(maps, anterior, anterior.copy(), pixel_spacing=2.4, study_key="s1")
    assert [h.number for h in lesions.hotspots] == [1, 2] and numbers.shape == (2,) + shape
    first, second = lesions.hotspots
    assert first.view == "anterior" and first.region == "pelvis" and first.centroid[0] < second.centroid[0]
    assert first.malignancy == pytest.approx(0.8, abs=0.05) and second.malignancy < 0.5
    assert first.uptake_ratio == pytest.approx(4.0, rel=0.2) and second.uptake_ratio == pytest.approx(1.0, rel=0.2)
    assert first.area_mm2 == pytest.approx((numbers[0] == 1).sum() * 2.4**2)
    assert lesions.n_malignant == 1 and lesions.probability == pytest.approx(first.malignancy)
    bsi, _ = bone_scan_index(lesions.regions, numbers == 1)
    assert lesions.bsi == pytest.approx(bsi) and lesions.bsi > 0
    again, _ = study_lesions(maps, anterior, anterior.copy(), pixel_spacing=2.4, study_key="s1")
    assert again.hotspots[0].uid == first.uid  # tracking UIDs are stable across runs


@pytest.fixture(scope="module")
def lesion_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lesions")
    cohort = generate_cohort(folder / "cohort", 14, seed=21, difficulty="easy")
    manifest = load_manifest(cohort.manifest)
    # Few studies: choose the validation pair so that it holds both classes (the classifier needs an AUC).
    manifest["split"] = "train"
    manifest.loc[[manifest.index[manifest["label"] == k][0] for k in (0, 1)], "split"] = "val"
    manifest.to_csv(cohort.manifest, index=False)
    manifest = load_manifest(cohort.manifest)
    lesion_run = train(manifest, folder / "lesion-run", preset_config("tiny-lesion", precision="fp32"),
                       cache_dir=folder / "cache", progress=False)
    classifier = train(manifest, folder / "classifier", preset_config("tiny", precision="fp32", epochs=1),
                       cache_dir=folder / "cache", progress=False)
    return folder, cohort.manifest, manifest, lesion_run, classifier


def test_lesion_task_trains_through_the_shared_loop(lesion_setup):
    folder, _, manifest, lesion_run, classifier = lesion_setup
    assert list(lesion_run.metrics.columns) == ["epoch", "train_loss", "val_loss", "val_score", "lr",
                                                "best_val_score", "seconds"]
    assert np.isfinite(lesion_run.metrics["train_loss"]).all() and lesion_run.epochs_run == 2
    record = json.loads((folder / "lesion-run" / "config.json").read_text())
    assert record["settings"]["task"] == "lesion" and record["lesion_truth"]["studies_without_truth"] == 0
    loaded = load_lesion_run(folder / "lesion-run")
    assert loaded.maps(np.zeros((1, 2, 64, 32), np.float32)).shape == (1, 2, 3, 64, 32)
    with pytest.raises(RunError, match="not a lesion run"):
        load_lesion_run(folder / "classifier")
    # Studies without truth stay out of the lesion loss; with none at all there is nothing to learn from.
    with pytest.raises(ManifestError, match="no training study has lesion truth"):
        train(manifest.drop(columns=["truth"]), folder / "no-truth", preset_config("tiny-lesion", precision="fp32"),
              cache_dir=folder / "cache", progress=False)


def test_predict_writes_hotspots_and_lesion_files(lesion_setup):
    folder, manifest_path, manifest, _, _ = lesion_setup
    out = folder / "predict"
    report = predict_studies(folder / "classifier", manifest=manifest_path, split="val", engine="torch",
                             lesions=folder / "lesion-run", lesions_out=out)
    assert report.ok, [s.error for s in report.failures]
    frame = report.to_frame()
    assert {"bsi", "n_malignant", "probability_from_lesions", "lesions"} <= set(frame.columns)
    hotspots = pd.read_csv(out / "hotspots.csv")
    assert list(hotspots.columns[:3]) == ["case_id", "number", "view"]
    stored = pydicom.dcmread(manifest.loc[0, "path"]).pixel_array.shape[1:]
    for study in report.studies:
        record = json.loads((out / "lesions" / f"{study.case_id}.json").read_text())
        arrays = np.load(out / "lesions" / f"{study.case_id}.npz")
        assert arrays["regions"].shape == arrays["hotspots"].shape == (2,) + stored
        assert arrays["regions"].dtype == np.uint8 and arrays["hotspots"].dtype == np.uint16
        assert int(arrays["hotspots"].max()) == record["n_hotspots"] == (hotspots["case_id"] == study.case_id).sum()
        assert record["n_malignant"] == study.n_malignant and (out / "lesions" / f"{study.case_id}.png").is_file()
        assert int(arrays["regions"].max()) < N_LABELS


def test_sr_holds_bsi_and_one_group_per_hotspot_with_finding_site(tmp_path, nm1_path):
    from bonescan.dicom_out import ReadingResult, write_dicom_results
    from bonescan.io import read_study
    from bonescan.lesions.hotspots import Hotspot, StudyLesions

    study = read_study(nm1_path)
    hotspots = [Hotspot(1, "anterior", (10, 20, 18, 26), (14.0, 23.0), 180.0, "ribs_left", 0.91, 2.5, "1.2.3.4.1"),
                Hotspot(2, "anterior", (400, 100, 410, 110), (405.0, 105.0), 150.0, "", 0.1, 1.8, "1.2.3.4.2")]
    lesions = StudyLesions(hotspots, np.zeros((2, 4, 4), np.uint8), 0.42, {"ribs_left": 0.42}, 0.91, 0.5)
    written = write_dicom_results(tmp_path, study, np.zeros((40, 30, 3), np.uint8),
                                  ReadingResult(0.8, True, "youden", 0.5), [nm1_path], lesions=lesions)
    sr = pydicom.dcmread(written.structured_report)
    measurements = [item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010"]
    groups = measurements[0].ContentSequence
    assert len(groups) == 2 + len(hotspots)  # the study-level group, the BSI, one per hotspot
    text = " ".join(_content_values(sr))
    assert "hotspot 1 (anterior)" in text and "1.2.3.4.1" in text and "Bone Scan Index" in text
    assert "Rib" in text and "Left" in text  # finding site with laterality
    if DCIODVFY:
        check = subprocess.run([DCIODVFY, "-new", str(written.structured_report)], capture_output=True, text=True,
                               timeout=60)
        assert [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")] == []


def _content_values(dataset) -> list[str]:
    """Every text, UID and code meaning in an SR content tree."""
    values = []
    for item in getattr(dataset, "ContentSequence", []):
        for key in ("TextValue", "UID"):
            if key in item:
                values.append(str(item[key].value))
        for key in ("ConceptCodeSequence", "ConceptNameCodeSequence"):
            if key in item:
                values.append(str(item[key][0].CodeMeaning))
        values += _content_values(item)
    return values
