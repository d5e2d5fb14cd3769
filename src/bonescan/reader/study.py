"""Create a reader study (cases, readers, randomized queues, rendered views), add its phases, export answers.

A study folder holds `study.sqlite` and `images/`. It starts with one phase, `blinded` (images only, as in the
paper) or `ai-consulted`; an `ai-consulted` phase can later be added to a blinded study, reusing its readers and
cases in a fresh random order, as the paper did when its physicians re-read the same cases a hundred days later.
"""

from __future__ import annotations

import math
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..errors import BoneScanError, ConfigError, ManifestError
from ..fileio import atomic_path
from .auth import hash_password, new_password
from .render import render_heatmap, render_views
from .store import MODES, AIRecord, CaseRecord, ReaderStore, hotspot_image_name, is_reader_study

# `bonescan predict` writes "metastasis" / "no metastasis"; other tools write 0/1.
DECISION_WORDS = {"1": 1, "0": 0, "metastasis": 1, "no metastasis": 0, "no-metastasis": 0}
READER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class CaseInput:
    """One case to read: where its views are, its reference label if known, who reads it (None = everyone)."""

    case_id: str
    source: str | list[str]
    label: int | None = None
    readers: tuple[str, ...] | None = None


@dataclass
class CreatedPhase:
    """What `create_study` did: the phase opened, the passwords of new readers (shown once), the queues."""

    study_dir: Path
    phase: str
    passwords: dict[str, str]
    queues: dict[str, list[str]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ case list
def _problem_error(path: Path, problems: list[str]) -> ManifestError:
    return ManifestError(path, f"{len(problems)} problem{'s' if len(problems) != 1 else ''}: " + "; ".join(problems))


def read_csv_table(path: Path, what: str) -> pd.DataFrame:
    """Read a CSV as strings (empty cells stay empty), refusing a missing or unreadable file."""
    if not path.is_file():
        raise ManifestError(path, f"no such {what} file")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ManifestError(path, f"not a readable CSV file ({error})") from None
    table.columns = [str(col).strip() for col in table.columns]
    return table


def label_from_row(row: pd.Series, columns: set[str], where: str, problems: list[str]) -> int | None:
    """0/1 from `label`, or from `grade` 0-3 (grade >= 2 is metastasis, as in the paper); None if neither."""
    for column, allowed, to_label in (("grade", {0, 1, 2, 3}, lambda g: int(g >= 2)), ("label", {0, 1}, int)):
        text = row[column].strip() if column in columns else ""
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if value not in allowed:
            problems.append(f"{where}: {column} {text!r} is not one of {sorted(allowed)}")
            return None
        return to_label(int(value))
    return None


def load_cases(path: str | Path, *, readers: list[str], split: str | None = None) -> list[CaseInput]:
    """Read the case list: `case_id` and `path` or `anterior` + `posterior` (relative to the CSV's folder).

    Optional columns: `label` 0/1 or `grade` 0-3 (reference standard for the analysis), `exclude_reason`
    (non-empty rows are skipped), `split` (with `split=...` only those rows are read) and `readers`
    (semicolon-separated reader names; empty = every reader). A full cohort manifest works as it is; the
    clinical columns a cohort needs are not required here because readers judge images only.
    """
    path = Path(path)
    table = read_csv_table(path, "case list")
    columns = set(table.columns)
    missing = []
    if "case_id" not in columns:
        missing.append("case_id")
    if "path" not in columns and not {"anterior", "posterior"} <= columns:
        missing.append("path or anterior + posterior")
    if missing:
        raise _problem_error(path, [f"missing column: {name}" for name in missing])
    if split is not None:
        if "split" not in columns:
            raise ManifestError(path, f"--split {split} asked for, but the case list has no split column")
        table = table[table["split"].str.strip().str.lower() == split.lower()]
    if "exclude_reason" in columns:
        table = table[table["exclude_reason"].str.strip() == ""]

    base = path.resolve().parent
    problems: list[str] = []
    cases: list[CaseInput] = []
    seen: dict[str, int] = {}
    for index, row in table.iterrows():
        case_id = row["case_id"].strip()
        where = f"line {index + 2}" + (f" (case_id {case_id!r})" if case_id else "")
        if not case_id:
            problems.append(f"{where}: empty case_id")
            continue
        if case_id in seen:
            problems.append(f"{where}: duplicate case_id, first on line {seen[case_id]}")
            continue
        seen[case_id] = index + 2
        single = row["path"].strip() if "path" in columns else ""
        pair = [row[c].strip() for c in ("anterior", "posterior") if c in columns]
        if single:
            files = [single]
        elif len(pair) == 2 and all(pair):
            files = pair
        else:
            problems.append(f"{where}: neither path nor both anterior and posterior given")
            continue
        resolved = [str((base / Path(f).expanduser()).resolve()) for f in files]
        problems += [f"{where}: file not found: {f}" for f in resolved if not Path(f).is_file()]
        label = label_from_row(row, columns, where, problems)
        assigned = None
        if "readers" in columns and row["readers"].strip():
            assigned = tuple(name.strip() for name in row["readers"].split(";") if name.strip())
            unknown = sorted(set(assigned) - set(readers))
            if unknown:
                problems.append(f"{where}: readers column names unknown reader(s) {', '.join(unknown)}")
        cases.append(CaseInput(case_id, resolved[0] if len(resolved) == 1 else resolved, label, assigned))
    if problems:
        raise _problem_error(path, problems)
    if not cases:
        raise ManifestError(path, "no cases to read" + (f" in split {split!r}" if split else ""))
    return cases


def load_predictions(
    path: str | Path,
    case_ids: list[str],
    *,
    threshold: float = 0.5,
    decision_column: str = "decision",
    heatmap_column: str = "heatmap",
) -> list[tuple[str, float, int, Path | None]]:
    """Read the AI's predictions: `case_id`, `probability`, optional decision (0/1 or metastasis/no metastasis)
    and heat-map path (PNG/JPG/TIFF image or .npy array) columns.

    Without a decision column the decision is probability >= threshold. Every case of the study needs a row;
    rows for other cases are ignored. Returns (case_id, probability, decision, heat-map path or None).
    """
    path = Path(path)
    table = read_csv_table(path, "predictions")
    columns = set(table.columns)
    missing = [c for c in ("case_id", "probability") if c not in columns]
    if decision_column != "decision" and decision_column not in columns:
        missing.append(f"{decision_column} (named by --decision-column)")
    if missing:
        raise _problem_error(path, [f"missing column: {name}" for name in missing])
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError("--threshold", f"{threshold} is not a probability between 0 and 1")

    base = path.resolve().parent
    problems: list[str] = []
    by_case: dict[str, tuple[str, float, int, Path | None]] = {}
    wanted = set(case_ids)
    for index, row in table.iterrows():
        case_id = row["case_id"].strip()
        if case_id not in wanted:
            continue
        where = f"line {index + 2} (case_id {case_id!r})"
        if case_id in by_case:
            problems.append(f"{where}: duplicate prediction")
            continue
        try:
            probability = float(row["probability"])
        except ValueError:
            probability = math.nan
        if not 0.0 <= probability <= 1.0:
            problems.append(f"{where}: probability {row['probability']!r} is not a number between 0 and 1")
            continue
        decision = int(probability >= threshold)
        if decision_column in columns:
            text = row[decision_column].strip().lower()
            if text not in DECISION_WORDS:
                problems.append(f"{where}: {decision_column} {text!r} is not 0/1 or metastasis/no metastasis")
                continue
            decision = DECISION_WORDS[text]
        heatmap = None
        if heatmap_column in columns and row[heatmap_column].strip():
            heatmap = (base / Path(row[heatmap_column].strip()).expanduser()).resolve()
            if not heatmap.is_file():
                problems.append(f"{where}: heat map file not found: {heatmap}")
        by_case[case_id] = (case_id, probability, decision, heatmap)
    absent = [c for c in case_ids if c not in by_case]
    if absent:
        shown = ", ".join(absent[:10]) + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
        problems.append(f"no prediction for {len(absent)} case(s) of the study: {shown}")
    if problems:
        raise _problem_error(path, problems)
    return [by_case[c] for c in case_ids]


# ------------------------------------------------------------------------------------------------ queues
def _seeded_rng(seed: int, phase: str, reader: str) -> np.random.Generator:
    """One independent stream per (seed, phase, reader), stable whatever the order readers are listed in."""
    return np.random.default_rng([seed, MODES.index(phase), *reader.encode("utf-8")])


def make_queue(case_ids: list[str], seed: int, phase: str, reader: str, avoid: list[str] | None = None) -> list[str]:
    """A seeded random reading order; when `avoid` (the previous phase's order) is given, a different one."""
    rng = _seeded_rng(seed, phase, reader)
    order = list(case_ids)
    for _ in range(100):
        order = [case_ids[i] for i in rng.permutation(len(case_ids))]
        if avoid is None or len(case_ids) < 2 or order != avoid:
            break
    return order


# ------------------------------------------------------------------------------------------------ creation
def _check_readers(names: list[str]) -> list[str]:
    if not names:
        raise ConfigError("--readers", "name at least one reader")
    bad = [n for n in names if not READER_NAME.match(n)]
    if bad:
        raise ConfigError("--readers", f"reader names may use letters, digits, '_', '.', '-' only: {', '.join(bad)}")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError("--readers", f"reader named twice: {', '.join(duplicated)}")
    return names


def _render_cases(
    cases: list[CaseInput], images_dir: Path, progress: Callable[[int, int], None] | None
) -> list[CaseRecord]:
    """Read each study once and write its two views as PNG; report every case that fails, then refuse."""
    from ..io import read_study

    records, failures = [], []
    for done, case in enumerate(cases, start=1):
        try:
            anterior, posterior = read_study(case.source).both_views()
            views = render_views(anterior, posterior)
        except BoneScanError as error:
            failures.append(f"case {case.case_id}: {error}")
            continue
        key = secrets.token_hex(8)
        (images_dir / f"{key}_anterior.png").write_bytes(views.anterior_png)
        (images_dir / f"{key}_posterior.png").write_bytes(views.posterior_png)
        source = case.source if isinstance(case.source, str) else ";".join(case.source)
        records.append(CaseRecord(case.case_id, key, source, case.label, views.upper))
        if progress:
            progress(done, len(cases))
    if failures:
        raise ManifestError(None, f"{len(failures)} case(s) could not be read: " + "; ".join(failures))
    return records


def load_hotspot_images(path: str | Path, case_ids: list[str]) -> dict[str, Path]:
    """Numbered-hotspot overlays of the cases, from a predictions CSV written with `bonescan predict --lesions`.

    Its `lesions` column names each study's lesion JSON; the overlay PNG lies beside it. {} without the column.
    """
    path = Path(path)
    table = read_csv_table(path, "predictions")
    if "lesions" not in table.columns:
        return {}
    base, wanted, found, problems = path.resolve().parent, set(case_ids), {}, []
    for index, row in table.iterrows():
        case_id, cell = row["case_id"].strip(), row["lesions"].strip()
        if case_id not in wanted or not cell:
            continue
        image = (base / Path(cell).expanduser()).resolve().with_suffix(".png")
        if image.is_file():
            found[case_id] = image
        else:
            problems.append(f"line {index + 2} (case_id {case_id!r}): hotspot overlay not found: {image}")
    if problems:
        raise _problem_error(path, problems)
    return found


def _store_hotspots(store: ReaderStore, images: dict[str, Path]) -> None:
    cases = store.cases()
    for case_id, image in images.items():
        with atomic_path(store.images_dir / hotspot_image_name(cases[case_id].image_key)) as tmp:
            shutil.copyfile(image, tmp)


def _store_ai(store: ReaderStore, predictions: list[tuple[str, float, int, Path | None]]) -> None:
    cases = store.cases()
    records = []
    for case_id, probability, decision, heatmap in predictions:
        name = None
        if heatmap is not None:
            name = f"{cases[case_id].image_key}_heatmap.png"
            with atomic_path(store.images_dir / name) as tmp:
                tmp.write_bytes(render_heatmap(heatmap))
        records.append(AIRecord(case_id, probability, decision, name))
    store.add_ai(records)


def create_study(
    study_dir: str | Path,
    *,
    mode: str,
    cases_csv: str | Path | None = None,
    readers: list[str] | None = None,
    predictions_csv: str | Path | None = None,
    seed: int = 0,
    split: str | None = None,
    threshold: float = 0.5,
    decision_column: str = "decision",
    close_open_reads: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> CreatedPhase:
    """Create a reader study in `study_dir`, or add the `ai-consulted` phase to an existing blinded one."""
    if mode not in MODES:
        raise ConfigError("--mode", f"unknown mode {mode!r} (expected {' or '.join(MODES)})")
    if mode == "ai-consulted" and predictions_csv is None:
        raise ConfigError("--predictions", "the ai-consulted mode needs the AI's predictions CSV")
    study_dir = Path(study_dir)
    if study_dir.exists() and not study_dir.is_dir():
        raise ConfigError(study_dir, "exists and is not a folder")
    if study_dir.is_dir() and is_reader_study(study_dir):
        return _add_phase(study_dir, mode, cases_csv, readers, predictions_csv, seed, threshold, decision_column,
                          close_open_reads)
    if study_dir.is_dir() and any(study_dir.iterdir()):
        raise ConfigError(study_dir, "exists, is not empty and is not a reader study; name a new folder")
    if cases_csv is None:
        raise ConfigError("--cases", "a new study needs the case list")
    names = _check_readers(list(readers or []))
    cases = load_cases(cases_csv, readers=names, split=split)
    case_ids = [c.case_id for c in cases]
    predictions = (
        load_predictions(predictions_csv, case_ids, threshold=threshold, decision_column=decision_column)
        if predictions_csv is not None
        else None
    )
    hotspots = load_hotspot_images(predictions_csv, case_ids) if predictions_csv is not None else {}

    # Build beside the target and rename at the end: a failed create leaves nothing behind.
    study_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{study_dir.name}.", dir=study_dir.parent))
    try:
        store = ReaderStore.initialize(building)
        store.add_cases(_render_cases(cases, store.images_dir, progress))
        passwords = {name: new_password() for name in names}
        store.add_readers({name: hash_password(pw) for name, pw in passwords.items()})
        if predictions is not None:
            _store_ai(store, predictions)
            _store_hotspots(store, hotspots)
        queues = {
            name: make_queue([c.case_id for c in cases if c.readers is None or name in c.readers], seed, mode, name)
            for name in names
        }
        store.add_phase(mode, seed, queues)
        if study_dir.is_dir():
            study_dir.rmdir()  # empty, checked above
        building.rename(study_dir)
    finally:
        if building.exists():
            shutil.rmtree(building)
    return CreatedPhase(study_dir, mode, passwords, queues)


def _add_phase(
    study_dir: Path,
    mode: str,
    cases_csv: str | Path | None,
    readers: list[str] | None,
    predictions_csv: str | Path | None,
    seed: int,
    threshold: float,
    decision_column: str,
    close_open_reads: bool,
) -> CreatedPhase:
    """Open the ai-consulted phase of a blinded study: same readers and cases, reshuffled."""
    store = ReaderStore.open(study_dir)
    phases = store.phases()
    if mode in phases:
        raise ConfigError(study_dir, f"already has a {mode} phase; a study holds one blinded and one ai-consulted")
    if mode == "blinded":
        raise ConfigError(study_dir, "the blinded phase comes first; create a new study for blinded reading")
    previous = phases[-1]
    open_reads = store.open_reads(previous)
    if open_reads and not close_open_reads:
        raise ConfigError(
            study_dir,
            f"{open_reads} read(s) of the {previous} phase are unfinished; let the readers finish, or pass "
            "--close-open-reads to leave them unanswered",
        )
    known = store.reader_names()
    names = list(readers) if readers else known
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ConfigError("--readers", f"not readers of this study: {', '.join(unknown)} (it has {', '.join(known)})")
    case_ids = sorted(store.cases())
    if cases_csv is not None:
        listed = sorted(c.case_id for c in load_cases(cases_csv, readers=known))
        if listed != case_ids:
            raise ConfigError(cases_csv, "lists other cases than the study holds; the consulted phase re-reads the same")
    _store_ai(store, load_predictions(predictions_csv, case_ids, threshold=threshold, decision_column=decision_column))
    _store_hotspots(store, load_hotspot_images(predictions_csv, case_ids))
    queues = {}
    for name in names:
        before = store.queue(previous, name)
        queues[name] = make_queue(sorted(before), seed, mode, name, avoid=before)
    store.add_phase(mode, seed, queues)
    return CreatedPhase(study_dir, mode, {}, queues)


def reset_password(study_dir: str | Path, reader: str) -> str:
    """Give a reader a new random password (the old one stops working) and return it."""
    store = ReaderStore.open(study_dir)
    if reader not in store.reader_names():
        raise ConfigError("--reader", f"{reader!r} is not a reader of {study_dir}")
    password = new_password()
    store.set_password(reader, hash_password(password))
    return password


# ------------------------------------------------------------------------------------------------ export
def _iso(seconds: pd.Series) -> pd.Series:
    return pd.to_datetime(seconds, unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").where(seconds.notna(), "")


def reads_table(study_dir: str | Path) -> pd.DataFrame:
    """All reads of the study with answers as 0/1, confidences, seconds and UTC answer times."""
    frame = ReaderStore.open(study_dir).reads_frame()
    for stage in ("own", "final"):
        frame[f"{stage}_answered_at"] = _iso(frame[f"{stage}_answered_at"])
    for column in ("truth", "own_answer", "own_confidence", "ai_decision", "final_answer", "final_confidence"):
        frame[column] = frame[column].astype("Int64")
    return frame


def export_reads(study_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write every read to CSV (atomically); default STUDY/export/reads.csv."""
    target = Path(out) if out is not None else Path(study_dir) / "export" / "reads.csv"
    frame = reads_table(study_dir)
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)
    return target


__all__ = [
    "CaseInput",
    "CreatedPhase",
    "create_study",
    "export_reads",
    "load_cases",
    "load_predictions",
    "make_queue",
    "reads_table",
    "reset_password",
]
