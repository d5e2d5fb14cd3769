"""Lesion network end to end: truth in network geometry, training task, hotspots from maps, predict outputs, SR."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from bonescan import device
from bonescan.cohort import load_manifest
from bonescan.errors import ConfigError, ManifestError, RunError
from bonescan.lesions.bsi import bone_scan_index
from bonescan.lesions.dataset import LesionScans, LesionTargets, targets_in_network_geometry
from bonescan.lesions.infer import load_lesion_run, study_lesions
from bonescan.lesions.regions import BY_NAME, FLIP_LABELS, N_LABELS
from bonescan.lesions.superscan import SUPERSCAN_BSI
from bonescan.lesions.task import warm_start_weights
from bonescan.predict import predict_studies
from bonescan.preprocess import PreprocessConfig
from bonescan.presets import AugmentConfig, preset_config
from bonescan.synth import generate_cohort
from bonescan.train import train
from srkit import content_items, content_values

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


def test_box_truth_trains_its_core_and_leaves_the_band_out_of_the_loss():
    from bonescan.lesions.annotations import box_supervision
    from bonescan.lesions.dataset import IGNORE
    from bonescan.lesions.task import lesion_loss
    from bonescan.lesions.truth import LesionTruth

    instances = np.zeros((2, 64, 32), np.uint16)
    instances[0, 20:32, 8:20] = 1  # a 12 x 12 box around a metastasis
    truth = LesionTruth(np.zeros((2, 64, 32), np.uint8), instances, ["metastasis"], ["box"], [""],
                        has_regions=False, boxes=True)
    core, ignore = box_supervision(truth, band=2)
    _, hot = targets_in_network_geometry(truth.regions, core, [1], PreprocessConfig(height=32, width=16), ignore)
    assert (hot[0, 12:14, 6:8] == 2).all()  # the core, at half size
    assert (hot[0, 9, 4:10] == IGNORE).all() and (hot[0, 16, 4:10] == IGNORE).all()  # the band above and below
    assert (hot[0, :8] == 0).all() and (hot[1] == 0).all()
    logits = torch.zeros((1, 2, N_LABELS + 2, 32, 16), requires_grad=True)
    lesion_loss(logits, torch.zeros((1, 2, 32, 16), dtype=torch.long), torch.from_numpy(hot[None].astype(np.int64)),
                torch.tensor([[1.0, 0.0]])).backward()
    grad = logits.grad[0, 0, N_LABELS:].abs().sum(0)
    band = torch.from_numpy(hot[0] == IGNORE)
    assert grad[band].max() == 0 and (grad[~band] > 0).all()
    assert logits.grad[0, :, :N_LABELS].abs().max() == 0  # box-only truth has no regions to learn


def test_region_loss_is_cross_entropy_plus_the_soft_dice_of_the_classes_present():
    """Against the textbook form (softmax, one-hot target, per-class sums), value and gradient, in float64."""
    import torch.nn.functional as F

    from bonescan.lesions.task import lesion_loss

    def reference(region_logits, truth):
        probability = torch.softmax(region_logits, 1)[:, 1:]
        target = F.one_hot(truth, N_LABELS).permute(0, 3, 1, 2)[:, 1:].double()
        per_class = target.sum((0, 2, 3))
        dice = (2 * (probability * target).sum((0, 2, 3)) + 1) / (probability.sum((0, 2, 3)) + per_class + 1)
        present = per_class > 0
        return F.cross_entropy(region_logits, truth) + 1 - dice[present].mean()

    generator = torch.Generator().manual_seed(0)
    regions = torch.randint(0, N_LABELS, (3, 2, 32, 16), generator=generator)
    regions[regions == 5] = 0  # a class absent from the batch
    weights = torch.tensor([[0.0, 1.0]] * 3)  # regions only: the loss is the region loss alone
    logits = torch.randn((3, 2, N_LABELS + 2, 32, 16), generator=generator, dtype=torch.float64, requires_grad=True)
    loss = lesion_loss(logits, regions, torch.zeros_like(regions), weights)
    expected = reference(logits[:, :, :N_LABELS].reshape(6, N_LABELS, 32, 16), regions.reshape(6, 32, 16))
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), abs=1e-12)
    (grad,), (expected_grad,) = torch.autograd.grad(loss, logits), torch.autograd.grad(expected, logits)
    assert torch.allclose(grad, expected_grad, atol=1e-15) and grad[:, :, :N_LABELS].abs().max() > 0
    background = torch.zeros_like(regions)  # no region class present: cross-entropy alone
    loss = lesion_loss(logits, background, torch.zeros_like(regions), weights)
    ce = F.cross_entropy(logits[:, :, :N_LABELS].reshape(6, N_LABELS, 32, 16), background.reshape(6, 32, 16))
    assert float(loss.detach()) == pytest.approx(float(ce.detach()), abs=1e-12)


def test_class_overlap_is_the_same_by_index_sum_and_by_one_hot_product():
    """The CPU's index sum and the one-hot product kept for CUDA: equal value and gradient (float64)."""
    from bonescan.lesions.task import class_overlap

    generator = torch.Generator().manual_seed(1)
    probability = torch.softmax(torch.randn(500, N_LABELS, generator=generator, dtype=torch.float64), 1)
    probability.requires_grad_(True)
    truth = torch.randint(0, N_LABELS, (500,), generator=generator)
    weights = torch.randn(N_LABELS, generator=generator, dtype=torch.float64)  # a gradient that tells classes apart
    by_index, by_product = (class_overlap(probability, truth, one_hot) for one_hot in (False, True))
    assert torch.allclose(by_index, by_product, atol=1e-12) and by_index.sum() > 0
    (grad_index,), (grad_product,) = (torch.autograd.grad((o * weights).sum(), probability)
                                      for o in (by_index, by_product))
    assert torch.equal(grad_index, grad_product)


def test_metastasis_map_learns_a_small_lesion_beside_a_large_kidney():
    """The metastasis map has its own loss: a 4-pixel metastasis is not drowned by a 200-pixel kidney."""
    from bonescan.lesions.network import HOTSPOT, MALIGNANCY
    from bonescan.lesions.task import lesion_loss

    hot = torch.zeros((1, 2, 32, 16), dtype=torch.long)
    hot[0, :, 4:24, 2:12] = 1  # a kidney
    hot[0, :, 28:30, 13:15] = 2  # a metastasis
    logits = torch.zeros((1, 2, N_LABELS + 2, 32, 16), requires_grad=True)
    lesion_loss(logits, torch.zeros((1, 2, 32, 16), dtype=torch.long), hot, torch.tensor([[1.0, 0.0]])).backward()
    metastasis_grad = logits.grad[0, 0, MALIGNANCY]
    # gradient descent raises the metastasis logit on the metastasis and lowers it on the kidney, harder there than
    # on plain background
    assert (metastasis_grad[28:30, 13:15] < 0).all() and (metastasis_grad[4:24, 2:12] > 0).all()
    assert metastasis_grad[10, 5] > metastasis_grad[31, 0] > 0
    assert (logits.grad[0, 0, HOTSPOT][28:30, 13:15] < 0).all()


def test_small_metastases_weigh_more_per_pixel_than_large_ones():
    from bonescan.lesions.task import SMALL_LESION_MAX_BOOST, small_lesion_boost

    metastasis = torch.zeros((1, 40, 40))
    metastasis[0, 5:7, 5:8] = 1  # 6 pixels
    metastasis[0, 20:36, 20:36] = 1  # 256 pixels
    boost = small_lesion_boost(metastasis)[0]
    assert (boost[5:7, 5:8] == SMALL_LESION_MAX_BOOST).all()
    assert boost[28, 28] == 1.0 and 1.0 < boost[20, 20] < SMALL_LESION_MAX_BOOST  # inside, and at a corner
    assert (boost >= 1.0).all()


def test_validation_scores_metastases_and_false_positives_as_the_hotspot_finder_sees_them():
    from bonescan.lesions.dataset import IGNORE
    from bonescan.lesions.task import lesion_detections

    hot = np.zeros((30, 20), np.int64)
    hot[2:4, 2:4] = 2  # found by a candidate that only overlaps it
    hot[10:12, 10:12] = 2  # missed
    hot[20:22, 2:4] = hot[20:22, 6:9] = 2  # two metastases under one candidate: one found
    hot[26:28, 14:16] = IGNORE  # a box's band: a candidate here is neither found nor false
    hot[26:28, 2:4] = 1  # a kidney: a candidate on it is false
    probability = np.zeros(hot.shape)
    probability[3:5, 3:5] = 0.9
    probability[20:22, 2:9] = 0.6  # overlaps the right one of the pair more (6 pixels against 4): it is found,
    probability[21, 4] = 0.7  # at the candidate's peak
    probability[26:28, 14:16] = 0.8
    probability[26:28, 2:4] = 0.3
    probability[0, 19] = 0.25  # faint, still a candidate (>= 0.2)
    probability[15, 15] = 0.1  # below the candidate level: nothing
    lesions, false = lesion_detections(probability, hot)
    np.testing.assert_allclose(lesions, [0.9, -1.0, -1.0, 0.7])  # truth groups numbered in raster order
    np.testing.assert_allclose(sorted(false), [0.25, 0.3])
    lesions, false = lesion_detections(np.zeros(hot.shape), hot)
    assert (lesions == -1).all() and false.size == 0


def test_validation_sensitivity_is_read_at_one_false_positive_per_study():
    from bonescan.lesions.task import SCORE_BINS, _histogram, sensitivity_at_one_fp

    # 4 lesions scored 0.95, 0.85, 0.35 (one never found); false positives at 0.9, 0.8, 0.3.
    found, false = _histogram(np.array([0.95, 0.85, 0.35])), _histogram(np.array([0.9, 0.8, 0.3]))
    assert found.size == SCORE_BINS and found.sum() == 3
    assert sensitivity_at_one_fp(found, false, 4, 1) == 0.5  # 1 false positive allowed: down to 0.85, 2 of 4
    assert sensitivity_at_one_fp(found, false, 4, 2) == 0.75  # 2 allowed: down to 0.35 (0.9, 0.8 above it)
    assert sensitivity_at_one_fp(found, false, 0, 2) == 0.0
    # A confident network: both lesions and all three false positives above 0.99, yet a threshold between them.
    found, false = _histogram(np.array([0.9999, 0.99995])), _histogram(np.array([0.995, 0.996, 0.997, 1.0 - 1e-6]))
    assert sensitivity_at_one_fp(found, false, 2, 1) == 1.0  # 0.9999 and up: 1 false positive (1 - 1e-6)
    assert sensitivity_at_one_fp(found, false, 4, 1) == 0.5  # 4 lesions: the 2 found
    assert _histogram(np.array([0.0, 0.2, 1.0])).sum() == 3  # the ends are counted, not lost


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
    maps[0, 1, 8:12, 6:10] = 0.9  # a hotspot in the pelvis, anterior, peaking at 0.8 in the metastasis map
    maps[0, 2, 8:12, 6:10] = 0.6
    maps[0, 2, 9:11, 7:9] = 0.8
    maps[0, 1, 20:24, 6:10] = 0.9  # a second one lower down, benign
    maps[0, 2, 18:26, 4:12] = 0.1
    maps[1, 1, 30, 1] = 0.4  # below the hotspot threshold
    maps[1, 1, 4:8, 4:8] = 0.3  # faint in the hotspot map, but the metastasis map finds it: a hotspot too
    maps[1, 2, 4:8, 4:8] = 0.7
    anterior = np.full(shape, 10.0, np.float32)
    anterior[16:24, 12:20] = 40.0
    lesions, numbers = study_lesions(maps, anterior, anterior.copy(), pixel_spacing=2.4, study_key="s1")
    assert [h.number for h in lesions.hotspots] == [1, 2, 3] and numbers.shape == (2,) + shape
    first, second, third = lesions.hotspots
    assert first.view == "anterior" and first.region == "pelvis" and first.centroid[0] < second.centroid[0]
    assert first.malignancy == pytest.approx(0.8, abs=0.05) and second.malignancy < 0.5
    assert third.view == "posterior" and third.malignancy == pytest.approx(0.7, abs=0.05)
    assert first.uptake_ratio == pytest.approx(4.0, rel=0.2) and second.uptake_ratio == pytest.approx(1.0, rel=0.2)
    assert first.area_mm2 == pytest.approx((numbers[0] == 1).sum() * 2.4**2)
    assert lesions.n_malignant == 2 and lesions.probability == pytest.approx(first.malignancy)
    # BSI counts the metastasis map's outline inside the malignant hotspots: part of hotspots 1 and 3, none of 2.
    whole, _ = bone_scan_index(lesions.regions, (numbers == 1) | (numbers == 3))
    assert 0 < lesions.bsi <= whole
    faint = maps.copy()
    faint[:, 2] = np.minimum(faint[:, 2], 0.45)  # nothing reaches the malignancy threshold: hotspots stay, BSI 0
    unsure, _ = study_lesions(faint, anterior, anterior.copy(), pixel_spacing=2.4)
    assert len(unsure.hotspots) == 3 and unsure.bsi == 0 and unsure.n_malignant == 0
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


def test_lesion_task_trains_through_the_shared_loop(lesion_setup, monkeypatch):
    folder, _, manifest, lesion_run, classifier = lesion_setup
    assert list(lesion_run.metrics.columns) == ["epoch", "train_loss", "val_loss", "val_score", "lr",
                                                "best_val_score", "seconds"]
    assert np.isfinite(lesion_run.metrics["train_loss"]).all() and lesion_run.epochs_run == 2
    record = json.loads((folder / "lesion-run" / "config.json").read_text())
    assert record["settings"]["task"] == "lesion" and record["lesion_truth"]["studies_without_truth"] == 0
    loaded = load_lesion_run(folder / "lesion-run", precision="fp32")
    assert loaded.maps(np.zeros((1, 2, 64, 32), np.float32)).shape == (1, 2, 3, 64, 32)
    # The loaded network runs channels-last; its probabilities are the plain layout's.
    from bonescan.lesions.network import build_lesion_net
    from bonescan.train import RunPaths, load_checkpoint

    plain = build_lesion_net(loaded.config.lesion)
    plain.load_state_dict(load_checkpoint(RunPaths(folder / "lesion-run").best)["model"])
    inputs = np.random.default_rng(3).random((3, 2, 64, 32), dtype=np.float32)  # 3: a partial last CPU batch
    with torch.no_grad():
        expected = torch.sigmoid(plain.eval()(torch.from_numpy(inputs))[:, :, -2:]).numpy()
    np.testing.assert_allclose(loaded.maps(inputs)[:, :, 1:], expected, atol=1e-4)
    # bf16 (native or emulated): the same probabilities to bf16's precision; "auto" takes it where the CPU runs it
    # faster, else fp32.
    np.testing.assert_allclose(load_lesion_run(folder / "lesion-run", precision="bf16").maps(inputs)[:, :, 1:],
                               expected, atol=0.02)
    for faster, name in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(device, "cpu_bf16_is_faster", lambda faster=faster: faster)
        assert load_lesion_run(folder / "lesion-run", device="cpu").precision.name == name
    monkeypatch.undo()
    with pytest.raises(RunError, match="not a lesion run"):
        load_lesion_run(folder / "classifier")
    # Studies without truth stay out of the lesion loss; with none at all there is nothing to learn from.
    with pytest.raises(ManifestError, match="no training study has lesion truth"):
        train(manifest.drop(columns=["truth"]), folder / "no-truth", preset_config("tiny-lesion", precision="fp32"),
              cache_dir=folder / "cache", progress=False)
    # The lesion task is validated by Dice, not AUC: a val split of one label is fine for it, not for the classifier.
    one_label = manifest[(manifest["split"] == "train") | (manifest["label"] == 1)]
    run = train(one_label, folder / "one-label-val", preset_config("tiny-lesion", precision="fp32", epochs=1),
                cache_dir=folder / "cache", progress=False)
    assert run.epochs_run == 1 and np.isfinite(run.metrics["val_score"]).all()
    # bf16 autocast (native on AMX CPUs, emulated elsewhere): the lesion loss is computed in fp32 and stays finite.
    bf16 = train(one_label, folder / "bf16", preset_config("tiny-lesion", precision="bf16", epochs=1, exact=False),
                 cache_dir=folder / "cache", progress=False)
    assert np.isfinite(bf16.metrics[["train_loss", "val_loss", "val_score"]].to_numpy()).all()
    # Warm start from an earlier lesion run: at a vanishing learning rate the weights stay the earlier run's.
    earlier = load_checkpoint(RunPaths(folder / "lesion-run").best)["model"]
    warm = train(one_label, folder / "warm", preset_config("tiny-lesion", precision="fp32", epochs=1, lr=1e-12,
                                                           pretrained=str(folder / "lesion-run")),
                 cache_dir=folder / "cache", progress=False)
    after = load_checkpoint(RunPaths(warm.run_dir).last)["model"]
    weights = [k for k, v in earlier.items() if v.ndim > 1]
    assert weights and all(torch.allclose(after[k], earlier[k], atol=1e-6) for k in weights)
    fresh = build_lesion_net(loaded.config.lesion).state_dict()
    assert not all(torch.allclose(fresh[k], earlier[k], atol=1e-3) for k in weights)
    tiny = preset_config("tiny-lesion")
    with pytest.raises(ConfigError, match="not a lesion run"):
        warm_start_weights(folder / "classifier", tiny)
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        warm_start_weights("imagenet", tiny)
    with pytest.raises(ConfigError, match="checkpoint not found"):
        warm_start_weights(folder / "nowhere.pt", tiny)
    wider = replace(tiny, lesion=replace(tiny.lesion, channels=(8, 16, 32)))
    with pytest.raises(ConfigError, match="differs from this run's"):
        warm_start_weights(folder / "lesion-run", wider)
    with pytest.raises(ManifestError, match="only label 1"):
        train(one_label, folder / "one-label-classifier", preset_config("tiny", precision="fp32", epochs=1),
              cache_dir=folder / "cache", progress=False)


def test_predict_writes_hotspots_and_lesion_files(lesion_setup):
    folder, manifest_path, manifest, _, _ = lesion_setup
    out = folder / "predict"
    report = predict_studies(folder / "classifier", manifest=manifest_path, split="val", engine="torch",
                             lesions=folder / "lesion-run", lesions_out=out)
    assert report.ok, [s.error for s in report.failures]
    frame = report.to_frame()
    assert {"bsi", "n_malignant", "n_malignant_lesions", "superscan", "probability_from_lesions",
            "lesions", "dicom_seg", "dicom_hotspots_sc"} <= set(frame.columns)
    hotspots = pd.read_csv(out / "hotspots.csv")
    assert list(hotspots.columns[:3]) == ["case_id", "number", "view"]
    # in the studies' order, though their files are written from threads
    assert list(dict.fromkeys(hotspots["case_id"])) == [s.case_id for s in report.studies
                                                          if (hotspots["case_id"] == s.case_id).any()]
    stored = pydicom.dcmread(manifest.loc[0, "path"]).pixel_array.shape[1:]
    for study in report.studies:
        record = json.loads((out / "lesions" / f"{study.case_id}.json").read_text())
        arrays = np.load(out / "lesions" / f"{study.case_id}.npz")
        assert arrays["regions"].shape == arrays["hotspots"].shape == (2,) + stored
        assert arrays["regions"].dtype == np.uint8 and arrays["hotspots"].dtype == np.uint16
        assert int(arrays["hotspots"].max()) == record["n_hotspots"] == (hotspots["case_id"] == study.case_id).sum()
        assert record["n_malignant"] == study.n_malignant and (out / "lesions" / f"{study.case_id}.png").is_file()
        assert record["n_malignant_lesions"] == study.n_malignant_lesions <= study.n_malignant
        assert record["superscan"] == study.superscan == (record["bsi"] >= SUPERSCAN_BSI)
        assert int(arrays["regions"].max()) < N_LABELS


def test_a_follow_up_reads_a_study_with_the_hotspot_uids_of_its_own_report(lesion_setup):
    """`bonescan followup` (and the node's comparison) read the prior again: its hotspots keep their tracking UIDs,
    so the follow-up SR names the lesions as the prior's report did."""
    from bonescan.followup import NetworkReader, load_visit

    folder, _, manifest, _, _ = lesion_setup
    path = manifest.loc[0, "path"]
    out = folder / "predict-one"
    report = predict_studies(folder / "classifier", [path], engine="torch", lesions=folder / "lesion-run",
                             lesions_out=out)
    assert report.ok, [s.error for s in report.failures]
    reported = json.loads(Path(report.studies[0].lesions).read_text())["hotspots"]
    visit = load_visit(path, "baseline")
    again = {h.uid: h for h in NetworkReader(folder / "lesion-run").read(visit.study, visit.files).hotspots}
    # the follow-up reads both views' hotspots of a focus; the report's keep their UIDs among them
    assert reported and {h["uid"] for h in reported} <= set(again)
    assert all(list(again[h["uid"]].box) == h["box"] for h in reported)


def test_a_study_whose_lesions_fail_is_listed_and_the_batch_goes_on(lesion_setup, monkeypatch):
    folder, manifest_path, manifest, _, _ = lesion_setup
    import bonescan.lesions.step as step

    real = step.study_lesions
    broken = manifest.loc[manifest["split"] == "val", "case_id"].iloc[0]

    def fails_for_one(*args, study_key, **kwargs):
        if study_key.endswith(f":{broken}"):
            raise ValueError("no bone found")
        return real(*args, study_key=study_key, **kwargs)

    monkeypatch.setattr(step, "study_lesions", fails_for_one)
    out = folder / "predict-one-fails"
    report = predict_studies(folder / "classifier", manifest=manifest_path, split="val", engine="torch",
                             lesions=folder / "lesion-run", lesions_out=out, heatmap_dir=out / "heat")
    assert [s.case_id for s in report.failures] == [broken]
    assert report.failures[0].error == "finding lesions: ValueError: no bone found"
    assert not report.failures[0].unwritten  # the study's own trouble: not read again
    others = [s for s in report.studies if s.case_id != broken]
    assert others and all(s.status == "ok" and s.bsi is not None and s.heatmap for s in others)
    assert not (out / "lesions" / f"{broken}.json").exists()
    assert sorted(p.stem for p in (out / "heat").glob("*.png")) == sorted(s.name for s in others)


def test_a_study_whose_lesion_files_cannot_be_written_is_listed_and_the_others_keep_theirs(lesion_setup,
                                                                                          monkeypatch):
    from bonescan.lesions.outputs import LesionOutputs

    folder, manifest_path, manifest, _, _ = lesion_setup
    real = LesionOutputs.write_files
    broken = manifest.loc[manifest["split"] == "val", "case_id"].iloc[-1]

    def fails_for_one(self, name, *args, **kwargs):
        if name == broken:
            raise OSError("disk full")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(LesionOutputs, "write_files", fails_for_one)
    out = folder / "predict-files-fail"
    report = predict_studies(folder / "classifier", manifest=manifest_path, split="val", engine="torch",
                             lesions=folder / "lesion-run", lesions_out=out)
    assert [s.case_id for s in report.failures] == [broken]
    assert report.failures[0].error == "writing lesions: OSError: disk full"
    others = [s.case_id for s in report.studies if s.case_id != broken]
    assert sorted(p.stem for p in (out / "lesions").glob("*.json")) == sorted(others)
    assert broken not in set(pd.read_csv(out / "hotspots.csv")["case_id"])


def test_a_study_whose_overlay_cannot_be_written_keeps_none_of_its_lesion_files(lesion_setup, monkeypatch):
    import errno

    import bonescan.heatmap as heatmap

    folder, manifest_path, manifest, _, _ = lesion_setup
    real = heatmap.save_png
    broken = manifest.loc[manifest["split"] == "val", "case_id"].iloc[0]

    def disk_full_for_one(path, image):
        if path.name.startswith(f".{broken}.png."):  # the overlay's temporary file, after its JSON and label maps
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, image)

    monkeypatch.setattr(heatmap, "save_png", disk_full_for_one)
    out = folder / "predict-overlay-fails"
    report = predict_studies(folder / "classifier", manifest=manifest_path, split="val", engine="torch",
                             lesions=folder / "lesion-run", lesions_out=out)
    assert [s.case_id for s in report.failures] == [broken]
    assert report.failures[0].error == (f"writing lesions: {out / 'lesions' / broken}.png: cannot be written: "
                                        "No space left on device")
    assert report.failures[0].unwritten
    assert sorted(p.name for p in (out / "lesions").iterdir() if p.stem == broken) == []  # no JSON without maps
    others = [s.case_id for s in report.studies if s.case_id != broken]
    assert sorted(p.stem for p in (out / "lesions").glob("*.npz")) == sorted(others)


def test_cli_keeps_the_readings_when_hotspots_csv_cannot_be_written_and_says_so(lesion_setup, tmp_path, capsys):
    from bonescan.cli import main

    folder, manifest_path, _, _, _ = lesion_setup
    out = tmp_path / "lesions"
    (out / "hotspots.csv").mkdir(parents=True)  # in the way of the job's one table
    predictions = tmp_path / "predictions.csv"
    assert main(["predict", "--run", str(folder / "classifier"), "--manifest", str(manifest_path), "--split", "val",
                 "--engine", "torch", "--lesions", str(folder / "lesion-run"), "--lesions-out", str(out),
                 "--out", str(predictions)]) == 2
    err = capsys.readouterr().err
    assert f"bonescan: failed: {out / 'hotspots.csv'}: cannot be written: Is a directory" in err
    assert "Traceback" not in err and "their files could not be written" not in err  # every study's were
    written = pd.read_csv(predictions)
    assert len(written) and (written["status"] == "ok").all() and written["bsi"].notna().all()


def test_cli_names_a_lesion_runs_validation_score_when_training_and_when_resuming(lesion_setup, tmp_path,
                                                                                    capsys):
    from bonescan.cli import main

    folder, manifest_path, _, _, _ = lesion_setup
    arguments = ["train", "--manifest", str(manifest_path), "--out", str(tmp_path / "run"), "--cache-dir",
                 str(folder / "cache"), "--quiet"]
    assert main([*arguments, "--preset", "tiny-lesion", "--epochs", "1", "--precision", "fp32"]) == 0
    assert main([*arguments, "--resume"]) == 0  # finished: nothing more to train, the same summary
    printed = capsys.readouterr().out
    assert printed.count("best validation score (mean of region Dice and sensitivity at <= 1 false positive per "
                         "study)") == 2 and "AUC" not in printed


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
    text = " ".join(content_values(sr))
    assert "hotspot 1 (anterior)" in text and "1.2.3.4.1" in text and "Bone Scan Index" in text
    assert "Number of malignant lesions" in text and "Superscan pattern" in text
    counted = [item for item in content_items(sr) if item.ConceptNameCodeSequence[0].CodeValue == "NMALLES"]
    assert [float(item.MeasuredValueSequence[0].NumericValue) for item in counted] == [lesions.n_malignant_lesions]
    assert lesions.n_malignant_lesions == 1
    assert "Rib" in text and "Left" in text  # finding site with laterality
    if DCIODVFY:
        check = subprocess.run([DCIODVFY, "-new", str(written.structured_report)], capture_output=True, text=True,
                               timeout=60)
        assert [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")] == []


def _segment_masks(path) -> dict[str, np.ndarray]:
    """Segment label -> mask, rebuilt from a SEG file's frames."""
    seg = pydicom.dcmread(path)
    labels = {item.SegmentNumber: item.SegmentLabel for item in seg.SegmentSequence}
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    shared = seg.SharedFunctionalGroupsSequence[0]
    masks = {}
    for frame, groups in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        identification = groups.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        masks[labels[identification[0].ReferencedSegmentNumber]] = frame.astype(bool)
    return masks


def test_segmentation_per_view_points_at_the_source_frame_and_keeps_tracking_uids(tmp_path, lesion_setup):
    from bonescan.dicom_out import ReadingResult, write_dicom_results
    from bonescan.io import read_study
    from bonescan.io.dicom import decide_views
    from bonescan.lesions.hotspots import Hotspot, StudyLesions
    from bonescan.lesions.truth import load_truth

    _, manifest_path, manifest, _, _ = lesion_setup
    source = manifest.loc[0, "path"]
    study = read_study(source)
    truth = load_truth(manifest.loc[0, "truth"])
    numbers = np.zeros(truth.regions.shape, np.uint16)
    numbers[0, 100:106, 60:66] = 1
    numbers[1, 300:310, 120:128] = 2
    hotspots = [Hotspot(1, "anterior", (100, 60, 106, 66), (102.5, 62.5), 207.0, "skull", 0.9, 2.0, "1.2.3.9.1"),
                Hotspot(2, "posterior", (300, 120, 310, 128), (304.5, 123.5), 460.0, "pelvis", 0.2, 1.5,
                        "1.2.3.9.2")]
    lesions = StudyLesions(hotspots, truth.regions, 0.3, {"skull": 0.3}, 0.9, 0.5)
    overlay = np.full((60, 40, 3), 255, np.uint8)
    overlay[10:20, 10:20] = (220, 30, 30)
    written = write_dicom_results(tmp_path, study, np.zeros((40, 30, 3), np.uint8),
                                  ReadingResult(0.8, True, "youden", 0.5), [source], lesions=lesions,
                                  hotspot_numbers=numbers, lesion_overlay=overlay)
    assert len(written.segmentations) == 2
    # The numbered hotspots also reach PACS as a Secondary Capture in the scan's study, listed in the SR.
    capture = pydicom.dcmread(written.hotspots_capture)
    source_header = pydicom.dcmread(source, stop_before_pixels=True)
    assert capture.SeriesNumber == 9904 and capture.StudyInstanceUID == source_header.StudyInstanceUID
    assert np.array_equal(capture.pixel_array, overlay)
    sr = pydicom.dcmread(written.structured_report)
    evidence = {item.ReferencedSOPInstanceUID for series in sr.CurrentRequestedProcedureEvidenceSequence
                for s in series.ReferencedSeriesSequence for item in s.ReferencedSOPSequence}
    assert {capture.SOPInstanceUID, pydicom.dcmread(written.secondary_capture).SOPInstanceUID} <= evidence
    frame_of = {view: k + 1 for k, view in enumerate(decide_views(pydicom.dcmread(source), 2).views)}
    source_uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
    for index, (path, view, number) in enumerate(zip(written.segmentations, ("anterior", "posterior"), (1, 2))):
        seg = pydicom.dcmread(path)
        assert seg.Modality == "SEG" and path.name.endswith(f"_seg_{view}.dcm")
        references = [item for groups in seg.PerFrameFunctionalGroupsSequence
                      for item in groups.DerivationImageSequence[0].SourceImageSequence]
        assert {(item.ReferencedSOPInstanceUID, item.ReferencedFrameNumber) for item in references} \
            == {(source_uid, frame_of[view])}
        masks = _segment_masks(path)
        assert np.array_equal(masks[f"hotspot {number}"], numbers[index] == number)
        assert f"hotspot {3 - number}" not in masks  # the other view's hotspot is in the other SEG
        skull = BY_NAME["skull"]
        assert np.array_equal(masks[skull.title], truth.regions[index] == skull.label)
        tracked = {item.SegmentLabel: item.get("TrackingUID") for item in seg.SegmentSequence}
        assert tracked[f"hotspot {number}"] == hotspots[number - 1].uid
    if DCIODVFY:
        for path in [*written.segmentations, written.hotspots_capture]:
            check = subprocess.run([DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=60)
            assert [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")] == []


def test_sr_and_segmentations_list_the_most_malignant_hotspots_up_to_the_limit(tmp_path, lesion_setup,
                                                                                 monkeypatch):
    from bonescan.dicom_out import ReadingResult, write_dicom_results
    from bonescan.io import read_study
    from bonescan.lesions import dicom
    from bonescan.lesions.hotspots import Hotspot, StudyLesions
    from bonescan.lesions.truth import load_truth

    _, _, manifest, _, _ = lesion_setup
    source = manifest.loc[0, "path"]
    truth = load_truth(manifest.loc[0, "truth"])
    numbers = np.zeros(truth.regions.shape, np.uint16)
    hotspots = []
    for number, malignancy in zip((1, 2, 3), (0.3, 0.9, 0.6)):
        numbers[0, 40 * number:40 * number + 5, 20:25] = number
        hotspots.append(Hotspot(number, "anterior", (40 * number, 20, 40 * number + 5, 25),
                                (40.0 * number + 2, 22.0), 144.0, "skull", malignancy, 2.0, f"1.2.3.7.{number}"))
    lesions = StudyLesions(hotspots, truth.regions, 0.2, {"skull": 0.2}, 0.9, 0.5)
    monkeypatch.setattr(dicom, "DICOM_HOTSPOT_LIMIT", 2)
    written = write_dicom_results(tmp_path, read_study(source), np.zeros((40, 30, 3), np.uint8),
                                  ReadingResult(0.8, True, "youden", 0.5), [source], lesions=lesions,
                                  hotspot_numbers=numbers)
    sr = pydicom.dcmread(written.structured_report)
    text = " ".join(content_values(sr))
    # the two most malignant (2 and 3) are listed, hotspot 1 is not; the study group counts all three
    assert "hotspot 2 (anterior)" in text and "hotspot 3 (anterior)" in text and "hotspot 1 (anterior)" not in text
    found = [item for item in content_items(sr) if item.ConceptNameCodeSequence[0].CodeValue == "NHOTSPOTS"]
    assert [float(item.MeasuredValueSequence[0].NumericValue) for item in found] == [3.0]
    masks = _segment_masks(next(p for p in written.segmentations if p.name.endswith("_seg_anterior.dcm")))
    assert {"hotspot 2", "hotspot 3"} <= set(masks) and "hotspot 1" not in masks
    assert any("3 hotspots found: the SR and Segmentations list the 2 most malignant" in w for w in written.warnings)
    monkeypatch.setattr(dicom, "DICOM_HOTSPOT_LIMIT", 3)
    assert dicom.hotspots_for_dicom(lesions) == hotspots and dicom.dicom_hotspot_warning(lesions) is None
    if DCIODVFY:
        check = subprocess.run([DCIODVFY, "-new", str(written.structured_report)], capture_output=True, text=True,
                               timeout=60)
        assert [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")] == []


def test_segmentation_of_a_single_view_file_and_none_without_dicom(tmp_path, nm1_path):
    from bonescan.dicom_out import ReadingResult, write_dicom_results
    from bonescan.io import read_study
    from bonescan.lesions.hotspots import StudyLesions

    study = read_study(nm1_path)
    rows, cols = study.anterior.shape
    regions = np.zeros((2, rows, cols), np.uint8)
    regions[:, : rows // 8] = BY_NAME["skull"].label
    lesions = StudyLesions([], regions, 0.0, {}, 0.0, 0.5)
    written = write_dicom_results(tmp_path, study, np.zeros((40, 30, 3), np.uint8),
                                  ReadingResult(0.2, False, "youden", 0.5), [nm1_path], lesions=lesions,
                                  hotspot_numbers=np.zeros((2, rows, cols), np.uint16))
    assert len(written.segmentations) == 1 and written.segmentations[0].name.endswith("_seg_anterior.dcm")
    seg = pydicom.dcmread(written.segmentations[0])
    assert "ReferencedFrameNumber" not in seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0] \
        .SourceImageSequence[0]
    assert list(_segment_masks(written.segmentations[0])) == [BY_NAME["skull"].title]
    png = tmp_path / "plain"
    study = replace(study, meta=replace(study.meta, study_uid=None))  # as read from an image file: no study yet
    written = write_dicom_results(png, study, np.zeros((40, 30, 3), np.uint8), ReadingResult(0.2, False, "youden",
                                  0.5), [], lesions=lesions, hotspot_numbers=np.zeros((2, rows, cols), np.uint16),
                                  lesion_overlay=np.full((50, 40, 3), 200, np.uint8))
    assert written.segmentations == [] and any("no Segmentation" in w for w in written.warnings)
    # Without a DICOM source the results make a new study: the numbered hotspots go into the heat map's.
    studies = {pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
               for path in (written.secondary_capture, written.structured_report, written.hotspots_capture)}
    assert len(studies) == 1


def test_segmentation_of_an_anonymised_source_and_a_refused_one_keeps_the_sc_and_sr(tmp_path, nm1_path,
                                                                                      monkeypatch):
    from bonescan.dicom_out import ReadingResult, write_dicom_results
    from bonescan.io import read_study
    from bonescan.lesions import segmentation
    from bonescan.lesions.hotspots import StudyLesions

    anonymised = pydicom.dcmread(nm1_path)
    removed = ("PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID")
    for keyword in removed:
        if keyword in anonymised:
            delattr(anonymised, keyword)
    source = tmp_path / "anonymised.dcm"
    anonymised.save_as(source)
    study = read_study(source)
    rows, cols = study.anterior.shape
    regions = np.zeros((2, rows, cols), np.uint8)
    regions[:, : rows // 8] = BY_NAME["skull"].label
    lesions = StudyLesions([], regions, 0.0, {}, 0.0, 0.5)
    numbers = np.zeros((2, rows, cols), np.uint16)

    def write(out):
        return write_dicom_results(out, study, np.zeros((40, 30, 3), np.uint8), ReadingResult(0.2, False, "youden",
                                   0.5), [source], lesions=lesions, hotspot_numbers=numbers)

    written = write(tmp_path / "out")
    assert len(written.segmentations) == 1 and written.warnings == []
    seg = pydicom.dcmread(written.segmentations[0])
    assert all(keyword in seg and not seg[keyword].value for keyword in removed)  # Type 2: present, empty
    if DCIODVFY:
        check = subprocess.run([DCIODVFY, "-new", str(written.segmentations[0])], capture_output=True, text=True,
                               timeout=60)
        assert [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")] == []

    def refuses(*args):
        raise ValueError("source image has no pixel spacing")

    monkeypatch.setattr(segmentation, "build_segmentations", refuses)
    written = write(tmp_path / "refused")
    assert written.segmentations == [] and written.structured_report.is_file()
    assert written.warnings == ["no Segmentation written (ValueError: source image has no pixel spacing)"]


def test_hotspots_csv_of_a_sharded_job_is_rebuilt_from_every_study(tmp_path):
    """Two processes each write their share's hotspots.csv into one folder; the merge holds every study, in order."""
    from bonescan.lesions.hotspots import Hotspot, StudyLesions
    from bonescan.lesions.outputs import LesionOutputs, merge_hotspots

    views = np.zeros((64, 32), np.float32), np.zeros((64, 32), np.float32)

    def lesions(n):
        spots = [Hotspot(k + 1, "anterior", (2 * k, 1, 2 * k + 2, 3), (2 * k + 0.5, 1.5), 11.5, "skull",
                         0.3 + 0.2 * k, 1.5, f"1.2.{n}.{k}") for k in range(n)]
        numbers = np.zeros((2, 64, 32), np.uint16)
        for spot in spots:
            numbers[0, spot.box[0]:spot.box[2], 1:3] = spot.number
        return StudyLesions(spots, np.zeros((2, 64, 32), np.uint8), 0.0, {}, 0.5, 0.5), numbers

    single = LesionOutputs(tmp_path / "single")
    shards = [LesionOutputs(tmp_path / "job"), LesionOutputs(tmp_path / "job")]
    files = []
    for index, name in enumerate(["a", "b", "c", "d"]):
        single.write_study(name, *lesions(index % 3 + 1), *views)
        files.append(shards[index % 2].write_study(name, *lesions(index % 3 + 1), *views))
    single.finish()
    for shard in shards:
        shard.finish()  # the second overwrites the first: only its own studies
    assert set(pd.read_csv(tmp_path / "job" / "hotspots.csv")["case_id"]) == {"b", "d"}
    merge_hotspots(files)
    merged = pd.read_csv(tmp_path / "job" / "hotspots.csv")
    pd.testing.assert_frame_equal(merged, pd.read_csv(tmp_path / "single" / "hotspots.csv"))
    assert list(merged["case_id"]) == ["a", "b", "b", "c", "c", "c", "d"] and merged["malignant"].sum() == 3


def test_touching_metastases_are_split_at_their_count_peaks_and_faint_ones_are_still_listed():
    from bonescan.lesions.infer import hotspot_components

    rows, cols = np.mgrid[:40, :20]
    # Two touching foci 8 pixels apart: the metastasis map is one saturated plateau over both, the counts have two
    # maxima (and Poisson noise, which must not split anything else).
    counts = 20 + 200 * np.exp(-((rows - 10) ** 2 + (cols - 10) ** 2) / 8) \
        + 170 * np.exp(-((rows - 18) ** 2 + (cols - 10) ** 2) / 8) \
        + 60 * np.exp(-((rows - 30) ** 2 + (cols - 15) ** 2) / 4)
    counts = np.random.default_rng(0).poisson(counts).astype(np.float32)
    metastasis = np.zeros((40, 20))
    metastasis[7:22, 7:14] = 0.99
    metastasis += 0.3 * np.exp(-((rows - 30) ** 2 + (cols - 15) ** 2) / 4)  # faint: below 0.5, above 0.2
    hot = np.zeros_like(metastasis)
    hot[30:34, 2:6] = 0.9  # a kidney-like blob with no metastasis peak stays whole
    labels, n = hotspot_components(hot, metastasis, counts)
    assert n == 4
    assert labels[10, 10] != labels[18, 10] and labels[10, 10] > 0 and labels[18, 10] > 0
    assert labels[12, 10] == labels[10, 10] and labels[16, 10] == labels[18, 10]  # each pixel to its nearest peak
    assert labels[30, 15] > 0 and len(np.unique(labels[30:34, 2:6])) == 1
    # Without the second focus in the counts the plateau stays one hotspot.
    single = np.random.default_rng(0).poisson(20 + 200 * np.exp(-((rows - 14) ** 2 + (cols - 10) ** 2) / 8))
    assert len(np.unique(hotspot_components(hot, metastasis, single.astype(np.float32))[0][7:22, 7:14])) == 1


def test_a_group_split_at_its_count_peaks_keeps_its_pixels_from_a_neighbours_peak():
    from scipy import ndimage

    from bonescan.lesions.infer import _split_at_count_peaks, count_peaks

    rows, cols = np.mgrid[:40, :20]
    peaks = [(8, 6), (31, 6), (19, 12)]  # two along a bar, one on a small group beside its middle
    counts = (20 + sum(200 * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 40) for r, c in peaks)).astype(np.float32)
    bar = (rows >= 5) & (rows <= 34) & (cols >= 5) & (cols <= 8)
    beside = (rows >= 17) & (rows <= 21) & (cols >= 10) & (cols <= 13)  # one column apart: another group
    candidate = bar | beside
    components, _ = ndimage.label(candidate, structure=np.ones((3, 3), bool))
    found = np.argwhere(count_peaks(counts, components) & candidate)
    assert len(found) == 3 and all(np.abs(found - peak).sum(axis=1).min() <= 1 for peak in peaks)
    labels, n = _split_at_count_peaks(candidate, counts)
    # The bar's middle lies nearer the neighbour's peak than its own: it still goes to its own two peaks.
    assert n == 3 and set(np.unique(labels[bar])) == {labels[8, 6], labels[31, 6]}
    assert (labels[beside] == labels[19, 12]).all() and labels[19, 12] not in (labels[8, 6], labels[31, 6])
    assert (labels[17:20, 5:9] == labels[8, 6]).all() and (labels[22:25, 5:9] == labels[31, 6]).all()

    # Many groups: every pixel of a group with several peaks goes to one of its own nearest peaks.
    rng = np.random.default_rng(3)
    counts = ndimage.gaussian_filter(rng.poisson(rng.uniform(5, 300, (160, 64))).astype(np.float32), 1.0)
    candidate = ndimage.binary_dilation(rng.random((160, 64)) > 0.97, iterations=2)
    components, n_components = ndimage.label(candidate, structure=np.ones((3, 3), bool))
    seeds, _ = ndimage.label(count_peaks(counts, components) & candidate, structure=np.ones((3, 3), bool))
    labels, n = _split_at_count_peaks(candidate, counts)
    assert n > n_components and (labels > 0).sum() == candidate.sum() and set(np.unique(labels)) == set(range(n + 1))
    split = 0
    for component in range(1, n_components + 1):
        own = components == component
        assert len(np.unique(labels[own])) == len(np.unique(seeds[own & (seeds > 0)])) or \
            len(np.unique(seeds[own & (seeds > 0)])) < 2 and len(np.unique(labels[own])) == 1
        peak_pixels = np.argwhere(own & (seeds > 0))
        if len(np.unique(seeds[own & (seeds > 0)])) < 2:
            continue
        split += 1
        for pixel in np.argwhere(own):
            distance = np.hypot(*(peak_pixels - pixel).T)
            assigned = labels[tuple(pixel)] == labels[tuple(peak_pixels.T)]
            assert distance[assigned].min() == distance.min()  # a nearest peak of its own group
    assert split >= 3


def test_a_metastasis_touching_a_kidney_is_its_own_hotspot_with_its_rim():
    from bonescan.lesions.infer import hotspot_components

    rows, cols = np.mgrid[:40, :30]
    counts = (20 + 150 * np.exp(-((rows - 20) ** 2 + (cols - 8) ** 2) / 60)  # kidney
              + 200 * np.exp(-((rows - 20) ** 2 + (cols - 19) ** 2) / 6)).astype(np.float32)  # rib lesion
    kidney = ((rows - 20) ** 2 / 100 + (cols - 8) ** 2 / 25) <= 1
    lesion = ((rows - 20) ** 2 + (cols - 19) ** 2) <= 4  # the metastasis map's core
    rim = (((rows - 20) ** 2 + (cols - 19) ** 2) <= 9) & ~lesion  # hot, not metastatic: the lesion's edge
    bridge = (rows >= 19) & (rows <= 21) & (cols >= 12) & (cols <= 17)  # hot pixels joining the two
    hot = np.where(kidney | lesion | rim | bridge, 0.9, 0.0)
    metastasis = np.where(lesion, 0.95, 0.01)
    labels, n = hotspot_components(hot, metastasis, counts)
    assert n == 2
    assert labels[20, 19] > 0 and labels[20, 8] > 0 and labels[20, 19] != labels[20, 8]
    assert (labels[rim] == labels[20, 19]).all()  # the rim joins the metastasis
    assert (labels[kidney] == labels[20, 8]).all()
    centroid = np.argwhere(labels == labels[20, 19]).mean(axis=0)
    assert np.hypot(*(centroid - (20, 19))) < 1.5  # where the lesion is, not pulled into the kidney


def test_threshold_at_a_false_positive_budget_is_read_off_the_froc_curve():
    from bonescan.evaluate.froc import StudyDetections, froc_curve
    from bonescan.lesions.threshold import threshold_at_fp

    # Two studies: lesions scored 0.9, 0.6, 0.3 (one missed); false positives at 0.95, 0.7, 0.5, 0.2.
    detections = [StudyDetections(np.array([0.9, 0.3]), np.array([0.95, 0.5]), np.array([1, 2])),
                  StudyDetections(np.array([0.6, -np.inf]), np.array([0.7, 0.2]), np.array([1, 2]))]
    curve = froc_curve(detections)
    # <= 1 FP per study allows 2 false positives: down to threshold 0.6 (FPs 0.95, 0.7), 2 of 4 lesions found.
    assert threshold_at_fp(curve, 1.0) == pytest.approx((0.6, 0.5, 1.0))
    assert threshold_at_fp(curve, 0.5) == pytest.approx((0.9, 0.25, 0.5))
    assert threshold_at_fp(curve, 0.1) == (1.0, 0.0, 0.0)  # the first false positive outscores every lesion


def test_frozen_threshold_is_used_by_the_loaded_run_and_bad_files_are_named(lesion_setup, capsys):
    from bonescan.cli import main
    from bonescan.lesions.threshold import THRESHOLD_FILE, freeze_malignancy_threshold

    folder, manifest_path, manifest, _, _ = lesion_setup
    run = folder / "lesion-run"
    assert load_lesion_run(run).threshold == 0.5  # nothing frozen yet
    assert main(["lesions", "threshold", "--run", str(run), "--manifest", str(manifest_path)]) == 0
    assert "malignancy threshold" in capsys.readouterr().out
    record = json.loads((run / THRESHOLD_FILE).read_text())
    try:
        assert record["n_studies"] == 2 and record["fp_per_study_there"] <= 1.0
        assert record["precision"] == load_lesion_run(run).precision.name  # the maps it was chosen on
        assert load_lesion_run(run).threshold == pytest.approx(record["malignancy_threshold"])
        assert load_lesion_run(run).outline_threshold == pytest.approx(record["malignancy_threshold"])
        (run / THRESHOLD_FILE).write_text('{"malignancy_threshold": 3}')
        with pytest.raises(RunError, match="not a probability"):
            load_lesion_run(run)
        (run / THRESHOLD_FILE).write_text('{"malignancy_threshold": 0.4, "rescored": true, "outline_threshold": -1}')
        with pytest.raises(RunError, match="outline threshold -1 is not a probability"):
            load_lesion_run(run)
        (run / THRESHOLD_FILE).write_text('[0.4]')
        with pytest.raises(RunError, match="not a JSON object"):
            load_lesion_run(run)
    finally:
        (run / THRESHOLD_FILE).unlink()
    with pytest.raises(ManifestError, match="lesion truth"):
        freeze_malignancy_threshold(run, manifest.drop(columns=["truth"]), "val")


def test_flip_averaged_maps_are_the_same_for_a_study_and_its_mirror_image(lesion_setup):
    from dataclasses import replace

    folder, _, _, _, _ = lesion_setup
    plain = load_lesion_run(folder / "lesion-run", precision="fp32")  # the arithmetic, to fp32's precision
    averaged = replace(plain, flip_average=True)
    studies = np.random.default_rng(0).gamma(2.0, 1.0, (3, 2, 64, 32)).astype(np.float32)
    mirror = studies[..., ::-1].copy()
    maps, maps_of_mirror = averaged.maps(studies), averaged.maps(mirror)
    # A mirrored body's averaged probabilities are its own, mirrored; its left regions are the right ones.
    np.testing.assert_allclose(maps[:, :, 1:], maps_of_mirror[:, :, 1:, :, ::-1], atol=1e-5)
    swapped = FLIP_LABELS[maps_of_mirror[:, :, 0, :, ::-1].astype(np.int64)]
    assert (swapped == maps[:, :, 0]).mean() > 0.999  # up to ties between two classes' averaged scores
    # and the average lies between the two passes, which the plain network does not make alike
    once, once_mirrored = plain.maps(studies), plain.maps(mirror)[..., ::-1]
    assert np.abs(once[:, :, 1:] - once_mirrored[:, :, 1:]).max() > 1e-3
    np.testing.assert_allclose(maps[:, :, 1:], (once[:, :, 1:] + once_mirrored[:, :, 1:]) / 2, atol=1e-5)


@pytest.fixture
def run_settings(lesion_setup):
    """The shared lesion run, whose malignancy threshold record and rescorer files the test may write: removed when
    the test ends, and by `clear()`."""
    from bonescan.lesions.rescore import RESCORER_FILE, RESCORER_INFO
    from bonescan.lesions.threshold import THRESHOLD_FILE

    run = lesion_setup[0] / "lesion-run"
    written = [run / RESCORER_FILE, run / RESCORER_INFO, run / THRESHOLD_FILE]

    def clear() -> None:
        for path in written:
            path.unlink(missing_ok=True)

    yield SimpleNamespace(run=run, rescorer=written[0], clear=clear)
    clear()


def test_flip_averaging_is_frozen_with_the_threshold_and_a_rescorer_fitted_on_other_maps_is_refused(
        lesion_setup, run_settings, capsys):
    from bonescan.cli import main
    from bonescan.lesions.rescore import RESCORER_INFO
    from bonescan.lesions.threshold import THRESHOLD_FILE

    folder, manifest_path, _, _, _ = lesion_setup
    run = run_settings.run  # its threshold record and rescorer are removed after the test
    assert main(["lesions", "threshold", "--run", str(run), "--manifest", str(manifest_path),
                 "--flip-average"]) == 0
    assert "averaged with the mirrored study" in capsys.readouterr().out
    assert json.loads((run / THRESHOLD_FILE).read_text())["flip_average"] is True
    assert load_lesion_run(run).flip_average and not load_lesion_run(run, flip_average=False).flip_average
    # the rescorer is fitted on the run's averaged maps, and the threshold frozen again keeps them
    assert main(["lesions", "rescorer", "--run", str(run), "--manifest", str(manifest_path), "--split", "val"]) == 0
    assert json.loads((run / RESCORER_INFO).read_text())["flip_average"] is True
    assert load_lesion_run(run).flip_average and load_lesion_run(run).rescorer is not None
    # plain maps under a rescorer fitted on averaged ones: refused, naming the fix
    assert main(["lesions", "threshold", "--run", str(run), "--manifest", str(manifest_path),
                 "--no-flip-average"]) == 2
    assert "bonescan lesions rescorer --no-flip-average" in capsys.readouterr().err
    assert json.loads((run / THRESHOLD_FILE).read_text())["flip_average"] is True  # nothing written
    (run / THRESHOLD_FILE).write_text('{"malignancy_threshold": 0.4, "flip_average": "yes"}')
    with pytest.raises(RunError, match="flip_average 'yes' is not true or false"):
        load_lesion_run(run)
    run_settings.clear()
    assert not load_lesion_run(run).flip_average  # runs without the record keep the plain maps


def test_threshold_and_rescorer_name_the_precision_of_their_maps_and_a_run_made_in_another_says_so(
        lesion_setup, run_settings, capsys, tmp_path):
    from bonescan.cli import main
    from bonescan.lesions.rescore import RESCORER_INFO
    from bonescan.lesions.threshold import THRESHOLD_FILE

    folder, manifest_path, _, _, _ = lesion_setup
    run = run_settings.run  # its threshold record and rescorer are removed after the test
    # chosen on bf16 maps (native or emulated: the record is what is tested)
    assert main(["lesions", "threshold", "--run", str(run), "--manifest", str(manifest_path),
                 "--precision", "bf16"]) == 0
    assert "; bf16 maps" in capsys.readouterr().out
    assert json.loads((run / THRESHOLD_FILE).read_text())["precision"] == "bf16"
    assert load_lesion_run(run, precision="bf16").notes == ()
    (note,) = load_lesion_run(run, precision="fp32").notes
    assert "maps are made in fp32 here, but its malignancy threshold was chosen on bf16 maps" in note
    assert f"bonescan lesions threshold --run {run} --manifest MANIFEST --precision fp32" in note
    # predict passes it on, as a warning, and still predicts
    assert main(["predict", "--run", str(folder / "classifier"), "--manifest", str(manifest_path), "--split",
                 "val", "--engine", "torch", "--precision", "fp32", "--lesions", str(run), "--lesions-out",
                 str(tmp_path / "lesions"), "--out", str(tmp_path / "predictions.csv")]) == 0
    assert f"bonescan: warning: {note}" in capsys.readouterr().err
    # the rescorer fitted on fp32 maps freezes the threshold on them too; bf16 maps then name the rescorer
    assert main(["lesions", "rescorer", "--run", str(run), "--manifest", str(manifest_path), "--split", "train",
                 "--precision", "fp32"]) == 0
    assert json.loads((run / RESCORER_INFO).read_text())["precision"] == "fp32"
    assert json.loads((run / THRESHOLD_FILE).read_text())["precision"] == "fp32"
    assert load_lesion_run(run, precision="fp32").notes == ()
    (note,) = load_lesion_run(run, precision="bf16").notes
    assert ("malignancy threshold was chosen on fp32 maps and its hotspot rescorer fitted on fp32 maps" in note
            and "bonescan lesions rescorer --run" in note)
    assert main(["lesions", "threshold", "--run", str(run), "--manifest", str(manifest_path),
                 "--precision", "fp8"]) == 2
    assert "unknown precision 'fp8'" in capsys.readouterr().err
    (run / THRESHOLD_FILE).write_text('{"malignancy_threshold": 0.4, "precision": "fp8"}')
    with pytest.raises(RunError, match="precision 'fp8' is not one of fp32, bf16, fp16"):
        load_lesion_run(run)
    run_settings.clear()
    assert load_lesion_run(run, precision="fp32").notes == ()  # nothing recorded, nothing to say


def test_a_threshold_chosen_before_hotspots_were_reported_once_per_focus_asks_to_be_chosen_again(
        lesion_setup, run_settings, capsys):
    from bonescan.cli import main
    from bonescan.lesions.threshold import THRESHOLD_FILE

    _, manifest_path, _, _, _ = lesion_setup
    run = run_settings.run  # its threshold record is removed after the test
    assert main(["lesions", "threshold", "--run", str(run), "--manifest", str(manifest_path),
                 "--precision", "fp32"]) == 0
    record = json.loads((run / THRESHOLD_FILE).read_text())
    assert record["hotspots"] == "one per focus"
    assert load_lesion_run(run, precision="fp32").notes == ()
    del record["hotspots"]  # a record written before the rule
    (run / THRESHOLD_FILE).write_text(json.dumps(record))
    (note,) = load_lesion_run(run, precision="fp32").notes
    assert "chosen before hotspots were reported once per focus" in note
    assert f"bonescan lesions threshold --run {run} --manifest MANIFEST" in note
    assert load_lesion_run(run, precision="fp32").threshold == pytest.approx(record["malignancy_threshold"])


def test_rescorer_is_fitted_from_the_cli_then_used_by_the_loaded_run_and_unreadable_studies_are_listed(
        lesion_setup, run_settings, capsys, tmp_path):
    from bonescan.cli import main
    from bonescan.lesions.rescore import RESCORER_INFO
    from bonescan.lesions.threshold import THRESHOLD_FILE

    folder, manifest_path, manifest, _, _ = lesion_setup
    run = run_settings.run  # its threshold record and rescorer are removed after the test
    (run / THRESHOLD_FILE).write_text('{"malignancy_threshold": 0.7, "rescored": false}')  # the network's own
    # the two validation studies (the tiny network lists thousands of candidates per study: few studies)
    assert main(["lesions", "rescorer", "--run", str(run), "--manifest", str(manifest_path), "--split", "val"]) == 0
    captured = capsys.readouterr()
    assert "rescorer fitted on 2 studies" in captured.out and "(rescored)" in captured.out
    assert "studies the rescorer was fitted on" in captured.err  # the same studies chose the threshold
    loaded = load_lesion_run(run)
    record = json.loads((run / THRESHOLD_FILE).read_text())
    assert loaded.rescorer is not None and record["rescored"] is True
    # the network's threshold still outlines malignant hotspots for the BSI
    assert record["outline_threshold"] == loaded.outline_threshold == 0.7
    info = json.loads((run / RESCORER_INFO).read_text())
    assert info["n_studies"] == 2 and 0 < info["n_on_metastases"] < info["n_candidates"]
    # every hotspot's malignancy is now the rescorer's
    report = predict_studies(folder / "classifier", manifest=manifest_path, split="val", engine="torch",
                             lesions=run, lesions_out=tmp_path / "predict")
    assert report.ok, [s.error for s in report.failures]
    # an unreadable study is named and left out, the others still fit; exit code 2
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not a DICOM file")
    table = load_manifest(manifest_path)  # paths made absolute
    first = table.index[table["path"].notna() & (table["split"] == "train")][0]
    table.loc[first, ["path", "split"]] = [str(broken), "val"]  # a third validation study, unreadable
    table.to_csv(tmp_path / "with_broken.csv", index=False)
    assert main(["lesions", "rescorer", "--run", str(run), "--manifest", str(tmp_path / "with_broken.csv"),
                 "--split", "val", "--threshold-manifest", str(manifest_path)]) == 2
    captured = capsys.readouterr()
    assert f"left out {table.loc[first, 'case_id']}" in captured.err
    assert "rescorer fitted on 2 studies" in captured.out
    assert load_lesion_run(run).outline_threshold == 0.7  # kept through a second fit
    run_settings.clear()
    assert main(["lesions", "rescorer", "--run", str(run), "--manifest", str(manifest_path.parent / "none.csv")]) == 2
    without_truth = manifest.drop(columns=["truth"])
    without_truth.to_csv(tmp_path / "no_truth.csv", index=False)
    assert main(["lesions", "rescorer", "--run", str(run), "--manifest", str(tmp_path / "no_truth.csv")]) == 2
    assert "lesion truth" in capsys.readouterr().err
    assert not (run / RESCORER_INFO).exists() and not run_settings.rescorer.exists()


def test_overlay_outlines_malignant_hotspots_red_and_others_blue_including_shared_borders():
    from types import SimpleNamespace

    from bonescan.lesions.outputs import _contours

    numbers = np.zeros((20, 20), np.int64)
    numbers[2:8, 2:8] = 1
    numbers[2:8, 8:14] = 2  # a split piece touching hotspot 1
    red, blue = _contours(numbers, {1: SimpleNamespace(malignancy=0.9), 2: SimpleNamespace(malignancy=0.1)}, 0.5)
    assert red[2, 2] and red[5, 7] and not blue[2, 2] and not blue[5, 7]
    assert blue[5, 8] and blue[7, 13] and not red[5, 8]
    assert not (red | blue)[5, 5] and not (red | blue)[5, 10] and not (red | blue)[15, 15]  # insides, background


def test_overlay_outlines_are_the_pixels_a_3x3_erosion_or_dilation_changes():
    from types import SimpleNamespace

    from scipy import ndimage

    from bonescan.lesions.outputs import _contours

    rng = np.random.default_rng(3)
    hotspots = {k: SimpleNamespace(malignancy=0.9 if k % 2 else 0.1) for k in range(1, 12)}
    for _ in range(50):  # touching, overlapping and border-cut boxes of random sizes
        numbers = np.zeros(rng.integers(3, 50, 2), np.uint16)
        for k in range(1, 12):
            row, col = rng.integers(0, numbers.shape[0]), rng.integers(0, numbers.shape[1])
            numbers[row:row + rng.integers(1, 9), col:col + rng.integers(1, 9)] = k
        wide = numbers.astype(np.int64)
        changed = (ndimage.grey_erosion(wide, size=3) != wide) | (ndimage.grey_dilation(wide, size=3) != wide)
        edge = (wide > 0) & changed
        red, blue = _contours(numbers, hotspots, 0.5)
        assert np.array_equal(red | blue, edge) and not (red & blue).any()
        assert np.array_equal(red, edge & (numbers % 2 == 1))


def test_overlay_is_a_palette_image_of_grey_counts_and_coloured_outlines_that_its_png_keeps(tmp_path):
    from PIL import Image

    from bonescan.heatmap import write_png
    from bonescan.lesions.hotspots import Hotspot, StudyLesions
    from bonescan.lesions.outputs import _MARGIN, _TOP, render_lesions

    rng = np.random.default_rng(5)
    anterior, posterior = (rng.poisson(50.0, (80, 40)).astype(np.float32) for _ in range(2))
    anterior[70, 5], anterior[70, 30] = 500.0, 0.0
    numbers = np.zeros((2, 80, 40), np.uint16)
    numbers[0, 10:16, 5:11] = 1
    numbers[1, 50:60, 20:30] = 2
    hotspots = [Hotspot(1, "anterior", (10, 5, 16, 11), (12.5, 7.5), 86.0, "skull", 0.9, 2.0, "1.2.3"),
                Hotspot(2, "posterior", (50, 20, 60, 30), (54.5, 24.5), 576.0, "pelvis", 0.2, 1.5, "1.2.4")]
    lesions = StudyLesions(hotspots, np.zeros((2, 80, 40), np.uint8), 0.4, {"skull": 0.4}, 0.9, 0.5)
    overlay = render_lesions(anterior, posterior, lesions, numbers, "case 7")
    assert overlay.mode == "P" and overlay.size == (2 * 40 + 2 * _MARGIN + 20, 80 + _TOP + 90)
    rgb = np.asarray(overlay.convert("RGB")).astype(int)
    posterior_left = _MARGIN + 40 + 20
    assert tuple(rgb[_TOP + 10, _MARGIN + 5]) == (214, 39, 40)  # the malignant hotspot's corner: red
    assert tuple(rgb[_TOP + 50, posterior_left + 20]) == (31, 119, 180)  # the other's: blue
    inside, background = rgb[_TOP + 13, _MARGIN + 8], rgb[_TOP + 70, _MARGIN + 35]
    assert inside[0] == inside[1] == inside[2] and background[0] == background[1] == background[2]
    # counts shown inverted, as read: the hottest pixel black, an empty one white
    assert tuple(rgb[_TOP + 70, _MARGIN + 5]) == (0, 0, 0) and tuple(rgb[_TOP + 70, _MARGIN + 30]) == (255, 255, 255)
    path = write_png(tmp_path / "overlay.png", overlay)
    with Image.open(path) as written:
        assert written.mode == "P" and np.array_equal(np.asarray(written.convert("RGB")), rgb.astype(np.uint8))


def test_count_peaks_per_component_window_equal_the_whole_view():
    from scipy import ndimage

    from bonescan.lesions.infer import PeakSettings, count_peaks

    rng = np.random.default_rng(7)
    counts = rng.poisson(rng.uniform(5, 200, (120, 60))).astype(np.float32)
    components, _ = ndimage.label(rng.random((120, 60)) > 0.97, structure=np.ones((3, 3), bool))
    components[0:4, 0:5] = components.max() + 1  # one at the image corner: the border reflects alike
    boxes = np.zeros(counts.shape, bool)
    for box in ndimage.find_objects(components):
        boxes[box] = True
    # at the stored pixel's settings and at the network pixel's (twice as large: half the reach in pixels)
    for settings in (PeakSettings(), PeakSettings.at(4.8)):
        smooth = ndimage.gaussian_filter(counts, settings.smoothing)
        whole = smooth >= ndimage.maximum_filter(smooth, size=2 * settings.distance + 1)
        windowed = count_peaks(counts, components, settings=settings)
        assert np.array_equal(windowed[boxes], whole[boxes]) and not windowed[~boxes].any()
        assert windowed.any()
    assert (PeakSettings().smoothing, PeakSettings().distance) == (2.0, 3)
    assert (PeakSettings.at(4.8).smoothing, PeakSettings.at(4.8).distance) == (1.0, 1)


def test_rim_labels_per_window_equal_the_whole_view_distance_transform():
    from scipy import ndimage

    from bonescan.lesions.infer import nearest_label_within

    rng = np.random.default_rng(1)
    labels, _ = ndimage.label(rng.random((200, 80)) > 0.985, structure=np.ones((3, 3), bool))
    labels = ndimage.grey_dilation(labels, size=(2, 2)).astype(np.int32)
    labels[0:3, 0:3] = labels.max() + 1  # one at the corner
    pixels = rng.random((200, 80)) > 0.3
    windowed = nearest_label_within(labels, pixels, 2.0)
    distance, (near_r, near_c) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    whole = np.where(pixels & (distance <= 2.0), labels[near_r, near_c], 0)
    assert (whole > 0).sum() > 100 and np.array_equal(windowed > 0, whole > 0)
    for row, col in np.argwhere(windowed != whole):  # only where two labels are equally near
        a, b = (np.hypot(*(np.argwhere(labels == k) - (row, col)).T).min() for k in (windowed[row, col],
                                                                                      whole[row, col]))
        assert a == pytest.approx(b)


def test_a_study_from_a_camera_a_run_never_saw_is_flagged_and_still_predicted(lesion_setup, tmp_path):
    from contextlib import contextmanager

    from bonescan.cameras import CameraCheck
    from bonescan.study import StudyMeta

    folder, manifest_path, manifest, _, _ = lesion_setup
    # training recorded the cameras of its training studies (the generic phantom's header)
    record = json.loads((folder / "lesion-run" / "config.json").read_text())
    assert record["manifest"]["cameras"] == {"bonescan synthetic phantom": int((manifest["split"] == "train").sum())}

    @contextmanager
    def recorded(run: str, cameras: dict):
        """The run's record names other cameras while the block runs; its own text is put back after."""
        config = folder / run / "config.json"
        original = config.read_text()
        changed = json.loads(original)
        changed["manifest"]["cameras"] = cameras
        config.write_text(json.dumps(changed))
        try:
            yield
        finally:
            config.write_text(original)

    def predicted_warnings(out: str | None) -> list[str]:
        lesions = {} if out is None else {"lesions": folder / "lesion-run", "lesions_out": tmp_path / out}
        report = predict_studies(folder / "classifier", manifest=manifest_path, split="val", engine="torch", **lesions)
        assert report.ok and len(report.studies) == 2
        return ["; ".join(study.warnings) for study in report.studies]

    assert not any("not among" in line for line in predicted_warnings("seen"))
    with recorded("lesion-run", {"GE Healthcare Discovery NM/CT 670": 9, "unknown": 1}):
        flagged = predicted_warnings("unseen")
    assert all("camera 'bonescan synthetic phantom' is not among those of the training studies of lesion-run "
               "(GE Healthcare Discovery NM/CT 670 (9), unknown (1))" in line for line in flagged)
    assert CameraCheck.of_run(folder / "lesion-run").unseen(StudyMeta(manufacturer="bonescan synthetic",
                                                                      model="phantom")) is None
    # the classifier's run is checked the same way, with or without a lesion run
    with recorded("classifier", {"SIEMENS NM Symbia T2": 3}):
        flagged = predicted_warnings(None)
    assert all("training studies of classifier (SIEMENS NM Symbia T2 (3))" in line for line in flagged)


def test_bench_lesions_times_the_step_with_its_files_and_reports_its_parts(lesion_setup, tmp_path):
    from bonescan.lesions.bench import benchmark_lesions

    folder, _, _, _, _ = lesion_setup
    said = []
    bench = benchmark_lesions(folder / "lesion-run", folder / "classifier", cases=4, batch_size=2, parts_cases=2,
                              data=tmp_path / "data", progress=said.append, rounds=2)
    assert bench.cases == 4 and bench.failed == 0 and bench.parts_cases == 2
    assert bench.lesion_step > 0 and bench.network > 0 and bench.hotspots > 0 and bench.files > 0
    assert bench.rescorer is None and bench.lesion_precision in ("fp32", "bf16")
    # one ratio per interleaved round, the reported one their median
    assert len(bench.ratios) == 2 and all(ratio > 0 for ratio in bench.ratios)
    assert min(bench.ratios) <= bench.ratio <= max(bench.ratios)
    lines = "\n".join(bench.lines())
    assert "lesion step as predict runs it" in lines and "files (overlay, JSON, label maps)" in lines
    assert "medians of 2 rounds" in lines and sum("round" in message for message in said) >= 2
    assert any("its parts" in message for message in said)
