"""Follow-up in the node: a new study of a patient the node has read before is compared with that patient's latest
earlier study, and the follow-up SR (new / resolved / persistent / grown lesions, change in BSI; it references both
studies) and the visits side by side as a Secondary Capture go to PACS with the study's own results.

The prior is found by PatientID among the studies this node has read (`NodeQueue.prior_study`), dated before the new
study by StudyDate; a study without either is not compared. A prior that arrives after the later study (fetched
from PACS once that study came in) is compared with it then (`NodeQueue.stale_comparisons`), and its follow-up SR
follows. The comparison is `bonescan followup`'s (registration, linked hotspots, uptake check) with the node's
lesion network, written to STORE/results/followup/<study UID>/<prior study UID>/. The
node does not know when treatment started, so the pair is judged as a first follow-up (PCWG3: two or more new
lesions are "unconfirmed" until a later scan confirms them); a verdict across the treatment baseline and a
confirmatory scan is `bonescan followup BASELINE FOLLOWUP CONFIRMATORY` on the studies chosen.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import pydicom

from ..dicom_out import safe_file_stem
from ..io import StudySource
from .queue import PatientStudy

FOLLOWUP_DIR = "followup"


def patient_study(files: Sequence[Path]) -> PatientStudy | None:
    """The study of these files by its first file's header; None without PatientID or StudyDate (nothing to
    compare by)."""
    header = pydicom.dcmread(files[0], stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID", "PatientID", "StudyDate"])
    patient_id = str(header.get("PatientID", "") or "").strip()
    study_date = str(header.get("StudyDate", "") or "").strip()
    if not patient_id or not re.fullmatch(r"\d{8}", study_date):
        return None
    return PatientStudy(str(header.StudyInstanceUID), patient_id, study_date, tuple(Path(f) for f in files))


def visit_source(study: PatientStudy) -> StudySource:
    """The study's files as the reading layer takes them: two single-view files arrive in either order, so their
    own view information decides which is the anterior (as when the node first read them)."""
    return StudySource(study.study_uid, study.files, ordered=len(study.files) == 1)


class PriorComparer:
    """Compares a study with its patient's prior using the node's lesion network (loaded once, by the predictor)."""

    def __init__(self, lesion_model, results: str | Path):
        from ..followup import NetworkReader

        self.reader = NetworkReader(lesion_model.run_dir, model=lesion_model)
        self.folder = Path(results) / FOLLOWUP_DIR

    def compare(self, current: PatientStudy, prior: PatientStudy) -> tuple[list[tuple[str, str, Path]], str]:
        """The follow-up SR and side-by-side Secondary Capture of `current` against `prior` to send, as (SOP
        Instance UID, kind, path), and a one-line summary. Written to followup/<study UID>/<prior UID>/: a study
        compared again with a prior that arrived after it keeps the files of its first comparison."""
        from ..followup import compare_visits, load_visit
        from ..followup.output import write_comparison

        visits = [load_visit(visit_source(study), role)
                  for study, role in ((prior, "baseline"), (current, "follow-up"))]
        comparison = compare_visits(visits, self.reader, first_followup=True)
        paths = write_comparison(comparison, self.folder / safe_file_stem(current.study_uid)
                                 / safe_file_stem(prior.study_uid))
        change = comparison.followup
        summary = (f"against the study of {prior.study_date}: {len(change.new)} new, {len(change.resolved)} resolved, "
                   f"{len(change.persistent)} persistent; BSI {change.bsi_before:.2f} -> {change.bsi_after:.2f} %; "
                   f"PCWG3 {comparison.verdict.status}")
        results = []
        for key, kind in (("sr", "followup"), ("sc", "followup-sc")):
            if key in paths:
                header = pydicom.dcmread(paths[key], stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                results.append((str(header.SOPInstanceUID), kind, paths[key]))
        return results, summary
