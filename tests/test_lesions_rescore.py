"""The hotspot rescorer: count candidates beside the network's, features, fit, storage, and its use in study_lesions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from bonescan.errors import RunError
from bonescan.lesions.infer import study_lesions
from bonescan.lesions.regions import BY_NAME
from bonescan.lesions.rescore import (BONE_LEVEL_SIGMA, COUNT_CANDIDATES_PER_VIEW, COUNT_SMOOTHING, FEATURES,
                                      REGION_GROUPS, RESCORER_FILE, RESCORER_INFO, SNR_CANDIDATES_BEFORE_STORED,
                                      SNR_CANDIDATES_PER_VIEW, Candidate, HotspotRescorer, all_candidates, bone_level,
                                      candidate_features, count_candidates, fit_rescorer, load_rescorer, matched_snr,
                                      rescore_candidates, save_rescorer, view_maps)

OVER_BONE = FEATURES.index("log_count_peak_over_bone")


def _spine(shape=(128, 48)):
    """A bone column of even counts (10) on soft tissue (2)."""
    bone = np.zeros(shape, bool)
    bone[8:120, 16:32] = True
    counts = np.where(bone, 10.0, 2.0).astype(np.float32)
    return counts, bone


def _focus(counts, row, col, peak):
    rows, cols = np.ogrid[:counts.shape[0], :counts.shape[1]]
    counts += (peak - 10.0) * ((rows - row) ** 2 + (cols - col) ** 2 <= 4)


def test_bone_level_on_blocks_follows_the_full_size_filter():
    rng = np.random.default_rng(0)
    counts = ndimage.gaussian_filter(rng.random((200, 64)).astype(np.float32), 6) * 100 + 50
    bone = np.zeros(counts.shape, bool)
    bone[20:180, 10:20] = bone[20:180, 40:54] = True
    weight = ndimage.gaussian_filter(bone.astype(np.float32), BONE_LEVEL_SIGMA)
    full = ndimage.gaussian_filter(counts * bone, BONE_LEVEL_SIGMA) / np.maximum(weight, 1e-3)
    level = bone_level(counts, bone)
    assert level.shape == counts.shape
    np.testing.assert_allclose(level[bone], full[bone], rtol=0.01)
    assert (level[:, 30] > 40).all()  # between the bones it is the bones' level, not the soft tissue's


def test_peaks_are_those_of_a_maximum_filter_over_the_whole_view():
    from bonescan.lesions.rescore import COUNT_PEAK_DISTANCE, _peaks

    rng = np.random.default_rng(3)
    for _ in range(5):
        # coarse values make plateaus (ties), and peaks reach the borders
        image = np.round(ndimage.gaussian_filter(rng.random((60, 40)), 1.5) * 20).astype(np.float32)
        allowed = rng.random(image.shape) < 0.3
        whole = (image >= ndimage.maximum_filter(image, size=2 * COUNT_PEAK_DISTANCE + 1)) & allowed
        expected = sorted(((int(r), int(c)) for r, c in np.argwhere(whole)), key=lambda rc: -image[rc])
        found = _peaks(image, allowed)
        assert found == expected and len(found) > 3
    assert _peaks(image, np.zeros(image.shape, bool)) == []


def test_count_candidates_are_bone_foci_outside_the_networks_hotspots():
    counts, bone = _spine()
    _focus(counts, 30, 24, 30.0)  # 3x the bone: a candidate
    _focus(counts, 60, 24, 13.0)  # 1.3x: under the ratio
    _focus(counts, 90, 24, 30.0)  # bright but already a network hotspot
    _focus(counts, 60, 42, 30.0)  # bright, off the bone
    covered = np.zeros(counts.shape, bool)
    covered[86:95, 20:29] = True
    found = count_candidates(ndimage.gaussian_filter(counts, COUNT_SMOOTHING), bone, bone_level(counts, bone),
                             covered)
    assert len(found) == 1
    window, mask = found[0]
    rows, cols = np.nonzero(mask)
    assert abs(rows.mean() + window[0].start - 30) <= 1 and abs(cols.mean() + window[1].start - 24) <= 1
    assert 5 <= mask.sum() <= 25  # the focus (13 pixels), not the bone around it
    noise = np.random.default_rng(2).poisson(3.0, counts.shape).astype(np.float32)  # a noisy low-count view
    everywhere = np.ones(counts.shape, bool)
    many = count_candidates(noise, everywhere, bone_level(noise, everywhere), np.zeros(counts.shape, bool))
    assert len(many) == COUNT_CANDIDATES_PER_VIEW  # the brightest, not thousands



def test_count_candidates_grow_as_connected_components_over_half_the_peaks_rise():
    from bonescan.lesions.rescore import COUNT_REACH, _peaks

    rng = np.random.default_rng(8)
    bone = _spine((160, 48))[1]
    rows, cols = np.ogrid[:160, :48]
    rate = np.where(bone, 10.0, 2.0)
    for row in range(16, 150, 8):  # foci close enough to meet, each outlined by counting noise
        rate = rate + rng.uniform(15, 40) * np.exp(-((rows - row) ** 2 + (cols - rng.integers(17, 31)) ** 2) / 12.5)
    counts = rng.poisson(rate).astype(np.float32)
    covered = np.zeros(counts.shape, bool)
    covered[40:46, 18:26] = True
    # unsmoothed counts as the map the seeds grow over: ragged outlines, where pixels touch only at corners
    smooth, level = counts, bone_level(counts, bone)
    found = count_candidates(smooth, bone, level, covered)
    ratio = np.where(bone & (level > 0), smooth / np.maximum(level, 1e-6), 0.0)
    taken, expected = covered.copy(), []
    for row, col in _peaks(ratio, ratio >= 1.7):  # each seed: its component (4-connected) of what is left
        if taken[row, col]:
            continue
        window = (slice(max(0, row - COUNT_REACH), row + COUNT_REACH + 1),
                  slice(max(0, col - COUNT_REACH), col + COUNT_REACH + 1))
        labels, _ = ndimage.label((ratio[window] >= 1 + 0.5 * (ratio[row, col] - 1)) & ~taken[window])
        mask = labels == labels[row - window[0].start, col - window[1].start]
        taken[window] |= mask
        expected.append((window, mask))
    assert len(found) == len(expected) > 5
    for (window, mask), (want_window, want_mask) in zip(found, expected):
        assert mask.shape == want_mask.shape and window[0].start == want_window[0].start
        assert window[1].start == want_window[1].start and np.array_equal(mask, want_mask)
    assert not any((mask & covered[window]).any() for window, mask in found)


def test_matched_snr_is_a_z_score_under_poisson_noise_and_finds_faint_wide_foci():
    rng = np.random.default_rng(3)
    level = np.full((400, 400), 50.0, np.float32)
    snr = matched_snr(rng.poisson(level).astype(np.float32), level)
    inner = snr[20:-20, 20:-20]  # away from the filter's edge handling
    assert abs(float(inner.mean())) < 0.1 and 0.9 < float(inner.std()) < 1.1
    # A focus 1.3x the bone, radius 4 pixels, on a bone of 200 counts: under the brightness ratio, over the noise.
    counts, bone = _spine()
    counts *= 20.0
    rows, cols = np.ogrid[:counts.shape[0], :counts.shape[1]]
    counts += 60.0 * ((rows - 60) ** 2 + (cols - 24) ** 2 <= 16)
    counts = rng.poisson(counts).astype(np.float32)
    level = bone_level(counts, bone)
    smooth, nothing = ndimage.gaussian_filter(counts, COUNT_SMOOTHING), np.zeros(counts.shape, bool)
    assert count_candidates(smooth, bone, level, nothing) == []
    found = count_candidates(smooth, bone, level, nothing, matched_snr(counts, level))
    assert len(found) == 1
    window, mask = found[0]
    rows, cols = np.nonzero(mask)
    assert abs(rows.mean() + window[0].start - 60) <= 2 and abs(cols.mean() + window[1].start - 24) <= 2


def test_only_the_strongest_faint_foci_become_snr_candidates():
    # 38 faint foci (1.2-1.4x a bone of 200 counts, radius 4), each over the noise, none over the brightness ratio
    rng = np.random.default_rng(5)
    shape = (420, 48)
    bone = np.zeros(shape, bool)
    bone[10:410, 8:40] = True
    counts = np.where(bone, 200.0, 20.0)
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    centres = [(20 + 20 * (i // 2), 16 + 16 * (i % 2)) for i in range(38)]
    for (row, col), gain in zip(centres, np.linspace(40.0, 80.0, len(centres))):  # weakest first
        counts += gain * ((rows - row) ** 2 + (cols - col) ** 2 <= 16)
    counts = rng.poisson(counts).astype(np.float32)
    level = bone_level(counts, bone)
    smooth, nothing = ndimage.gaussian_filter(counts, COUNT_SMOOTHING), np.zeros(shape, bool)
    assert count_candidates(smooth, bone, level, nothing) == []
    snr = matched_snr(counts, level)
    found = count_candidates(smooth, bone, level, nothing, snr, snr_limit=25)
    assert len(found) == 25 < len(centres)
    nearest = set()
    for window, mask in found:
        r, c = np.nonzero(mask)
        centre = np.array([r.mean() + window[0].start, c.mean() + window[1].start])
        nearest.add(int(np.argmin(np.hypot(*(np.array(centres) - centre).T))))
    assert len(nearest) == 25  # one candidate per focus
    assert min(nearest) >= 8  # the strongest, give or take the noise: none of the 8 weakest
    assert len(count_candidates(smooth, bone, level, nothing, snr)) == len(centres) < SNR_CANDIDATES_PER_VIEW



def test_a_rescorer_is_given_as_many_faint_candidates_as_it_was_fitted_on(tmp_path):
    rng = np.random.default_rng(6)
    n = 400
    features = rng.normal(size=(n, len(FEATURES)))
    labels = features[:, OVER_BONE] > 0.5
    fitted = fit_rescorer(features, labels, rng.random(n) < 0.5, n_studies=20, snr_limit=7)
    save_rescorer(fitted, tmp_path, {})
    assert load_rescorer(tmp_path).snr_limit == 7 == fitted.info["snr_candidates_per_view"]
    assert fit_rescorer(features, labels, rng.random(n) < 0.5, n_studies=20).snr_limit == SNR_CANDIDATES_PER_VIEW
    assert HotspotRescorer(_OverBone(), 0.0, info={}).snr_limit == SNR_CANDIDATES_BEFORE_STORED  # an older file
    # faint foci along a spine: a rescorer fitted with a limit of 3 is given 3 per view, one with 10 is given 10
    shape = (420, 48)
    bone = np.zeros(shape, bool)
    bone[10:410, 8:40] = True
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    counts = np.where(bone, 200.0, 20.0)
    for index in range(30):
        counts += 60.0 * ((rows - 20 - 12 * index) ** 2 + (cols - 24) ** 2 <= 16)
    views = tuple(rng.poisson(counts).astype(np.float32) for _ in range(2))
    regions = np.where(bone, BY_NAME["thoracic_spine"].label, 0).astype(np.uint8)[None].repeat(2, 0)
    probabilities = np.zeros((2, 2) + shape, np.float32)
    listed = [sum(c.from_counts for c in rescore_candidates([], probabilities, views, regions, 2.4, HotspotRescorer(
        _OverBone(), 0.0, info={"snr_candidates_per_view": limit}), min_pixels=3)) for limit in (3, 10)]
    assert listed == [6, 20]  # both views'


class _OverBone:
    """A stand-in model: the malignancy rises with the count peak over bone."""

    def predict_proba(self, features):
        p = 1 / (1 + np.exp(-8 * (features[:, OVER_BONE] - np.log(2.0))))
        return np.stack([1 - p, p], 1)


def test_study_lesions_with_a_rescorer_list_count_foci_the_network_missed_and_count_them_in_the_bsi():
    counts, bone = _spine()
    _focus(counts, 30, 24, 40.0)  # 4x the bone
    _focus(counts, 80, 20, 18.0)  # 1.8x: a candidate, rescored low, under the keep floor
    maps = np.zeros((2, 3, 64, 24), np.float32)  # the network saw nothing
    maps[:, 0][np.repeat(bone[::2, ::2][None], 2, 0)] = BY_NAME["thoracic_spine"].label
    plain, _ = study_lesions(maps, counts, counts.copy(), pixel_spacing=2.4)
    assert plain.hotspots == [] and plain.bsi == 0
    rescorer = HotspotRescorer(_OverBone(), keep_floor=0.2, info={})
    lesions, numbers = study_lesions(maps, counts, counts.copy(), pixel_spacing=2.4, threshold=0.5,
                                     rescorer=rescorer)
    # the 4x focus, seen in both views (the posterior is the same image, mirrored back by study_lesions)
    assert len(lesions.hotspots) == 2 and {h.view for h in lesions.hotspots} == {"anterior", "posterior"}
    assert all(h.malignancy > 0.9 and h.region == "thoracic_spine" for h in lesions.hotspots)
    assert lesions.n_malignant == 2 and lesions.bsi > 0
    assert [h.number for h in lesions.hotspots] == [1, 2] and int(numbers.max()) == 2
    high_floor = HotspotRescorer(_OverBone(), keep_floor=0.999, info={})
    assert study_lesions(maps, counts, counts.copy(), pixel_spacing=2.4, rescorer=high_floor)[0].hotspots == []


def test_rescored_bsi_outlines_a_hotspot_by_the_networks_own_threshold_and_counts_a_count_focus_whole():
    from bonescan.lesions.bsi import bone_scan_index
    from bonescan.lesions.infer import maps_at_stored_size

    counts, bone = _spine()
    _focus(counts, 30, 24, 40.0)  # seen by the network: a faint rim (0.3) round a core (0.9)
    _focus(counts, 80, 24, 40.0)  # not seen by the network: a count candidate
    maps = np.zeros((2, 3, 64, 24), np.float32)
    maps[:, 0][np.repeat(bone[::2, ::2][None], 2, 0)] = BY_NAME["thoracic_spine"].label
    maps[:, 2, 12:19, 9:16] = 0.3
    maps[:, 2, 14:17, 11:14] = 0.9
    rescorer = HotspotRescorer(_OverBone(), keep_floor=0.2, info={})

    def read(outline):
        return study_lesions(maps, counts, counts.copy(), pixel_spacing=2.4, threshold=0.5, rescorer=rescorer,
                             outline_threshold=outline)

    lesions, numbers = read(0.5)
    assert lesions.n_malignant == 4  # both foci, both views
    regions, probabilities = maps_at_stored_size(maps, counts.shape)
    view_of = {"anterior": 0, "posterior": 1}
    seen = [h.number for h in lesions.hotspots
            if (probabilities[view_of[h.view], 1][numbers[view_of[h.view]] == h.number] >= 0.5).any()]
    assert len(seen) == 2  # the network's focus in each view
    expected = np.isin(numbers, [h.number for h in lesions.hotspots if h.number not in seen])
    expected |= np.isin(numbers, seen) & (probabilities[:, 1] >= 0.5)
    assert lesions.bsi == pytest.approx(bone_scan_index(regions, expected)[0])
    whole = bone_scan_index(regions, numbers > 0)[0]
    assert 0 < lesions.bsi < whole
    assert read(0.95)[0].bsi == pytest.approx(whole)  # no pixel reaches it: every malignant hotspot counts whole


def test_every_candidate_carries_the_networks_strongest_evidence_in_the_study():
    from bonescan.lesions.infer import NetworkMaps, maps_at_stored_size, network_candidates

    counts, bone = _spine()
    _focus(counts, 30, 24, 40.0)  # a count candidate
    maps = np.zeros((2, 3, 64, 24), np.float32)
    maps[:, 0][np.repeat(bone[::2, ::2][None], 2, 0)] = BY_NAME["thoracic_spine"].label
    maps[0, 1, 40:44, 10:14] = 0.9  # a network hotspot lower down, metastasis map 0.8
    maps[0, 2, 40:44, 10:14] = 0.8
    regions, probabilities = maps_at_stored_size(maps, counts.shape)
    views = (counts, counts.copy())
    found = network_candidates(NetworkMaps(maps, views), regions, min_pixels=3, pixel_spacing=2.4)
    candidates, features = all_candidates(found, probabilities, views, regions, 2.4, min_pixels=3)
    assert [c.from_counts for c in candidates].count(False) == 1 and len(candidates) == 3
    column = features[:, FEATURES.index("study_metastasis_peak")]
    np.testing.assert_allclose(column, np.log(0.8 / 0.2), atol=0.05)  # the logit of 0.8, for all three


def test_a_fitted_rescorer_ranks_candidates_and_comes_back_from_its_files(tmp_path):
    rng = np.random.default_rng(1)
    n = 600
    features = rng.normal(size=(n, len(FEATURES)))
    labels = features[:, OVER_BONE] + 0.3 * rng.normal(size=n) > 1.0
    from_counts = rng.random(n) < 0.5
    rescorer = fit_rescorer(features, labels, from_counts, n_studies=30, kept_per_study=2.0)
    scores = rescorer.score(features)
    fresh = rng.normal(size=(n, len(FEATURES)))
    truth = fresh[:, OVER_BONE] + 0.3 * rng.normal(size=n) > 1.0
    assert roc_auc_score(truth, rescorer.score(fresh)) > 0.9  # it learnt the feature that decides, not noise
    assert (scores[from_counts] >= rescorer.keep_floor).sum() == 60  # about 2 count candidates per study pass
    assert load_rescorer(tmp_path) is None  # none fitted
    save_rescorer(rescorer, tmp_path, {"fitted_on_split": "all"})
    loaded = load_rescorer(tmp_path)
    np.testing.assert_array_equal(loaded.score(features), scores)
    assert loaded.keep_floor == rescorer.keep_floor and loaded.info["fitted_on_split"] == "all"
    info = json.loads((tmp_path / RESCORER_INFO).read_text())
    info["features"] = info["features"][:-1]
    (tmp_path / RESCORER_INFO).write_text(json.dumps(info))
    with pytest.raises(RunError, match="other features than this version"):
        load_rescorer(tmp_path)
    (tmp_path / RESCORER_FILE).write_bytes(b"not a zip archive")
    with pytest.raises(RunError, match="cannot load the hotspot rescorer"):
        load_rescorer(tmp_path)
    with pytest.raises(RunError, match="on and off metastases"):
        fit_rescorer(features, np.ones(n, bool), from_counts, n_studies=30)


def test_a_rescorer_file_holding_other_types_than_trees_is_refused(tmp_path):
    # skops loads only the types it is told to trust: a file that would build anything else (here a Fraction,
    # standing for whatever an edited file could hold) is refused before it is loaded.
    from fractions import Fraction

    import skops.io

    rng = np.random.default_rng(2)
    features = rng.normal(size=(200, len(FEATURES)))
    save_rescorer(fit_rescorer(features, features[:, 0] > 0, np.ones(200, bool), n_studies=10), tmp_path, {})
    assert load_rescorer(tmp_path) is not None
    skops.io.dump({"trees": Fraction(1, 3)}, tmp_path / RESCORER_FILE)
    with pytest.raises(RunError, match="not trusted: \\['fractions.Fraction'\\]"):
        load_rescorer(tmp_path)


def _features_one_at_a_time(candidate, maps, pixel_spacing, study_peak):
    """The FEATURES of one candidate as numpy computes them from their definitions (`candidate_features`)."""
    def logit(p):
        p = min(max(float(p), 1e-4), 1 - 1e-4)
        return float(np.log(p / (1 - p)))

    def log(value):
        return float(np.log(value)) if np.isfinite(value) and value > 0 else 0.0

    window, mask, m = candidate.window, candidate.mask, maps[candidate.view]
    height, width = m.counts.shape
    inner = m.counts[window][mask].astype(np.float64)
    near = tuple(slice(max(0, s.start - 3), min(n, s.stop + 3)) for s, n in zip(window, (height, width)))
    outer = tuple(slice(max(0, s.start - 5), min(n, s.stop + 5)) for s, n in zip(window, (height, width)))
    ring = np.ones((outer[0].stop - outer[0].start, outer[1].stop - outer[1].start), bool)
    ring[max(0, window[0].start - 1) - outer[0].start:window[0].stop + 1 - outer[0].start,
         max(0, window[1].start - 1) - outer[1].start:window[1].stop + 1 - outer[1].start] = False
    ring_level = float(np.median(m.counts[outer][ring])) if ring.any() else 0.0
    rows, cols = np.nonzero(mask)
    elongation = 1.0
    if rows.size > 2:
        eigen = np.linalg.eigvalsh(np.cov(np.stack([rows, cols]), bias=True))
        elongation = eigen[1] / max(eigen[0], 1e-3)
    level = m.bone_level[window][mask]
    over_bone = float(np.max(m.smooth[window][mask] / np.maximum(level, 1e-6))) if (level > 0).any() else 0.0
    group = next((g for g in REGION_GROUPS if g in candidate.region), "")
    return [logit(m.metastasis[window][mask].max()), logit(m.metastasis[window][mask].mean(dtype=np.float64)),
            logit(m.hotspot[window][mask].max()), log(mask.sum() * pixel_spacing**2),
            log(inner.mean() / m.normal_bone), logit(m.other_metastasis[near].max()),
            log(inner.mean() / ring_level), log(np.sort(inner)[int(0.9 * (inner.size - 1))] / ring_level),
            log(over_bone), float(np.log1p(max(float(m.snr[window][mask].max()), 0.0))), float(np.log1p(elongation)),
            float(candidate.view), (rows.mean() + window[0].start) / height,
            abs((cols.mean() + window[1].start) / width - 0.5), float(candidate.from_counts), logit(study_peak)] + \
        [float(group == g) for g in REGION_GROUPS]


def test_candidate_features_follow_their_definitions_for_candidates_anywhere_in_the_views():
    rng = np.random.default_rng(5)
    counts = tuple(rng.poisson(20.0, (160, 40)).astype(np.float32) for _ in range(2))
    regions = np.zeros((2, 160, 40), np.uint8)
    regions[:, 60:100, 12:28] = BY_NAME["thoracic_spine"].label
    regions[:, 70:90, 28:36] = BY_NAME["ribs_left"].label
    probabilities = rng.random((2, 2, 160, 40)).astype(np.float32)
    nothing = np.zeros((160, 40), bool)
    maps = view_maps(probabilities, counts, regions, (nothing, nothing))
    candidates = []
    for index in range(60):
        height, width = (int(v) for v in rng.integers(1, 12, 2))
        top, left = int(rng.integers(0, 160 - height + 1)), int(rng.integers(0, 40 - width + 1))
        if index < 8:  # boxes at the views' edges and corners, and soft tissue far from bone
            top, left = (0, 160 - height)[index % 2], (0, 40 - width)[index // 2 % 2]
        mask = rng.random((height, width)) < 0.6
        mask[height // 2, width // 2] = True
        window = (slice(top, top + height), slice(left, left + width))
        candidates.append(Candidate(index % 2, window, mask, 0.5, ("ribs_left", "thoracic_spine", "")[index % 3],
                                    from_counts=bool(index % 4 == 0)))
    found = candidate_features(candidates, maps, 2.4, study_peak=0.7)
    expected = np.array([_features_one_at_a_time(c, maps, 2.4, 0.7) for c in candidates])
    assert found.shape == (60, len(FEATURES))
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5)
    assert (found[:, OVER_BONE] == 0).any() and (found[:, OVER_BONE] > 0).any()  # off bone, and on it
    assert candidate_features([], maps, 2.4, 0.7).shape == (0, len(FEATURES))
    empty = Candidate(0, (slice(0, 2), slice(0, 2)), np.zeros((2, 2), bool), 0.5, "ribs_left")
    with pytest.raises(ValueError, match="without pixels"):
        candidate_features(candidates[:3] + [empty], maps, 2.4, 0.7)
