"""Retention: what the node received and wrote for a study is removed `keep_days` after the study was read.

A department's node receives every bone scan (1-2 MB each, and results of about as much again: heat map, report,
Segmentations) and, without a limit, fills its disk. With `--keep-days N` a study is removed once it was read
(done or failed) more than N days ago and none of its results still waits to be sent: its received instances
(STORE/incoming/<study UID>/), its DICOM results, its lesion files (STORE/results/lesions/<study UID>.json, .npz,
.png) and its follow-up comparison (STORE/results/followup/<study UID>/). The study's row stays, in state
`removed`, with its probability and decision (the queue database is the node's record of what it read); the
results already sent live on in PACS. With follow-up on, each patient's latest study read here is kept whatever
its age: it is the prior that the patient's next scan is compared with; so are a baseline and first follow-up
whose new lesions await confirmation by the next scan (PCWG3 "2+2", `node.followup`).

Safe against a kill at any moment: a study is first marked `removing` (and forgotten as a prior) in one
transaction, then its files are deleted, then it is marked `removed`; a pass finds studies left in `removing` and
finishes them. A study sent again after its removal is read again (`NodeQueue.add_instance`).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..dicom_out import safe_file_stem
from ..lesions.outputs import LESIONS_DIR
from .config import StorePaths
from .followup import FOLLOWUP_DIR
from .queue import NodeQueue

log = logging.getLogger("bonescan.node")
DAY = 86400.0


@dataclass(frozen=True)
class Removal:
    """What one retention pass removed."""

    studies: int
    files: int
    bytes: int


def study_files(paths: StorePaths, study_uid: str, recorded: list[Path]) -> list[Path]:
    """Every file and folder the node holds for a study: `recorded` (its instances and DICOM results, from the
    queue), its lesion files and its follow-up folder (named by the study UID), its incoming folder."""
    stem = safe_file_stem(study_uid)
    lesions = paths.results / LESIONS_DIR
    return [*recorded, *(lesions / f"{stem}{suffix}" for suffix in (".json", ".npz", ".png")),
            paths.results / FOLLOWUP_DIR / stem, paths.incoming / study_uid]


def _delete(path: Path) -> tuple[int, int]:
    """Delete a file or a folder tree; (files, bytes) removed; nothing when it is already gone."""
    try:
        if path.is_dir():
            files = [p for p in path.rglob("*") if p.is_file()]
            size = sum(p.stat().st_size for p in files)
            shutil.rmtree(path)
            return len(files), size
        size = path.stat().st_size
        path.unlink()
        return 1, size
    except FileNotFoundError:
        return 0, 0


def remove_expired(queue: NodeQueue, paths: StorePaths, keep_days: float, keep_priors: bool,
                   now: float | None = None) -> Removal:
    """One retention pass: remove every study read more than `keep_days` ago whose results are all settled
    (with `keep_priors`, except each patient's latest study), and finish removals a kill interrupted."""
    now = time.time() if now is None else now
    studies = files = size = 0
    for study_uid in queue.start_removals(now - keep_days * DAY, keep_priors, now):
        for path in study_files(paths, study_uid, queue.study_paths(study_uid)):
            removed, freed = _delete(path)
            files, size = files + removed, size + freed
        queue.finish_removal(study_uid, now)
        studies += 1
    return Removal(studies, files, size)


class RetentionKeeper(threading.Thread):
    """Background thread: a retention pass at start and every `interval` seconds, until stopped."""

    def __init__(self, queue: NodeQueue, paths: StorePaths, keep_days: float, keep_priors: bool,
                 interval: float = 3600.0):
        super().__init__(name="bonescan-retention", daemon=True)
        self.queue, self.paths = queue, paths
        self.keep_days, self.keep_priors, self.interval = keep_days, keep_priors, interval
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                removal = remove_expired(self.queue, self.paths, self.keep_days, self.keep_priors)
                if removal.studies:
                    log.info("retention: removed %d studies read more than %g days ago (%d files, %.1f MB)",
                             removal.studies, self.keep_days, removal.files, removal.bytes / 1e6)
            except Exception as error:  # noqa: BLE001 - e.g. a locked database or a file in use: next pass
                log.error("retention pass failed: %s: %s", type(error).__name__, error)
            self.stopping.wait(self.interval)
