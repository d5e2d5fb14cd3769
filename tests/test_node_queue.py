"""The node's durable queue: state changes survive reopening, duplicates are recognised, interrupted work resumes."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from bonescan.errors import ConfigError
from bonescan.node.config import Destination, NodeConfig
from bonescan.node.queue import MAX_PREDICTION_ATTEMPTS, NodeQueue, PatientStudy
from bonescan.node.sender import backoff


def test_a_study_is_ready_when_two_frames_arrived_and_state_survives_reopening(tmp_path):
    queue = NodeQueue(tmp_path / "q.sqlite")
    assert queue.add_instance("1.1", "9.1", "nm", 1, tmp_path / "a.dcm", "CAM", now=100.0) == "new"
    assert queue.claim_ready(complete_after=30, limit=8, now=101.0) == []  # one view: still receiving
    assert queue.add_instance("1.1", "9.1", "nm", 1, tmp_path / "a.dcm", "CAM", now=102.0) == "duplicate"
    assert queue.add_instance("1.2", "9.1", "nm", 1, tmp_path / "b.dcm", "CAM", now=103.0) == "new"
    queue.close()

    queue = NodeQueue(tmp_path / "q.sqlite")  # what a restart sees
    [work] = queue.claim_ready(complete_after=30, limit=8, now=104.0)
    assert work.study_uid == "9.1" and not work.timed_out
    assert [i.sop_uid for i in work.instances] == ["1.1", "1.2"]
    assert queue.claim_ready(complete_after=30, limit=8, now=105.0) == []  # claimed once only


def test_a_quiet_incomplete_study_is_read_after_complete_after(tmp_path):
    queue = NodeQueue(tmp_path / "q.sqlite")
    queue.add_instance("1.1", "9.1", "nm", 1, tmp_path / "a.dcm", "CAM", now=100.0)
    assert queue.claim_ready(complete_after=5, limit=8, now=104.9) == []
    [work] = queue.claim_ready(complete_after=5, limit=8, now=105.0)
    assert work.timed_out


def test_interrupted_predictions_go_back_to_ready_and_a_study_that_keeps_crashing_fails(tmp_path):
    queue = NodeQueue(tmp_path / "q.sqlite")
    queue.add_instance("1.1", "9.1", "nm", 2, tmp_path / "a.dcm", "CAM", now=100.0)
    for attempt in range(MAX_PREDICTION_ATTEMPTS):
        assert len(queue.claim_ready(30, 8, now=101.0)) == 1
        queue.close()
        queue = NodeQueue(tmp_path / "q.sqlite")  # killed while predicting
        recovery = queue.recover()
        assert recovery.interrupted == 1
    assert queue.claim_ready(30, 8, now=102.0) == []
    [(state, error)] = queue.query("SELECT state, error FROM studies")
    assert state == "failed" and "interrupted 3 times" in error


def test_results_are_queued_with_the_prediction_and_sent_once(tmp_path):
    queue = NodeQueue(tmp_path / "q.sqlite")
    queue.add_instance("1.1", "9.1", "nm", 2, tmp_path / "a.dcm", "CAM", now=100.0)
    queue.claim_ready(30, 8, now=100.0)
    results = [("5.1", "sc", tmp_path / "sc.dcm"), ("5.2", "sr", tmp_path / "sr.dcm")]
    queue.finish_study("9.1", 0.7, "metastasis", "youden", 0.4, results, forward=True, now=101.0)
    due = queue.due_results(now=101.0)
    assert [(r.sop_uid, r.kind) for r in due] == [("5.1", "sc"), ("5.2", "sr")]
    queue.mark_retry(["5.1", "5.2"], "down", [10.0, 10.0], now=101.0)
    assert queue.due_results(now=110.0) == [] and len(queue.due_results(now=111.0)) == 2
    queue.mark_sent("5.1")
    # A late instance of a study already read is kept but does not make a second result.
    assert queue.add_instance("1.3", "9.1", "nm", 1, tmp_path / "c.dcm", "CAM", now=112.0) == "late"
    assert queue.claim_ready(30, 8, now=200.0) == []
    queue.close()
    queue = NodeQueue(tmp_path / "q.sqlite")
    assert [r.sop_uid for r in queue.due_results(now=200.0)] == ["5.2"]
    assert queue.recover().unsent == 1


def test_a_failed_study_is_read_again_when_its_missing_view_arrives(tmp_path):
    queue = NodeQueue(tmp_path / "q.sqlite")
    queue.add_instance("1.1", "9.1", "nm", 1, tmp_path / "a.dcm", "CAM", now=100.0)
    [work] = queue.claim_ready(5, 8, now=106.0)
    queue.fail_study("9.1", "ViewError: only the anterior view")
    assert queue.add_instance("1.2", "9.1", "nm", 1, tmp_path / "b.dcm", "CAM", now=300.0) == "new"
    [work] = queue.claim_ready(5, 8, now=300.5)
    assert len(work.instances) == 2 and not work.timed_out


def test_a_study_whose_results_could_not_be_written_is_read_again_later_however_often(tmp_path):
    queue = NodeQueue(tmp_path / "q.sqlite")
    queue.add_instance("1.1", "9.1", "nm", 2, tmp_path / "a.dcm", "CAM", now=100.0)
    now = 100.0
    for _ in range(MAX_PREDICTION_ATTEMPTS + 2):  # a full disk is not the study's fault: it never fails for it
        assert len(queue.claim_ready(30, 8, now=now)) == 1
        queue.defer_study("9.1", "writing results: results/x.dcm: cannot be written: No space left on device",
                          retry_at=now + 60, now=now)
        assert queue.claim_ready(30, 8, now=now + 59.9) == []
        now += 60
    assert queue.query("SELECT state, error FROM studies") == [
        ("ready", "writing results: results/x.dcm: cannot be written: No space left on device")]
    queue.close()
    queue = NodeQueue(tmp_path / "q.sqlite")  # a restart keeps the wait
    assert queue.claim_ready(30, 8, now=now - 1) == [] and len(queue.claim_ready(30, 8, now=now)) == 1
    queue.finish_study("9.1", 0.7, "metastasis", "youden", 0.4, [], forward=False, now=now + 1)
    assert queue.query("SELECT state, error FROM studies") == [("done", None)]
    [(level, message)] = set(queue.query("SELECT level, message FROM events"))
    assert level == "warning" and message.endswith("No space left on device; read again in 60 s")


def test_the_worker_puts_back_a_study_whose_files_could_not_be_written_and_fails_one_that_cannot_be_read(
        tmp_path):
    from types import SimpleNamespace

    from bonescan.node.queue import UNWRITTEN_RETRY_SECONDS
    from bonescan.node.worker import PredictionWorker
    from bonescan.predict import OperatingPoint, StudyOutcome

    outcomes = {"9.1": StudyOutcome("9.1", "a.dcm", "failed", probability=0.7, unwritten=True,
                                    error="writing results: results/x.dcm: cannot be written: No space left on device"),
                "9.2": StudyOutcome("9.2", "b.dcm", "failed", error="ViewError: only the anterior view")}
    predictor = SimpleNamespace(batch_size=2, point=OperatingPoint("0.5", 0.5),
                                predict=lambda works: [outcomes[w.study_uid] for w in works])
    queue = NodeQueue(tmp_path / "q.sqlite")
    queue.add_instance("1.1", "9.1", "nm", 2, tmp_path / "a.dcm", "CAM", now=100.0)
    queue.add_instance("1.2", "9.2", "nm", 2, tmp_path / "b.dcm", "CAM", now=100.0)
    PredictionWorker(queue, predictor, 30, forward=True).process(queue.claim_ready(30, 8, now=100.0))
    assert dict(queue.query("SELECT study_uid, state FROM studies")) == {"9.1": "ready", "9.2": "failed"}
    [(retry_at,)] = queue.query("SELECT next_attempt FROM studies WHERE study_uid = '9.1'")
    assert retry_at > 100.0 + UNWRITTEN_RETRY_SECONDS  # the worker's clock: now


def test_a_study_whose_outcome_the_full_database_cannot_take_is_put_back_once_it_can(tmp_path, monkeypatch):
    import sqlite3
    from types import SimpleNamespace

    from bonescan.node.worker import PredictionWorker
    from bonescan.predict import OperatingPoint, StudyOutcome

    outcome = StudyOutcome("9.1", "a.dcm", "failed", error="ViewError: only the anterior view")
    predictor = SimpleNamespace(batch_size=1, point=OperatingPoint("0.5", 0.5), predict=lambda works: [outcome])
    queue = NodeQueue(tmp_path / "q.sqlite")
    queue.add_instance("1.1", "9.1", "nm", 2, tmp_path / "a.dcm", "CAM", now=100.0)
    worker = PredictionWorker(queue, predictor, 30, forward=True)

    def database_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    for attempt in range(MAX_PREDICTION_ATTEMPTS + 1):  # being put back is not an interruption
        with monkeypatch.context() as patch:
            patch.setattr(queue, "fail_study", database_full)
            [work] = queue.claim_ready(30, 8, now=time.time() + 1000.0 * (attempt + 1))
            worker.process([work])
            patch.setattr(queue, "release_study", database_full)
            worker._release_unrecorded()  # still full: it waits for the next idle moment
        assert queue.query("SELECT state FROM studies") == [("predicting",)]
        worker._release_unrecorded()
        assert queue.query("SELECT state, attempts FROM studies") == [("ready", 0)]
    [(retry_at,)] = queue.query("SELECT next_attempt FROM studies")
    assert queue.claim_ready(30, 8, now=retry_at - 1) == []  # not at once
    worker.process(queue.claim_ready(30, 8, now=retry_at))  # the database takes it now
    assert queue.query("SELECT state, error FROM studies") == [("failed", "ViewError: only the anterior view")]


def test_a_store_from_before_studies_were_read_again_later_gains_the_column_and_reads_its_studies(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "q.sqlite")
    db.executescript("""
        CREATE TABLE studies (study_uid TEXT PRIMARY KEY, state TEXT NOT NULL, frames INTEGER NOT NULL DEFAULT 0,
            instances INTEGER NOT NULL DEFAULT 0, first_received REAL, last_received REAL,
            attempts INTEGER NOT NULL DEFAULT 0, probability REAL, decision TEXT, operating_point TEXT,
            threshold REAL, error TEXT, finished_at REAL, updated_at REAL);
        INSERT INTO studies (study_uid, state, frames, instances, last_received) VALUES ('9.1', 'ready', 2, 1, 100);""")
    db.close()
    queue = NodeQueue(tmp_path / "q.sqlite")
    assert [work.study_uid for work in queue.claim_ready(30, 8, now=101.0)] == ["9.1"]


def test_backoff_doubles_up_to_its_cap():
    assert [backoff(n, 1.0, 10.0) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


@pytest.mark.parametrize("text, reason", [("PACS@host", "AE@host:port"), ("PACS@host:0", "between 1 and 65535"),
                                          ("A\\B@h:104", "not an AE title")])
def test_bad_forward_destinations_are_refused_by_name(text, reason):
    with pytest.raises(ConfigError, match="--forward") as error:
        Destination.parse(text)
    assert reason in str(error.value)


def test_config_refuses_half_a_tls_setting_and_names_it(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="--tls-cert/--tls-key"):
        NodeConfig(run=Path("run"), store=tmp_path, tls_cert=cert)
    assert Destination.parse("PACS@10.0.0.5:104") == Destination("PACS", "10.0.0.5", 104)


def test_a_readings_warnings_are_recorded_with_its_result_and_the_runs_fallback_is_not_repeated(tmp_path):
    from types import SimpleNamespace

    from pydicom.dataset import Dataset

    from bonescan.node.worker import PredictionWorker
    from bonescan.predict import OperatingPoint, StudyOutcome

    paths = []
    for name, uid in (("sc", "5.1"), ("sr", "5.2")):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", uid
        paths.append(tmp_path / f"{name}.dcm")
        ds.save_as(paths[-1], implicit_vr=True, little_endian=True, enforce_file_format=True)
    fallback = "no frozen operating point: threshold 0.5"
    outcome = StudyOutcome("9.1", "a.dcm", "ok", probability=0.7, decision="metastasis", operating_point="0.5",
                           threshold=0.5, dicom_sc=str(paths[0]), dicom_sr=str(paths[1]),
                           warnings=[fallback, "no Segmentation written (ValueError: refused)"])
    predictor = SimpleNamespace(batch_size=1, point=OperatingPoint("0.5", 0.5, warning=fallback),
                                predict=lambda works: [outcome])
    queue = NodeQueue(tmp_path / "q.sqlite")
    queue.add_instance("1.1", "9.1", "nm", 2, tmp_path / "a.dcm", "CAM", now=100.0)
    PredictionWorker(queue, predictor, 30, forward=True).process(queue.claim_ready(30, 8, now=100.0))
    assert queue.query("SELECT state FROM studies") == [("done",)]
    assert queue.query("SELECT level, study_uid, message FROM events") == [
        ("warning", "9.1", "no Segmentation written (ValueError: refused)")]
    assert [r.sop_uid for r in queue.due_results()] == ["5.1", "5.2"]


def _read_with_patient(queue: NodeQueue, uid: str, date: str, read_at: float, compared_with=None, verdict=None,
                       awaiting=None):
    from bonescan.node.queue import PatientStudy

    study = PatientStudy(uid, "P1", date, (Path(f"{uid}.dcm"),), compared_with=compared_with, verdict=verdict,
                         awaiting=awaiting)
    queue.add_instance(f"{uid}.9", uid, "nm", 2, Path(f"{uid}.dcm"), "CAM", now=read_at - 1)
    queue.claim_ready(30, 8, now=read_at - 1)
    queue.finish_study(uid, 0.2, "no metastasis", "youden", 0.5, [], forward=False, now=read_at, patient=study)
    return study


def test_a_study_read_before_its_prior_arrived_is_compared_again_once(tmp_path):
    queue = NodeQueue(tmp_path / "q.sqlite")
    march = _read_with_patient(queue, "9.3", "20260301", read_at=100.0)
    assert queue.stale_comparisons() == []  # no prior at all
    january = _read_with_patient(queue, "9.1", "20260101", read_at=250.0)  # fetched after March was read
    assert [s.study_uid for s in queue.stale_comparisons()] == ["9.3"] and queue.prior_study(march).study_uid == "9.1"
    queue.record_comparison(replace(march, compared_with=january), [("5.1", "followup", tmp_path / "fu.dcm")],
                            forward=True, now=251.0)
    assert queue.stale_comparisons() == []
    assert [(r.study_uid, r.kind) for r in queue.due_results(now=252.0)] == [("9.3", "followup")]
    queue.mark_sent("5.1")
    # compared inline with its prior when read: nothing stale
    _read_with_patient(queue, "9.5", "20260501", read_at=260.0, compared_with=march)
    assert queue.stale_comparisons() == []
    # March forgotten (read long ago, retention): May's latest prior is now January, older than the one May was
    # compared with, so May is not compared again
    queue.start_removals(read_before=200.0, keep_priors=True, now=300.0)
    assert queue.query("SELECT study_uid FROM patient_studies ORDER BY study_uid") == [("9.1",), ("9.5",)]
    assert queue.stale_comparisons() == []


def test_a_store_from_before_comparisons_were_recorded_compares_nothing_again(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "q.sqlite")
    db.executescript("""
        CREATE TABLE patient_studies (study_uid TEXT PRIMARY KEY, patient_id TEXT NOT NULL,
                                      study_date TEXT NOT NULL, files TEXT NOT NULL);
        INSERT INTO patient_studies VALUES ('9.1', 'P1', '20260101', 'a.dcm'), ('9.2', 'P1', '20260201', 'b.dcm'),
                                           ('9.3', 'P2', '20260301', 'c.dcm');""")
    db.close()
    queue = NodeQueue(tmp_path / "q.sqlite")
    assert queue.stale_comparisons() == []
    assert queue.query("SELECT study_uid, compared_with, compared_date FROM patient_studies ORDER BY study_uid") == [
        ("9.1", None, None), ("9.2", "9.1", "20260101"), ("9.3", None, None)]


def test_a_comparison_that_fails_is_tried_again_at_the_next_start_not_at_every_idle_moment(tmp_path):
    from types import SimpleNamespace

    from bonescan.node.followup import NodeComparison
    from bonescan.node.worker import PredictionWorker

    queue = NodeQueue(tmp_path / "q.sqlite")
    _read_with_patient(queue, "9.3", "20260301", read_at=100.0)
    _read_with_patient(queue, "9.1", "20260101", read_at=200.0)  # the prior, arrived after
    calls = []

    class Comparer:
        def __init__(self, fails: bool):
            self.fails = fails

        def compare(self, study, prior, awaiting=None, known=None):
            calls.append((study.study_uid, prior.study_uid))
            if self.fails:
                raise OSError("prior files unreadable")
            return NodeComparison([("5.9", "followup", tmp_path / "fu.dcm")], "1 new", "no progression", None)

    predictor = SimpleNamespace(batch_size=1, point=None)
    worker = PredictionWorker(queue, predictor, 30, forward=True, comparer=Comparer(fails=True))
    assert worker._compare_stale() and not worker._compare_stale()  # tried once, then left for this run
    assert calls == [("9.3", "9.1")] and queue.due_results() == []
    assert [s.study_uid for s in queue.stale_comparisons()] == ["9.3"]  # not recorded as compared
    assert "tried again at the next start" in queue.query("SELECT message FROM events")[-1][0]
    restarted = PredictionWorker(queue, predictor, 30, forward=True, comparer=Comparer(fails=False))
    assert restarted._compare_stale() and not restarted._compare_stale()
    assert calls[-1] == ("9.3", "9.1") and [r.sop_uid for r in queue.due_results()] == ["5.9"]
    assert queue.stale_comparisons() == []


def test_new_lesions_awaiting_confirmation_are_compared_with_the_next_scan_and_kept_for_it(tmp_path):
    from types import SimpleNamespace

    from bonescan.node.followup import NodeComparison
    from bonescan.node.worker import PredictionWorker

    queue = NodeQueue(tmp_path / "q.sqlite")
    january = _read_with_patient(queue, "9.1", "20260101", read_at=100.0)
    _read_with_patient(queue, "9.4", "20260401", read_at=110.0, compared_with=january, verdict="unconfirmed",
                       awaiting=("9.1", "9.4"))
    _read_with_patient(queue, "9.0", "20251001", read_at=120.0)  # an older study, awaited by nothing
    # Read long ago: retention keeps April (the latest) and January (its new lesions were counted against it)
    assert queue.start_removals(read_before=1000.0, keep_priors=True, now=1000.0) == ["9.0"]
    queue.finish_removal("9.0")
    prior = queue.prior_study(PatientStudy("9.6", "P1", "20260601", ()))
    assert prior.study_uid == "9.4" and prior.verdict == "unconfirmed" and prior.awaiting == ("9.1", "9.4")
    assert [s.study_uid for s in queue.awaiting_confirmation(prior)] == ["9.1", "9.4"]

    _read_with_patient(queue, "9.6", "20260601", read_at=1100.0)  # read; its comparison is still to be made
    calls = []

    class Comparer:
        def compare(self, study, prior, awaiting=None, known=None):
            calls.append((study.study_uid, prior.study_uid, [s.study_uid for s in awaiting or ()]))
            return NodeComparison([("5.6", "followup", tmp_path / "fu.dcm")], "3 more new", "progression", None)

    worker = PredictionWorker(queue, SimpleNamespace(batch_size=1, point=None), 30, forward=True,
                              comparer=Comparer())
    assert worker._compare_stale() and not worker._compare_stale()
    assert calls == [("9.6", "9.4", ["9.1", "9.4"])]  # the confirmatory scan of April's new lesions
    assert queue.query("SELECT verdict, awaiting_baseline, compared_with FROM patient_studies WHERE study_uid = "
                       "'9.6'") == [("progression", None, "9.4")]
    # confirmed: nothing awaits any more, so January and April may go
    queue.mark_sent("5.6")
    assert queue.start_removals(read_before=2000.0, keep_priors=True, now=2000.0) == ["9.1", "9.4"]


def test_a_scan_whose_awaited_baseline_is_gone_is_compared_with_its_prior_alone_and_says_so(tmp_path):
    import sqlite3
    from types import SimpleNamespace

    from bonescan.node.followup import NodeComparison
    from bonescan.node.worker import PredictionWorker

    queue = NodeQueue(tmp_path / "q.sqlite")
    january = _read_with_patient(queue, "9.1", "20260101", read_at=100.0)
    _read_with_patient(queue, "9.4", "20260401", read_at=110.0, compared_with=january, verdict="unconfirmed",
                       awaiting=("9.1", "9.4"))
    with sqlite3.connect(tmp_path / "q.sqlite") as db:  # e.g. removed by hand
        db.execute("DELETE FROM patient_studies WHERE study_uid = '9.1'")
    _read_with_patient(queue, "9.6", "20260601", read_at=120.0)
    calls = []

    class Comparer:
        def compare(self, study, prior, awaiting=None, known=None):
            calls.append(awaiting)
            return NodeComparison([("5.6", "followup", tmp_path / "fu.dcm")], "", "unconfirmed", ("9.4", "9.6"))

    worker = PredictionWorker(queue, SimpleNamespace(batch_size=1, point=None), 30, forward=True,
                              comparer=Comparer())
    assert worker._compare_stale()
    assert calls == [None]
    assert "no longer held" in queue.query("SELECT message FROM events WHERE study_uid = '9.6'")[0][0]
    assert queue.query("SELECT awaiting_baseline, awaiting_followup FROM patient_studies WHERE study_uid = '9.6'"
                       ) == [("9.4", "9.6")]


def test_a_store_from_before_verdicts_were_kept_gains_them_empty(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "q.sqlite")
    db.executescript("""
        CREATE TABLE patient_studies (study_uid TEXT PRIMARY KEY, patient_id TEXT NOT NULL,
                                      study_date TEXT NOT NULL, files TEXT NOT NULL, compared_with TEXT,
                                      compared_date TEXT);
        INSERT INTO patient_studies VALUES ('9.1', 'P1', '20260101', 'a.dcm', NULL, NULL),
                                           ('9.2', 'P1', '20260201', 'b.dcm', '9.1', '20260101');""")
    db.close()
    queue = NodeQueue(tmp_path / "q.sqlite")
    prior = queue.prior_study(PatientStudy("9.3", "P1", "20260301", ()))
    assert prior.study_uid == "9.2" and prior.verdict is None and prior.awaiting is None
    assert queue.stale_comparisons() == []


def test_status_counts_studies_read_after_their_removal_and_the_followup_verdicts(tmp_path):
    from bonescan.node.status import format_status, node_status

    queue = NodeQueue(tmp_path / "queue.sqlite")
    january = _read_with_patient(queue, "9.1", "20260101", read_at=1000.0)
    april = _read_with_patient(queue, "9.4", "20260401", read_at=1010.0, compared_with=january,
                               verdict="unconfirmed", awaiting=("9.1", "9.4"))
    _read_with_patient(queue, "9.6", "20260601", read_at=1020.0, compared_with=april, verdict="progression")
    queue.add_instance("9.7.9", "9.7", "nm", 1, Path("9.7.dcm"), "CAM", now=1020.0)
    queue.claim_ready(0, 8, now=1030.0)
    queue.fail_study("9.7", "one view only", now=1030.0)
    for uid in queue.start_removals(read_before=1015.0, keep_priors=False, now=1040.0):
        queue.finish_removal(uid, now=1040.0)
    assert queue.query("SELECT state FROM studies WHERE study_uid IN ('9.1', '9.4')") == [("removed",)] * 2
    status = node_status(tmp_path, now=1050.0)
    assert status["throughput"]["studies_last_hour"] == 3  # removed ones too; the failed one is not a read study
    assert status["latency_s"]["studies"] == 3
    # 9.6 confirmed progression and nothing of its patient awaits confirmation any more
    assert status["followup"] == {"progression": 1, "awaiting confirmation": 0}
    assert any("PCWG3 verdict: progression 1" in line for line in format_status(status))


def test_status_gives_the_stores_free_disk_warns_when_low_and_counts_studies_waiting_for_room(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    import bonescan.node.status as status_module
    from bonescan.node.status import LOW_DISK_BYTES, format_status, node_status

    queue = NodeQueue(tmp_path / "queue.sqlite")
    for uid in ("9.1", "9.2"):
        queue.add_instance(f"{uid}.1", uid, "nm", 2, Path(f"{uid}.dcm"), "CAM", now=1000.0)
    queue.claim_ready(30, 8, now=1000.0)
    queue.defer_study("9.1", "writing results: x.dcm: cannot be written: No space left on device", 1060.0, now=1000.0)
    status = node_status(tmp_path, now=1001.0)
    real = shutil.disk_usage(tmp_path)
    assert status["disk"]["total_bytes"] == real.total and status["disk"]["studies_waiting_for_room"] == 1
    lines = format_status(status)
    assert "studies read whose results could not be written, read again every 60 s: 1" in lines
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(status_module.shutil, "disk_usage", lambda path: usage(100 * 1024 ** 3, 0, LOW_DISK_BYTES - 1))
    low = format_status(node_status(tmp_path, now=1001.0))
    assert [line for line in low if line.startswith("disk: ")] == [
        "disk: 2.0 GB free of 100.0 GB - LOW: results that cannot be written hold their studies back; free space "
        "or set --keep-days"]
    monkeypatch.setattr(status_module.shutil, "disk_usage", lambda path: usage(100 * 1024 ** 3, 0, LOW_DISK_BYTES))
    assert "disk: 2.0 GB free of 100.0 GB" in format_status(node_status(tmp_path, now=1001.0))


def test_a_study_compared_before_its_prior_was_compared_is_compared_again_when_that_leaves_lesions_awaiting(tmp_path):
    """Arrival order December, June, October (one patient): June is compared with December at once; October's
    arrival then compares December with it, leaving two new lesions awaiting confirmation, which June, the scan
    after, must confirm or not: June is compared again."""
    queue = NodeQueue(tmp_path / "q.sqlite")
    december = _read_with_patient(queue, "9.12", "20251201", read_at=100.0)
    _read_with_patient(queue, "9.6", "20260601", read_at=110.0, compared_with=december, verdict="no progression")
    october = _read_with_patient(queue, "9.10", "20251001", read_at=120.0)
    assert [s.study_uid for s in queue.stale_comparisons()] == ["9.12"]
    queue.record_comparison(replace(december, compared_with=october, verdict="unconfirmed", awaiting=("9.10", "9.12")),
                            [], forward=True)
    assert [s.study_uid for s in queue.stale_comparisons()] == ["9.6"]
    june = queue.stale_comparisons()[0]
    queue.record_comparison(replace(june, compared_with=december, verdict="progression"), [], forward=True)
    assert queue.stale_comparisons() == []
    # a comparison made again that leaves what awaits as it was sends nothing through again
    queue.record_comparison(replace(december, compared_with=october, verdict="unconfirmed", awaiting=("9.10", "9.12")),
                            [], forward=True)
    assert queue.stale_comparisons() == []
