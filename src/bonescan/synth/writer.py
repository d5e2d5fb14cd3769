"""Write a synthetic cohort: one NM DICOM and one findings JSON per study, and a manifest CSV.

Layout of the output folder:
    synth.json               the settings the cohort was made with (a rerun must match them)
    studies/<case>.dcm       two-frame NM DICOM (frame 1 anterior, frame 2 posterior seen from behind), or
    studies/<case>_ant.dcm + studies/<case>_post.dcm   one file per view, where the site's camera writes so
    studies/<case>.json      ground truth: demographics, grade, findings with centres in both views
    truth/<case>.npz         lesion truth: skeletal-region label maps and finding instance masks, both views
                             (`bonescan.lesions.truth`; how they are drawn: `bonescan.synth.truth`)
    manifest.csv             one row per study, split 8:1:1 stratified by cancer type and label; `truth` column

Each case has its own seed derived from (cohort seed, index), so pixels do not depend on the number of workers
or of cases. A study is complete when its .dcm exists (the JSON and truth are written first, each file atomically), so an
interrupted run can be rerun: complete studies are kept and skipped, the rest are generated again.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pandas as pd

from .. import __version__
from ..cohort import split_manifest, write_manifest
from ..errors import ConfigError, workers_stopped
from ..fileio import write_text_atomic
from .case import SyntheticCase, case_seed, generate_case
from ..lesions.truth import save_truth
from .dicom import case_files, write_case_dicom
from .findings import difficulty_profile
from .sites import SITES, check_site, site_profile
from .truth import phantom_truth

SETTINGS_FILE = "synth.json"
MANIFEST_FILE = "manifest.csv"
STUDIES_DIR = "studies"
TRUTH_DIR = "truth"
MANIFEST_COLUMNS = ["case_id", "path", "cancer_type", "sex", "age", "grade", "label", "split", "n_metastases",
                    "findings", "difficulty", "seed", "site", "truth"]
PAIR_COLUMNS = ["anterior", "posterior"]  # added after `path` when some studies are one file per view
PIXEL_SPACING_RANGE = (2.0, 3.0)  # mm; whole-body cameras use 2.2-2.5, and the body must fit 1024 rows
_STUDY_FILE = re.compile(r"^syn\d+(_ant|_post)?\.(dcm|json)$")
_TRUTH_FILE = re.compile(r"^syn\d+\.npz$")
_TEMP_FILE = re.compile(r"^\..+\.tmp$")  # left by an interrupted atomic write
_TOP_FILES = re.compile(r"^(synth\.json|manifest\.csv|preview.*\.png)$")


@dataclass(frozen=True)
class SynthSettings:
    """What determines a cohort's content: the same settings give the same pixels."""

    seed: int
    difficulty: str
    pixel_spacing: float = 2.4
    site: str = "generic"
    follow_up: bool = False  # patients with 2-3 dated visits (`synth.followup`); `cases` counts patients

    def to_json(self) -> dict:
        return {"seed": self.seed, "difficulty": self.difficulty, "pixel_spacing": self.pixel_spacing,
                "site": self.site, "follow_up": self.follow_up}


@dataclass
class CohortResult:
    """What a run did: manifest path, studies written and skipped (already complete), wall seconds."""

    manifest: Path
    written: int
    skipped: int
    seconds: float


def case_id_for(index: int, cases: int) -> str:
    """Case id 'syn00042': zero-padded to at least five digits so ids sort in order."""
    return f"syn{index:0{max(5, len(str(max(cases - 1, 0))))}d}"


def check_settings(cases: int, settings: SynthSettings, workers: int = 1) -> None:
    """Refuse impossible settings with a ConfigError that names the option."""
    if cases < 1:
        raise ConfigError("--cases", f"must be at least 1, got {cases}")
    difficulty_profile(settings.difficulty)
    check_site(settings.site)
    lo, hi = PIXEL_SPACING_RANGE
    if not lo <= settings.pixel_spacing <= hi:
        raise ConfigError("--pixel-spacing", f"must be between {lo} and {hi} mm, got {settings.pixel_spacing}")
    if workers < 1:
        raise ConfigError("--workers", f"must be at least 1, got {workers}")


def prepare_folder(out: Path, settings: SynthSettings) -> None:
    """Create `out`, or accept it if it is empty or holds a cohort made with the same settings."""
    if out.exists() and not out.is_dir():
        raise ConfigError(out, "exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    foreign = [p.name for p in out.iterdir() if not (_TOP_FILES.match(p.name) or _TEMP_FILE.match(p.name)
                                                      or (p.name in (STUDIES_DIR, TRUTH_DIR) and p.is_dir()))]
    studies = out / STUDIES_DIR
    for folder, pattern in ((studies, _STUDY_FILE), (out / TRUTH_DIR, _TRUTH_FILE)):
        if folder.is_dir():
            foreign += [f"{folder.name}/{p.name}" for p in folder.iterdir()
                        if not (pattern.match(p.name) or _TEMP_FILE.match(p.name))]
    if foreign:
        shown = ", ".join(sorted(foreign)[:5]) + (" ..." if len(foreign) > 5 else "")
        raise ConfigError(out, f"the output folder holds files that bonescan synth did not write ({shown}); "
                               "choose an empty or new folder")
    settings_path = out / SETTINGS_FILE
    if settings_path.exists():
        try:
            saved = json.loads(settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(settings_path, f"cannot be read ({error}); choose an empty or new folder") from None
        if not isinstance(saved, dict):
            raise ConfigError(settings_path, "is not a bonescan synth settings file; choose an empty or new folder")
        wanted = settings.to_json()
        older = {"site": "generic", "follow_up": False}  # what cohorts made before these settings existed were
        found = {k: saved.get(k, older.get(k)) for k in wanted}
        if found != wanted:
            raise ConfigError(out, f"holds a cohort made with {found}, not {wanted}; "
                                   "use the same settings to resume, or a new folder")
    elif studies.is_dir() and any(studies.iterdir()):
        raise ConfigError(out, f"has a {STUDIES_DIR}/ folder but no {SETTINGS_FILE}; choose an empty or new folder")
    # Temp files of an interrupted run are never complete studies: remove them.
    for folder in (out, studies, out / TRUTH_DIR):
        if folder.is_dir():
            for p in folder.iterdir():
                if _TEMP_FILE.match(p.name) and p.is_file():
                    p.unlink()
    write_text_atomic(settings_path, json.dumps({**settings.to_json(), "bonescan": __version__}, indent=2) + "\n")


def case_record(case: SyntheticCase) -> dict:
    """The findings JSON of a case: manifest fields, patient parameters and every finding."""
    demo, patient = case.demographics, case.patient
    return {
        "case_id": case.case_id, "seed": case.seed, "difficulty": case.difficulty, "site": case.site,
        "cancer_type": demo.cancer_type, "sex": demo.sex, "age": demo.age, "grade": demo.grade, "label": demo.label,
        "superscan": demo.superscan, "n_metastases": case.n_metastases, "findings_summary": case.findings_summary(),
        "patient": {"height_mm": round(patient.height_mm, 1), "build": round(patient.build, 3),
                    "pixel_spacing": patient.pixel_spacing, "counts_anterior": int(case.anterior.sum()),
                    "counts_posterior": int(case.posterior.sum())},
        "image": {"rows": int(case.anterior.shape[0]), "columns": int(case.anterior.shape[1]),
                  "posterior_stored": "as seen from behind (patient's left on the image left)"},
        "findings": [f.to_json() for f in case.findings],
        **({} if case.visit is None else {
            "patient_id": case.visit.patient_id, "timepoint": case.visit.timepoint, "change": case.visit.change,
            "identities": case.visit.identities}),
    }


def write_case(case: SyntheticCase, studies: Path) -> dict:
    """Write a case's findings JSON and lesion truth, then its DICOM (the completion marker); return its record."""
    record = case_record(case)
    record["files"] = [p.name for p in case_files(studies / f"{case.case_id}.dcm", SITES[case.site].header)]
    write_text_atomic(studies / f"{case.case_id}.json", json.dumps(record, indent=1) + "\n")
    save_truth(phantom_truth(case), truth_path(studies, case.case_id))
    write_case_dicom(case, studies / f"{case.case_id}.dcm")
    return record


def truth_path(studies: Path, case_id: str) -> Path:
    """The lesion truth file of a case: truth/<case>.npz beside the studies folder."""
    return studies.parent / TRUTH_DIR / f"{case_id}.npz"


@contextlib.contextmanager
def generated(make: Callable, jobs: list, workers: int, chunksize: int) -> Iterator[Iterable]:
    """`make` over `jobs`, results in job order: in this process (one worker) or in `workers` spawned processes,
    which are shut down (pending jobs cancelled) when the caller leaves, finished or not."""
    if workers == 1:
        keep_freed_memory()
        yield map(make, jobs)
        return
    # spawn: workers never inherit threads or state of the parent process (torch may be imported there).
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=keep_freed_memory)
    try:
        yield executor.map(make, jobs, chunksize=chunksize)
    except BrokenProcessPool as error:  # most often a script without a main guard (errors.workers_stopped)
        raise workers_stopped(workers, error, "workers=1 (--workers 1)") from error
    finally:
        executor.shutdown(cancel_futures=True)


def keep_freed_memory() -> None:
    """Let glibc keep freed memory of this process for reuse instead of returning it to the system.

    Each study allocates and frees dozens of image-sized arrays; by default glibc hands large blocks back to the
    kernel at once, and faulting them in again costs as much time as the arithmetic (a third of a study's CPU
    time). The cost is a resident size that stays at its peak (tens of MiB). No-op outside glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # blocks up to 32 MiB come from the heap (the largest allowed)
    mallopt(m_trim_threshold, 256 << 20)  # and free heap memory is returned only beyond 256 MiB


def _make_one(job: tuple[str, int, str, float, str, str]) -> tuple[dict, bool]:
    """Worker: generate and write one case unless it is already complete. Returns (record, written)."""
    case_id, seed, difficulty, spacing, studies, site = job
    folder = Path(studies)
    dcm = case_files(folder / f"{case_id}.dcm", site_profile(site, seed).header)[-1]
    sidecar = folder / f"{case_id}.json"
    if dcm.exists() and sidecar.exists() and truth_path(folder, case_id).exists():
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
            if record.get("seed") == seed:
                return record, False
        except (OSError, ValueError):
            pass  # unreadable sidecar: regenerate the study
    return write_case(generate_case(case_id, seed, difficulty, spacing, site), folder), True


def generate_cohort(out: str | Path, cases: int, seed: int = 0, difficulty: str = "paper", workers: int = 1,
                    pixel_spacing: float = 2.4, progress: Callable[[int, int], None] | None = None,
                    site: str = "generic", ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> CohortResult:
    """Generate (or resume) a cohort of `cases` synthetic studies in `out` (cameras of `site`), write its manifest
    split train:val:test by `ratios`."""
    settings = SynthSettings(int(seed), difficulty, float(pixel_spacing), site)
    check_settings(cases, settings, workers)
    out = Path(out)
    prepare_folder(out, settings)
    studies = out / STUDIES_DIR
    studies.mkdir(exist_ok=True)
    (out / TRUTH_DIR).mkdir(exist_ok=True)
    jobs = [(case_id_for(i, cases), case_seed(settings.seed, i), difficulty, settings.pixel_spacing, str(studies),
             settings.site) for i in range(cases)]
    start = time.perf_counter()
    records: list[dict] = []
    written = 0
    with generated(_make_one, jobs, workers, chunksize=max(1, min(16, cases // (4 * workers)))) as results:
        for record, was_written in results:
            records.append(record)
            written += was_written
            if progress:
                progress(len(records), cases)
    manifest = write_cohort_manifest(out, records, settings.seed, ratios)
    return CohortResult(manifest, written, cases - written, time.perf_counter() - start)


def write_cohort_manifest(out: Path, records: list[dict], seed: int,
                          ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Path:
    """Build the manifest from case records, split it by `ratios` within cancer type x label, write it atomically."""
    df, columns = manifest_frame(out, records)
    df = split_manifest(df, ratios, seed=seed)
    return write_manifest(df[columns], out / MANIFEST_FILE)


def manifest_frame(out: Path, records: list[dict]) -> tuple[pd.DataFrame, list[str]]:
    """The manifest rows of case records (without split) and the manifest's column order."""
    studies = (out / STUDIES_DIR).resolve()
    files = [r.get("files") or [f"{r['case_id']}.dcm"] for r in records]
    df = pd.DataFrame({
        "case_id": [r["case_id"] for r in records],
        "path": [str(studies / f[0]) if len(f) == 1 else "" for f in files],
        "anterior": [str(studies / f[0]) if len(f) == 2 else "" for f in files],
        "posterior": [str(studies / f[1]) if len(f) == 2 else "" for f in files],
        "cancer_type": [r["cancer_type"] for r in records],
        "sex": [r["sex"] for r in records],
        "age": [r["age"] for r in records],
        "grade": [r["grade"] for r in records],
        "label": [r["label"] for r in records],
        "n_metastases": [r["n_metastases"] for r in records],
        "findings": [r["findings_summary"] for r in records],
        "difficulty": [r["difficulty"] for r in records],
        "seed": [r["seed"] for r in records],
        "site": [r.get("site", "generic") for r in records],
        "truth": [str(truth_path(studies, r["case_id"])) for r in records],
    })
    columns = MANIFEST_COLUMNS[:2] + PAIR_COLUMNS + MANIFEST_COLUMNS[2:] if any(len(f) == 2 for f in files) \
        else MANIFEST_COLUMNS
    return df, columns
