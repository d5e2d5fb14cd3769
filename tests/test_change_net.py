"""The change network for follow-up: its pairs and truth, its new lesions in the study's pixels, its operating
point, its file, training with resume, and its count joined with the rules' in `bonescan followup`."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image

import bonescan.followup.change_train as change_train
from bonescan.cli import main
from bonescan.errors import ConfigError, RunError
from bonescan.followup import OracleReader
from bonescan.followup.change_net import (
    PREPROCESS, ChangeNet, NewArea, grid_pixels, load_change_model, new_areas, probability_maps, save_change_model,
)
from bonescan.followup.change_train import build_pairs, choose_operating_point, train_change_network
from bonescan.followup.evaluate import compare_patient, manifest_patients
from bonescan.followup.output import NETWORK_COLOUR, write_comparison
from bonescan.lesions.regions import BY_NAME
from bonescan.study import Study
from bonescan.synth.followup import generate_followup_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("change")
    generate_followup_cohort(root / "cohort", patients=4, seed=3, site="mixed")
    return root / "cohort"


@pytest.fixture(scope="module")
def pairs(cohort):
    out = cohort.parent / "pairs.npz"
    return out, build_pairs(out, [cohort], workers=1)


def test_pairs_hold_each_later_visit_with_the_earlier_one_registered_and_the_new_lesions(pairs):
    path, count = pairs
    data = np.load(path)
    assert count == len(data["x"]) >= 4  # every patient has at least one later visit
    assert data["x"].shape[1:] == (4, PREPROCESS.height, PREPROCESS.width)
    assert data["y"].shape[1:] == (2, PREPROCESS.height, PREPROCESS.width)
    masked = data["y"].reshape(count, -1).any(1)
    assert not masked[data["n_new"] == 0].any()  # only lesions unseen before are painted
    assert (data["n_new"] > 0).any() and masked[data["n_new"] > 0].all()  # and every new lesion is painted
    later, earlier = data["x"][:, :2].astype(np.float32), data["x"][:, 2:].astype(np.float32)
    registered = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(later, earlier)]
    unrelated = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(later, np.roll(earlier, 1, axis=0))]
    assert np.median(registered) > 0.8 and np.median(registered) > np.median(unrelated)


def test_a_patient_whose_study_cannot_be_read_is_left_out_of_the_pairs_and_named(cohort, pairs, tmp_path):
    from bonescan.followup.change_train import pairs_for
    from bonescan.followup.evaluate import visit_files

    broken = tmp_path / "cohort"
    shutil.copytree(cohort, broken)
    _, patients = manifest_patients(broken / "manifest.csv")
    victim, rows = next(iter(patients.items()))
    (broken / visit_files(rows.iloc[1])[0]).write_bytes(b"not a DICOM file")  # its first follow-up
    logged = []
    held = pairs_for(tmp_path / "pairs.npz", [broken], 1, logged.append)
    _, count = pairs
    assert len(held["x"]) == count - (len(rows.head(3)) - 1) > 0  # the victim's later visits, nobody else's
    assert victim not in set(held["patient"])
    assert len(held["skipped"]) == 1 and f"{broken} {victim}:" in held["skipped"][0]
    assert any(victim in line and "left out" in line for line in logged)
    logged.clear()
    pairs_for(tmp_path / "pairs.npz", [broken], 1, logged.append)  # taken as built, still named
    assert any("built before" in line for line in logged) and any(victim in line for line in logged)

    for _, rows in patients.items():
        (broken / visit_files(rows.iloc[0])[0]).write_bytes(b"not a DICOM file")
    with pytest.raises(ConfigError, match="no patient could be paired"):
        build_pairs(tmp_path / "none.npz", [broken], workers=1)
    assert not (tmp_path / "none.npz").exists()


def test_new_areas_count_a_lesion_of_both_views_once_and_lie_where_it_is_in_the_study():
    study = Study("s", np.zeros((1024, 256), np.float32), np.zeros((1024, 256), np.float32), (2.4, 2.4))
    probability = np.zeros((2, PREPROCESS.height, PREPROCESS.width), np.float32)
    probability[0, 100:104, 20:24] = 0.9  # one lesion seen in both views (the posterior map is mirrored)
    probability[1, 101:105, 20:24] = 0.8
    probability[1, 300:302, 100:102] = 0.95  # posterior only
    probability[0, 450, 60] = 0.35  # faint, one pixel
    regions = np.zeros((2, 1024, 256), np.uint8)
    regions[0, 190:220, 30:60] = BY_NAME["skull"].label
    lesions = SimpleNamespace(regions=regions)
    areas = new_areas(probability, study, lesions, threshold=0.5, min_pixels=1)
    assert [a.view for a in areas] == ["anterior", "posterior"]
    front, back = areas
    assert front.centroid == pytest.approx(((102 + 0.5) * 2 - 0.5, (21.5 + 0.5) * 2 - 0.5))  # of the union
    assert front.region == "skull" and front.probability == pytest.approx(0.9)
    # 20 network pixels (the two views' outlines laid over each other), each 2 x 2 study pixels of 2.4 mm
    assert front.area_mm2 == pytest.approx(20 * 4 * 2.4 * 2.4)
    # the posterior area back in the stored (unmirrored) posterior view
    assert back.centroid[1] == pytest.approx((PREPROCESS.width - 1 - 100.5 + 0.5) * 2 - 0.5)
    assert back.box == (600, 52, 604, 56) and back.region == ""
    # each area's outline in its box: 2 x 2 study pixels per network pixel, the posterior one mirrored back
    assert front.mask.shape == (front.box[2] - front.box[0], front.box[3] - front.box[1])
    assert front.mask.sum() == 20 * 4
    assert back.mask.shape == (4, 4) and back.mask.all()  # read at the mirrored columns: all False if not
    probability[1, 301, 101] = 0.0  # an L-shaped area: its missing corner, mirrored back, is the bottom left of its box
    (_, l_shaped) = new_areas(probability, study, None, threshold=0.5, min_pixels=1)
    assert l_shaped.box == back.box and l_shaped.mask.sum() == 12 and not l_shaped.mask[2:, :2].any()
    assert len(new_areas(probability, study, None, threshold=0.3, min_pixels=1)) == 3
    assert len(new_areas(probability, study, None, threshold=0.3, min_pixels=2)) == 2


def test_the_operating_point_is_the_most_sensitive_at_the_wanted_specificity():
    def patient(level: float) -> np.ndarray:
        m = np.zeros((2, 64, 32), np.float32)
        m[0, 5:8, 5:8] = m[0, 40:43, 20:23] = level
        return m

    maps = np.stack([patient(0.55)] * 6 + [patient(0.35)] * 4 + [patient(0.0)] * 6)
    n_new = np.array([2] * 6 + [0] * 10)
    point = choose_operating_point(maps, n_new)
    # 0.01-0.3 call the four negatives with faint pairs (specificity 0.6); 0.4 and 0.5 find all six: the first wins
    assert (point.threshold, point.min_pixels) == (0.4, 1)
    assert point.sensitivity == (6, 6) and point.specificity == (10, 10)
    # a bold network's new lesions may all stay under 0.1: the grid reaches below it (0.01 calls the faint negatives)
    point = choose_operating_point(np.stack([patient(0.07)] * 6 + [patient(0.015)] * 4 + [patient(0.0)] * 6), n_new)
    assert (point.threshold, point.min_pixels) == (0.02, 1)
    assert point.sensitivity == (6, 6) and point.specificity == (10, 10)


def test_a_change_network_file_round_trips_and_anything_else_is_refused_by_name(tmp_path, capsys):
    torch.manual_seed(1)
    net = ChangeNet()
    path = save_change_model(tmp_path / "net.pt", net, 0.3, 2, {"cohorts": ["a"]})
    model = load_change_model(path)
    assert (model.threshold, model.min_pixels) == (0.3, 2) and "net.pt" in model.name
    x = np.random.default_rng(0).random((1, 4, PREPROCESS.height, PREPROCESS.width), np.float32)
    np.testing.assert_allclose(probability_maps(model.net, x), probability_maps(net.eval(), x), atol=1e-6)
    (tmp_path / "text.pt").write_text("not a network")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    for bad, reason in (("text.pt", "not a change-network file"), ("other.pt", "expected format"),
                        ("missing.pt", "no such change-network file")):
        with pytest.raises(ConfigError, match=reason) as error:
            load_change_model(tmp_path / bad)
        assert bad in str(error.value)
    assert main(["followup", "a", "b", "--reader", "oracle", "--change-net", str(tmp_path / "other.pt"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "other.pt" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def trained(cohort):
    """A change network of two short epochs on the small cohort (validated on it too)."""
    run = cohort.parent / "run"
    assert main(["followup-train", str(cohort), "--val", str(cohort), "--out", str(run), "--epochs", "2",
                 "--batch", "2", "--workers", "1"]) == 0
    return run


def test_training_resumes_after_a_crash_to_the_same_network(cohort, trained, tmp_path, monkeypatch, capsys):
    whole = trained
    metrics = pd.read_csv(whole / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2] and np.isfinite(metrics["loss"]).all()
    # a second run into the same folder would overwrite the first: refused unless resumed
    capsys.readouterr()
    assert main(["followup-train", str(cohort), "--val", str(cohort), "--out", str(whole), "--epochs", "2",
                 "--batch", "2", "--workers", "1"]) == 2
    assert "--resume" in capsys.readouterr().err

    steps = int(torch.load(whole / "checkpoint.pt", weights_only=True)["steps"])
    crashed, calls = tmp_path / "crashed", {"n": 0}
    augment = change_train.augment

    def crash_in_the_second_epoch(*args):
        calls["n"] += 1
        if calls["n"] == steps + 1:
            raise KeyboardInterrupt
        return augment(*args)

    monkeypatch.setattr(change_train, "augment", crash_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_change_network(crashed, [cohort], [cohort], epochs=2, batch=2, workers=1, progress=False)
    assert not (crashed / "change_net.pt").exists()
    assert int(torch.load(crashed / "checkpoint.pt", weights_only=True)["epoch"]) == 1
    monkeypatch.setattr(change_train, "augment", augment)
    with pytest.raises(RunError, match="the same --epochs"):
        train_change_network(crashed, [cohort], [cohort], epochs=3, batch=2, workers=1, progress=False,
                             resume=True)  # another schedule cannot continue this one
    train_change_network(crashed, [cohort], [cohort], epochs=2, batch=2, workers=1, progress=False, resume=True)
    assert "built before" in capsys.readouterr().err  # the pairs were not built again
    resumed, straight = load_change_model(crashed / "change_net.pt"), load_change_model(whole / "change_net.pt")
    for a, b in zip(resumed.net.state_dict().values(), straight.net.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert (resumed.threshold, resumed.min_pixels) == (straight.threshold, straight.min_pixels)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_runs_in_the_precision_asked_and_resumes_only_in_it(cohort, pairs, tmp_path, monkeypatch, precision):
    path, _ = pairs
    run = tmp_path / "run"
    run.mkdir()
    for name in ("pairs_train.npz", "pairs_val.npz"):
        shutil.copy(path, run / name)  # the pairs of these cohorts, taken as built
    seen = set()
    forward = ChangeNet.forward

    def recording(self, x):
        out = forward(self, x)
        if self.training:
            seen.add(out.dtype)
        return out

    monkeypatch.setattr(ChangeNet, "forward", recording)
    model = train_change_network(run, [cohort], [cohort], epochs=1, batch=2, workers=1, progress=False,
                                 precision=precision)
    assert seen == {torch.bfloat16 if precision == "bf16" else torch.float32}
    document = torch.load(model, weights_only=True)
    assert document["trained_on"]["precision"] == precision
    assert all(v.dtype == torch.float32 for v in document["state"].values() if v.is_floating_point())
    assert np.isfinite(pd.read_csv(run / "metrics.csv")["loss"]).all()
    other = "fp32" if precision == "bf16" else "bf16"
    with pytest.raises(RunError, match=f"was trained in {precision}"):
        train_change_network(run, [cohort], [cohort], epochs=1, batch=2, workers=1, progress=False, resume=True,
                             precision=other)


def test_training_builds_the_channels_asked_and_the_file_rebuilds_them(cohort, pairs, tmp_path, capsys):
    path, _ = pairs
    run = tmp_path / "run"
    run.mkdir()
    for name in ("pairs_train.npz", "pairs_val.npz"):
        shutil.copy(path, run / name)  # the pairs of these cohorts, taken as built
    assert main(["followup-train", str(cohort), "--val", str(cohort), "--out", str(run), "--epochs", "1",
                 "--batch", "2", "--workers", "1", "--channels", "8,16,24"]) == 0
    assert "channels 8,16,24" in capsys.readouterr().err
    model = load_change_model(run / "change_net.pt")
    assert model.net.channels == [8, 16, 24]
    assert model.net.unet.model[0].conv.weight.shape[0] == 8  # the first level is as wide as asked
    maps = probability_maps(model.net, np.load(path)["x"][:1])
    assert maps.shape == (1, 2, PREPROCESS.height, PREPROCESS.width) and np.isfinite(maps).all()
    with pytest.raises(RunError, match="was trained with channels 8,16,24"):
        train_change_network(run, [cohort], [cohort], epochs=1, batch=2, workers=1, progress=False, resume=True)
    for bad in ("16", "16,x,64", "16,1"):
        assert main(["followup-train", str(cohort), "--val", str(cohort), "--out", str(tmp_path / "bad"),
                     "--channels", bad]) == 2
        assert "--channels" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_training_refuses_a_precision_this_cpu_cannot_run_before_building_pairs(cohort, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["followup-train", str(cohort), "--val", str(cohort), "--out", str(run), "--precision", "fp16"]) == 2
    assert "fp16 needs a CUDA GPU" in capsys.readouterr().err
    assert not run.exists()


def test_validation_cohorts_without_both_kinds_of_patient_are_refused_before_training(cohort, pairs, tmp_path,
                                                                                      capsys):
    path, _ = pairs
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(path, run / "pairs_train.npz")  # the pairs of these cohorts, taken as built
    held = dict(np.load(path))
    held["n_new"] = np.zeros_like(held["n_new"])  # no patient with new lesions to find
    np.savez(run / "pairs_val.npz", **held)
    with pytest.raises(ConfigError, match="with and without >= 2 new lesions") as error:
        train_change_network(run, [cohort], [cohort], epochs=1, batch=2, workers=1, progress=False)
    assert str(cohort) in str(error.value) and not (run / "checkpoint.pt").exists()
    said = capsys.readouterr().err  # which cohorts train and which choose, and that one does both here
    assert f"training on 1 cohort(s): {cohort}; choosing the operating point on 1" in said
    assert f"warning: {cohort.resolve()} both trains and chooses the operating point" in said
    with pytest.raises(ConfigError, match="--new-pixel-weight"):
        train_change_network(run, [cohort], [cohort], epochs=1, workers=1, progress=False, new_pixel_weight=0)


class FixedJudge:
    """A change network stand-in that sees `counts[role]` new lesions on each later visit."""

    name = "fixed judge"

    def __init__(self, followup: int, confirmatory: int = 0):
        self.counts = [followup, confirmatory]
        self.calls = 0

    def areas(self, later, earlier, lesions=None, probability=None) -> list[NewArea]:
        n = self.counts[min(self.calls, 1)]
        self.calls += 1
        return [NewArea(k + 1, "anterior", (100 + 40 * k, 60, 110 + 40 * k, 70), (105.0 + 40 * k, 65.0), 100.0,
                        0.9, "ribs_left") for k in range(n)]


def test_the_change_networks_count_joins_the_rules_in_the_verdict_and_every_output(cohort, tmp_path, monkeypatch):
    _, patients = manifest_patients(cohort / "manifest.csv")
    monkeypatch.chdir(cohort)  # the manifest's paths are relative to it
    reader = OracleReader()
    quiet = next(rows for rows in patients.values() if rows["change"].iloc[0] in ("stable", "response", "flare"))
    alone = compare_patient(quiet, reader)
    assert len(alone.followup.new) < 2 and alone.network is None
    either = compare_patient(quiet, reader, change_model=FixedJudge(3), join="either")
    assert either.new_count == 3 and len(either.followup.new) == len(alone.followup.new)
    assert either.verdict.reason.startswith("3 lesions new on the first follow-up")
    assert "change network (3 new" in either.verdict.reason and "either" in either.verdict.reason
    assert "either of the truth (" in either.verdict.reason  # the oracle reader's new lesions are the truth's
    network = compare_patient(quiet, reader, change_model=FixedJudge(0), join="network")
    assert network.new_count == 0 and network.verdict.reason.startswith("0 lesions new")

    paths = write_comparison(either, tmp_path / "out")
    document = json.loads(paths["json"].read_text())
    assert document["change_network"]["join"] == "either"
    assert [a["number"] for a in document["change_network"]["followup"]] == [1, 2, 3]
    image = np.asarray(Image.open(paths["png"]).convert("RGB"))
    assert (image == NETWORK_COLOUR).all(-1).sum() > 50  # the network's boxes drawn
    sr = pydicom.dcmread(paths["sr"])
    text = " ".join(str(e.value) for e in sr.iterall() if isinstance(e.value, str))
    assert "change network follow-up N3" in text and "seen by the change network" in text


def test_areas_apart_are_those_on_no_offered_hotspot_in_either_view():
    from types import SimpleNamespace

    from bonescan.followup.change_net import apart_from, grid_pixels

    shape = (1024, 256)  # two study pixels per grid cell each way
    hotspot = SimpleNamespace(view="posterior", box=(400, 200, 404, 204), mask=None)
    cells = grid_pixels(hotspot, shape)
    assert set(zip(*(c.tolist() for c in cells))) == {(200, 27), (200, 26), (201, 27), (201, 26)}  # mirrored
    on_it = NewArea(1, "anterior", (0, 0, 1, 1), (0.0, 0.0), 4.0, 0.9, "", grid=(np.array([201]), np.array([26])))
    beside = NewArea(2, "anterior", (0, 0, 1, 1), (0.0, 0.0), 4.0, 0.9, "", grid=(np.array([201]), np.array([100])))
    unknown = NewArea(3, "anterior", (0, 0, 1, 1), (0.0, 0.0), 4.0, 0.9, "")
    assert apart_from([on_it, beside, unknown], [hotspot], shape) == [2, 3]
    assert apart_from([on_it, beside], [], shape) == [1, 2]


class OnHotspots(FixedJudge):
    """A change network stand-in whose follow-up areas lie on the given hotspots' cells, and one more far off them."""

    def __init__(self, hotspots, shape):
        super().__init__(0)
        self.grids = [grid_pixels(h, shape) for h in hotspots] + [(np.array([5]), np.array([5]))]

    def areas(self, later, earlier, lesions=None, probability=None) -> list[NewArea]:
        self.calls += 1
        if self.calls > 1:
            return []
        return [NewArea(k + 1, "anterior", (0, 0, 1, 1), (0.0, 0.0), 4.0, 0.9, "", grid=grid)
                for k, grid in enumerate(self.grids)]


def test_the_union_join_adds_the_networks_lesions_apart_from_the_judged_ones(cohort, monkeypatch):
    _, patients = manifest_patients(cohort / "manifest.csv")
    monkeypatch.chdir(cohort)
    reader = OracleReader()
    rows = next(r for r in patients.values() if r["change"].iloc[0] == "progression")
    alone = compare_patient(rows, reader)
    called = [les for les in alone.lesions if les.number in alone.followup.new]
    assert called, "a progressing patient with new lesions"
    shape = np.shape(alone.visits[1].study.anterior)
    network = OnHotspots([called[0].hotspots[1][0]], shape)  # one area on a judged lesion, one apart
    union = compare_patient(rows, reader, change_model=network, join="union")
    assert union.network.followup_apart == [2]
    assert union.new_count == len(alone.followup.new) + 1  # the judged lesion counts once
    assert "union of the truth" in union.verdict.reason and "apart from the lesions judged: 1" in union.verdict.reason
    either = compare_patient(rows, reader, change_model=OnHotspots([called[0].hotspots[1][0]], shape), join="either")
    assert either.new_count == max(len(alone.followup.new), 2)


def test_followup_evaluates_a_cohort_with_a_trained_change_network(cohort, trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(cohort)
    out = tmp_path / "eval"
    assert main(["followup", "--manifest", "manifest.csv", "--reader", "oracle", "--evaluate", "--out", str(out),
                 "--change-net", str(trained / "change_net.pt"), "--join", "either"]) == 0
    summary = pd.read_csv(out / "followup_summary.csv")
    assert summary["error"].isna().all() and summary["network_new"].notna().all()
    assert (summary["new"] == summary[["rules_new", "network_new"]].max(axis=1)).all()  # "either": the larger
    # every area of the network traced to what lies under it
    network_kinds = summary[[c for c in summary.columns if c.startswith("network_called_")]].sum(axis=1)
    assert (network_kinds == summary["network_new"]).all()
    assert f"called new by the change network: {int(summary['network_new'].sum())}, of which" in capsys.readouterr().out
    assert "change network" in (out / "followup_report.html").read_text()
    document = json.loads(next(out.glob("*/followup.json")).read_text())
    assert document["change_network"]["model"].startswith("change network (change_net.pt")
    assert main(["followup", "--manifest", "manifest.csv", "--reader", "oracle", "--out", str(tmp_path / "x"),
                 "--change-net", str(trained / "change_net.pt"), "--join", "both"]) == 2
    assert "--join" in capsys.readouterr().err
