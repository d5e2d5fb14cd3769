"""`bonescan node status`: what a store holds, read from its queue database (the node may be running or not)."""

from __future__ import annotations

import fcntl
import json
import shutil
import sqlite3
import statistics
import time
from pathlib import Path

from ..errors import ConfigError
from .config import StorePaths
from .queue import UNWRITTEN_RETRY_SECONDS


def median_p95(values: list[float]) -> tuple[float, float] | None:
    """(median, 95th percentile by nearest rank) of latencies; None without any."""
    ordered = sorted(values)
    if not ordered:
        return None
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def _running(paths: StorePaths) -> bool:
    """True while a node holds the store's lock."""
    if not paths.lock.exists():
        return False
    with open(paths.lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


# Free space under which `status` warns: a study's instances and results take a few MB, and a study whose results
# cannot be written waits (`PredictionWorker`) until there is room again.
LOW_DISK_BYTES = 2 * 1024 ** 3

# a study read (not failed), whether or not retention has removed its files since
READ = "s.state IN ('done', 'removing', 'removed') AND s.probability IS NOT NULL"


def _followup_verdicts(db: sqlite3.Connection) -> dict[str, int]:
    """Follow-up comparisons by their PCWG3 status, and how many scans' new lesions await confirmation now (a
    patient's latest comparison that left some); empty for a store from before verdicts were kept."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(patient_studies)")}
    if "verdict" not in columns:
        return {}
    counts = dict(db.execute("SELECT verdict, COUNT(*) FROM patient_studies WHERE verdict IS NOT NULL"
                             " GROUP BY verdict").fetchall())
    counts["awaiting confirmation"] = db.execute(
        "SELECT COUNT(*) FROM patient_studies p WHERE p.awaiting_followup IS NOT NULL AND p.study_date = ("
        " SELECT MAX(q.study_date) FROM patient_studies q WHERE q.patient_id = p.patient_id)").fetchone()[0]
    return counts


def node_status(store: str | Path, recent: int = 10, now: float | None = None) -> dict:
    """Queue counts, throughput, receive-to-result latency and recent errors of a node's store."""
    paths = StorePaths(Path(store))
    if not paths.database.is_file():
        raise ConfigError(store, "no node queue here (queue.sqlite); give the --store folder of a node")
    now = time.time() if now is None else now
    db = sqlite3.connect(f"file:{paths.database}?mode=ro", uri=True, timeout=10)
    try:
        studies = dict(db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall())
        outbox = dict(db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
        instances = db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        # Latency: first instance received -> last result sent (or stored, without forwarding). Studies read
        # count whether or not retention has removed their files since.
        rows = db.execute(
            "SELECT s.first_received, COALESCE(MAX(o.sent_at), s.finished_at), s.finished_at FROM studies s"
            f" LEFT JOIN outbox o ON o.study_uid = s.study_uid WHERE {READ} GROUP BY s.study_uid"
            " HAVING SUM(o.state = 'pending') = 0 OR SUM(o.state = 'pending') IS NULL"
            " ORDER BY s.finished_at DESC LIMIT 200").fetchall()
        finished = [r[0] for r in db.execute(
            f"SELECT finished_at FROM studies s WHERE {READ} AND finished_at >= ?", (now - 3600,))]
        verdicts = _followup_verdicts(db)
        pending = db.execute("SELECT COUNT(*), MIN(queued_at), MAX(attempts), MIN(next_attempt) FROM outbox"
                             " WHERE state = 'pending'").fetchone()
        last_error = db.execute("SELECT last_error FROM outbox WHERE state = 'pending' AND last_error IS NOT NULL"
                                " ORDER BY next_attempt DESC LIMIT 1").fetchone()
        events = db.execute("SELECT at, level, study_uid, message FROM events WHERE level IN ('error', 'warning')"
                            " ORDER BY id DESC LIMIT ?", (recent,)).fetchall()
        # read, but their results could not be written (`NodeQueue.defer_study`)
        waiting_for_room = db.execute("SELECT COUNT(*) FROM studies WHERE state = 'ready' AND error IS NOT NULL"
                                      ).fetchone()[0]
    finally:
        db.close()
    disk = shutil.disk_usage(paths.root)
    latencies = [end - start for start, end, _ in rows if start is not None and end is not None]
    spread = median_p95(latencies)
    live = json.loads(paths.live.read_text()) if paths.live.is_file() else None
    running = _running(paths)
    return {
        "store": str(paths.root),
        "running": running,
        "node": live if running else None,
        "instances": instances,
        "studies": {state: studies.get(state, 0)
                    for state in ("receiving", "ready", "predicting", "done", "failed", "removing", "removed")},
        "results": {state: outbox.get(state, 0) for state in ("pending", "sent", "failed", "stored")},
        "sending": {
            "oldest_pending_s": round(now - pending[1], 1) if pending[1] else None,
            "max_attempts": pending[2] or 0,
            "next_attempt_in_s": round(max(0.0, pending[3] - now), 1) if pending[3] else None,
            "last_error": last_error[0] if last_error else None,
        },
        "throughput": {
            "studies_last_minute": sum(1 for t in finished if t >= now - 60),
            "studies_last_hour": len(finished),
        },
        "latency_s": {
            "studies": len(latencies),
            "median": round(spread[0], 3) if spread else None,
            "p95": round(spread[1], 3) if spread else None,
        },
        "followup": verdicts,
        "disk": {"free_bytes": disk.free, "total_bytes": disk.total, "low": disk.free < LOW_DISK_BYTES,
                 "studies_waiting_for_room": waiting_for_room},
        "recent_errors": [{"at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)), "level": level,
                           "study_uid": uid, "message": message} for at, level, uid, message in events],
    }


def format_status(status: dict) -> list[str]:
    """Human-readable lines of `node_status`."""
    node = status["node"]
    lines = [f"store {status['store']}: " + (
        f"node {node['ae_title']} running (pid {node['pid']}) on {node['host']}:{node['port']}"
        f"{' TLS' if node.get('tls') else ''}, forwarding to {node.get('forward') or 'nowhere (results stored)'}"
        + (f", removing studies {node['keep_days']:g} days after they were read" if node.get("keep_days") else "")
        if node else "no node running")]
    lines.append(f"instances received: {status['instances']}")
    lines.append("studies: " + ", ".join(f"{k} {v}" for k, v in status["studies"].items()))
    lines.append("results: " + ", ".join(f"{k} {v}" for k, v in status["results"].items()))
    sending = status["sending"]
    if status["results"]["pending"]:
        lines.append(f"sending: oldest pending {sending['oldest_pending_s']} s, up to {sending['max_attempts']} "
                     f"attempts, next in {sending['next_attempt_in_s']} s; last error: {sending['last_error']}")
    t, lat = status["throughput"], status["latency_s"]
    lines.append(f"throughput: {t['studies_last_minute']} studies in the last minute, {t['studies_last_hour']} in "
                 "the last hour")
    if lat["studies"]:
        lines.append(f"receive-to-result latency over the last {lat['studies']} studies: median {lat['median']} s, "
                     f"p95 {lat['p95']} s")
    verdicts = dict(status.get("followup") or {})
    if sum(verdicts.values()):
        waiting = verdicts.pop("awaiting confirmation", 0)
        counted = ", ".join(f"{verdict} {n}" for verdict, n in sorted(verdicts.items()))
        lines.append(f"follow-up comparisons of the studies held, by PCWG3 verdict: {counted}; patients whose new "
                     f"lesions await confirmation by their next scan: {waiting}")
    disk = status["disk"]
    lines.append(f"disk: {disk['free_bytes'] / 1024 ** 3:.1f} GB free of {disk['total_bytes'] / 1024 ** 3:.1f} GB"
                 + (" - LOW: results that cannot be written hold their studies back; free space or set --keep-days"
                    if disk["low"] else ""))
    if disk["studies_waiting_for_room"]:
        lines.append(f"studies read whose results could not be written, read again every {UNWRITTEN_RETRY_SECONDS} s: "
                     f"{disk['studies_waiting_for_room']}")
    if status["recent_errors"]:
        lines.append("recent errors:")
        lines += [f"  {e['at']} {e['level']}: {e['study_uid'] or '-'}: {e['message']}" for e in status["recent_errors"]]
    return lines
