"""Retention: a study's files go `keep_days` after it was read and sent; each patient's latest study stays as a
prior; a kill during a removal is finished at the next pass; a study sent again after removal is read again."""

from __future__ import annotations

from pathlib import Path

import pytest

from bonescan.errors import ConfigError
from bonescan.node.config import NodeConfig, StorePaths
from bonescan.node.queue import NodeQueue, PatientStudy
from bonescan.node.retention import DAY, remove_expired

NOW = 100 * DAY


def _read_study(queue: NodeQueue, paths: StorePaths, uid: str, read_at: float, forward: bool = False,
                patient: tuple[str, str] | None = None) -> list[Path]:
    """A study received, read at `read_at` and its results queued, with every file the node writes for it."""
    instance = paths.incoming / uid / f"{uid}.9.dcm"
    results = [paths.results / f"{uid}_heatmap_sc.dcm", paths.results / f"{uid}_report_sr.dcm"]
    lesion_files = [paths.results / "lesions" / f"{uid}{suffix}" for suffix in (".json", ".npz", ".png")]
    followup = paths.results / "followup" / uid / "followup.json"
    for path in (instance, *results, *lesion_files, followup):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
    queue.add_instance(f"{uid}.9", uid, "nm", 2, instance, "CAM", now=read_at - 5)
    queue.claim_ready(30, 8, now=read_at - 4)
    prior = PatientStudy(uid, *patient, (instance,)) if patient else None
    queue.finish_study(uid, 0.7, "metastasis", "youden", 0.5,
                       [(f"{uid}.{k}", kind, path) for k, (kind, path) in enumerate(zip(("sc", "sr"), results))],
                       forward=forward, now=read_at, patient=prior)
    return [instance, *results, *lesion_files, followup]


def _states(queue: NodeQueue) -> dict[str, str]:
    return dict(queue.query("SELECT study_uid, state FROM studies"))


def test_studies_read_long_ago_and_sent_are_removed_and_nothing_else(tmp_path):
    paths = StorePaths(tmp_path)
    queue = NodeQueue(paths.database)
    old = _read_study(queue, paths, "1.2.3", NOW - 10 * DAY)
    neighbour = _read_study(queue, paths, "1.2.3.4", NOW - 1 * DAY)  # its UID starts with the old one's
    unsent = _read_study(queue, paths, "1.2.5", NOW - 10 * DAY, forward=True)  # results still pending
    queue.add_instance("1.2.6.9", "1.2.6", "nm", 1, tmp_path / "lone.dcm", "CAM", now=NOW - 10 * DAY)
    queue.claim_ready(5, 8, now=NOW - 10 * DAY + 6)
    queue.fail_study("1.2.6", "ViewError: only the anterior view", now=NOW - 10 * DAY + 6)

    removal = remove_expired(queue, paths, keep_days=7, keep_priors=False, now=NOW)
    assert removal.studies == 2 and removal.files == len(old)  # the lone view's file was never written here
    assert not any(path.exists() for path in old) and not (paths.incoming / "1.2.3").exists()
    assert all(path.exists() for path in neighbour + unsent)
    assert _states(queue) == {"1.2.3": "removed", "1.2.3.4": "done", "1.2.5": "done", "1.2.6": "removed"}
    # the record of what was read and sent stays; the instances are forgotten
    assert queue.query("SELECT probability FROM studies WHERE study_uid = '1.2.3'") == [(0.7,)]
    assert len(queue.query("SELECT * FROM outbox WHERE study_uid = '1.2.3'")) == 2
    assert queue.query("SELECT * FROM instances WHERE study_uid = '1.2.3'") == []
    assert remove_expired(queue, paths, keep_days=7, keep_priors=False, now=NOW).studies == 0
    # sent once the destination is back: removed at the next pass
    for result in queue.due_results(now=NOW):
        queue.mark_sent(result.sop_uid, now=NOW)
    assert remove_expired(queue, paths, keep_days=7, keep_priors=False, now=NOW).studies == 1
    assert not any(path.exists() for path in unsent)


def test_each_patients_latest_study_is_kept_as_the_next_scans_prior(tmp_path):
    paths = StorePaths(tmp_path)
    queue = NodeQueue(paths.database)
    first = _read_study(queue, paths, "1.5.1", NOW - 300 * DAY, patient=("P1", "20250101"))
    second = _read_study(queue, paths, "1.5.2", NOW - 200 * DAY, patient=("P1", "20250401"))
    other = _read_study(queue, paths, "1.5.3", NOW - 250 * DAY, patient=("P2", "20250201"))
    removal = remove_expired(queue, paths, keep_days=30, keep_priors=True, now=NOW)
    assert removal.studies == 1 and not any(path.exists() for path in first)
    assert all(path.exists() for path in second + other)
    later = PatientStudy("1.5.9", "P1", "20251001", ())
    assert queue.prior_study(later).study_uid == "1.5.2"  # the removed one is no prior any more
    assert queue.prior_study(PatientStudy("1.5.8", "P1", "20250301", ())) is None
    # without follow-up nothing needs keeping
    assert remove_expired(queue, paths, keep_days=30, keep_priors=False, now=NOW).studies == 2


def test_a_removal_cut_short_by_a_kill_is_finished_and_a_study_sent_again_is_read_again(tmp_path):
    paths = StorePaths(tmp_path)
    queue = NodeQueue(paths.database)
    files = _read_study(queue, paths, "1.7.1", NOW - 10 * DAY)
    assert queue.start_removals(NOW - 7 * DAY, keep_priors=False, now=NOW) == ["1.7.1"]
    files[0].unlink()  # killed while deleting: some files gone, the study still marked removing
    queue.close()
    queue = NodeQueue(paths.database)
    assert remove_expired(queue, paths, keep_days=7, keep_priors=False, now=NOW).studies == 1
    assert not any(path.exists() for path in files) and _states(queue) == {"1.7.1": "removed"}
    assert queue.add_instance("1.7.1.9", "1.7.1", "nm", 2, files[0], "CAM", now=NOW) == "new"
    [work] = queue.claim_ready(30, 8, now=NOW + 1)
    assert work.study_uid == "1.7.1" and [i.sop_uid for i in work.instances] == ["1.7.1.9"]


def test_keep_days_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="--keep-days"):
        NodeConfig(run=tmp_path, store=tmp_path / "store", keep_days=0)
