"""`bonescan evaluate` with lesion outputs: truth files, perturbed truth as predictions, the report's lesion section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bonescan.cli import main
from bonescan.evaluate.lesion_pipeline import (
    LesionInputs,
    _bone_levels,
    _lesion_attributes,
    _malignant_dice,
    evaluate_lesions,
    find_lesion_inputs,
)
from bonescan.lesions.bsi import bone_scan_index
from bonescan.lesions.regions import BY_NAME
from bonescan.lesions.truth import LesionTruth, load_truth, save_truth

H, W = 256, 64
SPOTS = [(60, 32, "thoracic_spine"), (100, 32, "thoracic_spine"), (150, 20, "pelvis"), (30, 32, "skull")]


def _regions() -> np.ndarray:
    regions = np.zeros((2, H, W), np.uint8)
    regions[:, 10:45, 20:44] = BY_NAME["skull"].label
    regions[:, 50:130, 26:38] = BY_NAME["thoracic_spine"].label
    regions[:, 140:170, 10:54] = BY_NAME["pelvis"].label
    regions[:, 175:250, 14:24] = BY_NAME["femur_right"].label
    return regions


def _study(i: int, rng: np.random.Generator):
    """Truth (metastases at some of SPOTS, a bladder), images, and a lesion reading that finds some of them."""
    regions = _regions()
    instances = np.zeros((2, H, W), np.uint16)
    n_mets = i % 4  # 0..3 metastases
    category, kind, region = [], [], []
    spots = []
    for k in range(n_mets):
        r, c, name = SPOTS[k]
        instances[0, r - 2:r + 3, c - 2:c + 3] = k + 1
        instances[1, r - 2:r + 3, W - 1 - c - 2:W - 1 - c + 3] = k + 1  # posterior, as seen from behind
        category.append("metastasis"), kind.append("metastasis"), region.append(name)
        spots.append((r, c))
    instances[0, 165:172, 28:36] = len(category) + 1
    category.append("physiological"), kind.append("bladder"), region.append("")
    truth = LesionTruth(regions, instances, category, kind, region)
    images = np.where(regions > 0, 10.0, 1.0).astype(np.float32)
    images[instances > 0] = 40.0
    hotspots = []
    for k, (r, c) in enumerate(spots):
        if (i + k) % 5 == 4:
            continue  # missed
        hotspots.append({"view": "anterior", "centroid": [r + rng.uniform(-1, 1), c + rng.uniform(-1, 1)],
                         "malignancy": float(rng.uniform(0.55, 0.99))})
        if k == 0:  # the same lesion from behind: no second hit, no false positive
            hotspots.append({"view": "posterior", "centroid": [r, W - 1 - c], "malignancy": 0.5})
    hotspots.append({"view": "anterior", "centroid": [168, 32], "malignancy": float(rng.uniform(0.05, 0.6))})
    predicted_regions = regions.copy()
    predicted_regions[:, 50:54, 26:38] = 0  # a few rows of thoracic spine missed
    malignant = truth.malignant_mask()
    bsi = bone_scan_index(regions, malignant)[0]
    detail = {"n_hotspots": len(hotspots), "n_malignant": sum(h["malignancy"] >= 0.5 for h in hotspots),
              "bsi": bsi * float(rng.uniform(0.9, 1.1)), "bsi_by_region": {},
              "probability_from_lesions": float(min(1.0, bsi)), "malignancy_threshold": 0.5,
              "hotspots": [dict(h, number=n + 1) for n, h in enumerate(hotspots)]}
    return truth, images, detail, predicted_regions


def _write_cohort(tmp_path: Path, n: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = tmp_path / "pred"
    (out / "lesions").mkdir(parents=True)
    (tmp_path / "truth").mkdir()
    (tmp_path / "images").mkdir()
    rows, preds, details = [], [], {}
    for i in range(n):
        case_id = f"s{i:02d}"
        truth, images, detail, predicted_regions = _study(i, rng)
        save_truth(truth, tmp_path / "truth" / f"{case_id}.npz")
        for v, view in enumerate(("ant", "post")):
            np.save(tmp_path / "images" / f"{case_id}_{view}.npy", images[v])
        (out / "lesions" / f"{case_id}.json").write_text(json.dumps(detail))
        hotspot_map = np.zeros((2, H, W), np.uint16)
        for spot in detail["hotspots"]:
            r, c = (int(round(v)) for v in spot["centroid"])
            hotspot_map[("anterior", "posterior").index(spot["view"]), r - 2:r + 3, c - 2:c + 3] = spot["number"]
        np.savez_compressed(out / "lesions" / f"{case_id}.npz", regions=predicted_regions, hotspots=hotspot_map)
        label = int(any(c == "metastasis" for c in truth.category))
        rows.append({"case_id": case_id, "anterior": f"images/{case_id}_ant.npy",
                     "posterior": f"images/{case_id}_post.npy", "cancer_type": "prostate", "sex": "M", "age": 70,
                     "label": label, "split": "test" if i % 3 else "val", "truth": f"truth/{case_id}.npz"})
        preds.append({"case_id": case_id, "probability": float(np.clip(0.3 + 0.4 * label + rng.normal(0, 0.2),
                                                                       0, 1)),
                      "bsi": detail["bsi"], "n_malignant": detail["n_malignant"],
                      "probability_from_lesions": detail["probability_from_lesions"]})
        details[case_id] = detail
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    pd.DataFrame(preds).to_csv(out / "predictions.csv", index=False)
    return manifest, out / "predictions.csv", details


def _expected_found(details: dict, cases: list[str], threshold: float) -> tuple[int, int, int]:
    """(lesions, found, false positives) counted from the construction of _study."""
    lesions = found = fps = 0
    for case_id in cases:
        i = int(case_id[1:])
        lesions += i % 4
        anterior = [h for h in details[case_id]["hotspots"] if h["view"] == "anterior"]
        found += sum(h["malignancy"] >= threshold for h in anterior[:-1])
        fps += anterior[-1]["malignancy"] >= threshold
    return lesions, found, fps


def test_evaluate_adds_the_lesion_section(tmp_path, capsys):
    manifest, predictions, details = _write_cohort(tmp_path)
    out = tmp_path / "eval"
    code = main(["evaluate", "--predictions", str(predictions), "--manifest", str(manifest), "--out", str(out),
                 "--bootstrap", "100", "--max-errors", "0"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    metrics = json.loads((out / "metrics.json").read_text())["lesions"]
    test_cases = [f"s{i:02d}" for i in range(24) if i % 3]
    n_lesions, found, fps = _expected_found(details, test_cases, 0.5)
    assert metrics["n_studies"] == len(test_cases) and metrics["n_lesions"] == n_lesions
    at = metrics["at_threshold"]
    assert (at["sensitivity"]["x"], at["sensitivity"]["n"]) == (found, n_lesions)
    assert at["false_positives"] == fps and set(at["false_positives_on"]) <= {"physiological"}
    # every lesion that is found at all has malignancy >= 0.55 while the bladder's is below 0.6
    assert metrics["sensitivity_at_fp"][-1]["sensitivity"] == pytest.approx(found / n_lesions)
    by_region = metrics["sensitivity_by"]["region"]
    assert sum(v["n"] for v in by_region.values()) == n_lesions and "thoracic_spine" in by_region
    assert set(metrics["sensitivity_by"]["size"]) == {"unknown"}  # .npy images carry no pixel spacing
    assert set(metrics["sensitivity_by"]["contrast"]) == {">= 3"}  # 40 counts on bone of 10
    assert set(metrics["sensitivity_by"]["visibility"]) == {"SNR >= 15"}  # 25 pixels x 30 / sqrt(25 x 10) = 47
    assert metrics["n_instances"] == n_lesions  # no two metastases touch here
    dice = metrics["dice"]["by_region"]
    assert dice["skull"]["mean"] == pytest.approx(1.0)
    assert dice["thoracic_spine"]["mean"] == pytest.approx(2 * 76 / (80 + 76))
    assert dice["ribs_left"]["n"] == 0
    assert metrics["bsi"]["pearson_r"] > 0.95 and metrics["bsi"]["loa_low"] < metrics["bsi"]["bias"]
    assert metrics["counts"]["n"] == len(test_cases)
    # Per patient: called with >= 1 malignant hotspot; located when one of them hits a metastasis (the last hotspot
    # of each study is the bladder's).
    metastatic = [c for c in test_cases if int(c[1:]) % 4]
    free = [c for c in test_cases if not int(c[1:]) % 4]
    per_patient = metrics["per_patient"]
    called = sum(details[c]["n_malignant"] > 0 for c in metastatic)
    located = sum(any(h["malignancy"] >= 0.5 for h in details[c]["hotspots"][:-1]) for c in metastatic)
    cleared = sum(details[c]["n_malignant"] == 0 for c in free)
    assert (per_patient["sensitivity"]["x"], per_patient["sensitivity"]["n"]) == (called, len(metastatic))
    assert (per_patient["located"]["x"], per_patient["located"]["n"]) == (located, len(metastatic))
    assert (per_patient["specificity"]["x"], per_patient["specificity"]["n"]) == (cleared, len(free))
    assert (f"per patient (>= 1 malignant hotspot): sensitivity {called}/{len(metastatic)}, specificity "
            f"{cleared}/{len(free)}") in printed.out
    with_mets = sum(int(c[1:]) % 4 > 0 for c in test_cases)  # studies without either are not scored
    assert 0.3 < metrics["malignant_dice"]["mean"] < 1.0
    assert with_mets <= metrics["malignant_dice"]["n_studies"] <= len(test_cases)
    assert set(metrics["roc"]["auc"]) == {"classifier", "BSI", "lesion probability"}
    assert metrics["roc"]["versus_classifier"]["BSI"]["p_value"] is not None
    html = (out / "report.html").read_text()
    for text in ("Lesions: hotspots, skeletal regions and BSI", 'alt="FROC curve"', "Bland–Altman",
                 'alt="ROC of the classifier, BSI and lesion probability"', "thoracic spine", "Per patient",
                 "per outlined metastasis", "Visibility: Rose's signal-to-noise ratio"):
        assert text in html
    assert metrics["by_site"] == {} and "Per acquisition site" not in html
    # Studies from two cameras: detection per site in metrics.json and the report.
    pd.read_csv(manifest).assign(site=lambda m: np.where(np.arange(len(m)) % 2, "camera B", "camera A")) \
        .to_csv(manifest, index=False)
    assert main(["evaluate", "--predictions", str(predictions), "--manifest", str(manifest), "--out",
                 str(tmp_path / "by-site"), "--bootstrap", "100", "--max-errors", "0"]) == 0
    assert "lesions at camera B:" in capsys.readouterr().out
    by_site = json.loads((tmp_path / "by-site" / "metrics.json").read_text())["lesions"]["by_site"]
    assert list(by_site) == ["camera A", "camera B"]
    assert sum(row["n_lesions"] for row in by_site.values()) == n_lesions
    assert sum(row["sensitivity"]["x"] for row in by_site.values()) == found
    assert "Per acquisition site" in (tmp_path / "by-site" / "report.html").read_text()
    # A site whose studies hold no metastasis has no sensitivity to print: said so, not a crash.
    pd.read_csv(manifest).assign(site=lambda m: np.where(m["case_id"].str[1:].astype(int) % 4, "camera A",
                                                         "camera C")).to_csv(manifest, index=False)
    assert main(["evaluate", "--predictions", str(predictions), "--manifest", str(manifest), "--out",
                 str(tmp_path / "by-site-2"), "--bootstrap", "100", "--max-errors", "0"]) == 0
    assert f"lesions at camera C: {len(free)} studies, no metastases to find" in capsys.readouterr().out


def test_without_lesion_outputs_evaluate_is_unchanged(tmp_path, capsys):
    manifest, predictions, _ = _write_cohort(tmp_path, n=12)
    assert find_lesion_inputs(predictions, None) is None
    (predictions.parent / "lesions").rename(tmp_path / "elsewhere")
    assert find_lesion_inputs(predictions, manifest) is None
    out = tmp_path / "eval"
    assert main(["evaluate", "--predictions", str(predictions), "--manifest", str(manifest), "--out", str(out),
                 "--no-report"]) == 0, capsys.readouterr().err
    assert "lesions" not in json.loads((out / "metrics.json").read_text())
    # asked for explicitly, a folder that does not exist is refused with one line
    assert main(["evaluate", "--predictions", str(predictions), "--manifest", str(manifest), "--out", str(out),
                 "--lesions", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path), "--manifest", str(manifest), "--out", str(out),
                 "--lesions", str(predictions.parent)]) == 2
    assert "--lesions" in capsys.readouterr().err


def test_studies_with_broken_or_missing_outputs_are_left_out_and_named(tmp_path):
    manifest, predictions, _ = _write_cohort(tmp_path, n=12)
    lesions = predictions.parent / "lesions"
    (lesions / "s01.json").unlink()
    (lesions / "s02.json").write_text("{not json")
    region_only = load_truth(tmp_path / "truth" / "s03.npz")
    region_only.has_findings = False
    save_truth(region_only, tmp_path / "truth" / "s03.npz")
    frame = pd.read_csv(predictions).assign(label=0)
    result = evaluate_lesions(frame, find_lesion_inputs(predictions, manifest), n_boot=20)
    assert result.metrics["n_studies"] == 9 and result.metrics["dice"]["n_studies"] == 10
    assert any("1 stud(ies) have region-only truth" in w for w in result.warnings)
    assert set(result.metrics["failures"]) == {"s01", "s02"}
    assert any("2 stud(ies) left out" in w and "s01.json" in w for w in result.warnings)


def test_lesion_size_and_contrast_from_the_truth_and_the_image():
    regions = _regions()
    instances = np.zeros((2, H, W), np.uint16)
    instances[0, 60:64, 30:34] = 1  # 16 px anterior
    instances[1, 60:66, 30:36] = 1  # 36 px posterior: the larger view gives the size
    truth = LesionTruth(regions, instances, ["metastasis"], ["metastasis"], [""])
    images = np.where(regions > 0, 10.0, 1.0)
    images[0][instances[0] == 1] = 25.0  # contrast 2.5 anterior
    images[1][instances[1] == 1] = 35.0  # 3.5 posterior: the higher one counts
    pair = (images[0], images[1])
    region, size, contrast, visibility = _lesion_attributes(truth, instances, 1, pair, (2.4, 2.4),
                                                            _bone_levels(truth, pair))
    assert region == "thoracic_spine"  # from the region map under the lesion, the truth naming none
    assert size == "10-20 mm"  # 2 sqrt(36 * 2.4^2 / pi) = 16.2 mm
    assert contrast == ">= 3"
    assert visibility == "SNR >= 15"  # posterior: 36 x (35 - 10) / sqrt(36 x 10) = 47
    # 1.1x its bone over 16 pixels: 16 x 1 / sqrt(16 x 10) = 1.3, under Rose's threshold; the contrast against the
    # skeleton's median would not tell (the same 1.1 on any bone)
    faint = np.where(regions > 0, 10.0, 1.0)
    faint[0][instances[0] == 1] = 11.0
    pair = (faint[0], faint[1])
    assert _lesion_attributes(truth, instances, 1, pair, (2.4, 2.4), _bone_levels(truth, pair))[3] == \
        "SNR < 5 (under Rose's threshold)"
    assert _lesion_attributes(truth, instances, 1, None, None)[1:] == ("unknown", "unknown", "unknown")


def test_malignant_dice_counts_hotspots_at_or_above_the_threshold():
    instances = np.zeros((2, 8, 8), np.uint16)
    instances[0, 0:2, 0:2] = 1  # metastasis, 4 px
    instances[1, 5:7, 5:7] = 2  # bladder: not malignant truth
    truth = LesionTruth(np.zeros_like(instances, np.uint8), instances, ["metastasis", "physiological"],
                        ["metastasis", "bladder"], ["", ""])
    hotspots = np.zeros_like(instances)
    hotspots[0, 0:2, 0:3] = 1  # 6 px, 4 on the metastasis
    hotspots[1, 5:7, 5:7] = 2  # the bladder, below the threshold
    detail = {"malignancy_threshold": 0.5, "hotspots": [{"number": 1, "malignancy": 0.9},
                                                        {"number": 2, "malignancy": 0.2}]}
    assert _malignant_dice(hotspots, detail, truth) == pytest.approx(2 * 4 / (6 + 4))
    detail["hotspots"][1]["malignancy"] = 0.5
    assert _malignant_dice(hotspots, detail, truth) == pytest.approx(2 * 4 / (10 + 4))


def test_per_patient_calls_are_counted_apart_from_where_the_malignant_hotspots_lie():
    from bonescan.evaluate.froc import StudyDetections
    from bonescan.evaluate.lesion_pipeline import _per_patient, _Study

    def study(truth_count: int, predicted_count: int, lesion_scores: list[float]) -> _Study:
        detections = StudyDetections(np.array(lesion_scores, float), np.zeros(0), np.arange(1, len(lesion_scores) + 1))
        return _Study("s", detections, [], [], [], [], np.zeros(0), truth_count, predicted_count, None, 0.0, None,
                      None, True, detections)

    studies = [study(2, 1, [0.9, -np.inf]),  # called, on one of its metastases
               study(1, 1, [0.3]),  # called by a malignant hotspot elsewhere; its metastasis scored below threshold
               study(1, 0, [-np.inf]),  # missed
               study(0, 0, []), study(0, 2, [])]  # cleared; called without metastases
    per_patient = _per_patient(studies, 0.5, 0.95)
    assert (per_patient["sensitivity"]["x"], per_patient["sensitivity"]["n"]) == (2, 3)
    assert (per_patient["located"]["x"], per_patient["located"]["n"]) == (1, 3)
    assert (per_patient["specificity"]["x"], per_patient["specificity"]["n"]) == (1, 2)


def test_detection_is_reported_per_site_when_studies_come_from_several():
    from bonescan.evaluate.froc import StudyDetections
    from bonescan.evaluate.lesion_pipeline import _by_site, _Study

    def study(case_id: str, lesion_scores: list[float], fp_scores: list[float], predicted: int) -> _Study:
        detections = StudyDetections(np.array(lesion_scores, float), np.array(fp_scores, float),
                                     np.arange(1, len(lesion_scores) + 1))
        return _Study(case_id, detections, [], [], [], ["no finding"] * len(fp_scores), np.array(fp_scores, float),
                      len(lesion_scores), predicted, None, 0.0, None, None, True, detections)

    studies = [study("a", [0.9, 0.8], [0.2], 2), study("b", [], [], 0),  # camera A: both found, no false call
               study("c", [0.9, -np.inf], [0.95, 0.7, 0.6], 4), study("d", [], [0.9], 1)]  # camera B: fires widely
    evaluated = pd.DataFrame({"case_id": ["a", "b", "c", "d"], "site": ["A", "A", "B", "B"]})
    by_site = _by_site(studies, evaluated, 0.5, 0.95)
    assert list(by_site) == ["A", "B"]
    assert by_site["A"]["sensitivity_at_1fp"] == 1.0 and by_site["A"]["fp_per_study"] == 0.0
    assert by_site["A"]["per_patient"]["specificity"]["x"] == 1
    # B: 4 false positives at >= 0.5 over 2 studies; at <= 1 per study (2 FPs: 0.95, 0.9) its lesion at 0.9 counts
    assert by_site["B"]["fp_per_study"] == 2.0 and by_site["B"]["sensitivity_at_1fp"] == 0.5
    assert by_site["B"]["sensitivity"]["x"] == 1 and by_site["B"]["per_patient"]["specificity"]["x"] == 0
    assert _by_site(studies, evaluated.assign(site="A"), 0.5, 0.95) == {}  # one site: nothing to compare
    assert _by_site(studies, evaluated.drop(columns=["site"]), 0.5, 0.95) == {}


def test_confluent_metastases_are_found_once_and_also_reported_per_outline(tmp_path):
    """Two touching metastases under one hotspot are one lesion found; per outline, one of two."""
    regions = _regions()
    instances = np.zeros((2, H, W), np.uint16)
    instances[0, 60:65, 30:35] = 1
    instances[0, 65:70, 30:35] = 2  # touching 1: one focus to a reader
    instances[0, 100:105, 30:35] = 3  # apart, and missed
    truth = LesionTruth(regions, instances, ["metastasis"] * 3, ["metastasis"] * 3, ["thoracic_spine"] * 3)
    (tmp_path / "lesions").mkdir()
    save_truth(truth, tmp_path / "s00.npz")
    detail = {"n_hotspots": 1, "n_malignant": 1, "bsi": 0.5, "bsi_by_region": {}, "probability_from_lesions": 0.9,
              "malignancy_threshold": 0.5,
              "hotspots": [{"number": 1, "view": "anterior", "centroid": [64.6, 32.0], "malignancy": 0.9}]}
    (tmp_path / "lesions" / "s00.json").write_text(json.dumps(detail))
    frame = pd.DataFrame({"case_id": ["s00"], "label": [1], "probability": [0.9]})
    metrics = evaluate_lesions(frame, LesionInputs(tmp_path / "lesions", {"s00": tmp_path / "s00.npz"}),
                               n_boot=20).metrics
    assert (metrics["n_lesions"], metrics["n_instances"]) == (2, 3)
    assert metrics["at_threshold"]["sensitivity"]["x"] == 1 and metrics["at_threshold"]["false_positives"] == 0
    assert metrics["sensitivity_at_fp"][0]["sensitivity"] == pytest.approx(1 / 2)
    assert metrics["sensitivity_at_fp_per_instance"][0]["sensitivity"] == pytest.approx(1 / 3)
    assert metrics["counts"]["n"] == 1


def test_counts_are_lesions_a_focus_seen_from_both_sides_once(tmp_path):
    """One metastasis found in both views: two malignant hotspots, one malignant lesion, as the truth has."""
    regions = _regions()
    instances = np.zeros((2, H, W), np.uint16)
    instances[0, 60:65, 30:35] = 1
    instances[1, 60:65, W - 35:W - 30] = 1
    truth = LesionTruth(regions, instances, ["metastasis"], ["metastasis"], ["thoracic_spine"])
    (tmp_path / "lesions").mkdir()
    save_truth(truth, tmp_path / "s00.npz")
    hotspots = [{"number": 1, "view": "anterior", "centroid": [62.0, 32.0], "malignancy": 0.9},
                {"number": 2, "view": "posterior", "centroid": [62.0, W - 33.0], "malignancy": 0.8}]
    detail = {"n_hotspots": 2, "n_malignant": 2, "n_malignant_lesions": 1, "bsi": 0.5, "bsi_by_region": {},
              "probability_from_lesions": 0.9, "malignancy_threshold": 0.5, "hotspots": hotspots}
    frame = pd.DataFrame({"case_id": ["s00"], "label": [1], "probability": [0.9]})
    inputs = LesionInputs(tmp_path / "lesions", {"s00": tmp_path / "s00.npz"})

    def counts(record: dict) -> dict:
        (tmp_path / "lesions" / "s00.json").write_text(json.dumps(record))
        return evaluate_lesions(frame, inputs, n_boot=20).metrics["counts"]

    lesions = counts(detail)
    assert lesions["mean_difference"] == 0 and lesions["counted"].startswith("malignant lesions")
    older = counts({k: v for k, v in detail.items() if k != "n_malignant_lesions"})  # written before lesion counts
    assert older["mean_difference"] == 1 and older["counted"].startswith("malignant hotspots")


def test_a_superscan_is_left_out_of_the_count_agreement(tmp_path):
    """Diffuse uptake is one finding in the truth and dozens of hotspots to a reader: no count to agree with."""
    regions = _regions()
    (tmp_path / "lesions").mkdir()
    truth_files = {}
    for case_id, kind in (("focal", "metastasis"), ("diffuse", "superscan")):
        instances = np.zeros((2, H, W), np.uint16)
        instances[0, 60:65, 30:35] = 1
        save_truth(LesionTruth(regions, instances, ["metastasis"], [kind], ["thoracic_spine"]),
                   tmp_path / f"{case_id}.npz")
        truth_files[case_id] = tmp_path / f"{case_id}.npz"
        spots = 1 if kind == "metastasis" else 40
        hotspots = [{"number": n + 1, "view": "anterior", "centroid": [62.0, 32.0], "malignancy": 0.9}
                    for n in range(spots)]
        (tmp_path / "lesions" / f"{case_id}.json").write_text(json.dumps(
            {"n_hotspots": spots, "n_malignant": spots, "n_malignant_lesions": spots, "superscan": spots > 1,
             "bsi": 0.5, "bsi_by_region": {}, "probability_from_lesions": 0.9, "malignancy_threshold": 0.5,
             "hotspots": hotspots}))
    frame = pd.DataFrame({"case_id": ["focal", "diffuse"], "label": [1, 1], "probability": [0.9, 0.9]})
    metrics = evaluate_lesions(frame, LesionInputs(tmp_path / "lesions", truth_files), n_boot=20).metrics
    assert metrics["counts"]["n"] == 1 and metrics["counts"]["n_superscans_left_out"] == 1
    assert metrics["counts"]["mean_difference"] == 0  # 40 against 1 without the rule
    assert metrics["n_studies"] == 2  # detection and BSI still take the superscan
    assert metrics["counts"]["superscan_flag"] == {"truth": 1, "flagged": 1, "flagged_of_truth": 1}
