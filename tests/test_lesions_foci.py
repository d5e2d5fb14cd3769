"""One hotspot per focus: of two hotspots the views show at one place, the one standing out less is left out."""

from types import SimpleNamespace

import numpy as np
import pytest

from bonescan.lesions.foci import best_view_of_each_focus

WIDTH, SPACING = 100, (2.4, 2.4)


def _mirrored(col: float) -> float:
    """The stored posterior column of an anterior column (the posterior is stored as seen from behind)."""
    return WIDTH - 1 - col


def test_the_twin_with_the_lower_uptake_ratio_is_left_out_in_either_view():
    centroids = np.array([[40.0, 20.0], [41.0, _mirrored(21.0)]])
    assert best_view_of_each_focus([0, 1], centroids, [3.0, 1.2], WIDTH, SPACING).tolist() == [True, False]
    assert best_view_of_each_focus([0, 1], centroids, [1.2, 3.0], WIDTH, SPACING).tolist() == [False, True]
    # the same column in both stored views is not the same place: the posterior lies mirrored
    unmirrored = np.array([[40.0, 20.0], [40.0, 20.0]])
    assert best_view_of_each_focus([0, 1], unmirrored, [3.0, 1.2], WIDTH, SPACING).all()


def test_hotspots_farther_apart_than_the_pairing_reach_or_in_one_view_are_all_kept():
    # 9 pixels of 2.4 mm apart (21.6 mm): beyond the 20 mm reach
    centroids = np.array([[40.0, 20.0], [49.0, _mirrored(20.0)]])
    assert best_view_of_each_focus([0, 1], centroids, [3.0, 1.2], WIDTH, SPACING).all()
    # at 1.2 mm pixels the same 9 pixels are 10.8 mm: one focus
    assert best_view_of_each_focus([0, 1], centroids, [3.0, 1.2], WIDTH, (1.2, 1.2)).tolist() == [True, False]
    same_view = np.array([[40.0, 20.0], [41.0, 21.0]])
    assert best_view_of_each_focus([0, 0], same_view, [3.0, 1.2], WIDTH, SPACING).all()


def test_unknown_or_equal_uptake_keeps_both_twins_and_pairs_are_one_to_one():
    centroids = np.array([[40.0, 20.0], [40.0, _mirrored(20.0)]])
    assert best_view_of_each_focus([0, 1], centroids, [float("nan"), 1.2], WIDTH, SPACING).all()
    assert best_view_of_each_focus([0, 1], centroids, [2.0, 2.0], WIDTH, SPACING).all()
    # two anterior hotspots near one posterior one: it pairs with the nearer, which it outshines; the farther stays
    centroids = np.array([[40.0, 20.0], [44.0, 20.0], [41.0, _mirrored(20.0)]])
    keep = best_view_of_each_focus([0, 0, 1], centroids, [1.1, 1.1, 4.0], WIDTH, SPACING)
    assert keep.tolist() == [False, True, True]
    assert best_view_of_each_focus([], np.zeros((0, 2)), [], WIDTH, SPACING).tolist() == []
    with pytest.raises(ValueError, match="2 views, 1 centroids and 2 uptake ratios differ"):
        best_view_of_each_focus([0, 1], np.zeros((1, 2)), [1.0, 2.0], WIDTH, SPACING)


def test_a_focus_the_network_marks_in_both_views_is_reported_in_the_view_whose_counts_show_it():
    from bonescan.lesions.infer import study_lesions
    from bonescan.lesions.regions import BY_NAME

    shape = (48, 16)  # the network's 24 x 8, twice
    maps = np.zeros((2, 3, 24, 8), np.float32)
    maps[:, 0, 2:22, 1:7] = BY_NAME["ribs_right"].label
    for view in range(2):  # the network marks the focus in both views (its layout: the posterior mirrored)
        maps[view, 1, 10:14, 1:3] = 0.95
        maps[view, 2, 10:14, 1:3] = 0.99
    maps[0, 2, 9:15, 1:4] = 0.99  # the network outlines more of it in the anterior
    anterior = np.full(shape, 10.0, np.float32)
    posterior = np.full(shape, 10.0, np.float32)
    posterior[20:28, 16 - 6:16 - 2] = 40.0  # only the posterior counts show it (its own, mirrored, layout)
    lesions, numbers = study_lesions(maps, anterior, posterior, pixel_spacing=2.4, threshold=0.95)
    (hotspot,) = lesions.hotspots
    assert hotspot.view == "posterior" and hotspot.number == 1 and hotspot.centroid[1] > shape[1] / 2
    assert hotspot.uptake_ratio > 2.0
    assert not numbers[0].any() and set(np.unique(numbers[1])) == {0, 1}
    assert lesions.n_malignant == 1
    # the BSI still counts the twin left out (each region's larger view): here the anterior's larger outline
    both, _ = study_lesions(maps, anterior, posterior, pixel_spacing=2.4, threshold=0.95, one_per_focus=False)
    posterior_only = maps.copy()
    posterior_only[0, 1:] = 0.0
    alone, _ = study_lesions(posterior_only, anterior, posterior, pixel_spacing=2.4, threshold=0.95)
    assert lesions.bsi == pytest.approx(both.bsi) and lesions.bsi > alone.bsi > 0
    # a study read again with both views' hotspots (as the follow-up reads a prior) gives the reported one its UID
    kept, _ = study_lesions(maps, anterior, posterior, pixel_spacing=2.4, threshold=0.95, study_key="study:1")
    every, _ = study_lesions(maps, anterior, posterior, pixel_spacing=2.4, threshold=0.95, study_key="study:1",
                             one_per_focus=False)
    (reported,), (_, twin) = kept.hotspots, every.hotspots
    assert (reported.number, twin.number) == (1, 2) and reported.uid == twin.uid and reported.box == twin.box
    # the anterior counts standing out more: the anterior reports it
    anterior[18:30, 2:8] = 60.0
    again, _ = study_lesions(maps, anterior, posterior, pixel_spacing=2.4, threshold=0.95)
    (front,) = again.hotspots
    assert front.view == "anterior" and front.centroid[1] < shape[1] / 2 and front.uptake_ratio > hotspot.uptake_ratio
    # asked for both views' hotspots (the follow-up's reader), the posterior twin stays
    both, numbers = study_lesions(maps, anterior, posterior, pixel_spacing=2.4, threshold=0.95, one_per_focus=False)
    assert [h.view for h in both.hotspots] == ["anterior", "posterior"] and numbers[0].any() and numbers[1].any()


def test_the_follow_up_reads_both_views_hotspots_of_a_focus_since_it_pairs_the_views_itself():
    from bonescan.followup.readers import NetworkReader

    asked = []

    class Model:  # a loaded lesion run, as far as the reader uses one
        cameras = None
        config = SimpleNamespace(preset="cpu-small-lesion")

        def read(self, study, study_key="", one_per_focus=True):
            asked.append(one_per_focus)
            return "lesions", None

    reader = NetworkReader("run", model=Model())
    assert reader.read(SimpleNamespace(study_id="1.2.3", meta=None), []) == "lesions" and asked == [False]
