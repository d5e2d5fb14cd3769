"""Follow-up in the node: a new study of a patient the node has read before is compared with that patient's latest
earlier study, and the follow-up SR (new / resolved / persistent / grown lesions, change in BSI; it references both
studies) and the visits side by side as a Secondary Capture go to PACS with the study's own results.

The prior is found by PatientID among the studies this node has read (`NodeQueue.prior_study`), dated before the new
study by StudyDate; a study without either is not compared. A prior that arrives after the later study (fetched
from PACS once that study came in) is compared with it then (`NodeQueue.stale_comparisons`), and its follow-up SR
follows. The comparison is `bonescan followup`'s (registration, linked hotspots, uptake check) with the node's
lesion network, written to STORE/results/followup/<study UID>/<prior study UID>/.

PCWG3 in the node. The node does not know when treatment started, so a pair is judged as a first follow-up: two or
more new lesions are "unconfirmed" until a later scan confirms them. The node remembers which baseline and first
follow-up they were counted on, and the patient's next scan is compared with both (baseline, first follow-up,
confirmatory: `bonescan followup`'s "2+2"): two or more further new lesions at least 6 weeks after the first
follow-up confirm progression, fewer do not (a flare, or healing), and a scan within 6 weeks leaves them waiting for
the next. Studies that arrive out of order end where studies in order do: a comparison made later that changes
what awaits confirmation sends the next scan, compared before, through its comparison again. A verdict that needs
the real treatment baseline is `bonescan followup BASELINE FOLLOWUP CONFIRMATORY` on the studies chosen.

A lesion keeps its tracking UID from one follow-up SR to the next: a comparison takes the UIDs that the latest
comparison of each earlier study gave its lesions (`earlier_tracking`), so a viewer that follows tracking UIDs links
a lesion across every report of the patient, not only across the two studies of one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pydicom

from ..dicom_out import safe_file_stem
from ..io import StudySource
from .queue import PatientStudy

FOLLOWUP_DIR = "followup"


def load_followup_models(change_net: str | Path | None, judge: str | Path | None, join: str,
                         warn: Callable[[str], None]) -> tuple[object | None, object | None]:
    """The change network and the new-lesion judge of a node's --followup, loaded and checked together: a judge
    fitted beside a change network is refused without it (ConfigError); its other doubts go to `warn`. The node and
    its benchmark call this before they start anything."""
    change_model = judge_model = None
    if change_net is not None:
        from ..followup.change_net import load_change_model

        change_model = load_change_model(change_net)
    if judge is not None:
        from ..followup.new_judge import check_change_network, load_new_lesion_judge

        judge_model = load_new_lesion_judge(judge)
        for warning in check_change_network(judge_model, change_net, join):
            warn(f"{judge}: {warning}")
    return change_model, judge_model


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


@dataclass(frozen=True)
class NodeComparison:
    """A comparison made by the node: the follow-up SR and side-by-side SC to send as (SOP Instance UID, kind, path),
    a one-line summary, the PCWG3 status, and the (baseline, first follow-up) study UIDs whose new lesions the next
    scan must still confirm (None when nothing waits)."""

    results: list[tuple[str, str, Path]]
    summary: str
    verdict: str
    awaiting: tuple[str, str] | None


def still_awaiting(visits: Sequence[PatientStudy], comparison) -> tuple[str, str] | None:
    """The (baseline, first follow-up) whose new lesions wait for a later scan after this comparison: the same pair
    when this scan came too soon to confirm them, this scan and its prior when it shows >= 2 new lesions of its own
    (its verdict unconfirmed), else None."""
    from ..followup.pcwg3 import MIN_NEW, UNCONFIRMED  # the follow-up package loads registration: only when used

    if comparison.verdict.status != UNCONFIRMED:
        return None
    if len(visits) == 3 and comparison.new_count >= MIN_NEW:  # the confirmatory scan came within 6 weeks
        return visits[0].study_uid, visits[1].study_uid
    return visits[-2].study_uid, visits[-1].study_uid


def latest_comparison(study_folder: Path) -> dict | None:
    """The newest comparison stored for one study (followup/<study>/*/followup.json), None when there is none."""
    records = sorted(study_folder.glob("*/followup.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(records[-1].read_text(encoding="utf-8")) if records else None


def earlier_tracking(folder: Path, study_uids: Sequence[str]) -> dict[str, str]:
    """Hotspot UID -> lesion tracking UID, from the latest comparison of each of these studies with its own prior
    (followup/<study>/*/followup.json): the hotspots of that study there, and the UIDs their lesions were given.
    Comparisons written before lesions carried a tracking UID, or unreadable, give nothing."""
    known: dict[str, str] = {}
    for study_uid in study_uids:
        try:  # retention may remove a folder while it is read
            record = latest_comparison(folder / safe_file_stem(study_uid))
            if record is None:
                continue
            role = next(v["role"] for v in record["visits"] if v["study_uid"] == study_uid)
            for lesion in record["lesions"]:
                for hotspot in lesion["visits"].get(role, []) if lesion.get("tracking_uid") else []:
                    known[hotspot["uid"]] = lesion["tracking_uid"]
        except (OSError, ValueError, KeyError, StopIteration, TypeError):
            continue
    return known


def unused_folder(folder: Path) -> Path:
    """`folder`, or folder.2, .3 ... when it exists: an earlier comparison's files may still wait to be sent."""
    candidate, n = folder, 1
    while candidate.exists():
        n += 1
        candidate = folder.with_name(f"{folder.name}.{n}")
    return candidate


class PriorComparer:
    """Compares a study with its patient's prior using the node's lesion network (loaded once, by the predictor)."""

    def __init__(self, lesion_model, results: str | Path, reader=None, change_model=None, join: str = "either",
                 judge=None):
        """`reader`: another lesion reader (`followup.readers`), e.g. the synthetic truth's; `change_model`: the
        change network (`followup.change_net`), a second judge of new lesions, its count joined as `join`;
        `judge`: a learned new-lesion judge (`followup.new_judge`) in the hand rules' place."""
        from ..followup import NetworkReader

        self.reader = reader or NetworkReader(lesion_model.run_dir, model=lesion_model)
        self.folder = Path(results) / FOLLOWUP_DIR
        self.change_model, self.join, self.judge = change_model, join, judge

    def compare(self, current: PatientStudy, prior: PatientStudy,
                awaiting: tuple[PatientStudy, PatientStudy] | None = None,
                known: dict | None = None) -> NodeComparison:
        """Compare `current` with `prior`, or, when `awaiting` holds the baseline and first follow-up whose new
        lesions wait for confirmation, with both of them (PCWG3 "2+2"). `known`: lesions found already, by Study
        Instance UID (the study just read), taken as they are. Written to followup/<study UID>/<prior
        UID>/ (.2, .3 ... when compared with that prior again): a study compared again keeps the files of every
        earlier comparison."""
        from ..followup import compare_visits, load_visit
        from ..followup.output import write_comparison
        from ..followup.readers import KnownLesions

        studies = [*awaiting, current] if awaiting else [prior, current]
        roles = ("baseline", "follow-up", "confirmatory")
        visits = [load_visit(visit_source(study), role) for study, role in zip(studies, roles)]
        reader = KnownLesions(self.reader, known) if known else self.reader
        comparison = compare_visits(visits, reader, first_followup=True,
                                    known_tracking=earlier_tracking(self.folder, [s.study_uid for s in studies[:-1]]),
                                    change_model=self.change_model, join=self.join, judge=self.judge)
        paths = write_comparison(comparison, unused_folder(self.folder / safe_file_stem(current.study_uid)
                                                           / safe_file_stem(prior.study_uid)))
        change = comparison.confirmatory or comparison.followup
        against = (f"confirming the {comparison.new_count} new lesions of {studies[1].study_date} against "
                   f"{studies[0].study_date}" if awaiting else f"against the study of {prior.study_date}")
        counted = comparison.confirm_new_count if comparison.confirmatory else comparison.new_count
        summary = (f"{against}: {counted} new, {len(change.resolved)} resolved, {len(change.persistent)} "
                   f"persistent; BSI {change.bsi_before:.2f} -> {change.bsi_after:.2f} %; PCWG3 "
                   f"{comparison.verdict.status} ({comparison.verdict.reason})")
        results = []
        for key, kind in (("sr", "followup"), ("sc", "followup-sc")):
            if key in paths:
                header = pydicom.dcmread(paths[key], stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                results.append((str(header.SOPInstanceUID), kind, paths[key]))
        return NodeComparison(results, summary, comparison.verdict.status, still_awaiting(studies, comparison))
