"""kill -9 of the node during transfers and during prediction: after restarts every study has exactly one result
(one SR and one Secondary Capture, by SOP Instance UID) at the destination, and no received instance is lost; with
a lesion run and follow-up, every result of each kind arrives once, and each later visit's follow-up SR once."""

from __future__ import annotations

import re
import sqlite3
import threading
import time

import pytest
from nodekit import Destination, NodeProcess, make_lesion_run, make_run, scu, study, wait_for

pytestmark = pytest.mark.slow  # three node start-ups and 100 studies: about 40-60 s on 2 shared cores

ASSOCIATIONS, PER_ASSOCIATION = 4, 25
SR = "1.2.840.10008.5.1.4.1.1.88.33"
SC = "1.2.840.10008.5.1.4.1.1.7"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"


def count(store, sql: str) -> int:
    try:
        db = sqlite3.connect(f"file:{store / 'queue.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql).fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0  # not created yet, or busy: ask again


class Camera(threading.Thread):
    """One association's worth of studies; resends from the first unacknowledged one after a lost association."""

    def __init__(self, index: int, studies, port_box: dict):
        super().__init__(daemon=True)
        self.ae_title = f"CAM{index}"
        self.studies = studies
        self.port_box = port_box
        self.acknowledged = 0
        self.lost_associations = 0

    def run(self) -> None:
        deadline = time.monotonic() + 240
        while self.acknowledged < len(self.studies) and time.monotonic() < deadline:
            assoc = scu(self.ae_title).associate("127.0.0.1", self.port_box["port"], ae_title="BONESCAN")
            if not assoc.is_established:
                time.sleep(0.2)  # the node is restarting
                continue
            try:
                while self.acknowledged < len(self.studies):
                    try:
                        status = assoc.send_c_store(self.studies[self.acknowledged]) if assoc.is_established else None
                    except RuntimeError:  # the node went away between the check and the send
                        status = None
                    if not status or status.Status != 0x0000:
                        self.lost_associations += 1
                        break
                    self.acknowledged += 1
                    time.sleep(0.01)  # a camera's pace, so the kill lands mid-transfer
            finally:
                if assoc.is_established:
                    assoc.release()


def test_kill_9_during_transfers_and_prediction_loses_and_duplicates_nothing(tmp_path):
    run = make_run(tmp_path / "run")
    pacs = Destination().start()
    store = tmp_path / "store"
    node = NodeProcess(run, store, "--forward", pacs.address, "--allow", ",".join(f"CAM{i}" for i in range(4)))
    try:
        port_box = {"port": node.start()}
        batches = [[study(1000 + PER_ASSOCIATION * a + k) for k in range(PER_ASSOCIATION)] for a in range(ASSOCIATIONS)]
        cameras = [Camera(a, batches[a], port_box) for a in range(ASSOCIATIONS)]
        for camera in cameras:
            camera.start()

        # 1. kill -9 while the four associations are transferring.
        wait_for(lambda: count(store, "SELECT COUNT(*) FROM instances") >= 30, 60, 0.02, "30 instances stored")
        node.kill9()
        stored_at_kill = count(store, "SELECT COUNT(*) FROM instances")
        assert stored_at_kill < ASSOCIATIONS * PER_ASSOCIATION, "the kill came after the transfers"
        port_box["port"] = node.start()
        for camera in cameras:
            camera.join(timeout=240)
        assert [c.acknowledged for c in cameras] == [PER_ASSOCIATION] * ASSOCIATIONS
        assert sum(c.lost_associations for c in cameras) >= 1

        # 2. kill -9 while studies are being predicted and results sent.
        wait_for(lambda: count(store, "SELECT COUNT(*) FROM studies WHERE state = 'predicting'") > 0
                 and count(store, "SELECT COUNT(*) FROM outbox WHERE state = 'sent'") >= 10, 120, 0.02,
                 "prediction under way")
        node.kill9()
        done_at_kill = count(store, "SELECT COUNT(*) FROM studies WHERE state = 'done'")
        assert done_at_kill < ASSOCIATIONS * PER_ASSOCIATION
        node.start()

        uids = {ds.StudyInstanceUID for batch in batches for ds in batch}
        wait_for(lambda: set(pacs.by_study()) >= uids and all(len(pacs.by_study()[u].get(SR, ())) >= 1 and
                 len(pacs.by_study()[u].get(SC, ())) >= 1 for u in uids), 180, 0.2, "every study's results")
        time.sleep(1.0)  # anything that would arrive twice arrives now
        table = pacs.by_study()
        assert set(table) == uids
        for uid in uids:
            assert len(table[uid][SR]) == 1 and len(table[uid][SC]) == 1, f"study {uid}: {table[uid]}"
        assert count(store, "SELECT COUNT(*) FROM instances") == ASSOCIATIONS * PER_ASSOCIATION
        assert count(store, "SELECT COUNT(*) FROM studies WHERE state = 'done'") == ASSOCIATIONS * PER_ASSOCIATION
        restart_log = node.log.read_text()
        found = re.search(r"recovered (\d+) interrupted predictions, (\d+) studies waiting", restart_log)
        assert found and int(found.group(1)) + int(found.group(2)) > 0  # it logged what it took over
        assert "Doe" not in restart_log
        # Resends after a kill carry the same SOP Instance UID, so a PACS stores each result once.
        resent = len(pacs.received) - 2 * len(uids)
        print(f"instances stored at the first kill: {stored_at_kill}; studies done at the second: {done_at_kill}; "
              f"results received again with the same UID: {resent}")
    finally:
        node.terminate()
        pacs.stop()


def test_kill_9_with_lesions_and_follow_up_sends_each_result_once(tmp_path):
    pacs = Destination().start()
    store = tmp_path / "store"
    node = NodeProcess(make_run(tmp_path / "run"), store, "--forward", pacs.address,
                       "--lesions", str(make_lesion_run(tmp_path / "lesion-run")), "--followup")
    patients, visits = 3, 4
    # Sent in date order: each patient's visit v (v >= 1) has visit v - 1 as its prior.
    studies = [study(2000 + 10 * p + v, text={"PatientID": f"K{p}", "StudyDate": f"2026{v + 1:02d}15"})
               for v in range(visits) for p in range(patients)]
    try:
        port_box = {"port": node.start()}
        camera = Camera(0, studies, port_box)
        camera.start()
        wait_for(lambda: count(store, "SELECT COUNT(*) FROM outbox WHERE kind = 'followup'") >= 2, 120, 0.02,
                 "follow-up comparisons under way")
        node.kill9()
        assert count(store, "SELECT COUNT(*) FROM studies WHERE state = 'done'") < len(studies), "killed too late"
        port_box["port"] = node.start()
        camera.join(timeout=240)
        assert camera.acknowledged == len(studies)

        def expected_srs(index: int) -> int:
            return 1 if index < patients else 2  # the report, and from the second visit on the follow-up SR

        uids = [ds.StudyInstanceUID for ds in studies]
        wait_for(lambda: all(len(pacs.by_study().get(u, {}).get(SR, ())) >= expected_srs(i)
                             for i, u in enumerate(uids)), 180, 0.2, "every study's results")
        time.sleep(1.0)  # anything that would arrive twice arrives now
        table = pacs.by_study()
        for index, uid in enumerate(uids):
            got = table[uid]
            later = index >= patients  # a later visit also has the follow-up SR and its side-by-side SC
            assert (len(got[SR]), len(got[SC]), len(got[SEG])) == (1 + later, 2 + later, 2), f"study {uid}: {got}"
        assert count(store, "SELECT COUNT(*) FROM patient_studies") == len(studies)
    finally:
        node.terminate()
        pacs.stop()
