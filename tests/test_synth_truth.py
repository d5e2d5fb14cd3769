"""Lesion truth of synthetic studies: region maps from the phantom's bones, instance masks of every finding."""

from __future__ import annotations

import numpy as np

from bonescan.cohort import load_manifest
from bonescan.lesions.regions import BY_NAME
from bonescan.lesions.truth import load_truth
from bonescan.synth import case_seed, generate_case, generate_cohort
from bonescan.synth.truth import phantom_truth, region_of_bone


def test_phantom_bones_map_onto_the_skeletal_regions():
    assert region_of_bone("T7", "spine") == "thoracic_spine" and region_of_bone("C5", "spine") == "cervical_spine"
    assert region_of_bone("left rib 4 posterior", "rib") == "ribs_left"
    assert region_of_bone("right tibial plateau", "knee") == "lower_leg_foot_right"
    assert region_of_bone("right patella", "knee") == "femur_right"
    assert region_of_bone("sacrum", "pelvis") == "pelvis"
    assert region_of_bone("left wrist", "hand") == "forearm_hand_left"
    assert region_of_bone("none", "soft tissue") == ""


def test_truth_marks_regions_and_every_finding_where_the_study_shows_them():
    case = next(c for c in (generate_case(f"t{i}", case_seed(4, i), "easy") for i in range(40))
                if c.demographics.grade == 3 and not c.demographics.superscan)
    truth = phantom_truth(case)
    assert truth.regions.shape == truth.instances.shape == (2,) + case.anterior.shape
    # The posterior is stored as seen from behind: its region map is the mirrored anterior one, so the
    # patient's left ribs lie on the viewer's right in front and on the viewer's left from behind.
    assert np.array_equal(truth.regions[1], truth.regions[0][:, ::-1])
    cols = np.arange(case.anterior.shape[1])
    for view, sign in ((0, 1), (1, -1)):
        left = cols[np.nonzero(truth.regions[view] == BY_NAME["ribs_left"].label)[1]].mean()
        right = cols[np.nonzero(truth.regions[view] == BY_NAME["ribs_right"].label)[1]].mean()
        assert sign * (left - right) > 40
    # Bone is lit: region pixels are brighter than the body's soft tissue around them.
    assert case.anterior[truth.regions[0] > 0].mean() > 2 * case.anterior[truth.regions[0] == 0].mean()
    assert truth.category.count("metastasis") == case.n_metastases
    assert truth.kind[-1] == "bladder" and truth.kind.count("kidney") == 2
    in_own_region = 0
    for number, finding in enumerate(case.findings, start=1):
        if finding.category != "metastasis":
            continue
        row, col = (int(round(v)) for v in finding.centre_anterior)
        mask = truth.instances[0] == number
        if mask.any():  # may be painted over by a later, overlapping finding
            assert mask.sum() < 2000
            in_own_region += truth.regions[0][row, col] == BY_NAME[truth.region[number - 1]].label
        # A lesion stands out in every view where it is marked: brighter inside than in a ring around it.
        for view, image in enumerate((case.anterior, case.posterior)):
            inside = truth.instances[view] == number
            if inside.sum() >= 6:
                rows, cols_ = np.nonzero(inside)
                r0, r1, c0, c1 = rows.min() - 6, rows.max() + 7, cols_.min() - 6, cols_.max() + 7
                ring = np.zeros_like(inside)
                ring[max(r0, 0):r1, max(c0, 0):c1] = True
                ring &= truth.instances[view] == 0
                assert image[inside].mean() > image[ring].mean()
    assert in_own_region >= 0.5 * case.n_metastases  # ribs behind a scapula are labelled scapula


def test_cohort_writes_truth_files_referenced_from_the_manifest(tmp_path):
    result = generate_cohort(tmp_path / "c", 3, seed=3)
    manifest = load_manifest(result.manifest)
    for row in manifest.itertuples():
        truth = load_truth(row.truth)
        assert truth.regions.any() and len(truth.category) >= 3  # kidneys and bladder at least
    assert generate_cohort(tmp_path / "c", 3, seed=3).skipped == 3
    (tmp_path / "c" / "truth" / "syn00001.npz").unlink()  # an older cohort, or an interrupted write
    again = generate_cohort(tmp_path / "c", 3, seed=3)
    assert again.written == 1 and (tmp_path / "c" / "truth" / "syn00001.npz").is_file()
