"""Follow-up: synthetic visits with lasting finding identities, registration, PCWG3, comparison and its outputs."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from bonescan.cli import main
from bonescan.errors import FollowUpError
from bonescan.followup import OracleReader, Visit, check_visits, pcwg3_verdict
from bonescan.followup.register import register_view
from bonescan.lesions.truth import LesionTruth, load_truth, save_truth
from bonescan.study import Study, StudyMeta
from bonescan.synth import case_seed, generate_case
from bonescan.synth.followup import generate_followup_cohort, generate_patient, plan_patient


# --- PCWG3 "2+2" rule, hand cases -------------------------------------------------------------------------------

def test_pcwg3_first_followup_needs_two_new_confirmed_by_two_more_six_weeks_later():
    assert pcwg3_verdict(1).status == "no progression"
    assert pcwg3_verdict(2).status == "unconfirmed"  # no confirmatory scan yet
    assert pcwg3_verdict(2, 2, 42).status == "progression"  # exactly six weeks is enough
    early = pcwg3_verdict(2, 5, 41)
    assert early.status == "unconfirmed" and "41 days" in early.reason
    assert pcwg3_verdict(2, 2, None).status == "unconfirmed"  # window cannot be checked
    flare = pcwg3_verdict(4, 1, 60)
    assert flare.status == "no progression" and "not confirmed" in flare.reason
    assert pcwg3_verdict(0, 0, 60).status == "no progression"
    # Fewer than 2 new on the first follow-up but >= 2 new on the next scan: the later-scan rule starts.
    assert pcwg3_verdict(1, 3, 60).status == "unconfirmed"
    with pytest.raises(ValueError):
        pcwg3_verdict(-1)


def test_pcwg3_later_scan_needs_two_new_still_seen_six_weeks_later():
    assert pcwg3_verdict(1, first_followup=False).status == "no progression"
    assert pcwg3_verdict(2, first_followup=False).status == "unconfirmed"
    # On a later scan, confirmation means the new lesions are still there (no further 2 needed).
    assert pcwg3_verdict(2, 2, 50, first_followup=False).status == "progression"
    assert pcwg3_verdict(3, 1, 50, first_followup=False).status == "no progression"
    assert pcwg3_verdict(3, 3, 30, first_followup=False).status == "unconfirmed"
    # The same counts on a first follow-up would need 2 MORE, not 2 persisting: the rules differ.
    assert pcwg3_verdict(2, 1, 50).status == "no progression"


# --- visits checked together ------------------------------------------------------------------------------------

def _visit(role: str, patient: str | None, date: str | None, views: int = 2) -> Visit:
    image = np.ones((512, 128), np.float32)
    study = Study(f"{role}.dcm", image, image if views == 2 else None, (2.4, 2.4),
                  StudyMeta(patient_id=patient, study_date=date))
    return Visit(role, (study.source,), study)


def test_visits_of_other_patients_or_out_of_order_are_refused_with_one_error():
    with pytest.raises(FollowUpError, match="different patients"):
        check_visits([_visit("baseline", "A", "20200101"), _visit("follow-up", "B", "20200301")])
    forced = [_visit("baseline", "A", "20200101"), _visit("follow-up", "B", "20200301")]
    check_visits(forced, force=True)
    assert forced[1].timepoint == 60
    with pytest.raises(FollowUpError, match="before its baseline"):
        check_visits([_visit("baseline", "A", "20200301"), _visit("follow-up", "A", "20200101")])
    with pytest.raises(FollowUpError, match="before its follow-up"):
        check_visits([_visit("baseline", "A", "20200101"), _visit("follow-up", "A", "20200401"),
                      _visit("confirmatory", "A", "20200301")])


# --- registration -----------------------------------------------------------------------------------------------

def test_registration_recovers_a_known_shift_and_rotation_across_pixel_sizes():
    case = generate_case("r0", case_seed(3, 0), "paper")
    fixed = case.anterior.astype(np.float32)
    spacing = case.patient.pixel_spacing
    image = sitk.GetImageFromArray(fixed)
    image.SetSpacing((spacing, spacing))
    known = sitk.Euler2DTransform()
    known.SetCenter((128 * spacing, 512 * spacing))
    known.SetAngle(np.deg2rad(3.0))
    known.SetTranslation((14.0, -25.0))  # mm
    # The moving study: another camera at 2.1 mm per pixel, the body moved by `known` (output point -> input).
    moving_spacing = 2.1
    size = (int(256 * spacing / moving_spacing), int(1024 * spacing / moving_spacing))
    moving = sitk.Resample(image, size, known, sitk.sitkLinear, (0.0, 0.0), (moving_spacing, moving_spacing))
    result = register_view(fixed, sitk.GetArrayFromImage(moving), (spacing, spacing),
                           (moving_spacing, moving_spacing))
    points = np.array([[200.0, 120.0], [600.0, 90.0], [900.0, 160.0]])  # moving pixels (row, col)
    expected = np.array([known.TransformPoint((c * moving_spacing, r * moving_spacing)) for r, c in points])
    expected = expected[:, ::-1] / spacing  # baseline pixels (row, col)
    error_mm = np.linalg.norm(result.to_fixed(points) - expected, axis=1) * spacing
    assert error_mm.max() < 3.0, error_mm
    assert abs(np.rad2deg(result.angle) + 3.0) < 0.5  # ITK maps baseline -> moving: the inverse of `known`


def test_registration_gives_the_same_fit_every_time():
    # The metric samples 20 % of the pixels at random: a fixed seed must fix the sample (SimpleITK reads seed 0 as
    # "the wall clock", which gave a new fit on every call).
    fixed, moving = generate_case("d0", case_seed(3, 0), "paper"), generate_case("d1", case_seed(3, 1), "paper")
    spacing = (fixed.patient.pixel_spacing,) * 2
    fits = [register_view(fixed.anterior.astype(np.float32), moving.anterior.astype(np.float32), spacing, spacing)
            for _ in range(2)]
    assert fits[0] == fits[1]


# --- synthetic follow-up ----------------------------------------------------------------------------------------

def _metastases(case) -> dict[int, float]:
    return {i: f.contrast for i, f in zip(case.visit.identities, case.findings) if i and f.category == "metastasis"}


def test_synthetic_courses_change_what_they_should_and_keep_identities():
    base = plan_patient(5, 0)
    timepoints = (0, 70, 130)
    flare = generate_patient(replace(base, change="flare", grade=3, timepoints=timepoints))
    before, during, after = (_metastases(c) for c in flare)
    assert before and set(during) == set(before) and set(after) <= set(before)  # nothing new
    assert all(during[i] > before[i] for i in before)  # brighter early after therapy
    response = generate_patient(replace(base, change="response", grade=3, timepoints=timepoints[:2]))
    first, second = (_metastases(c) for c in response)
    assert set(second) <= set(first) and all(second[i] < first[i] for i in second)
    progression = generate_patient(replace(base, change="progression", grade=2, timepoints=timepoints,
                                           confirmed=True))
    first, second, third = (set(_metastases(c)) for c in progression)
    assert first <= second and len(second - first) >= 1 and len(third - second) >= 2
    # Visits differ as real ones do: placement, count level; the body is the same one.
    a, b = progression[0], progression[1]
    assert (a.patient.top_row, a.patient.tilt_deg) != (b.patient.top_row, b.patient.tilt_deg)
    assert a.patient.height_mm == b.patient.height_mm and a.anterior.sum() != b.anterior.sum()


def test_truth_files_without_identity_stay_readable(tmp_path):
    truth = LesionTruth(np.zeros((2, 8, 4), np.uint8), np.zeros((2, 8, 4), np.uint16), [], [], [])
    assert load_truth(save_truth(truth, tmp_path / "old.npz")).identity is None
    truth.identity = []
    assert load_truth(save_truth(truth, tmp_path / "new.npz")).identity == []


def test_truth_counts_new_lesions_as_a_reader_can_see_them():
    from bonescan.followup.evaluate import truth_changes

    def visit(spots: dict[int, tuple[int, int, int]]) -> LesionTruth:  # identity -> (row, col, size); size 0: no pixel
        instances = np.zeros((2, 60, 20), np.uint16)
        for k, (row, col, size) in enumerate(spots.values(), start=1):
            instances[:, row:row + size, col:col + size] = k
        n = len(spots)
        return LesionTruth(np.zeros((2, 60, 20), np.uint8), instances, ["metastasis"] * n, ["metastasis"] * n,
                           [""] * n, identity=list(spots))

    baseline = visit({1: (5, 5, 3)})
    followup = visit({1: (5, 5, 3), 2: (8, 5, 3),  # 2 touches 1: the old lesion grew
                      3: (20, 5, 3), 4: (23, 5, 2),  # 3 and 4 touch: one new focus
                      5: (40, 5, 3),  # new, apart
                      6: (50, 5, 0)})  # new but not in the image
    confirmatory = visit({1: (5, 5, 3), 3: (20, 5, 3), 5: (40, 5, 3), 7: (30, 12, 3), 8: (50, 12, 3)})
    new, more, _ = truth_changes([baseline, followup, confirmatory])
    assert (new, more) == (2, 2)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three followed patients of seed 0 (stable; flare; progression with 5 new, unconfirmed), mixed cameras."""
    out = tmp_path_factory.mktemp("followup") / "cohort"
    generate_followup_cohort(out, patients=3, seed=0, site="mixed")
    return out


def test_followup_cohort_manifest_links_visits_of_each_patient(cohort):
    df = pd.read_csv(cohort / "manifest.csv")
    assert {"patient_id", "timepoint", "change", "truth"} <= set(df.columns)
    for _, visits in df.groupby("patient_id"):
        assert visits["split"].nunique() == 1 and visits["timepoint"].min() == 0
        assert visits["timepoint"].is_monotonic_increasing and len(visits) in (2, 3)
    assert df.groupby("patient_id")["site"].nunique().max() > 1  # visits on different cameras
    stable = df[df["change"] == "stable"].sort_values("timepoint")
    first, second = (load_truth(cohort / p) for p in stable["truth"])
    followed = {i for i in first.identity if i}
    assert followed and followed <= set(second.identity)


def test_followup_cli_evaluates_a_cohort_with_the_oracle_reader(cohort, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["followup", "--manifest", str(cohort / "manifest.csv"), "--reader", "oracle", "--evaluate",
                 "--out", str(out)]) == 0
    html = (out / "followup_report.html").read_text()
    assert "oracle (synthetic truth)" in html and "upper bound" in html
    assert "true new lost: not called / under an earlier hotspot / no hotspot" in html and "<td>0 / 0 / 0</td>" in html
    summary = pd.read_csv(out / "followup_summary.csv").set_index("change")
    assert summary["error"].isna().all()
    # Counts and verdicts follow the truth (the oracle reads perfectly; only registration and matching can err).
    assert summary.loc["progression", "new"] == summary.loc["progression", "truth_new"] >= 2
    assert summary.loc["flare", "new"] == 0 and summary.loc["flare", "verdict"] != "progression"
    # Every true new lesion traced to a hotspot the oracle called new; none lost.
    assert summary.loc["progression", "new_found"] == summary.loc["progression", "truth_new"]
    assert summary[["new_not_called_new", "new_under_an_earlier_hotspot", "new_no_hotspot"]].sum().sum() == 0
    df = pd.read_csv(cohort / "manifest.csv")
    for change in ("progression", "flare"):
        patient = df[df["change"] == change]["patient_id"].iloc[0]
        result = json.loads((out / patient / "followup.json").read_text())
        assert result["reader"] == "oracle (synthetic truth)" and result["verdict"]["reason"]
        sr = pydicom.dcmread(out / patient / "followup_sr.dcm")
        referenced = {item.StudyInstanceUID for seq in ("CurrentRequestedProcedureEvidenceSequence",
                                                        "PertinentOtherEvidenceSequence") for item in sr.get(seq, [])}
        studies = {pydicom.dcmread(cohort / p, stop_before_pixels=True).StudyInstanceUID
                   for p in df[df["patient_id"] == patient]["path"].fillna(df["anterior"])}
        assert referenced == studies and sr.StudyInstanceUID in studies
        assert (out / patient / "followup.png").stat().st_size > 10_000
        # The PNG as a Secondary Capture in the newest study, listed in the SR's evidence: any viewer shows it.
        capture = pydicom.dcmread(out / patient / "followup_sc.dcm")
        assert capture.StudyInstanceUID == sr.StudyInstanceUID and capture.SeriesNumber == 9906
        assert capture.pixel_array.shape[2] == 3 and capture.Rows > 500
        assert capture.SOPInstanceUID in {item.ReferencedSOPInstanceUID
                                          for series in sr.CurrentRequestedProcedureEvidenceSequence
                                          for s in series.ReferencedSeriesSequence for item in s.ReferencedSOPSequence}
        numbers = [les["number"] for les in result["lesions"]]
        assert sorted(numbers) == list(range(1, len(numbers) + 1))
        assert set(result["followup"]["new"]) <= set(numbers)
    printed = capsys.readouterr().out
    assert "reader: oracle" in printed and "without a hotspot; >= 2 new lesions within a perfect judge's reach: 1.000" \
        in printed
    # The oracle calls new exactly the new metastases: nothing else under its new lesions.
    kinds = [c for c in summary.columns if c.startswith("rules_called_")]
    assert summary["rules_called_new_metastasis"].sum() == summary["new"].sum() > 0
    assert summary[[c for c in kinds if c != "rules_called_new_metastasis"]].sum().sum() == 0
    assert summary["network_called_nothing"].isna().all()  # no change network ran
    assert "What the called new lesions were" in html
    new = int(summary["new"].sum())
    assert f"called new by the rules: {new}, of which {new} new metastasis, 0 metastasis seen before" in printed
    assert "called new by the change network" not in printed


def test_merged_followup_cohorts_evaluate_as_one_and_keep_their_patients_apart(cohort, tmp_path, capsys):
    """A large evaluation pools cohorts with `bonescan cohort merge`: both start at pat00000, and a patient's visits
    must not meet another cohort's same-named patient."""
    other = tmp_path / "other"
    generate_followup_cohort(other, patients=2, seed=1, site="mixed")
    merged = tmp_path / "merged" / "manifest.csv"
    assert main(["cohort", "merge", str(cohort / "manifest.csv"), str(other / "manifest.csv"),
                 "--out", str(merged)]) == 0
    assert main(["followup", "--manifest", str(merged), "--reader", "oracle", "--evaluate",
                 "--out", str(tmp_path / "pooled")]) == 0
    assert main(["followup", "--manifest", str(other / "manifest.csv"), "--reader", "oracle", "--evaluate",
                 "--out", str(tmp_path / "alone")]) == 0
    pooled = pd.read_csv(tmp_path / "pooled" / "followup_summary.csv").set_index("patient_id")
    alone = pd.read_csv(tmp_path / "alone" / "followup_summary.csv").set_index("patient_id")
    assert pooled["error"].isna().all() and len(pooled) == 3 + 2
    visits = pd.read_csv(other / "manifest.csv").groupby("patient_id").size()
    for patient, row in alone.iterrows():
        mine = pooled.loc[f"other-{patient}"]
        assert mine["n_visits"] == row["n_visits"] == min(3, visits[patient])
        assert (mine["truth_new"], mine["new"], mine["verdict"]) == (row["truth_new"], row["new"], row["verdict"])
    assert "compared 5 of 5 patients" in capsys.readouterr().out


def test_a_patient_whose_comparison_fails_is_listed_and_the_batch_goes_on(cohort, tmp_path, monkeypatch):
    import bonescan.followup.evaluate as batch

    real = batch.compare_patient
    broken = sorted(pd.read_csv(cohort / "manifest.csv")["patient_id"].unique())[1]

    def fails_for_one(rows, *args):
        if rows["patient_id"].iloc[0] == broken:
            raise ValueError("registration diverged")
        return real(rows, *args)

    monkeypatch.setattr(batch, "compare_patient", fails_for_one)
    results = batch.run_followup_batch(cohort / "manifest.csv", OracleReader(), tmp_path / "out")
    assert [(r.patient_id, r.error) for r in results if r.error] == [(broken, "ValueError: registration diverged")]
    summary = pd.read_csv(tmp_path / "out" / "followup_summary.csv")
    assert len(summary) == len(results) == 3 and summary["error"].notna().sum() == 1
    assert not (tmp_path / "out" / broken).exists()
    assert all((tmp_path / "out" / r.patient_id / "followup.json").is_file() for r in results if not r.error)


def test_followup_refuses_a_visit_without_both_views_and_writes_nothing(cohort, tmp_path, capsys):
    df = pd.read_csv(cohort / "manifest.csv")
    pairs = df[df["anterior"].fillna("") != ""]
    if pairs.empty:
        pytest.skip("no one-file-per-view camera among these visits")
    row = pairs.iloc[0]
    baseline = df[(df["patient_id"] == row["patient_id"]) & (df["timepoint"] == 0)].iloc[0]
    base = cohort / (baseline["path"] if isinstance(baseline["path"], str) else baseline["anterior"])
    out = tmp_path / "out"
    code = main(["followup", str(base), str(cohort / row["anterior"]), "--reader", "oracle", "--out", str(out)])
    assert code == 2 and "only the anterior view" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow  # trains a tiny lesion run (one epoch, 20 studies)
def test_followup_reads_lesions_with_a_trained_lesion_network(cohort, tmp_path, capsys):
    from bonescan.synth import generate_cohort

    train = generate_cohort(tmp_path / "train", cases=20, seed=2, difficulty="easy")
    run = tmp_path / "run"
    assert main(["train", "--manifest", str(train.manifest), "--preset", "tiny-lesion", "--epochs", "1",
                 "--out", str(run), "--precision", "fp32", "--workers", "0", "--lesion-channels", "4,8,12"]) == 0
    assert json.loads((run / "config.json").read_text())["settings"]["lesion"]["channels"] == [4, 8, 12]
    # Channels that are not integers, one level only, or given to the classifier: refused before training.
    arguments = ["train", "--manifest", str(train.manifest), "--preset", "tiny-lesion", "--out", str(tmp_path / "x")]
    for wrong in (["--lesion-channels", "4,x"], ["--lesion-channels", "4"], ["--preset", "tiny", "--lesion-channels",
                                                                               "4,8"]):
        assert main(arguments + wrong) == 2, wrong
    assert not (tmp_path / "x").exists()
    df = pd.read_csv(cohort / "manifest.csv")
    single_files = df.groupby("patient_id")["path"].apply(lambda p: p.notna().all())
    visits = df[df["patient_id"] == single_files[single_files].index[0]].sort_values("timepoint")
    paths = [str(cohort / p) for p in visits["path"]]
    out = tmp_path / "net"
    assert main(["followup", *paths, "--run", str(run), "--out", str(out)]) == 0
    result = json.loads((out / "followup.json").read_text())
    assert result["reader"].startswith("lesion network") and len(result["visits"]) == len(paths)
    assert result["verdict"]["status"] in ("progression", "unconfirmed", "no progression")
    assert "lesion network" in capsys.readouterr().out
    # A run that is not a lesion run is refused with one error.
    assert main(["followup", *paths[:2], "--run", str(tmp_path), "--out", str(tmp_path / "x")]) == 2


# --- linking hotspots into lesions (hand-made hotspots, no images) -----------------------------------------------

def _spot(view: str, row: float, col: float, area: float = 100.0, malignancy: float = 0.9):
    from bonescan.lesions.hotspots import Hotspot

    return Hotspot(0, view, (0, 0, 1, 1), (row, col), area, "thoracic_spine", malignancy, 2.0, f"{view}{row}{col}")


def _study(*spots):
    from bonescan.lesions.hotspots import StudyLesions

    return StudyLesions(list(spots), np.zeros((2, 4, 4), np.uint8), 0.0, {}, 1.0, 0.5)


def test_new_lesions_are_not_hidden_by_old_ones_nearby_in_either_view():
    from bonescan.followup.match import change_between, link_lesions
    from bonescan.followup.register import identity

    both = lambda r, c, **kw: (_spot("anterior", r, c, **kw), _spot("posterior", r, 255 - c, **kw))  # noqa: E731
    baseline = _study(*both(300, 100), *both(700, 100), _spot("anterior", 900, 60, malignancy=0.1))
    followup = _study(*both(301, 101, area=160.0), _spot("anterior", 500, 120), _spot("anterior", 600, 60),
                      _spot("anterior", 900, 61, malignancy=0.8))  # benign before, called malignant now: not new
    # Confirmatory: the old lesion, both new ones, and two more: one 4 pixels (10 mm) from the old lesion in both
    # views, one far away.
    confirm = _study(*both(300, 100), _spot("anterior", 500, 121), _spot("anterior", 600, 60), *both(304, 100),
                     _spot("anterior", 800, 128))
    results = [baseline, followup, confirm]
    tr = [{w: identity((2.4, 2.4)) for w in ("anterior", "posterior")}] * 3
    linking = link_lesions(results, tr, [(2.4, 2.4)] * 3, [256] * 3)
    first = change_between(linking.lesions, results, 1, [0])
    more = change_between(linking.lesions, results, 2, [0, 1])
    assert len(first.new) == 2 and len(first.resolved) == 1 and len(first.grown) == 1
    assert len(more.new) == 2  # the focus beside the old lesion is new, seen from the front and from behind
    numbers = {les.number for les in linking.lesions}
    assert set(first.new) | set(more.new) <= numbers and not set(first.new) & set(more.new)
    assert pcwg3_verdict(len(first.new), len(more.new), 50).status == "progression"


def test_a_superscan_on_either_visit_is_named_in_the_verdicts_reason():
    from bonescan.followup import compare_visits
    from bonescan.lesions.hotspots import StudyLesions

    case = generate_case("diffuse", seed=1)

    class Told:
        """A reader that finds no hotspot and the BSI it is told, visit by visit."""

        name, exact = "told", True

        def __init__(self, *bsi):
            self.bsi = iter(bsi)

        def read(self, study, files):
            return StudyLesions([], np.zeros((2, *study.anterior.shape), np.uint8), next(self.bsi), {}, 1.0, 0.5)

    def visits():
        return [Visit(role, (f"{role}.dcm",), Study(f"{role}.dcm", case.anterior, case.posterior, (2.4, 2.4),
                                                     StudyMeta(patient_id="A", study_date=date)))
                for role, date in (("baseline", "20200101"), ("follow-up", "20200401"))]

    plain = compare_visits(visits(), Told(0.5, 1.2))
    assert "superscan" not in plain.verdict.reason
    diffuse = compare_visits(visits(), Told(0.5, 6.3))
    assert diffuse.verdict.status == plain.verdict.status  # the counts decide the status; the reason warns
    assert diffuse.verdict.reason.startswith(plain.verdict.reason)
    assert "superscan pattern (diffuse uptake) on the follow-up (BSI 6.3 %)" in diffuse.verdict.reason
    assert [v["superscan"] for v in diffuse.to_json()["visits"]] == [False, True]


def test_each_true_new_lesion_is_traced_to_where_it_was_lost():
    from bonescan.followup import compare_visits
    from bonescan.followup.fates import count_fates, hotspot_fates, new_lesion_fates
    from bonescan.lesions.hotspots import Hotspot, StudyLesions

    case = generate_case("normal", seed=1)

    def square(row: int, col: int, malignancy: float) -> Hotspot:
        return Hotspot(0, "anterior", (row - 3, col - 3, row + 3, col + 3), (row, col), 35.0, "pelvis", malignancy,
                       2.0, f"{row}-{col}", np.ones((6, 6), bool))

    class Reads:
        """A reader whose calls are the truth: every unseen malignant lesion is new."""

        name, exact = "reads", True

        def __init__(self, *visits):
            self.visits = iter(visits)

        def read(self, study, files):
            return StudyLesions(next(self.visits), np.zeros((2, *study.anterior.shape), np.uint8), 0.0, {}, 1.0, 0.5)

    visits = [Visit(role, (f"{role}.dcm",), Study(f"{role}.dcm", case.anterior, case.posterior, (2.4, 2.4),
                                                   StudyMeta(patient_id="A", study_date=date)))
              for role, date in (("baseline", "20200101"), ("follow-up", "20200401"))]
    # The old lesion at (300, 100) again, a new malignant focus at (500, 120), a benign-looking one at (600, 60).
    comparison = compare_visits(visits, Reads([square(300, 100, 0.9)],
                                              [square(300, 100, 0.9), square(500, 120, 0.9), square(600, 60, 0.1)]))
    fates = {h.centroid: fate for h, fate in hotspot_fates(comparison)}
    assert fates == {(300, 100): "under an earlier hotspot", (500, 120): "found", (600, 60): "not called new"}
    # True new lesions under each hotspot, one where there is none, and one under both the old and the found one.
    instances = np.zeros((2, *case.anterior.shape), np.int32)
    for lesion, (row, col) in enumerate(((300, 100), (500, 120), (600, 60), (800, 128)), 1):
        instances[0, row - 1:row + 1, col - 1:col + 1] = lesion
    instances[0, 298, 98] = instances[0, 502, 122] = 5
    traced = new_lesion_fates(instances, [1, 2, 3, 4, 5], hotspot_fates(comparison))
    assert traced == {1: "under an earlier hotspot", 2: "found", 3: "not called new", 4: "no hotspot", 5: "found"}
    assert count_fates(traced) == {"found": 2, "not called new": 1, "under an earlier hotspot": 1, "no hotspot": 1}


def test_each_called_new_lesion_is_traced_to_the_finding_under_it():
    from types import SimpleNamespace

    from bonescan.followup.called_new import called_new_kinds, kind_map
    from bonescan.followup.change_net import NewArea
    from bonescan.followup.evaluate import new_lesion_ids
    from bonescan.lesions.hotspots import Hotspot
    from bonescan.lesions.truth import LesionTruth

    instances = np.zeros((2, 40, 20), np.int32)
    instances[0, 2:5, 2:5] = 1  # a new metastasis
    instances[0, 10:13, 2:5] = 2  # a metastasis the baseline showed
    instances[0, 20:23, 2:5] = 3  # a benign finding
    instances[:, 30:33, 8:12] = 4  # the bladder, both views
    truth = LesionTruth(np.zeros((2, 40, 20), np.uint8), instances, ["metastasis", "metastasis", "benign",
                        "physiological"], ["metastasis", "metastasis", "degenerative_spine", "bladder"], [""] * 4,
                        identity=[11, 12, 13, 14])
    confluent = truth.confluent_metastases()
    codes = kind_map(truth, confluent[0], new_lesion_ids(truth, {12}, confluent))

    def hotspot(view, box, mask=None):
        r0, c0, r1, c1 = box
        return Hotspot(0, view, box, ((r0 + r1) / 2, (c0 + c1) / 2), 10.0, "", 0.9, 2.0, "u",
                       np.ones((r1 - r0, c1 - c0), bool) if mask is None else mask)

    corner = np.zeros((6, 6), bool)
    corner[4:, 4:] = True  # its box covers the new metastasis, its outline does not
    lesions = [SimpleNamespace(number=1, hotspots={1: [hotspot("anterior", (1, 1, 6, 6))]}),
               SimpleNamespace(number=2, hotspots={1: [hotspot("anterior", (9, 1, 24, 6))]}),  # old + benign
               SimpleNamespace(number=3, hotspots={1: [hotspot("posterior", (29, 7, 34, 13))]}),
               SimpleNamespace(number=4, hotspots={1: [hotspot("anterior", (36, 1, 39, 6))]}),
               SimpleNamespace(number=5, hotspots={1: [hotspot("anterior", (1, 1, 7, 7), corner)]}),
               SimpleNamespace(number=6, hotspots={1: [hotspot("anterior", (1, 1, 6, 6))]})]  # not called new
    outline = np.zeros((23, 5), bool)
    outline[18:, :] = True  # its box reaches up over the new metastasis, its outline lies on the benign finding
    areas = [NewArea(1, "anterior", (19, 1, 24, 6), (21.0, 3.0), 10.0, 0.9, ""),
             NewArea(2, "posterior", (2, 2, 5, 5), (3.0, 3.0), 10.0, 0.9, ""),
             NewArea(3, "anterior", (1, 1, 24, 6), (21.0, 3.0), 10.0, 0.9, "", outline)]
    comparison = SimpleNamespace(followup=SimpleNamespace(new=[1, 2, 3, 4, 5]), lesions=lesions,
                                 network=SimpleNamespace(followup=areas))
    kinds = called_new_kinds(comparison, codes)
    assert kinds["rules"] == {"new metastasis": 1, "metastasis seen before": 1, "benign": 0, "artifact": 0,
                              "physiological": 1, "nothing": 2}
    assert kinds["network"]["benign"] == 2 and kinds["network"]["nothing"] == 1 and sum(kinds["network"].values()) == 3
    assert called_new_kinds(SimpleNamespace(followup=SimpleNamespace(new=[]), lesions=lesions, network=None),
                            codes) == {"rules": dict.fromkeys(kinds["rules"], 0), "network": {}}


def test_the_followup_sr_lists_new_and_grown_lesions_first_up_to_the_limit(monkeypatch):
    from types import SimpleNamespace

    from bonescan.followup import output

    change = SimpleNamespace(new=[5, 7], grown=[2], resolved=[9])
    comparison = SimpleNamespace(lesions=[SimpleNamespace(number=n) for n in range(1, 10)], followup=change,
                                 confirmatory=None)
    assert [lesion.number for lesion in output.lesions_for_dicom(comparison)] == list(range(1, 10))
    monkeypatch.setattr(output, "DICOM_HOTSPOT_LIMIT", 4)
    assert [lesion.number for lesion in output.lesions_for_dicom(comparison)] == [2, 5, 7, 9]
    monkeypatch.setattr(output, "DICOM_HOTSPOT_LIMIT", 5)
    assert [lesion.number for lesion in output.lesions_for_dicom(comparison)] == [1, 2, 5, 7, 9]


# --- real DICOM structure: NM1 (a GE whole-body scan) as two visits --------------------------------------------

def _nm1_visit(nm1_path, folder, study_uid: str, date: str, shift: tuple[int, int] = (0, 0),
               recount: float | None = None):
    """NM1's real header and counts as one visit: its anterior view and, for the posterior, the same counts
    mirrored (NM1 holds one view), two single-view files of one study; `shift` moves the patient on the table
    (rows, columns), the rest of the image filled with the background's zero counts; `recount` acquires it again
    at that share of the counts (a new Poisson realisation, as a later scan is)."""
    import copy

    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(nm1_path)
    ds.decompress()
    counts = ds.pixel_array
    moved = np.zeros_like(counts)
    (dr, dc), (rows, cols) = shift, counts.shape
    moved[max(dr, 0):rows + min(dr, 0), max(dc, 0):cols + min(dc, 0)] = \
        counts[max(-dr, 0):rows + min(-dr, 0), max(-dc, 0):cols + min(-dc, 0)]
    if recount is not None:
        moved = np.random.default_rng(0).poisson(moved * recount).astype(counts.dtype)
    folder.mkdir(parents=True)
    for name, image in (("ANT", moved), ("POST", moved[:, ::-1])):
        view = copy.deepcopy(ds)
        view.ViewPosition, view.StudyInstanceUID, view.StudyDate = name, study_uid, date
        view.SeriesInstanceUID = generate_uid()
        view.SOPInstanceUID = view.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        view.PixelData = np.ascontiguousarray(image).tobytes()
        view.save_as(folder / f"{name}.dcm", enforce_file_format=True)
    return folder


def test_followup_of_real_nm_studies_registers_the_shift_and_reports_both(nm1_path, tmp_path, capsys):
    from nodekit import make_lesion_run

    baseline = _nm1_visit(nm1_path, tmp_path / "2004", "1.2.826.0.1.3680043.8.498.1", "20040826")
    later = _nm1_visit(nm1_path, tmp_path / "2005", "1.2.826.0.1.3680043.8.498.2", "20050301", shift=(6, 3),
                       recount=0.7)
    out = tmp_path / "out"
    assert main(["followup", str(baseline), str(later), "--run", str(make_lesion_run(tmp_path / "run")),
                 "--out", str(out)]) == 0
    result = json.loads((out / "followup.json").read_text())
    assert [v["study_date"] for v in result["visits"]] == ["20040826", "20050301"]
    assert result["patient_id"] == "8NM1" and result["visits"][1]["timepoint_days"] == 187
    # the shift of 3 columns and 6 rows of 2.26 mm (x, y), found in each view (the posterior is mirrored)
    registration = result["visits"][1]["registration"]
    for view, expected in (("anterior", [3 * 2.26, 6 * 2.26]), ("posterior", [-3 * 2.26, 6 * 2.26])):
        assert registration[view]["translation_mm"] == pytest.approx(expected, abs=1.0), view
        assert abs(registration[view]["rotation_deg"]) < 0.5 and 0.5 < registration[view]["correlation"] < 1
    sr = pydicom.dcmread(out / "followup_sr.dcm")
    referenced = {item.StudyInstanceUID for seq in ("CurrentRequestedProcedureEvidenceSequence",
                                                    "PertinentOtherEvidenceSequence") for item in sr.get(seq, [])}
    assert referenced == {"1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"}
    assert sr.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.2" and sr.PatientID == "8NM1"
    # NM1 itself holds the anterior view only: refused by name, nothing written
    assert main(["followup", str(nm1_path), str(later), "--run", str(tmp_path / "run"),
                 "--out", str(tmp_path / "refused")]) == 2
    assert "only the anterior view" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())


def test_earlier_tracking_uids_go_to_one_lesion_each():
    from bonescan.followup.match import Lesion, carry_tracking_uids

    joined_before = [Lesion(1, {0: [_spot("anterior", 10, 10)]}, [0.5]), Lesion(2, {0: [_spot("anterior", 30, 10)]},
                                                                                 [0.5])]
    carry_tracking_uids(joined_before, {"anterior1010": "2.25.7", "anterior3010": "2.25.7"})
    assert [lesion.tracking_uid for lesion in joined_before] == ["2.25.7", "anterior3010"]
    # a UID that another lesion of this report already carries as its own is not taken
    taken = [Lesion(1, {1: [_spot("anterior", 10, 10)]}, [0.5, 0.5]), Lesion(2, {0: [_spot("anterior", 50, 10)]},
                                                                              [0.5, 0.5])]
    carry_tracking_uids(taken, {"anterior1010": "anterior5010"})
    assert [lesion.tracking_uid for lesion in taken] == ["anterior1010", "anterior5010"]
