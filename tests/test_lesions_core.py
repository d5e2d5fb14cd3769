"""Region catalogue, truth files and the Bone Scan Index definition."""

import numpy as np
import pytest

from bonescan.errors import AnnotationError
from bonescan.lesions.bsi import bone_scan_index
from bonescan.lesions.regions import BY_NAME, REGIONS
from bonescan.lesions.truth import LesionTruth, load_truth, save_truth


def test_mass_fractions_sum_to_spiers_total_and_labels_are_unique():
    assert sum(r.mass_percent for r in REGIONS) == pytest.approx(100.1, abs=1e-6)
    assert sorted(r.label for r in REGIONS) == list(range(1, len(REGIONS) + 1))
    assert BY_NAME["ribs_left"].title == "ribs (left)" and BY_NAME["skull"].title == "skull"


def test_bsi_takes_the_larger_view_fraction_times_the_mass_share():
    regions = np.zeros((2, 40, 20), np.uint8)
    regions[:, 0:10] = BY_NAME["skull"].label  # 200 pixels per view
    regions[:, 20:30] = BY_NAME["femur_left"].label
    malignant = np.zeros_like(regions, bool)
    malignant[0, 0:2] = True  # 40 / 200 of the skull, anterior
    malignant[1, 0:1] = True  # 20 / 200 posterior: the anterior fraction wins
    malignant[1, 35:40] = True  # outside every region: not bone, not counted
    bsi, per_region = bone_scan_index(regions, malignant)
    assert per_region["skull"] == pytest.approx(0.2 * 18.4)
    assert per_region["femur_left"] == 0.0
    assert bsi == pytest.approx(0.2 * 18.4)


def test_truth_round_trips_and_bad_files_name_every_problem(tmp_path):
    regions = np.zeros((2, 8, 4), np.uint8)
    instances = np.zeros((2, 8, 4), np.uint16)
    instances[0, 2, 2] = 1
    instances[1, 5, 1] = 2
    truth = LesionTruth(regions, instances, ["metastasis", "physiological"], ["metastasis", "bladder"],
                        ["femur_left", ""])
    back = load_truth(save_truth(truth, tmp_path / "t.npz"))
    assert back.kind == ["metastasis", "bladder"] and back.has_regions
    assert back.malignant_mask().sum() == 1 and back.malignant_mask()[0, 2, 2]
    np.savez(tmp_path / "bad.npz", regions=regions, instances=instances * 3, category=np.array(["tumour"]),
             kind=np.array(["x"]), region=np.array(["", ""]))
    with pytest.raises(AnnotationError) as err:
        load_truth(tmp_path / "bad.npz")
    for expected in ("instance id 6 but only 1", "differ in length", "unknown categories ['tumour']"):
        assert expected in str(err.value)


def test_confluent_metastases_are_one_lesion_named_by_the_largest():
    instances = np.zeros((2, 30, 20), np.uint16)
    instances[0, 2:5, 2:5] = 1  # 9 px ...
    instances[0, 5:9, 5:9] = 2  # ... 16 px touching it corner to corner: one lesion, named 2
    instances[0, 12:14, 10:12] = 3  # alone
    instances[0, 14, 10:12] = 4  # a benign finding touching 3: not merged
    instances[1, 20:22, 2:4] = 5  # touching 6 in the posterior view only
    instances[1, 22, 2:4] = 6
    instances[0, 26:28, 2:4] = 6  # ... and seen apart in front: still one lesion
    category = ["metastasis"] * 3 + ["benign"] + ["metastasis"] * 2
    truth = LesionTruth(np.zeros((2, 30, 20), np.uint8), instances, category, ["k"] * 6, [""] * 6)
    merged, ids = truth.confluent_metastases()
    assert ids == [2, 3, 6]  # 6 has 6 pixels over both views, 5 has 4
    assert (merged[instances == 1] == 2).all() and (merged[instances == 5] == 6).all()
    assert (merged[instances == 4] == 4).all() and (merged[instances == 3] == 3).all()
    assert (merged[instances == 0] == 0).all()
    # annotated boxes are taken as drawn
    truth.boxes = True
    assert truth.confluent_metastases()[1] == [1, 2, 3, 5, 6]
