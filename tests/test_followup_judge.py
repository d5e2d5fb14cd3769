"""The learned new-lesion judge: its threshold rule, fitting on a follow-up cohort, and `followup --judge`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bonescan.cli import main
from bonescan.errors import ManifestError, RunError
from bonescan.followup.new_judge import (CHANGE_FEATURES, FEATURES, THRESHOLDS, Candidates, choose_threshold,
                                         fit_new_lesion_judge, load_new_lesion_judge,
                                         patient_specificity_sensitivity)


def test_the_threshold_is_the_most_sensitive_one_reaching_the_specificity():
    # Four patients: two with >= 2 true new lesions (0, 1), two without (2, 3); each candidate's score.
    patient = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    scores = np.array([0.9, 0.8, 0.35, 0.3, 0.5, 0.2, 0.05, 0.04])
    truth_new = np.array([2, 3, 0, 1])
    # at 0.3 patient 1 is found, patient 2 is not yet called (one candidate at 0.5 only)
    assert patient_specificity_sensitivity(scores, patient, truth_new, 0.3) == (1.0, 1.0)
    assert patient_specificity_sensitivity(scores, patient, truth_new, 0.2) == (0.5, 1.0)
    assert patient_specificity_sensitivity(scores, patient, truth_new, 0.85) == (1.0, 0.0)
    threshold, specificity, sensitivity = choose_threshold(scores, patient, truth_new, 0.9)
    assert threshold == pytest.approx(0.25) and (specificity, sensitivity) == (1.0, 1.0)  # the lowest reaching it
    # beside a change network ([its count, those apart from every candidate] per patient) the join decides:
    # "either" the larger count (the network calls patient 2 falsely, finds patient 1), "union" the judge's + apart
    network = np.array([[0, 0], [2, 0], [2, 1], [0, 0]])
    assert patient_specificity_sensitivity(scores, patient, truth_new, 0.85, network) == (0.5, 0.5)
    assert patient_specificity_sensitivity(scores, patient, truth_new, 0.85, network, "union") == (1.0, 0.0)
    assert patient_specificity_sensitivity(scores, patient, truth_new, 0.4, network, "union") == (0.5, 0.5)
    assert choose_threshold(scores, patient, truth_new, 0.9, network)[1:] == (0.5, 1.0)  # none reaches it
    # union: patient 2 (one candidate at 0.5, one lesion apart) is spared from 0.55, where only patient 0 is found
    assert choose_threshold(scores, patient, truth_new, 0.9, network, "union") == (pytest.approx(0.55), 1.0, 0.5)
    # a target no threshold reaches: the most specific threshold
    assert choose_threshold(np.ones(8), patient, truth_new, 0.9)[0] == THRESHOLDS[0]


def test_a_judge_needs_both_kinds_of_candidate_and_enough_patients():
    features = np.zeros((6, len(FEATURES)))
    one_kind = Candidates(features, np.zeros(6, bool), np.arange(6), np.zeros(6, int), [])
    with pytest.raises(ManifestError, match="0 of 6 on one"):
        fit_new_lesion_judge(one_kind)
    few = Candidates(features, np.array([1, 0, 1, 0, 1, 0], bool), np.array([0, 0, 1, 1, 2, 2]), np.zeros(3, int),
                     [])
    with pytest.raises(ManifestError, match="at least 5 patients with candidates.*got 3 of 3"):
        fit_new_lesion_judge(few)
    # Twelve patients compared, but candidates under three of them only: still too few folds to keep them apart.
    sparse = Candidates(features, np.array([1, 0, 1, 0, 1, 0], bool), np.array([0, 0, 4, 4, 9, 9]),
                        np.zeros(12, int), [])
    with pytest.raises(ManifestError, match="got 3 of 12"):
        fit_new_lesion_judge(sparse)


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """A 1-epoch tiny lesion network, a follow-up cohort of 8 patients (and one.csv: the manifest of its first) and
    the judge fitted on them by the CLI."""
    from bonescan.synth import generate_cohort
    from bonescan.synth.followup import generate_followup_cohort

    folder = tmp_path_factory.mktemp("judge")
    train = generate_cohort(folder / "train", cases=20, seed=2, difficulty="easy")
    assert main(["train", "--manifest", str(train.manifest), "--preset", "tiny-lesion", "--epochs", "1",
                 "--out", str(folder / "run"), "--precision", "fp32", "--workers", "0"]) == 0
    generate_followup_cohort(folder / "cohort", patients=8, seed=0, site="mixed")
    table = pd.read_csv(folder / "cohort" / "manifest.csv")
    table[table["patient_id"] == table["patient_id"].iloc[0]].to_csv(folder / "cohort" / "one.csv", index=False)
    assert main(["followup-judge", str(folder / "cohort"), "--run", str(folder / "run"), "--out",
                 str(folder / "judge.skops")]) == 0
    return folder


def test_followup_judge_fits_on_a_cohort_and_followup_uses_it(judged, tmp_path, capsys):
    folder = judged
    judge = load_new_lesion_judge(folder / "judge.skops")
    info = judge.info
    assert info["fitted_on_patients"] == 8 and 0 < info["on_new_metastases"] < info["candidates"]
    assert info["lesion_run"] == str((folder / "run").resolve()) and judge.threshold in THRESHOLDS
    # one patient's batch, judged by the rules and by the learned judge: the outputs say which
    base = ["followup", "--manifest", str(folder / "cohort" / "one.csv"), "--run", str(folder / "run")]
    assert main([*base, "--out", str(tmp_path / "rules")]) == 0
    assert main([*base, "--out", str(tmp_path / "learned"), "--judge", str(folder / "judge.skops")]) == 0
    patient = sorted(p.name for p in (tmp_path / "learned").iterdir() if p.is_dir())[0]
    rules = json.loads((tmp_path / "rules" / patient / "followup.json").read_text())
    learned = json.loads((tmp_path / "learned" / patient / "followup.json").read_text())
    assert rules["new_lesion_judge"] == "rules" and learned["new_lesion_judge"] == judge.name
    assert judge.name.startswith("learned judge (8 patients")
    scores = judge.probabilities(np.zeros((2, len(FEATURES))))
    assert scores.shape == (2,) and ((0 <= scores) & (scores <= 1)).all()


def test_the_learned_judge_calls_new_the_candidates_scored_at_its_threshold_or_more(monkeypatch):
    from types import SimpleNamespace

    from bonescan.followup import new_judge

    class Scores:  # stands in for the trees: a candidate's score is its first feature
        def predict_proba(self, features):
            return np.stack([1 - features[:, 0], features[:, 0]], axis=1)

    given_maps = []

    def features(check, lesion, visit, change_map=None):
        given_maps.append(change_map)
        return [lesion.number / 10] * (len(FEATURES) + (len(CHANGE_FEATURES) if change_map is not None else 0))

    monkeypatch.setattr(new_judge, "candidate_features", features)
    judge = new_judge.NewLesionModel(Scores(), 0.3).judge([], [], [])
    candidates = [SimpleNamespace(number=n) for n in (1, 2, 3, 4, 5)]
    assert judge.new_among(candidates, 1, [0]) == {3, 4, 5}
    assert judge.new_among([], 1, [0]) == set()
    assert given_maps == [None] * 5
    # fitted beside a change network: the candidates are measured in the follow-up's map
    beside = new_judge.NewLesionModel(Scores(), 0.3, {"features": list(FEATURES + CHANGE_FEATURES)})
    assert beside.uses_change_network and "with the change network" in beside.name
    maps = {1: np.zeros((2, 4, 4)), 2: np.ones((2, 4, 4))}
    given_maps.clear()
    assert beside.judge([], [], [], maps).new_among(candidates[:2], 1, [0]) == set()
    assert len(given_maps) == 2 and all(m is maps[1] for m in given_maps)
    # a confirmatory scan's candidates (unseen on two earlier scans) are not what it was fitted on: the rules judge
    monkeypatch.setattr(new_judge.UptakeCheck, "new_among", lambda self, candidates, visit, reference: {"rules"})
    given_maps.clear()
    assert beside.judge([], [], [], maps).new_among(candidates, 2, [0, 1]) == {"rules"} and given_maps == []
    assert judge.new_among(candidates, 1, [0]) == {3, 4, 5}


def test_the_change_features_read_the_change_networks_map_under_a_hotspot():
    """`grid_pixels` inverts `new_areas`' mapping: an area of the posterior map, as a hotspot, covers its own cells."""
    from types import SimpleNamespace

    from bonescan.followup.change_net import grid_pixels, new_areas
    from bonescan.followup.new_judge import change_features

    probability = np.zeros((2, 512, 128), np.float32)
    cells = [(200, 30), (200, 31), (201, 30), (202, 30), (203, 30)]  # an L near the left edge of the grid
    for k, (r, c) in enumerate(cells):
        probability[1, r, c] = 0.6 + 0.1 * k
    later = SimpleNamespace(anterior=np.zeros((1024, 256)), pixel_spacing=(2.0, 2.0))
    (area,) = new_areas(probability, later, None, 0.5, 1)
    assert area.view == "posterior" and area.box[1] > 128  # mirrored back: the right half of the stored view
    assert set(zip(*(a.tolist() for a in grid_pixels(area, (1024, 256))))) == set(cells)
    assert change_features(probability, [area], (1024, 256)) == pytest.approx([1.0, np.mean([0.6, 0.7, 0.8, 0.9,
                                                                                               1.0])])
    anterior = SimpleNamespace(view="anterior", box=area.box, mask=area.mask)  # same pixels, the other view's map
    assert change_features(probability, [anterior], (1024, 256)) == [0.0, 0.0]
    assert change_features(probability, [], (1024, 256)) == [0.0, 0.0]


def test_a_judge_that_cannot_be_used_is_refused_by_name(judged, tmp_path, capsys):
    folder = judged
    arguments = ["followup", "--manifest", str(folder / "cohort" / "one.csv"), "--out", str(tmp_path / "o")]
    broken = tmp_path / "broken.skops"
    broken.write_bytes(b"not a judge")
    (tmp_path / "broken.skops.json").write_text(json.dumps({"features": list(FEATURES), "threshold": 0.5}))
    assert main([*arguments, "--run", str(folder / "run"), "--judge", str(broken)]) == 2
    assert f"{broken}: cannot use this new-lesion judge" in capsys.readouterr().err
    with pytest.raises(RunError, match="other features"):
        (tmp_path / "broken.skops.json").write_text(json.dumps({"features": ["rise"], "threshold": 0.5}))
        load_new_lesion_judge(broken)
    assert main([*arguments, "--reader", "oracle", "--judge", str(folder / "judge.skops")]) == 2
    assert "nothing to judge" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # fitted with another run's network: used, with a warning
    info = json.loads((folder / "judge.skops.json").read_text())
    (tmp_path / "moved.skops").write_bytes((folder / "judge.skops").read_bytes())
    (tmp_path / "moved.skops.json").write_text(json.dumps({**info, "lesion_run": str(tmp_path / "elsewhere")}))
    table = pd.read_csv(folder / "cohort" / "manifest.csv")
    single_files = table.groupby("patient_id")["path"].apply(lambda p: p.notna().all())
    first = table[table["patient_id"] == single_files[single_files].index[0]].sort_values("timepoint")
    visits = [str(folder / "cohort" / path) for path in first["path"].head(2)]
    assert main(["followup", *visits, "--run", str(folder / "run"), "--out", str(tmp_path / "one"),
                 "--judge", str(tmp_path / "moved.skops")]) == 0
    captured = capsys.readouterr()
    assert "was fitted with the lesion network of" in captured.err and "learned judge" in captured.out
    # a patient that cannot be compared is listed and left out; the others are collected
    from bonescan.followup import NetworkReader
    from bonescan.followup.new_judge import collect_candidates

    two = table[table["patient_id"].isin(table["patient_id"].unique()[:2])].copy()
    broken_visit = two.index[two["path"].notna()][-1]
    two.loc[broken_visit, "path"] = str(broken)
    two.to_csv(folder / "cohort" / "two.csv", index=False)
    collected = collect_candidates([folder / "cohort" / "two.csv"], NetworkReader(folder / "run"))
    assert len(collected.failed) == 1 and collected.truth_new.size == 1 and str(broken) in collected.failed[0][1]
    assert collected.features.shape == (collected.patient.size, len(FEATURES)) and (collected.patient == 0).all()
    # bad options: one error each, nothing fitted
    for wrong in (["--specificity", "1.5"], ["--run", str(tmp_path / "none")]):
        command = ["followup-judge", str(folder / "cohort"), "--run", str(folder / "run"), "--out",
                   str(tmp_path / "j.skops"), *wrong]
        assert main(command) == 2, wrong
    assert not (tmp_path / "j.skops").exists()


def test_a_judge_fitted_beside_a_change_network_weighs_it_and_needs_it(judged, tmp_path, capsys):
    import torch

    from bonescan.followup.change_net import ChangeNet, save_change_model

    folder = judged
    torch.manual_seed(0)
    for name in ("change.pt", "other.pt"):  # untrained: what it sees is noise, enough to carry the features
        save_change_model(tmp_path / name, ChangeNet((4, 8, 8)), threshold=0.5, min_pixels=2)
    assert main(["followup-judge", str(folder / "cohort"), "--run", str(folder / "run"), "--out",
                 str(tmp_path / "judge.skops"), "--change-net", str(tmp_path / "change.pt")]) == 0
    judge = load_new_lesion_judge(tmp_path / "judge.skops")
    assert judge.uses_change_network and judge.info["features"] == list(FEATURES + CHANGE_FEATURES)
    assert judge.info["change_network"] == str((tmp_path / "change.pt").resolve())
    assert judge.info["join"] == "either"
    base = ["followup", "--manifest", str(folder / "cohort" / "one.csv"), "--run", str(folder / "run"),
            "--judge", str(tmp_path / "judge.skops")]
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "without")]) == 2  # it cannot weigh what it is not given
    said = capsys.readouterr().err
    assert "--judge: this judge weighs what the change network sees" in said and "change.pt" in said
    assert not (tmp_path / "without").exists()
    assert main([*base, "--out", str(tmp_path / "with"), "--change-net", str(tmp_path / "change.pt")]) == 0
    assert "fitted beside the change network" not in capsys.readouterr().err
    patient = next(p for p in (tmp_path / "with").iterdir() if p.is_dir())
    document = json.loads((patient / "followup.json").read_text())
    assert document["new_lesion_judge"] == judge.name and "with the change network" in judge.name
    assert document["change_network"] is not None
    assert "either of the learned judge (" in document["verdict"]["reason"]
    # another change network than it was fitted beside: used, with a warning
    assert main([*base, "--out", str(tmp_path / "other"), "--change-net", str(tmp_path / "other.pt"), "--join",
                 "union"]) == 0
    said = capsys.readouterr().err
    assert "fitted beside the change network" in said and "chose its threshold for --join either, not union" in said
    # its threshold cannot be chosen for the network's count alone, nor for a join without the network
    for wrong in (["--change-net", str(tmp_path / "change.pt"), "--join", "network"], ["--join", "union"]):
        assert main(["followup-judge", str(folder / "cohort"), "--run", str(folder / "run"), "--out",
                     str(tmp_path / "no.skops"), *wrong]) == 2
        assert "--join" in capsys.readouterr().err and not (tmp_path / "no.skops").exists()
