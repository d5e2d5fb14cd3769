"""SQLite storage of a reader study: cases, readers, sessions, per-reader queues and every answer.

The database runs in WAL mode with synchronous=FULL and each answer is one transaction, so a server killed at
any moment keeps every answer it has acknowledged. Times come from the server's clock only: a case's clock
starts when it is first served, stops while the reader is paused, and stops at the answer.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

from ..errors import ConfigError

FORMAT = "bonescan-reader-study"
SCHEMA_VERSION = "1"
DB_NAME = "study.sqlite"
IMAGES_DIR = "images"
MODES = ("blinded", "ai-consulted")
SESSION_SECONDS = 12 * 3600  # one working day; sessions survive server restarts

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cases (
    case_id TEXT PRIMARY KEY,
    image_key TEXT UNIQUE NOT NULL,        -- random; names the PNG files, never shown to readers
    source TEXT NOT NULL,
    label INTEGER CHECK (label IN (0, 1)), -- reference standard when the case list carried it
    upper REAL NOT NULL                    -- suggested upper window level, fraction of the image maximum
);
CREATE TABLE readers (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL);
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    reader TEXT NOT NULL REFERENCES readers(name),
    expires_at REAL NOT NULL
);
CREATE TABLE phases (
    phase TEXT PRIMARY KEY CHECK (phase IN ('blinded', 'ai-consulted')),
    ordinal INTEGER UNIQUE NOT NULL,
    created_at REAL NOT NULL,
    seed INTEGER NOT NULL
);
CREATE TABLE ai (
    case_id TEXT PRIMARY KEY REFERENCES cases(case_id),
    probability REAL NOT NULL,
    decision INTEGER NOT NULL CHECK (decision IN (0, 1)),
    heatmap TEXT                           -- file name under images/, or NULL
);
CREATE TABLE reads (
    read_key TEXT PRIMARY KEY,             -- random; the only handle a browser gets on a case
    phase TEXT NOT NULL REFERENCES phases(phase),
    reader TEXT NOT NULL REFERENCES readers(name),
    position INTEGER NOT NULL,
    case_id TEXT NOT NULL REFERENCES cases(case_id),
    own_started_at REAL,
    own_active_s REAL NOT NULL DEFAULT 0,
    own_answer INTEGER CHECK (own_answer IN (0, 1)),
    own_confidence INTEGER CHECK (own_confidence BETWEEN 1 AND 5),
    own_answered_at REAL,
    own_seconds REAL,
    final_started_at REAL,
    final_active_s REAL NOT NULL DEFAULT 0,
    final_answer INTEGER CHECK (final_answer IN (0, 1)),
    final_confidence INTEGER CHECK (final_confidence BETWEEN 1 AND 5),
    final_answered_at REAL,
    final_seconds REAL,
    final_revisions INTEGER NOT NULL DEFAULT 0,
    UNIQUE (phase, reader, position),
    UNIQUE (phase, reader, case_id)
);
"""


def hotspot_image_name(image_key: str) -> str:
    """The file under images/ of a case's hotspot overlay (shown in the ai-consulted phase when present)."""
    return f"{image_key}_hotspots.png"


@dataclass(frozen=True)
class CaseRecord:
    """One case of the study as stored."""

    case_id: str
    image_key: str
    source: str
    label: int | None
    upper: float


@dataclass(frozen=True)
class AIRecord:
    """The AI's output for one case, revealed in the AI-consulted phase."""

    case_id: str
    probability: float
    decision: int
    heatmap: str | None


@dataclass(frozen=True)
class ReadState:
    """One reader's reading of one case in one phase, as the reading screen needs it."""

    read_key: str
    phase: str
    reader: str
    position: int
    total: int
    case_id: str
    image_key: str
    upper: float
    own_answer: int | None
    own_confidence: int | None
    final_answer: int | None
    final_confidence: int | None
    ai: AIRecord | None

    @property
    def stage(self) -> str:
        """'own' (awaiting the reader's own answer), 'final' (AI revealed, awaiting final answer) or 'done'."""
        if self.own_answer is None:
            return "own"
        if self.phase == "ai-consulted" and self.final_answer is None:
            return "final"
        return "done"


def is_reader_study(study_dir: Path) -> bool:
    """True when `study_dir` holds a reader-study database of this format."""
    db = Path(study_dir) / DB_NAME
    if not db.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == FORMAT


class ReaderStore:
    """Access to one study's database; every public method is one short transaction."""

    def __init__(self, study_dir: str | Path, *, clock: Callable[[], float] = time.time):
        self.study_dir = Path(study_dir)
        self.db_path = self.study_dir / DB_NAME
        self.images_dir = self.study_dir / IMAGES_DIR
        self.clock = clock

    # ----------------------------------------------------------------- opening
    @classmethod
    def initialize(cls, study_dir: str | Path, *, clock: Callable[[], float] = time.time) -> "ReaderStore":
        """Create the database of a new study in `study_dir` (which the caller has checked is free)."""
        store = cls(study_dir, clock=clock)
        store.images_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(store._connect()) as conn:
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")  # executescript runs its own statements
        with store._transaction() as conn:
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("format", FORMAT), ("schema_version", SCHEMA_VERSION), ("created_at", str(store.clock()))],
            )
        return store

    @classmethod
    def open(cls, study_dir: str | Path, *, clock: Callable[[], float] = time.time) -> "ReaderStore":
        """Open an existing study, refusing folders that are missing or hold something else."""
        study_dir = Path(study_dir)
        if not study_dir.exists():
            raise ConfigError(study_dir, "no such study folder; create one with `bonescan reader create`")
        if not study_dir.is_dir():
            raise ConfigError(study_dir, "not a folder; a reader study is a folder made by `bonescan reader create`")
        if not is_reader_study(study_dir):
            raise ConfigError(study_dir, f"not a reader study (no readable {DB_NAME} made by `bonescan reader create`)")
        store = cls(study_dir, clock=clock)
        version = store.meta().get("schema_version")
        if version != SCHEMA_VERSION:
            raise ConfigError(store.db_path, f"study format version {version}, this bonescan reads {SCHEMA_VERSION}")
        return store

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # an acknowledged answer survives a crash of the machine too
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT on a fresh connection; rolled back if the block raises."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    # ----------------------------------------------------------------- set-up
    def add_cases(self, cases: list[CaseRecord]) -> None:
        """Store the study's cases."""
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO cases (case_id, image_key, source, label, upper) VALUES (?, ?, ?, ?, ?)",
                [(c.case_id, c.image_key, c.source, c.label, c.upper) for c in cases],
            )

    def add_readers(self, password_hashes: dict[str, str]) -> None:
        """Store readers with their hashed passwords."""
        with self._transaction() as conn:
            conn.executemany("INSERT INTO readers (name, password_hash) VALUES (?, ?)", password_hashes.items())

    def set_password(self, reader: str, password_hash: str) -> None:
        """Replace a reader's password hash and sign out all of that reader's browsers."""
        with self._transaction() as conn:
            conn.execute("UPDATE readers SET password_hash = ? WHERE name = ?", (password_hash, reader))
            conn.execute("DELETE FROM sessions WHERE reader = ?", (reader,))

    def add_ai(self, records: list[AIRecord]) -> None:
        """Store (or replace) the AI's outputs."""
        with self._transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO ai (case_id, probability, decision, heatmap) VALUES (?, ?, ?, ?)",
                [(r.case_id, r.probability, r.decision, r.heatmap) for r in records],
            )

    def add_phase(self, phase: str, seed: int, queues: dict[str, list[str]]) -> None:
        """Open a reading phase with one ordered queue of case ids per reader; it becomes the active phase."""
        with self._transaction() as conn:
            ordinal = conn.execute("SELECT COALESCE(MAX(ordinal), 0) + 1 FROM phases").fetchone()[0]
            conn.execute(
                "INSERT INTO phases (phase, ordinal, created_at, seed) VALUES (?, ?, ?, ?)",
                (phase, ordinal, self.clock(), seed),
            )
            conn.executemany(
                "INSERT INTO reads (read_key, phase, reader, position, case_id) VALUES (?, ?, ?, ?, ?)",
                [
                    (secrets.token_urlsafe(12), phase, reader, position, case_id)
                    for reader, case_ids in queues.items()
                    for position, case_id in enumerate(case_ids, start=1)
                ],
            )

    # ----------------------------------------------------------------- queries
    def meta(self) -> dict[str, str]:
        """The study's key/value metadata."""
        with self._reading() as conn:
            return {row["key"]: row["value"] for row in conn.execute("SELECT key, value FROM meta")}

    def phases(self) -> list[str]:
        """Phase names in the order they were opened."""
        with self._reading() as conn:
            return [row[0] for row in conn.execute("SELECT phase FROM phases ORDER BY ordinal")]

    def active_phase(self) -> str | None:
        """The phase readers are working in now (the last one opened)."""
        phases = self.phases()
        return phases[-1] if phases else None

    def cases(self) -> dict[str, CaseRecord]:
        """All cases by case id."""
        with self._reading() as conn:
            return {
                row["case_id"]: CaseRecord(row["case_id"], row["image_key"], row["source"], row["label"], row["upper"])
                for row in conn.execute("SELECT * FROM cases ORDER BY case_id")
            }

    def ai_records(self) -> dict[str, AIRecord]:
        """The AI's stored outputs by case id."""
        with self._reading() as conn:
            return {
                row["case_id"]: AIRecord(row["case_id"], row["probability"], row["decision"], row["heatmap"])
                for row in conn.execute("SELECT * FROM ai")
            }

    def reader_names(self) -> list[str]:
        """Names of all readers."""
        with self._reading() as conn:
            return [row[0] for row in conn.execute("SELECT name FROM readers ORDER BY name")]

    def password_hash(self, reader: str) -> str | None:
        """The stored password hash of a reader, None for an unknown name."""
        with self._reading() as conn:
            row = conn.execute("SELECT password_hash FROM readers WHERE name = ?", (reader,)).fetchone()
        return row[0] if row else None

    def queue(self, phase: str, reader: str) -> list[str]:
        """A reader's case ids in reading order for one phase."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT case_id FROM reads WHERE phase = ? AND reader = ? ORDER BY position", (phase, reader)
            )
            return [row[0] for row in rows]

    def open_reads(self, phase: str) -> int:
        """How many reads of a phase are not finished."""
        with self._reading() as conn:
            return conn.execute(
                "SELECT COUNT(*) FROM reads WHERE phase = ? AND (own_answer IS NULL OR "
                "(phase = 'ai-consulted' AND final_answer IS NULL))",
                (phase,),
            ).fetchone()[0]

    # ----------------------------------------------------------------- sessions
    def create_session(self, reader: str, token_hash: str) -> None:
        """Remember a signed-in browser (by the hash of its session id); drops expired sessions."""
        now = self.clock()
        with self._transaction() as conn:
            conn.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            conn.execute(
                "INSERT INTO sessions (token_hash, reader, expires_at) VALUES (?, ?, ?)",
                (token_hash, reader, now + SESSION_SECONDS),
            )

    def session_reader(self, token_hash: str) -> str | None:
        """The reader signed in with this session, or None if unknown or expired."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT reader FROM sessions WHERE token_hash = ? AND expires_at >= ?", (token_hash, self.clock())
            ).fetchone()
        return row[0] if row else None

    def delete_session(self, token_hash: str) -> None:
        """Sign a browser out."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    # ----------------------------------------------------------------- reading
    _READ_SELECT = """
        SELECT r.*, c.image_key, c.upper, a.probability, a.decision, a.heatmap,
               (SELECT COUNT(*) FROM reads q WHERE q.phase = r.phase AND q.reader = r.reader) AS total
        FROM reads r JOIN cases c ON c.case_id = r.case_id LEFT JOIN ai a ON a.case_id = r.case_id
    """

    @staticmethod
    def _read_state(row: sqlite3.Row) -> ReadState:
        ai = None
        if row["phase"] == "ai-consulted" and row["probability"] is not None:
            ai = AIRecord(row["case_id"], row["probability"], row["decision"], row["heatmap"])
        return ReadState(
            read_key=row["read_key"],
            phase=row["phase"],
            reader=row["reader"],
            position=row["position"],
            total=row["total"],
            case_id=row["case_id"],
            image_key=row["image_key"],
            upper=row["upper"],
            own_answer=row["own_answer"],
            own_confidence=row["own_confidence"],
            final_answer=row["final_answer"],
            final_confidence=row["final_confidence"],
            ai=ai,
        )

    def get_read(self, read_key: str) -> ReadState | None:
        """One read by its key, None if there is no such read."""
        with self._reading() as conn:
            row = conn.execute(self._READ_SELECT + " WHERE r.read_key = ?", (read_key,)).fetchone()
        return self._read_state(row) if row else None

    def next_read(self, reader: str) -> ReadState | None:
        """The first unfinished read in the reader's queue of the active phase; None when all are done."""
        phase = self.active_phase()
        with self._reading() as conn:
            row = conn.execute(
                self._READ_SELECT + " WHERE r.phase = ? AND r.reader = ? AND (r.own_answer IS NULL OR "
                "(r.phase = 'ai-consulted' AND r.final_answer IS NULL)) ORDER BY r.position LIMIT 1",
                (phase, reader),
            ).fetchone()
        return self._read_state(row) if row else None

    def progress(self, reader: str) -> tuple[int, int]:
        """(finished, total) reads of the reader in the active phase."""
        phase = self.active_phase()
        with self._reading() as conn:
            total, finished = conn.execute(
                "SELECT COUNT(*), SUM(own_answer IS NOT NULL AND (phase = 'blinded' OR final_answer IS NOT NULL)) "
                "FROM reads WHERE phase = ? AND reader = ?",
                (phase, reader),
            ).fetchone()
        return int(finished or 0), int(total)

    @staticmethod
    def _stop_clocks(conn: sqlite3.Connection, reader: str, now: float, except_key: str | None = None) -> None:
        """Bank the running time of the reader's open reads and stop their clocks."""
        for stage in ("own", "final"):
            conn.execute(
                f"UPDATE reads SET {stage}_active_s = {stage}_active_s + MAX(0, ? - {stage}_started_at), "
                f"{stage}_started_at = NULL WHERE reader = ? AND {stage}_started_at IS NOT NULL "
                f"AND {stage}_answer IS NULL AND read_key IS NOT ?",
                (now, reader, except_key),
            )

    def start_clock(self, read_key: str) -> None:
        """Start timing the read's current stage when it is served (no-op if already running or finished).

        A reader reads one case at a time, so any other running clock of the same reader is stopped.
        """
        now = self.clock()
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM reads WHERE read_key = ?", (read_key,)).fetchone()
            if row is None:
                return
            self._stop_clocks(conn, row["reader"], now, except_key=read_key)
            if row["own_answer"] is None:
                conn.execute(
                    "UPDATE reads SET own_started_at = ? WHERE read_key = ? AND own_started_at IS NULL", (now, read_key)
                )
            elif row["phase"] == "ai-consulted" and row["final_answer"] is None:
                conn.execute(
                    "UPDATE reads SET final_started_at = ? WHERE read_key = ? AND final_started_at IS NULL",
                    (now, read_key),
                )

    def pause(self, reader: str) -> None:
        """Stop the reader's running clocks; they restart when a case is served again."""
        with self._transaction() as conn:
            self._stop_clocks(conn, reader, self.clock())

    def record_own(self, read_key: str, answer: int, confidence: int | None) -> bool:
        """Record the reader's own answer; False (and nothing changed) if it was already recorded.

        In the AI-consulted phase the AI's output is revealed now, so the final answer's clock starts here.
        """
        now = self.clock()
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM reads WHERE read_key = ?", (read_key,)).fetchone()
            if row is None or row["own_answer"] is not None:
                return False
            running = now - row["own_started_at"] if row["own_started_at"] is not None else 0.0
            conn.execute(
                "UPDATE reads SET own_answer = ?, own_confidence = ?, own_answered_at = ?, own_seconds = ?, "
                "own_started_at = NULL, final_started_at = CASE WHEN phase = 'ai-consulted' THEN ? END "
                "WHERE read_key = ?",
                (answer, confidence, now, row["own_active_s"] + max(0.0, running), now, read_key),
            )
            return True

    def record_final(self, read_key: str, answer: int, confidence: int | None) -> bool:
        """Record (or revise) the final answer after the AI was revealed; True for the first final answer.

        The time is measured to the first final answer; later revisions change the answer and are counted.
        """
        now = self.clock()
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM reads WHERE read_key = ?", (read_key,)).fetchone()
            if row is None or row["phase"] != "ai-consulted" or row["own_answer"] is None:
                return False
            if row["final_answer"] is not None:
                conn.execute(
                    "UPDATE reads SET final_answer = ?, final_confidence = ?, final_revisions = final_revisions + 1 "
                    "WHERE read_key = ?",
                    (answer, confidence, read_key),
                )
                return False
            running = now - row["final_started_at"] if row["final_started_at"] is not None else 0.0
            conn.execute(
                "UPDATE reads SET final_answer = ?, final_confidence = ?, final_answered_at = ?, final_seconds = ?, "
                "final_started_at = NULL WHERE read_key = ?",
                (answer, confidence, now, row["final_active_s"] + max(0.0, running), read_key),
            )
            return True

    # ----------------------------------------------------------------- export
    def reads_frame(self) -> pd.DataFrame:
        """Every read of every phase with its case's reference label and the AI's output, one row per read."""
        with self._reading() as conn:
            return pd.read_sql_query(
                """
                SELECT r.phase, r.reader, r.position, r.case_id, c.label AS truth,
                       r.own_answer, r.own_confidence, r.own_seconds, r.own_answered_at,
                       a.probability AS ai_probability, a.decision AS ai_decision,
                       r.final_answer, r.final_confidence, r.final_seconds, r.final_answered_at, r.final_revisions
                FROM reads r JOIN phases p ON p.phase = r.phase JOIN cases c ON c.case_id = r.case_id
                LEFT JOIN ai a ON a.case_id = r.case_id AND r.phase = 'ai-consulted'
                ORDER BY p.ordinal, r.reader, r.position
                """,
                conn,
            )
