"""The uptake check of new lesions: a focus the reader calls new counts only where the count image rose."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bonescan.followup.register import identity
from bonescan.followup.uptake import FOCUS_FLOOR_SHARE, FOCUS_RISE, RISE, UptakeCheck, local_uptake
from bonescan.lesions.hotspots import Hotspot, StudyLesions, normal_bone_level

SPACING = (2.4, 2.4)


def _view(lesion_counts: float | None, rng: np.random.Generator) -> np.ndarray:
    """A 60 x 30 view: a bone strip of 100 counts (columns 10-20), a 6 x 6 focus of `lesion_counts` at rows 30-36."""
    mean = np.full((60, 30), 5.0)
    mean[:, 10:20] = 100.0
    if lesion_counts is not None:
        mean[30:36, 12:18] = lesion_counts
    return rng.poisson(mean).astype(np.float32)


def _lesions(focus: bool, level: float = 100.0) -> StudyLesions:
    regions = np.zeros((2, 60, 30), np.uint8)
    regions[:, :, 10:20] = 3
    hotspots = [Hotspot(1, "anterior", (30, 12, 36, 18), (32.5, 14.5), 36 * 2.4 ** 2, "lumbar_spine", 0.9, 0.0,
                        "1.2.3", np.ones((6, 6), bool))] if focus else []
    return StudyLesions(hotspots, regions, 0.0, {}, 0.9 if focus else 0.0, 0.5, (level, level))


def _study(anterior: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(anterior=anterior, posterior=anterior.copy(), pixel_spacing=SPACING)


def test_local_uptake_is_the_focus_mean_over_normal_bone():
    view = _view(300.0, np.random.default_rng(0))
    bone, focus = np.zeros(view.shape, bool), np.zeros(view.shape, bool)
    bone[:, 10:20], focus[30:36, 12:18] = True, True
    level = normal_bone_level(view, bone, focus)
    assert level == pytest.approx(100, rel=0.05)  # the focus is left out of normal bone
    assert normal_bone_level(view, np.zeros_like(bone), focus) < 50  # no bone: the median of all counted pixels
    assert local_uptake(view, level, (32.5, 14.5), SPACING, 6 * 2.4) == pytest.approx(3.0, rel=0.1)
    assert local_uptake(view, level, (10, 14.5), SPACING, 6 * 2.4) == pytest.approx(1.0, rel=0.1)
    assert local_uptake(view, level, (500, 500), SPACING, 6 * 2.4) == 0.0  # outside the image


@pytest.mark.parametrize("baseline_focus, expected", [(None, True), (300.0, False), (260.0, False), (200.0, True)])
def test_a_focus_counts_as_new_only_where_the_uptake_rose(baseline_focus, expected):
    rng = np.random.default_rng(1)
    baseline, followup = _study(_view(baseline_focus, rng)), _study(_view(300.0, rng))
    # The reader saw nothing on the baseline (a focus it missed, or none); 260 -> 300 counts is a 1.13-fold rise of
    # the footprint mean, 200 -> 300 a 1.40-fold one.
    check = UptakeCheck([baseline, followup], [_lesions(False), _lesions(True)],
                        [{v: identity(SPACING) for v in ("anterior", "posterior")}] * 2)
    hotspot = _lesions(True).hotspots[0]
    now, before = check.ratio(hotspot, 1)
    # The square covers the hotspot's core (0.7 of its 7-pixel equivalent diameter: 5 pixels), inside the focus.
    assert now == pytest.approx(3.0, rel=0.1)
    assert check.rose([hotspot], 1) is expected and (now >= RISE * before) is expected


def test_the_rise_is_measured_over_the_hotspots_core_not_its_rim():
    # Noiseless views: a 6 x 6 focus of 235 counts on bone of 100 grew to 300 (1.28-fold), and the reader outlined
    # it with a rim (an 8 x 8 hotspot). Over the whole outline (a 9-pixel square) the rise is diluted by unchanged
    # bone (1.18-fold), over its core (6 pixels) it is the focus's own.
    def view(focus_counts: float) -> np.ndarray:
        mean = np.full((60, 30), 5.0, np.float32)
        mean[:, 10:20] = 100.0
        mean[30:36, 12:18] = focus_counts
        return mean

    outlined = _lesions(True)
    outlined.hotspots[0] = Hotspot(1, "anterior", (29, 11, 37, 19), (32.5, 14.5), 64 * 2.4 ** 2, "lumbar_spine",
                                   0.9, 0.0, "1.2.3", np.ones((8, 8), bool))
    check = UptakeCheck([_study(view(235.0)), _study(view(300.0))], [_lesions(False), outlined],
                        [{v: identity(SPACING) for v in ("anterior", "posterior")}] * 2)
    now, before = check.ratio(outlined.hotspots[0], 1)
    assert now / before == pytest.approx(300 / 235, rel=0.02)
    assert check.rose(outlined.hotspots, 1)


def _faint(malignancy: float, region: str = "lumbar_spine", threshold: float = 0.9) -> StudyLesions:
    """Follow-up lesions: one hotspot on the focus, scored `malignancy` against `threshold`."""
    lesions = _lesions(True)
    lesions.hotspots[0].malignancy, lesions.hotspots[0].region = malignancy, region
    lesions.threshold = threshold
    return lesions


FLOOR = FOCUS_FLOOR_SHARE * 0.9  # the candidate floor under the threshold 0.9
FAINT = (FLOOR + 0.9) / 2  # a candidate below the malignancy threshold


@pytest.mark.parametrize("baseline_focus, malignancy, region, new", [
    (None, FAINT, "lumbar_spine", True),  # a faint candidate where the baseline had nothing: new
    (None, FLOOR - 0.05, "lumbar_spine", False),  # below the candidate floor
    (None, FAINT, "", False),  # off the skeleton
    (260.0, FAINT, "lumbar_spine", False),  # the uptake was already there (1.13-fold)
    (230.0, FAINT, "lumbar_spine", False),  # 1.26-fold: enough for a malignant call, not for a faint one
])
def test_a_faint_focus_is_new_only_where_the_uptake_rose_clearly(baseline_focus, malignancy, region, new):
    from bonescan.followup.match import change_between, drop_unreported, link_lesions

    rng = np.random.default_rng(2)
    baseline, followup = _study(_view(baseline_focus, rng)), _study(_view(300.0, rng))
    results = [_lesions(False), _faint(malignancy, region)]
    transforms = [{v: identity(SPACING) for v in ("anterior", "posterior")}] * 2
    check = UptakeCheck([baseline, followup], results, transforms)
    linking = link_lesions(results, transforms, [SPACING] * 2, [30] * 2, FOCUS_FLOOR_SHARE)
    change = change_between(linking.lesions, results, 1, [0], check)
    lesions = drop_unreported(linking.lesions, [change])
    assert RISE < 1.26 < FOCUS_RISE and (change.new == [1]) is new and change.new_below_threshold == change.new
    assert [les.number for les in lesions] == ([1] if new else [])  # a faint focus not new is not reported
    # The same focus called malignant needs only the smaller rise.
    results[1] = _faint(0.95, region)
    change = change_between(link_lesions(results, transforms, [SPACING] * 2, [30] * 2).lesions, results, 1, [0],
                            check)
    assert (change.new == [1]) is (baseline_focus in (None, 230.0)) and change.new_below_threshold == []


def test_the_faint_focus_floor_follows_the_readers_threshold():
    # A rescored reader's threshold (~0.45) is half a network's (~0.9): the same 0.4 is a faint candidate under
    # the one and far below the candidates of the other.
    from bonescan.followup.match import change_between, link_lesions

    rng = np.random.default_rng(2)
    baseline, followup = _study(_view(None, rng)), _study(_view(300.0, rng))
    transforms = [{v: identity(SPACING) for v in ("anterior", "posterior")}] * 2
    for threshold, new in ((0.45, True), (0.9, False)):
        base = _lesions(False)
        base.threshold = threshold
        results = [base, _faint(0.4, threshold=threshold)]
        check = UptakeCheck([baseline, followup], results, transforms)
        linking = link_lesions(results, transforms, [SPACING] * 2, [30] * 2, FOCUS_FLOOR_SHARE)
        assert (len(linking.lesions) == 1) is new, threshold
        change = change_between(linking.lesions, results, 1, [0], check)
        assert (change.new_below_threshold == [1]) is new, threshold
