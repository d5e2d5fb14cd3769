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


def _spot(number: int, view: str, row: float, col: float, malignancy: float = 0.9):
    from bonescan.lesions.hotspots import Hotspot

    return Hotspot(number, view, (int(row) - 2, int(col) - 2, int(row) + 3, int(col) + 3), (row, col), 50.0,
                   "thoracic_spine", malignancy, 3.0, f"1.2.3.{number}")


def test_a_focus_seen_from_front_and_behind_is_one_malignant_lesion():
    from bonescan.lesions.hotspots import StudyLesions

    width, spacing = 64, (2.4, 2.4)
    spots = [_spot(1, "anterior", 40.0, 30.0), _spot(2, "posterior", 41.0, width - 1 - 31.0),  # mirrored: one focus
             _spot(3, "anterior", 80.0, 20.0), _spot(4, "posterior", 80.0, 20.0),  # same column, not mirrored: two
             _spot(5, "anterior", 120.0, 30.0), _spot(6, "posterior", 120.0, width - 1 - 30.0, malignancy=0.2)]
    lesions = StudyLesions(spots, np.zeros((2, 160, width), np.uint8), 0.0, {}, 0.9, 0.5, pixel_spacing=spacing)
    # 5 malignant hotspots; the first pair is one lesion; 3 and 4 lie 26 columns (62 mm) apart once mirrored;
    # 6 is below the threshold, so 5 stays a lesion of its own
    assert (lesions.n_malignant, lesions.n_malignant_lesions) == (5, 4)
    assert lesions.to_json()["n_malignant_lesions"] == 4
    # vertebrae ~25 mm apart stay two lesions: rows 10 pixels apart at 2.4 mm
    apart = [_spot(1, "anterior", 40.0, 30.0), _spot(2, "posterior", 50.0, width - 1 - 30.0)]
    assert StudyLesions(apart, np.zeros((2, 160, width), np.uint8), 0.0, {}, 0.9, 0.5,
                        pixel_spacing=spacing).n_malignant_lesions == 2
    # at 1.2 mm per pixel the same 10 rows are 12 mm: one lesion
    assert StudyLesions(apart, np.zeros((2, 160, width), np.uint8), 0.0, {}, 0.9, 0.5,
                        pixel_spacing=(1.2, 1.2)).n_malignant_lesions == 1


def test_views_pair_one_to_one_with_the_least_total_distance():
    from bonescan.lesions.pairing import pair_nearest

    a = np.array([[0.0, 0.0], [0.0, 6.0]])
    b = np.array([[0.0, 4.0], [0.0, 9.0]])
    # nearest first would pair a1-b0 (2 apart) and leave a0 alone (b1 is 9 away); the assignment pairs a0-b0 (4)
    # and a1-b1 (3)
    pairs = pair_nearest(a, b, (1.0, 1.0), reach=5.0)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 0), (1, 1)]
    assert pair_nearest(a, np.zeros((0, 2)), (1.0, 1.0), 5.0) == []


def test_a_study_with_a_superscans_bsi_is_flagged_and_says_so():
    from bonescan.lesions.hotspots import StudyLesions
    from bonescan.lesions.superscan import SUPERSCAN_BSI

    regions = np.zeros((2, 160, 64), np.uint8)
    focal = StudyLesions([_spot(1, "anterior", 40.0, 30.0)], regions, 0.8 * SUPERSCAN_BSI, {}, 0.9, 0.5)
    diffuse = StudyLesions([_spot(1, "anterior", 40.0, 30.0)], regions, SUPERSCAN_BSI, {}, 0.9, 0.5)
    assert not focal.superscan and diffuse.superscan
    assert diffuse.to_json()["superscan"] is True and focal.to_json()["superscan"] is False


def test_the_overlay_caption_counts_hotspots_malignant_ones_and_lesions_or_names_a_superscan():
    from bonescan.lesions.hotspots import StudyLesions
    from bonescan.lesions.outputs import lesion_caption
    from bonescan.lesions.superscan import SUPERSCAN_BSI

    regions = np.zeros((2, 160, 64), np.uint8)
    one_focus = [_spot(1, "anterior", 40.0, 30.0), _spot(2, "posterior", 40.0, 63 - 30.0),
                 _spot(3, "anterior", 120.0, 10.0, malignancy=0.2)]
    caption = lesion_caption(StudyLesions(one_focus, regions, 0.31, {}, 0.9, 0.5))
    assert caption == "3 hotspots, 2 malignant (red: malignancy >= 0.50) in 1 lesion;  BSI 0.31 %"
    two = one_focus + [_spot(4, "anterior", 90.0, 30.0)]
    assert "3 malignant (red: malignancy >= 0.50) in 2 lesions;" in lesion_caption(StudyLesions(two, regions, 0.5, {},
                                                                                               0.9, 0.5))
    assert lesion_caption(StudyLesions(one_focus[2:], regions, 0.0, {}, 0.2, 0.5)).startswith("1 hotspot, 0 malignant")
    diffuse = lesion_caption(StudyLesions(two, regions, SUPERSCAN_BSI, {}, 0.9, 0.5))
    assert diffuse.startswith("Superscan pattern (diffuse uptake): lesions not countable")


def test_malignant_lesions_are_counted_per_region_a_pair_once():
    from dataclasses import replace

    from bonescan.lesions.hotspots import StudyLesions

    width = 64
    spots = [replace(_spot(1, "anterior", 40.0, 30.0), region=""),  # outside the skeleton from the front...
             replace(_spot(2, "posterior", 40.0, width - 1 - 30.0), region="ribs_left"),  # ...a rib from behind
             replace(_spot(3, "anterior", 90.0, 30.0), region="ribs_left"),
             replace(_spot(4, "posterior", 90.0, width - 1 - 30.0), region="scapula_left"),  # the anterior names it
             replace(_spot(5, "posterior", 130.0, 10.0), region="pelvis"),
             replace(_spot(6, "anterior", 150.0, 10.0), region="")]
    lesions = StudyLesions(spots, np.zeros((2, 160, width), np.uint8), 0.0, {}, 0.9, 0.5)
    assert lesions.malignant_lesions_by_region == {"ribs_left": 2, "pelvis": 1, "": 1}
    assert lesions.n_malignant_lesions == 4
    assert lesions.to_json()["malignant_lesions_by_region"] == {"outside the skeleton": 1, "pelvis": 1,
                                                                "ribs_left": 2}


@pytest.mark.parametrize("channels", [(16,), (16, 1, 32)])
def test_a_unet_too_shallow_or_too_thin_is_refused_by_the_name_given(channels):
    from bonescan.errors import ConfigError
    from bonescan.lesions.network import LesionNetConfig, check_unet_channels

    with pytest.raises(ConfigError, match="lesion network channels.*at least two levels"):
        LesionNetConfig(channels=channels)
    with pytest.raises(ConfigError, match="--channels.*got " + ",".join(map(str, channels))):
        check_unet_channels(channels, "--channels")
    assert check_unet_channels([8, 16], "--channels") == (8, 16)
