"""The node's durable queue: received instances, studies and outgoing results in one SQLite database.

Every state change is one transaction (BEGIN IMMEDIATE ... COMMIT) in WAL mode with synchronous=FULL, so a
change that returned has reached the disk and a kill -9 at any moment leaves the state before or after it,
never between. States:

    study:   receiving -> ready -> predicting -> done | failed      (failed -> receiving when an instance arrives)
                                   predicting -> ready   (its results could not be written: read again later)
             done | failed -> removing -> removed     (with --keep-days, `retention`; removed -> receiving likewise)
    outbox:  pending -> sent | failed          (stored when the node has no forward destination)

A study becomes ready when its instances hold two frames (one two-frame file, or two single-view files), or
`complete_after` seconds after its last instance. A study found in `predicting` at start-up was interrupted:
it goes back to ready (its half-written results were never queued, so re-reading it sends nothing twice).
Results are keyed by their SOP Instance UID: once queued, a result keeps its UID however often it is resent.
With follow-up on, each study read is also remembered by PatientID and StudyDate (`patient_studies`), in the
transaction that records its result, so a later study of the patient finds it as its prior, with the prior it was
compared with; a study whose latest prior is newer than that one (a prior that arrived after it, or a comparison
that failed) is compared again (`stale_comparisons`), and that comparison's results are queued with the record of
it in one transaction. Each comparison's PCWG3 verdict is kept with it, and while two or more new lesions await
confirmation, which baseline and first follow-up they were counted on (`awaiting_confirmation`): the patient's next
scan confirms them or not (`node.followup`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, sop_class TEXT, frames INTEGER NOT NULL,
    path TEXT NOT NULL, calling_ae TEXT, received_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY, state TEXT NOT NULL, frames INTEGER NOT NULL DEFAULT 0,
    instances INTEGER NOT NULL DEFAULT 0, first_received REAL, last_received REAL, attempts INTEGER NOT NULL DEFAULT 0,
    probability REAL, decision TEXT, operating_point TEXT, threshold REAL, error TEXT, finished_at REAL,
    updated_at REAL, next_attempt REAL NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state, last_received);
CREATE TABLE IF NOT EXISTS outbox (
    sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, kind TEXT NOT NULL, path TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0, last_error TEXT, queued_at REAL,
    sent_at REAL);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_attempt);
CREATE TABLE IF NOT EXISTS patient_studies (
    study_uid TEXT PRIMARY KEY, patient_id TEXT NOT NULL, study_date TEXT NOT NULL, files TEXT NOT NULL,
    compared_with TEXT, compared_date TEXT, verdict TEXT, awaiting_baseline TEXT, awaiting_followup TEXT);
CREATE INDEX IF NOT EXISTS patient_studies_patient ON patient_studies(patient_id, study_date);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, level TEXT NOT NULL, study_uid TEXT, message TEXT NOT NULL);
"""
MAX_PREDICTION_ATTEMPTS = 3  # a study that kills the node this often while being read is failed, not retried forever
UNWRITTEN_RETRY_SECONDS = 60  # a study whose results could not be written waits this long (not to fill the log)
FRAMES_OF_A_STUDY = 2


@dataclass(frozen=True)
class Instance:
    sop_uid: str
    path: Path
    frames: int


@dataclass(frozen=True)
class StudyWork:
    """A study claimed for prediction, with its instances in arrival order."""

    study_uid: str
    instances: tuple[Instance, ...]
    timed_out: bool  # read because complete_after passed, not because both views arrived


@dataclass(frozen=True)
class PatientStudy:
    """A study read by the node, as a later study of the patient finds it: its UID, PatientID, StudyDate
    (YYYYMMDD) and files."""

    study_uid: str
    patient_id: str
    study_date: str
    files: tuple[Path, ...]
    compared_with: "PatientStudy | None" = None  # the prior it was compared with (in finish_study, record_comparison)
    verdict: str | None = None  # that comparison's PCWG3 status
    # (baseline, first follow-up) study UIDs whose >= 2 new lesions a later scan has still to confirm
    awaiting: tuple[str, str] | None = None


@dataclass(frozen=True)
class OutgoingResult:
    sop_uid: str
    study_uid: str
    kind: str  # "sc", "sr", "hotspots" (an SC), "seg", "followup" (an SR) or "followup-sc"
    path: Path
    attempts: int


@dataclass(frozen=True)
class Recovery:
    """What a start-up found unfinished."""

    interrupted: int  # studies that were being predicted, back to ready
    waiting: int  # studies still receiving or ready
    unsent: int  # results not yet at the destination

    def describe(self) -> str:
        return (f"recovered {self.interrupted} interrupted predictions, {self.waiting} studies waiting, "
                f"{self.unsent} results to send")


class NodeQueue:
    """One SQLite connection shared by the node's threads; each method is one short transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._migrate_older_stores()
        except sqlite3.DatabaseError as error:
            raise ConfigError(self.path, f"cannot open the node's queue database ({error})") from error
        self._lock = threading.Lock()

    def _migrate_older_stores(self) -> None:
        """Columns added to patient_studies since a store was made, filled with what its rows meant then."""
        # Made before comparisons were recorded: its studies were compared with their latest prior then, which is
        # recorded as such, so that none is compared (and its follow-up SR sent) again.
        self._add_columns("compared_date", """
            ALTER TABLE patient_studies ADD COLUMN compared_with TEXT;
            ALTER TABLE patient_studies ADD COLUMN compared_date TEXT;
            UPDATE patient_studies AS l SET (compared_with, compared_date) = (
                SELECT p.study_uid, p.study_date FROM patient_studies p WHERE p.patient_id = l.patient_id
                AND p.study_date < l.study_date ORDER BY p.study_date DESC LIMIT 1);""")
        # Made before verdicts were kept: its comparisons' verdicts are unknown (NULL), so no scan waits for
        # confirmation by the next one.
        self._add_columns("verdict", """
            ALTER TABLE patient_studies ADD COLUMN verdict TEXT;
            ALTER TABLE patient_studies ADD COLUMN awaiting_baseline TEXT;
            ALTER TABLE patient_studies ADD COLUMN awaiting_followup TEXT;""")
        # Made before studies were read again later: every study of it may be read now.
        self._add_columns("next_attempt", """
            ALTER TABLE studies ADD COLUMN next_attempt REAL NOT NULL DEFAULT 0;""", table="studies")

    def _add_columns(self, column: str, script: str, table: str = "patient_studies") -> None:
        """Run `script` in one transaction unless `table` has `column` already."""
        if column not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
            self._db.executescript(f"BEGIN IMMEDIATE;{script}\nCOMMIT;")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- receiving -------------------------------------------------------------------------------------------

    def has_instance(self, sop_uid: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone() is not None

    def add_instance(self, sop_uid: str, study_uid: str, sop_class: str, frames: int, path: str | Path,
                     calling_ae: str, now: float | None = None) -> str:
        """Record a received instance; "new", "duplicate" (SOP instance already held) or "late" (study read)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sop_uid, study_uid, sop_class, frames, str(path), calling_ae, now)).rowcount
            if not inserted:
                return "duplicate"
            row = db.execute("SELECT state FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if row is None:
                db.execute("INSERT INTO studies (study_uid, state, frames, instances, first_received, last_received,"
                           " updated_at) VALUES (?, 'receiving', 0, 0, ?, ?, ?)", (study_uid, now, now, now))
            elif row[0] in ("failed", "removed"):
                # A view that arrives after its study timed out: read the study again (nothing of it was sent).
                # A study sent again after retention removed it: read it again, as the node no longer holds it.
                db.execute("UPDATE studies SET state = 'receiving', error = NULL, attempts = 0 WHERE study_uid = ?",
                           (study_uid,))
                what = "failed" if row[0] == "failed" else "was removed"
                self._event(db, "info", study_uid, f"instance {sop_uid} arrived after the study {what}; reading again")
            elif row[0] not in ("receiving", "ready"):
                self._event(db, "warning", study_uid,
                            f"instance {sop_uid} arrived after the study was read; kept, not read again")
                return "late"
            db.execute("UPDATE studies SET frames = frames + ?, instances = instances + 1, last_received = ?,"
                       " updated_at = ?, state = CASE WHEN frames + ? >= ? THEN 'ready' ELSE state END"
                       " WHERE study_uid = ?", (frames, now, now, frames, FRAMES_OF_A_STUDY, study_uid))
            return "new"

    # --- predicting ------------------------------------------------------------------------------------------

    def claim_ready(self, complete_after: float, limit: int, now: float | None = None) -> list[StudyWork]:
        """Mark up to `limit` ready studies (or receiving ones quiet for complete_after s) as predicting."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            timed_out = {uid for (uid,) in db.execute(
                "SELECT study_uid FROM studies WHERE state = 'receiving' AND last_received <= ?",
                (now - complete_after,))}
            if timed_out:
                db.execute("UPDATE studies SET state = 'ready', updated_at = ? WHERE state = 'receiving'"
                           " AND last_received <= ?", (now, now - complete_after))
            rows = db.execute("SELECT study_uid, attempts FROM studies WHERE state = 'ready' AND next_attempt <= ?"
                              " ORDER BY last_received LIMIT ?", (now, limit)).fetchall()
            work = []
            for uid, attempts in rows:
                if attempts >= MAX_PREDICTION_ATTEMPTS:
                    reason = f"prediction was interrupted {attempts} times (the node stopped while reading it)"
                    self._fail(db, uid, reason, now)
                    continue
                db.execute("UPDATE studies SET state = 'predicting', attempts = attempts + 1, updated_at = ?"
                           " WHERE study_uid = ?", (now, uid))
                instances = tuple(Instance(sop, Path(path), frames) for sop, path, frames in db.execute(
                    "SELECT sop_uid, path, frames FROM instances WHERE study_uid = ? ORDER BY received_at, sop_uid",
                    (uid,)))
                work.append(StudyWork(uid, instances, uid in timed_out))
            return work

    def finish_study(self, study_uid: str, probability: float, decision: str, operating_point: str,
                     threshold: float, results: list[tuple[str, str, Path]], forward: bool,
                     now: float | None = None, patient: PatientStudy | None = None,
                     warnings: list[str] = ()) -> None:
        """Record a prediction and queue its results (sop_uid, kind, path) in the same transaction, with the
        reading's `warnings` as events; with `patient`, remember the study as a later one's prior."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            if patient is not None:
                prior = patient.compared_with
                awaiting = patient.awaiting or (None, None)
                db.execute("INSERT OR REPLACE INTO patient_studies (study_uid, patient_id, study_date, files,"
                           " compared_with, compared_date, verdict, awaiting_baseline, awaiting_followup)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (patient.study_uid, patient.patient_id, patient.study_date,
                            "\n".join(str(p) for p in patient.files), prior and prior.study_uid,
                            prior and prior.study_date, patient.verdict, *awaiting))
            db.execute("UPDATE studies SET state = 'done', probability = ?, decision = ?, operating_point = ?,"
                       " threshold = ?, error = NULL, finished_at = ?, updated_at = ? WHERE study_uid = ?",
                       (probability, decision, operating_point, threshold, now, now, study_uid))
            self._queue_results(db, study_uid, results, forward, now)
            for warning in warnings:
                self._event(db, "warning", study_uid, warning)

    _PATIENT_STUDY = ("SELECT study_uid, patient_id, study_date, files, verdict, awaiting_baseline, awaiting_followup"
                      " FROM patient_studies")

    @staticmethod
    def _patient_study(row: tuple) -> PatientStudy:
        uid, patient_id, date, files, verdict, baseline, followup = row
        return PatientStudy(uid, patient_id, date, tuple(Path(p) for p in files.split("\n")), verdict=verdict,
                            awaiting=(baseline, followup) if baseline and followup else None)

    def prior_study(self, study: PatientStudy) -> PatientStudy | None:
        """The latest study of the same patient read here and dated before `study`, or None."""
        with self._lock:
            row = self._db.execute(
                f"{self._PATIENT_STUDY} WHERE patient_id = ? AND study_date < ? AND study_uid != ?"
                " ORDER BY study_date DESC LIMIT 1", (study.patient_id, study.study_date, study.study_uid)).fetchone()
        return None if row is None else self._patient_study(row)

    def awaiting_confirmation(self, prior: PatientStudy) -> tuple[PatientStudy, PatientStudy] | None:
        """The baseline and first follow-up whose new lesions the scan after `prior` confirms or not: those its
        comparison left awaiting confirmation, when both are still held here; else None."""
        if prior.awaiting is None:
            return None
        with self._lock:
            rows = {row[0]: row for row in self._db.execute(
                f"{self._PATIENT_STUDY} WHERE study_uid IN (?, ?)", prior.awaiting)}
        if not all(uid in rows for uid in prior.awaiting):
            return None
        baseline, followup = (self._patient_study(rows[uid]) for uid in prior.awaiting)
        return baseline, followup

    def stale_comparisons(self) -> list[PatientStudy]:
        """Studies whose latest prior here is newer than the one they were compared with (or they were compared
        with none): a prior arrived after them, their comparison failed, or what their prior left awaiting
        confirmation changed since (`record_comparison`). Oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"{self._PATIENT_STUDY} l"
                " WHERE (SELECT MAX(p.study_date) FROM patient_studies p WHERE p.patient_id = l.patient_id"
                "        AND p.study_date < l.study_date) > COALESCE(l.compared_date, '')"
                " ORDER BY l.study_date").fetchall()
        return [self._patient_study(row) for row in rows]

    def record_comparison(self, study: PatientStudy, results: list[tuple[str, str, Path]], forward: bool,
                          now: float | None = None) -> None:
        """Queue the results of comparing an already read `study` with its `compared_with` prior, and record that
        comparison (so it is not made again) with its verdict, in one transaction. When it changes what awaits
        confirmation, a later study already compared with `study` is to be compared again (it is the scan that
        confirms them or not)."""
        now = time.time() if now is None else now
        prior = study.compared_with
        awaiting = study.awaiting or (None, None)
        with self._transaction() as db:
            before = db.execute("SELECT awaiting_baseline, awaiting_followup FROM patient_studies WHERE study_uid = ?",
                                (study.study_uid,)).fetchone()
            db.execute("UPDATE patient_studies SET compared_with = ?, compared_date = ?, verdict = ?,"
                       " awaiting_baseline = ?, awaiting_followup = ? WHERE study_uid = ?",
                       (prior.study_uid, prior.study_date, study.verdict, *awaiting, study.study_uid))
            if before is not None and tuple(before) != tuple(awaiting):
                db.execute("UPDATE patient_studies SET compared_date = NULL WHERE compared_with = ?",
                           (study.study_uid,))
            self._queue_results(db, study.study_uid, results, forward, now)

    @staticmethod
    def _queue_results(db: sqlite3.Connection, study_uid: str, results: list[tuple[str, str, Path]], forward: bool,
                       now: float) -> None:
        """Queue results (sop_uid, kind, path) to be sent, or as stored when there is nowhere to send them."""
        state = "pending" if forward else "stored"
        for sop_uid, kind, path in results:
            db.execute("INSERT OR IGNORE INTO outbox (sop_uid, study_uid, kind, path, state, queued_at)"
                       " VALUES (?, ?, ?, ?, ?, ?)", (sop_uid, study_uid, kind, str(path), state, now))

    def fail_study(self, study_uid: str, reason: str, now: float | None = None) -> None:
        """Record why a study could not be read."""
        with self._transaction() as db:
            self._fail(db, study_uid, reason, time.time() if now is None else now)

    def defer_study(self, study_uid: str, reason: str, retry_at: float, now: float | None = None) -> None:
        """The study was read but its results could not be written (a full disk): ready again from `retry_at`.
        Its attempts start again, as it did not stop the node."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            db.execute("UPDATE studies SET state = 'ready', error = ?, attempts = 0, next_attempt = ?, updated_at = ?"
                       " WHERE study_uid = ?", (reason, retry_at, now, study_uid))
            self._event(db, "warning", study_uid, f"{reason}; read again in {retry_at - now:.0f} s")

    def release_study(self, study_uid: str, retry_at: float, now: float | None = None) -> bool:
        """A study claimed in this run whose outcome could not be recorded (the database could not write): ready
        again from `retry_at`, its claim not counted as an interruption. False when it is no longer predicting."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            return db.execute("UPDATE studies SET state = 'ready', attempts = MAX(attempts - 1, 0), next_attempt = ?,"
                              " updated_at = ? WHERE study_uid = ? AND state = 'predicting'",
                              (retry_at, now, study_uid)).rowcount == 1

    def _fail(self, db: sqlite3.Connection, study_uid: str, reason: str, now: float) -> None:
        db.execute("UPDATE studies SET state = 'failed', error = ?, finished_at = ?, updated_at = ?"
                   " WHERE study_uid = ?", (reason, now, now, study_uid))
        self._event(db, "error", study_uid, reason)

    # --- retention (`retention`) ------------------------------------------------------------------------------

    def start_removals(self, read_before: float, keep_priors: bool, now: float | None = None) -> list[str]:
        """Mark as removing every study read (done or failed) before `read_before` with no result waiting to be
        sent, except, with `keep_priors`, each patient's latest study and the baseline and first follow-up its
        comparison left awaiting confirmation by the next scan; forget them as priors. Returns them with
        any removal a kill left unfinished."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            expired = [uid for (uid,) in db.execute(
                "SELECT s.study_uid FROM studies s WHERE s.state IN ('done', 'failed') AND s.finished_at < ?"
                " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.study_uid = s.study_uid AND o.state = 'pending')"
                " AND NOT (? AND (EXISTS (SELECT 1 FROM patient_studies p WHERE p.study_uid = s.study_uid"
                "   AND p.study_date = (SELECT MAX(q.study_date) FROM patient_studies q"
                "                       WHERE q.patient_id = p.patient_id))"
                "   OR EXISTS (SELECT 1 FROM patient_studies a WHERE s.study_uid IN (a.awaiting_baseline,"
                "                                                                     a.awaiting_followup)"
                "     AND a.study_date = (SELECT MAX(q.study_date) FROM patient_studies q"
                "                         WHERE q.patient_id = a.patient_id))))",
                (read_before, keep_priors))]
            for uid in expired:
                db.execute("UPDATE studies SET state = 'removing', updated_at = ? WHERE study_uid = ?", (now, uid))
                db.execute("DELETE FROM patient_studies WHERE study_uid = ?", (uid,))
            return [uid for (uid,) in db.execute("SELECT study_uid FROM studies WHERE state = 'removing'"
                                                 " ORDER BY finished_at")]

    def study_paths(self, study_uid: str) -> list[Path]:
        """The files recorded for a study: its received instances and its queued results."""
        with self._lock:
            rows = self._db.execute("SELECT path FROM instances WHERE study_uid = ? UNION ALL"
                                    " SELECT path FROM outbox WHERE study_uid = ?", (study_uid, study_uid)).fetchall()
        return [Path(path) for (path,) in rows]

    def finish_removal(self, study_uid: str, now: float | None = None) -> None:
        """The study's files are gone: forget its instances (a study sent again is then read again)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            db.execute("DELETE FROM instances WHERE study_uid = ?", (study_uid,))
            db.execute("UPDATE studies SET state = 'removed', frames = 0, instances = 0, updated_at = ?"
                       " WHERE study_uid = ?", (now, study_uid))

    # --- sending ---------------------------------------------------------------------------------------------

    def due_results(self, limit: int = 64, now: float | None = None) -> list[OutgoingResult]:
        """Pending results whose next attempt is due, Secondary Captures before the SRs that reference them."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT sop_uid, study_uid, kind, path, attempts FROM outbox WHERE state = 'pending'"
                " AND next_attempt <= ? ORDER BY queued_at, kind LIMIT ?", (now, limit)).fetchall()
        return [OutgoingResult(sop, study, kind, Path(path), attempts) for sop, study, kind, path, attempts in rows]

    def next_due_time(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(next_attempt) FROM outbox WHERE state = 'pending'").fetchone()
        return row[0]

    def mark_sent(self, sop_uid: str, now: float | None = None) -> None:
        with self._transaction() as db:
            db.execute("UPDATE outbox SET state = 'sent', sent_at = ?, last_error = NULL WHERE sop_uid = ?",
                       (time.time() if now is None else now, sop_uid))

    def mark_retry(self, sop_uids: list[str], error: str, delays: list[float], now: float | None = None) -> None:
        """Count a failed attempt for each result and schedule its next one `delay` seconds from now."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            for sop_uid, delay in zip(sop_uids, delays):
                db.execute("UPDATE outbox SET attempts = attempts + 1, next_attempt = ?, last_error = ?"
                           " WHERE sop_uid = ?", (now + delay, error, sop_uid))

    def mark_send_failed(self, sop_uid: str, study_uid: str, error: str) -> None:
        """Give up on one result (the destination refused it for good)."""
        with self._transaction() as db:
            db.execute("UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ?"
                       " WHERE sop_uid = ?", (error, sop_uid))
            self._event(db, "error", study_uid, f"result {sop_uid} not sent: {error}")

    # --- start-up, events, status ----------------------------------------------------------------------------

    def recover(self) -> Recovery:
        """Put interrupted predictions back to ready and count what is left to do."""
        with self._transaction() as db:
            interrupted = db.execute("UPDATE studies SET state = 'ready' WHERE state = 'predicting'").rowcount
            waiting = db.execute("SELECT COUNT(*) FROM studies WHERE state IN ('receiving', 'ready')").fetchone()[0]
            unsent = db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()[0]
            recovery = Recovery(interrupted, waiting, unsent)
            if interrupted or waiting or unsent:
                self._event(db, "info", None, recovery.describe())
            return recovery

    def record_event(self, level: str, message: str, study_uid: str | None = None) -> None:
        with self._transaction() as db:
            self._event(db, level, study_uid, message)

    @staticmethod
    def _event(db: sqlite3.Connection, level: str, study_uid: str | None, message: str) -> None:
        db.execute("INSERT INTO events (at, level, study_uid, message) VALUES (?, ?, ?, ?)",
                   (time.time(), level, study_uid, message))

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read-only helper for status and tests."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()
