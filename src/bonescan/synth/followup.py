"""Synthetic follow-up: the same patient scanned 2-3 times, with known change between visits.

Each patient has one body (height, build, skeleton, the uptake of each bone) and one of four courses:
- stable: every finding stays, its uptake varies by a few percent;
- progression: k new metastases on the first follow-up (k = 1 now and then, so ">= 2 new" has near misses),
  existing ones grow; on a confirmatory scan 2-4 more appear (three patients in four) or 0-1 (not confirmed);
- response: metastases fade and shrink, the faintest vanish; nothing new;
- flare: early after therapy the existing metastases are brighter, nothing new; later they fade.
On top come the ordinary differences between two visits: another count level, camera (with `--site mixed`) and
pixel size; the body shifted and turned a little on the table; arms and forearms placed anew; bladder filling,
kidney and soft-tissue uptake drawn anew; a new injection site; now and then a new benign finding.

A finding keeps its identity across visits: it is anchored to the bone it sits on (which bone, how far along it,
how far beside it, in mm) and drawn again on that bone at the next visit, wherever the bone now lies. The truth
file of each visit lists the identity of every finding (`identity`, 0 for artifacts, which are not followed).

Visit timing (days after the baseline): first follow-up after 8-14 weeks; a confirmatory scan 6-12 weeks after
that, or (one in seven) only 3-6 weeks after, too early to confirm progression under PCWG3.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..cohort import split_manifest, write_manifest
from .case import RES, SyntheticCase, VisitInfo, _acquire, case_seed
from .cohort import Demographics
from .dicom import case_files
from .findings import DifficultyProfile, FindingPainter, difficulty_profile, paint_findings
from .phantom import MAX_COUNTS, MIN_COUNTS, ROWS, BoneSite, Patient, render_anatomy, sample_patient
from .sites import site_profile
from .writer import (MANIFEST_FILE, STUDIES_DIR, TRUTH_DIR, CohortResult, SynthSettings, case_id_for, check_settings,
                     generated, manifest_frame, prepare_folder, truth_path, write_case)

CHANGES = {"stable": 0.3, "progression": 0.3, "response": 0.2, "flare": 0.2}
VISITS_PER_PATIENT = 3  # at most; case ids leave room for three per patient
FOLLOWUP_COLUMNS = ["patient_id", "timepoint", "change"]


@dataclass(frozen=True)
class PatientPlan:
    """What happens to one followed patient: cheap to draw, so a resumed run knows which files to expect."""

    patient_id: str
    index: int
    seed: int
    change: str
    age: int
    grade: int  # at baseline
    timepoints: tuple[int, ...]  # days after baseline, first 0
    confirmed: bool  # progression: whether the confirmatory scan shows >= 2 more new metastases

    def case_id(self, visit: int, patients: int) -> str:
        return case_id_for(VISITS_PER_PATIENT * self.index + visit, VISITS_PER_PATIENT * patients)

    def visit_seed(self, visit: int) -> int:
        return case_seed(self.seed, visit + 1)


def plan_patient(cohort_seed: int, index: int) -> PatientPlan:
    """The course of patient `index` of a follow-up cohort (independent of cohort size and workers)."""
    seed = case_seed(cohort_seed, index)
    rng = np.random.default_rng([seed, 0xF011])
    names = list(CHANGES)
    change = names[int(rng.choice(len(names), p=np.array(list(CHANGES.values()))))]
    age = int(np.clip(round(rng.normal(71.0, 8.7)), 45, 92))  # PCWG3 is a prostate-cancer rule: older men
    grade_p = {"stable": [0.25, 0.25, 0.25, 0.25], "progression": [0.2, 0.2, 0.3, 0.3],
               "response": [0, 0, 0.5, 0.5], "flare": [0, 0, 0.5, 0.5]}[change]
    grade = int(rng.choice(4, p=grade_p))
    first = int(rng.integers(56, 99))
    visits = 3 if change in ("progression", "flare") or rng.random() < 0.5 else 2
    timepoints = (0, first)
    if visits == 3:
        gap = int(rng.integers(21, 42)) if rng.random() < 1 / 7 else int(rng.integers(42, 85))
        timepoints += (first + gap,)
    return PatientPlan(f"pat{index:05d}", index, seed, change, age, grade, timepoints, bool(rng.random() < 0.75))


@dataclass
class _Anchor:
    """Where a finding sits on its bone, in mm, so a later visit draws it on the same spot of the same bone."""

    bone: str
    fraction: float  # along the bone's polyline (0 for a blob-shaped bone)
    along_mm: float  # offset along the local bone direction
    across_mm: float  # offset across it
    angle: float  # the finding's long axis relative to the bone direction (radians)


@dataclass
class _Tracked:
    """A finding followed across visits: its anchor and its current look."""

    identity: int
    kind: str
    category: str
    anchor: _Anchor
    sigma_mm: float
    elongation: float
    contrast: float
    present: bool = True


def generate_patient(plan: PatientPlan, difficulty: str | DifficultyProfile = "paper", pixel_spacing: float = 2.4,
                     site: str = "generic", patients: int = 1) -> list[SyntheticCase]:
    """Generate every visit of one planned patient, deterministically from the plan's seed."""
    profile = difficulty if isinstance(difficulty, DifficultyProfile) else difficulty_profile(difficulty)
    demo = Demographics("prostate", "M", plan.age, plan.grade, False)
    baseline_date = dt.date(2016, 1, 1) + dt.timedelta(days=plan.seed % 1500)
    anatomy_seed = [plan.seed, 0xA7]  # the same skeleton, bone by bone, at every visit
    tracked: list[_Tracked] = []
    cases = []
    body: Patient | None = None
    for visit, timepoint in enumerate(plan.timepoints):
        seed = plan.visit_seed(visit)
        camera = site_profile(site, seed)
        spacing = camera.pixel_spacing_mm or pixel_spacing
        rng = np.random.default_rng(seed)
        drawn = sample_patient(rng, demo.sex, demo.age, spacing, camera.patients)
        drawn.counts_per_view = float(np.clip(drawn.counts_per_view * profile.counts_scale, MIN_COUNTS, MAX_COUNTS))
        patient = drawn if body is None else _same_body(body, drawn, rng)
        body = body or drawn
        anatomy = render_anatomy(patient, np.random.default_rng(anatomy_seed), RES)
        painter = FindingPainter(anatomy, rng, spacing, RES, wrist_injection_share=camera.wrist_injection_share)
        if visit == 0:
            paint_findings(painter, demo.grade, demo.age, profile, False, sex=demo.sex,
                           artifact_rates=camera.artifact_rates)
            identities = _start_tracking(painter, tracked)
        else:
            identities = _paint_visit(painter, tracked, plan, visit, profile, camera.artifact_rates)
        anterior, posterior = _acquire(anatomy.canvas.anterior, anatomy.canvas.posterior[:, ::-1], patient, rng,
                                       camera.camera)
        info = VisitInfo(plan.patient_id, timepoint, plan.change, identities, baseline_date)
        cases.append(SyntheticCase(plan.case_id(visit, patients), seed, profile.name,
                                   _visit_demographics(demo, painter.findings), patient, anterior,
                                   posterior, painter.findings, camera.name, anatomy, visit=info))
    return cases


def _visit_demographics(demo: Demographics, findings) -> Demographics:
    """The grade of this visit: metastases that appeared make it metastatic, all of them gone makes it benign."""
    n = sum(f.category == "metastasis" for f in findings)
    if (n > 0) == (demo.grade >= 2):
        return demo
    return replace(demo, grade=(2 if n <= 3 else 3) if n else 1)


def _same_body(body: Patient, drawn: Patient, rng: np.random.Generator) -> Patient:
    """The baseline body placed anew: shifted and turned a little, arms, bladder and counts as `drawn` has them."""
    top_mm = body.top_row * body.pixel_spacing + rng.normal(0.0, 15.0)
    length_px = body.height_mm / drawn.pixel_spacing
    top = float(np.clip(top_mm / drawn.pixel_spacing, 5.0, max(ROWS - length_px - 5.0, 5.0)))
    return replace(drawn, height_mm=body.height_mm, build=body.build, bone_uptake=body.bone_uptake, top_row=top,
                   centre_col=float(body.centre_col + rng.normal(0.0, 4.0)),
                   tilt_deg=float(body.tilt_deg + rng.normal(0.0, 1.5)))


def _start_tracking(painter: FindingPainter, tracked: list[_Tracked]) -> list[int]:
    """Anchor the baseline findings that sit on bone; return the identity of every finding (0: not followed)."""
    identities = []
    by_name = {s.name: s for s in painter.anatomy.sites}
    for finding in painter.findings:
        site = by_name.get(finding.bone)
        if site is None or finding.category == "artifact":
            identities.append(0)
            continue
        identity = len(tracked) + 1
        tracked.append(_track(identity, finding, site, painter))
        identities.append(identity)
    return identities


def _track(identity: int, finding, site: BoneSite, painter: FindingPainter) -> _Tracked:
    to_mm = painter.pixel_spacing / painter.res  # canvas pixels -> mm
    centre = (np.array(finding.centre_anterior) + 0.5) * painter.res - 0.5
    fraction, point, direction = _project(site, centre)
    normal = np.array([-direction[1], direction[0]])
    offset = centre - point
    anchor = _Anchor(site.name, fraction, float(offset @ direction) * to_mm, float(offset @ normal) * to_mm,
                     float(finding.angle - np.arctan2(direction[1], direction[0])))
    sigma_along, sigma_across = finding.sigma_px
    return _Tracked(identity, finding.kind, finding.category, anchor, sigma_across * painter.pixel_spacing,
                    sigma_along / max(sigma_across, 1e-6), finding.contrast)


def _project(site: BoneSite, centre: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(fraction along the bone, nearest point on it, local unit direction) of a canvas point."""
    pts = site.points
    if len(pts) == 1:
        return 0.0, pts[0], np.array([1.0, 0.0])
    seg = np.diff(pts, axis=0)
    length = np.linalg.norm(seg, axis=1)
    t = np.clip(np.einsum("ij,ij->i", centre - pts[:-1], seg) / np.maximum(length**2, 1e-9), 0.0, 1.0)
    near = pts[:-1] + t[:, None] * seg
    i = int(np.argmin(np.linalg.norm(near - centre, axis=1)))
    cum = np.concatenate([[0.0], np.cumsum(length)])
    fraction = (cum[i] + t[i] * length[i]) / max(cum[-1], 1e-9)
    return float(fraction), near[i], seg[i] / max(length[i], 1e-9)


def _place(site: BoneSite, anchor: _Anchor, painter: FindingPainter) -> tuple[np.ndarray, np.ndarray]:
    """Canvas centre and long-axis direction of an anchored finding on this visit's bone."""
    pts = site.points
    if len(pts) == 1:
        point, direction = pts[0], np.array([1.0, 0.0])
    else:
        seg = np.diff(pts, axis=0)
        length = np.linalg.norm(seg, axis=1)
        cum = np.concatenate([[0.0], np.cumsum(length)])
        s = anchor.fraction * cum[-1]
        i = int(np.clip(np.searchsorted(cum, s) - 1, 0, len(seg) - 1))
        direction = seg[i] / max(length[i], 1e-9)
        point = pts[i] + (s - cum[i]) * direction
    normal = np.array([-direction[1], direction[0]])
    to_px = painter.res / painter.pixel_spacing
    centre = point + (anchor.along_mm * direction + anchor.across_mm * normal) * to_px
    angle = np.arctan2(direction[1], direction[0]) + anchor.angle
    return centre, np.array([np.cos(angle), np.sin(angle)])


def _paint_visit(painter: FindingPainter, tracked: list[_Tracked], plan: PatientPlan, visit: int,
                 profile: DifficultyProfile, artifact_rates: dict[str, float]) -> list[int]:
    """Change the followed findings as the patient's course says, draw them, add new ones; return identities."""
    rng = painter.rng
    for lesion in tracked:
        if not lesion.present:
            continue
        if lesion.category != "metastasis" or plan.change == "stable":
            lesion.contrast *= float(rng.lognormal(0.0, 0.08))
        elif plan.change == "progression" and rng.random() < 0.5:
            lesion.sigma_mm *= float(rng.uniform(1.15, 1.5))
            lesion.contrast *= float(rng.uniform(1.1, 1.5))
        elif plan.change == "response":
            lesion.contrast *= float(rng.uniform(0.35, 0.8))
            lesion.sigma_mm *= float(rng.uniform(0.7, 0.95))
            lesion.present = lesion.contrast >= 0.4  # faded below visibility: gone
        elif plan.change == "flare":
            lesion.contrast *= float(rng.uniform(1.3, 1.8)) if visit == 1 else float(rng.uniform(0.4, 0.65))
    identities = []
    by_name = {s.name: s for s in painter.anatomy.sites}
    for lesion in tracked:
        if lesion.present:
            centre, direction = _place(by_name[lesion.anchor.bone], lesion.anchor, painter)
            painter.hot_spot(lesion.kind, lesion.category, by_name[lesion.anchor.bone], centre, direction,
                             lesion.sigma_mm, lesion.elongation, lesion.contrast)
            identities.append(lesion.identity)
    new = 0
    if plan.change == "progression":
        new = int(rng.choice([1, 2, 2, 3, 4, 5, 6])) if visit == 1 else \
            (int(rng.integers(2, 5)) if plan.confirmed else int(rng.integers(0, 2)))
    first_new = len(painter.findings)
    painter.metastases(new, profile.grade3_contrast, profile.lesion_sigma_mm)
    if rng.random() < 0.25:  # an ordinary new benign finding: a healed fracture, arthropathy
        if profile.lookalike_rate > 0 and rng.random() < 0.5:
            names = list(FindingPainter.LOOKALIKE_KINDS)
            painter.lookalike(names[int(rng.integers(len(names)))], profile.lookalike_contrast,
                              profile.lesion_sigma_mm)
        else:
            names = list(FindingPainter.BENIGN_KINDS)
            painter.benign(names[int(rng.integers(len(names)))], profile.benign_contrast)
    for finding in painter.findings[first_new:]:
        identity = len(tracked) + 1
        tracked.append(_track(identity, finding, by_name[finding.bone], painter))
        identities.append(identity)
    for kind, rate in artifact_rates.items():
        if rng.random() < rate * profile.artifact_rate:
            before = len(painter.findings)
            painter.artifact(kind)
            identities += [0] * (len(painter.findings) - before)
    return identities


# --- cohort -----------------------------------------------------------------------------------------------------

def _make_patient(job: tuple[int, int, int, str, float, str, str]) -> tuple[list[dict], bool]:
    """Worker: generate and write every visit of one patient unless all are complete. Returns (records, written)."""
    cohort_seed, index, patients, difficulty, spacing, studies, site = job
    plan = plan_patient(cohort_seed, index)
    folder = Path(studies)
    records = []
    for visit in range(len(plan.timepoints)):
        case_id, seed = plan.case_id(visit, patients), plan.visit_seed(visit)
        dcm = case_files(folder / f"{case_id}.dcm", site_profile(site, seed).header)[-1]
        sidecar = folder / f"{case_id}.json"
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            break
        if not (dcm.exists() and truth_path(folder, case_id).exists() and record.get("seed") == seed):
            break
        records.append(record)
    else:
        return records, False
    cases = generate_patient(plan, difficulty, spacing, site, patients)
    return [write_case(case, folder) for case in cases], True


def generate_followup_cohort(out: str | Path, patients: int, seed: int = 0, difficulty: str = "paper",
                             workers: int = 1, pixel_spacing: float = 2.4,
                             progress: Callable[[int, int], None] | None = None,
                             site: str = "generic", ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
                             ) -> CohortResult:
    """Generate (or resume) `patients` followed patients (2-3 visits each) in `out`; write the manifest, patients
    split train:val:test by `ratios`.

    The manifest has one row per visit, with `patient_id`, `timepoint` (days after the patient's baseline) and
    `change` (the patient's course); all visits of a patient share one split.
    """
    settings = SynthSettings(int(seed), difficulty, float(pixel_spacing), site, follow_up=True)
    check_settings(patients, settings, workers)
    out = Path(out)
    prepare_folder(out, settings)
    studies = out / STUDIES_DIR
    studies.mkdir(exist_ok=True)
    (out / TRUTH_DIR).mkdir(exist_ok=True)
    jobs = [(settings.seed, i, patients, difficulty, settings.pixel_spacing, str(studies), site)
            for i in range(patients)]
    start = time.perf_counter()
    records: list[dict] = []
    written = done = 0
    with generated(_make_patient, jobs, workers, chunksize=max(1, min(8, patients // (4 * workers)))) as results:
        for patient_records, was_written in results:
            records += patient_records
            written += len(patient_records) if was_written else 0
            done += 1
            if progress:
                progress(done, patients)
    df, columns = manifest_frame(out, records)
    for column in FOLLOWUP_COLUMNS:
        df[column] = [r[column] for r in records]
    # Split by patient, stratified on the baseline visit, so no patient straddles training and test.
    baseline = split_manifest(df[df["timepoint"] == 0], ratios, seed=settings.seed)
    df["split"] = df["patient_id"].map(dict(zip(baseline["patient_id"], baseline["split"])))
    manifest = write_manifest(df[columns + FOLLOWUP_COLUMNS], out / MANIFEST_FILE)
    return CohortResult(manifest, written, len(records) - written, time.perf_counter() - start)
