"""The visits of one patient: each study read once, and refused together when they cannot be compared.

A visit is a file (one two-frame NM file), a pair of files (anterior, posterior) or a folder holding exactly one
study. Its date comes from the manifest's `timepoint` (days after the baseline) when given, else from the DICOM
StudyDate. Refused with one FollowUpError each: studies of different patients (PatientID) unless forced, a later
visit dated before an earlier one, a visit without both views, a folder with no study or several.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import FollowUpError
from ..io import StudySource, find_studies, read_study
from ..lesions.hotspots import StudyLesions
from ..study import Study

ROLES = ("baseline", "follow-up", "confirmatory")


@dataclass
class Visit:
    """One study of the patient, its role in the comparison and (once read) its lesions."""

    role: str  # baseline | follow-up | confirmatory
    files: tuple[Path, ...]
    study: Study
    timepoint: int | None = None  # days after the baseline, when given (manifest) or derived from dates
    lesions: StudyLesions | None = field(default=None, repr=False)

    @property
    def source(self) -> str:
        return " + ".join(str(p) for p in self.files)

    @property
    def date(self) -> dt.date | None:
        text = self.study.meta.study_date
        try:
            return dt.datetime.strptime(text, "%Y%m%d").date() if text else None
        except ValueError:
            return None


def load_visit(source: str | Path | Sequence[str | Path] | StudySource, role: str,
               timepoint: int | None = None) -> Visit:
    """Read one visit (file, [anterior, posterior] files, a folder holding one study, or a StudySource, whose two
    files may be in either order); both views required."""
    if isinstance(source, StudySource):
        study, files = read_study(source), source.files
    else:
        study, files = _read_given(source, role)
    if study.anterior is None or study.posterior is None:
        found = ", ".join(study.views) or "none"
        raise FollowUpError(study.source, f"the {role} study has only the {found} view; every visit needs both "
                                          "anterior and posterior")
    return Visit(role, tuple(files), study, timepoint)


def _read_given(source: str | Path | Sequence[str | Path], role: str) -> tuple[Study, tuple[Path, ...]]:
    """The study of a file, an [anterior, posterior] pair, or a folder holding exactly one study."""
    paths = [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]
    if len(paths) == 1 and paths[0].is_dir():
        sources = [s for s in find_studies(paths[0]) if not s.failed]
        if len(sources) != 1:
            found = "no readable study" if not sources else f"{len(sources)} studies"
            raise FollowUpError(paths[0], f"the {role} folder holds {found}; give one study per visit")
        return read_study(sources[0]), sources[0].files
    return read_study(paths if len(paths) == 2 else paths[0]), tuple(paths)


def check_visits(visits: Sequence[Visit], force: bool = False) -> None:
    """Refuse visits that cannot be compared; fill in `timepoint` from the study dates where it is missing."""
    if not 2 <= len(visits) <= 3:
        raise FollowUpError(None, f"a comparison takes a baseline, a follow-up and optionally a confirmatory study, "
                                  f"not {len(visits)}")
    baseline = visits[0]
    ids = {v.study.meta.patient_id for v in visits if v.study.meta.patient_id}
    if len(ids) > 1 and not force:
        listed = "; ".join(f"{v.role} {v.study.meta.patient_id or '?'}" for v in visits)
        raise FollowUpError(visits[1].source, f"the studies belong to different patients (PatientID {listed}); "
                                              "use --force only if they are one patient under several IDs")
    for visit in visits[1:]:
        if visit.timepoint is None and visit.date is not None and baseline.date is not None:
            visit.timepoint = (visit.date - baseline.date).days
    if baseline.timepoint is None:
        baseline.timepoint = 0
    for earlier, later in zip(visits, visits[1:]):
        if later.timepoint is not None and earlier.timepoint is not None and later.timepoint < earlier.timepoint:
            when = f"dated {later.date}" if later.date else f"at day {later.timepoint}"
            before = f"{earlier.date}" if earlier.date else f"day {earlier.timepoint}"
            raise FollowUpError(later.source, f"the {later.role} study is {when}, before its {earlier.role} study "
                                              f"({before}); give the visits in time order")
