"""PCWG3 "2+2" in the node: the scan after one with >= 2 new lesions confirms them or not, read here with the
synthetic truth (the oracle reader) on followed patients whose course is known."""

from __future__ import annotations

import json

import pydicom
import pytest

from bonescan.followup import OracleReader
from bonescan.node.followup import FOLLOWUP_DIR, PriorComparer, patient_study
from bonescan.synth.followup import generate_patient, plan_patient
from bonescan.synth.writer import write_case
from srkit import tracking

# (cohort seed, patient): progression with 2+ more new lesions 81 days after the first follow-up; progression not
# confirmed (0-1 more, 53 days later); progression whose confirmatory scan came 23 days after the first follow-up
CONFIRMED, NOT_CONFIRMED, TOO_EARLY = (2, 5), (0, 2), (0, 5)


@pytest.fixture(scope="module")
def visits(tmp_path_factory):
    """Each patient's three visits as the node records them."""
    found = {}
    for seed, index in (CONFIRMED, NOT_CONFIRMED, TOO_EARLY):
        studies = tmp_path_factory.mktemp("pcwg3") / "studies"  # a folder each: case names repeat across seeds
        studies.mkdir()
        plan = plan_patient(seed, index)
        assert plan.change == "progression" and len(plan.timepoints) == 3
        records = [write_case(case, studies) for case in generate_patient(plan, "paper", 2.4, "generic", 6)]
        found[(seed, index)] = [patient_study([studies / name for name in r["files"]]) for r in records]
    return found


@pytest.mark.parametrize("patient, verdict, awaiting", [
    (CONFIRMED, "progression", None), (NOT_CONFIRMED, "no progression", None),
    (TOO_EARLY, "unconfirmed", "the same two")])
def test_the_scan_after_new_lesions_confirms_them_or_not(visits, tmp_path, patient, verdict, awaiting):
    baseline, followup, confirmatory = visits[patient]
    comparer = PriorComparer(None, tmp_path, reader=OracleReader())
    first = comparer.compare(followup, baseline)
    assert first.verdict == "unconfirmed" and first.awaiting == (baseline.study_uid, followup.study_uid)

    second = comparer.compare(confirmatory, followup, awaiting=(baseline, followup))
    assert second.verdict == verdict
    assert second.awaiting == (None if awaiting is None else first.awaiting)
    assert "confirming the" in second.summary
    folder = tmp_path / FOLLOWUP_DIR / confirmatory.study_uid / followup.study_uid
    record = json.loads((folder / "followup.json").read_text())
    assert [v["study_uid"] for v in record["visits"]] == [s.study_uid for s in (baseline, followup, confirmatory)]
    assert record["verdict"]["status"] == verdict and record["confirmatory"] is not None
    [(sop, kind, path)] = [r for r in second.results if r[1] == "followup"]
    report = pydicom.dcmread(path)
    assert report.SOPInstanceUID == sop and report.StudyInstanceUID == confirmatory.study_uid
    referenced = {item.StudyInstanceUID for seq in ("CurrentRequestedProcedureEvidenceSequence",
                                                    "PertinentOtherEvidenceSequence") for item in report.get(seq, [])}
    assert referenced == {baseline.study_uid, followup.study_uid, confirmatory.study_uid}


def test_the_node_compares_with_its_new_lesion_judge(visits, tmp_path):
    """A judge given to the node (`--judge`) decides which unseen lesions are new, and the record names it."""
    from bonescan.followup.uptake import UptakeCheck

    class Judge:  # the hand rules under another name, counting the comparisons it judged
        name, judged = "a test judge", 0

        def judge(self, studies, lesions, transforms, change_maps=None):
            Judge.judged += 1
            return UptakeCheck(studies, lesions, transforms)

    reader = OracleReader()
    reader.exact = False  # the truth read as a network that can err: its new lesions are judged
    baseline, followup, _ = visits[CONFIRMED]
    PriorComparer(None, tmp_path, reader=reader, judge=Judge()).compare(followup, baseline)
    record = json.loads((tmp_path / FOLLOWUP_DIR / followup.study_uid / baseline.study_uid / "followup.json")
                        .read_text())
    assert Judge.judged == 1 and record["new_lesion_judge"] == "a test judge"


def test_a_scan_with_two_new_lesions_of_its_own_waits_for_the_next(visits, tmp_path):
    """Against its prior alone (nothing awaited), a scan with >= 2 new lesions is the one awaiting confirmation."""
    baseline, _, confirmatory = visits[CONFIRMED]
    compared = PriorComparer(None, tmp_path, reader=OracleReader()).compare(confirmatory, baseline)
    assert compared.verdict == "unconfirmed"
    assert compared.awaiting == (baseline.study_uid, confirmatory.study_uid)


def test_a_pair_compared_again_keeps_the_files_of_the_first_comparison(visits, tmp_path):
    """Its first follow-up SR may still wait to be sent when the pair is compared again (out-of-order arrival)."""
    baseline, followup, _ = visits[NOT_CONFIRMED]
    comparer = PriorComparer(None, tmp_path, reader=OracleReader())
    first, again = comparer.compare(followup, baseline), comparer.compare(followup, baseline)
    paths = [dict((kind, path) for _, kind, path in c.results)["followup"] for c in (first, again)]
    assert paths[0] != paths[1] and paths[1].parent.name.endswith(".2")
    assert pydicom.dcmread(paths[0]).SOPInstanceUID == first.results[0][0]


def test_lesions_found_already_are_taken_as_they_are(visits, tmp_path):
    """The node's study just read: the comparison describes the hotspots (numbers, tracking UIDs) of its report."""
    from bonescan.followup import load_visit
    from bonescan.node.followup import visit_source

    baseline, followup, _ = visits[CONFIRMED]  # metastases on the baseline already, and new ones
    oracle = OracleReader()
    visit = load_visit(visit_source(followup), "follow-up")
    found = oracle.read(visit.study, visit.files)
    for k, hotspot in enumerate(found.hotspots):
        hotspot.uid = f"2.25.{k + 1}"  # as the node's own reading named them
    compared = PriorComparer(None, tmp_path, reader=oracle).compare(followup, baseline,
                                                                     known={followup.study_uid: found})
    record = json.loads(next((tmp_path / FOLLOWUP_DIR).rglob("followup.json")).read_text())
    uids = {h["uid"] for lesion in record["lesions"] for h in lesion["visits"].get("follow-up", [])}
    assert uids and uids <= {f"2.25.{k + 1}" for k in range(len(found.hotspots))}
    assert compared.verdict == "unconfirmed"

    # Each lesion of the follow-up SR carries the tracking UID its hotspot has in the report of the earliest visit
    # showing it: a lesion already on the baseline the baseline's, a new one the follow-up's own.
    earliest = {}
    for lesion in record["lesions"]:
        role = "baseline" if "baseline" in lesion["visits"] else "follow-up"
        first = min(lesion["visits"][role], key=lambda h: (h["view"] != "anterior", h["number"]))
        assert lesion["tracking_uid"] == first["uid"]
        earliest[first["uid"]] = role
    assert set(earliest.values()) == {"baseline", "follow-up"}
    report = pydicom.dcmread(dict((kind, path) for _, kind, path in compared.results)["followup"])
    lesion_uids = {uid for uid, name in tracking(report) if name.startswith("lesion ")}
    assert lesion_uids == set(earliest)


def test_a_lesion_keeps_its_tracking_uid_from_one_followup_report_to_the_next(visits, tmp_path):
    """Second visit against the first, then the third against the second: a lesion seen on all three carries the
    first report's tracking UID (its hotspot's on the first visit) in the second report too."""
    baseline, followup, confirmatory = visits[CONFIRMED]
    comparer = PriorComparer(None, tmp_path, reader=OracleReader())
    comparer.compare(followup, baseline)
    second = comparer.compare(confirmatory, followup)
    records = [json.loads((tmp_path / FOLLOWUP_DIR / now.study_uid / prior.study_uid / "followup.json").read_text())
               for now, prior in ((followup, baseline), (confirmatory, followup))]
    earlier = {h["uid"]: lesion["tracking_uid"] for lesion in records[0]["lesions"]
               for h in lesion["visits"].get("follow-up", [])}
    carried = [(lesion["tracking_uid"], earlier[h["uid"]]) for lesion in records[1]["lesions"]
               for h in lesion["visits"].get("baseline", [])[:1] if h["uid"] in earlier]
    from_first_visit = {h["uid"] for lesion in records[0]["lesions"] for h in lesion["visits"].get("baseline", [])}
    assert carried and all(now == before for now, before in carried)
    assert any(before in from_first_visit for _, before in carried)  # named after the first visit's hotspot
    report = pydicom.dcmread(dict((kind, path) for _, kind, path in second.results)["followup"])
    uids = [uid for uid, name in tracking(report) if name.startswith("lesion ")]
    assert {now for now, _ in carried} <= set(uids) and len(uids) == len(set(uids))


def test_earlier_reports_that_cannot_be_read_give_no_tracking_uids(tmp_path):
    """A comparison file cut short (or from before lesions carried a tracking UID) leaves the next comparison to
    name its lesions afresh, not to fail."""
    from bonescan.node.followup import earlier_tracking

    cut = tmp_path / "1.2.3" / "1.2.2"
    cut.mkdir(parents=True)
    (cut / "followup.json").write_text('{"visits": [{"role": "baseline", "study_uid": "1.2.2"}, {"ro')
    older = tmp_path / "1.2.4" / "1.2.3"
    older.mkdir(parents=True)
    (older / "followup.json").write_text(json.dumps({
        "visits": [{"role": "baseline", "study_uid": "1.2.3"}, {"role": "follow-up", "study_uid": "1.2.4"}],
        "lesions": [{"number": 1, "visits": {"follow-up": [{"uid": "2.25.1"}]}}]}))
    assert earlier_tracking(tmp_path, ["1.2.3", "1.2.4", "1.2.9"]) == {}
    (older / "followup.json").write_text(json.dumps({
        "visits": [{"role": "baseline", "study_uid": "1.2.3"}, {"role": "follow-up", "study_uid": "1.2.4"}],
        "lesions": [{"number": 1, "tracking_uid": "2.25.7", "visits": {"follow-up": [{"uid": "2.25.1"}]}}]}))
    assert earlier_tracking(tmp_path, ["1.2.3", "1.2.4"]) == {"2.25.1": "2.25.7"}


class ChangeJudge:
    """A change network stand-in: `counts` new lesions on the follow-up, then on the confirmatory scan."""

    name = "change judge"

    def __init__(self, *counts: int):
        self.counts = list(counts)

    def areas(self, later, earlier, lesions=None, probability=None):
        from bonescan.followup.change_net import NewArea

        n = self.counts.pop(0)
        return [NewArea(k + 1, "anterior", (50 * k, 60, 50 * k + 8, 68), (50 * k + 4.0, 64.0), 80.0, 0.9, "")
                for k in range(n)]


def test_the_nodes_change_network_can_confirm_what_the_rules_did_not(visits, tmp_path):
    """With a change network, the node's verdict counts new lesions as the larger of its count and the rules'."""
    baseline, followup, confirmatory = visits[NOT_CONFIRMED]
    rules_alone = PriorComparer(None, tmp_path / "rules", reader=OracleReader())
    assert rules_alone.compare(confirmatory, followup, awaiting=(baseline, followup)).verdict == "no progression"
    joined = PriorComparer(None, tmp_path / "joined", reader=OracleReader(), change_model=ChangeJudge(0, 2),
                           join="either")
    second = joined.compare(confirmatory, followup, awaiting=(baseline, followup))
    assert second.verdict == "progression" and "change network (0 new, 2 on the confirmatory scan)" in second.summary
    record = json.loads(next((tmp_path / "joined").rglob("followup.json")).read_text())
    assert len(record["change_network"]["confirmatory"]) == 2


def test_the_node_takes_a_change_network_only_for_followup(tmp_path):
    from bonescan.errors import ConfigError
    from bonescan.node import NodeConfig

    (tmp_path / "run").mkdir()
    (tmp_path / "net.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="needs --followup"):
        NodeConfig(run=tmp_path, store=tmp_path / "store", lesions=tmp_path / "run", change_net=tmp_path / "net.pt")
    with pytest.raises(ConfigError, match="no such file"):
        NodeConfig(run=tmp_path, store=tmp_path / "store", lesions=tmp_path / "run", followup=True,
                   change_net=tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="unknown join"):
        NodeConfig(run=tmp_path, store=tmp_path / "store", lesions=tmp_path / "run", followup=True,
                   change_net=tmp_path / "net.pt", join="both")
    from bonescan.followup.joins import JOINS
    from bonescan.node.config import NODE_JOINS

    assert NODE_JOINS == tuple(JOINS)  # the node takes every join the follow-up knows, no other


def test_the_node_refuses_a_judge_fitted_beside_a_change_network_without_it(tmp_path):
    """Refused before the node locks or creates its store: nothing starts, nothing is left behind."""
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier

    from bonescan.errors import ConfigError
    from bonescan.followup.new_judge import CHANGE_FEATURES, FEATURES, NewLesionModel, save_new_lesion_judge
    from bonescan.node import NodeConfig
    from bonescan.node.service import Node

    names = FEATURES + CHANGE_FEATURES
    trees = HistGradientBoostingClassifier(max_iter=2).fit(np.eye(len(names)), np.arange(len(names)) % 2)
    info = {"features": list(names), "threshold": 0.5, "change_network": "cn/change_net.pt", "join": "union"}
    judge = save_new_lesion_judge(NewLesionModel(trees, 0.5, info), tmp_path / "judge.skops")
    (tmp_path / "run").mkdir()
    config = NodeConfig(run=tmp_path / "run", store=tmp_path / "store", lesions=tmp_path / "run", followup=True,
                        judge=judge, join="union")
    with pytest.raises(ConfigError, match="--judge: this judge weighs what the change network sees.*cn/change_net.pt"):
        Node(config).start()
    assert not (tmp_path / "store").exists()
