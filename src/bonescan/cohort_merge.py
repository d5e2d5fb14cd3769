"""Several cohort manifests as one: studies from different cameras or sites, to train and evaluate on together.

A lesion network trained on one camera's scans can fail on another's (the README's "Other cameras"), so a
department trains on its own studies beside the synthetic ones, or on synthetic cohorts of several camera profiles.
Each manifest is validated as `cohort.load_manifest` does; its rows keep their split, their columns (a column one
manifest lacks is empty in the others' rows) and their files (paths are rewritten relative to the merged manifest
by `cohort.write_manifest`). A column `cohort` names the manifest a row came from.

Case ids must stay unique: when an id occurs in more than one manifest (two synthetic cohorts both start at
syn00000), every row's `case_id` and `patient_id` are prefixed with its cohort's name ("mixed-syn00000"), so
patients of different cohorts are never taken for one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from .cohort import load_manifest
from .errors import BoneScanError, ManifestError

COHORT_COLUMN = "cohort"


def cohort_names(paths: Sequence[Path], names: Sequence[str] | None = None) -> list[str]:
    """The name of each manifest's cohort: `names` when given, else its folder's name (numbered when repeated)."""
    if names:
        if len(names) != len(paths):
            raise ManifestError("--name", f"{len(names)} names for {len(paths)} manifests")
        if len(set(names)) != len(names):
            raise ManifestError("--name", f"names must differ, got {', '.join(names)}")
        return list(names)
    folders = [Path(p).resolve().parent.name or "cohort" for p in paths]
    return [f"{name}{folders[:k].count(name) + 1}" if folders.count(name) > 1 else name
            for k, name in enumerate(folders)]


def merge_manifests(paths: Sequence[str | Path], names: Sequence[str] | None = None,
                    check_files: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """(merged manifest with absolute paths, notes for the user). One ManifestError lists every manifest's problems."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ManifestError("manifests", f"give at least two manifests to merge, got {len(paths)}")
    cohorts = cohort_names(paths, names)
    tables, problems = [], []
    for path in paths:
        try:
            tables.append(load_manifest(path, check_files=check_files))
        except BoneScanError as error:
            problems.append(str(error))
    if problems:
        raise ManifestError("manifests", "; ".join(problems))
    notes = []
    seen: dict[str, int] = {}
    for table in tables:
        for case_id in set(table["case_id"]):
            seen[case_id] = seen.get(case_id, 0) + 1
    shared = sorted(case_id for case_id, n in seen.items() if n > 1)
    if shared:
        notes.append(f"{len(shared)} case ids occur in more than one manifest (e.g. {', '.join(shared[:3])}): every "
                     f"case_id and patient_id is prefixed with its cohort's name ({', '.join(cohorts)})")
    merged = []
    for cohort, table in zip(cohorts, tables):
        table = table.copy()
        if shared:
            table["case_id"] = cohort + "-" + table["case_id"].astype(str)
            if "patient_id" in table.columns:
                known = table["patient_id"].notna() & (table["patient_id"].astype(str).str.strip() != "")
                table.loc[known, "patient_id"] = cohort + "-" + table.loc[known, "patient_id"].astype(str)
        table[COHORT_COLUMN] = cohort
        merged.append(table)
    out = pd.concat(merged, ignore_index=True)
    counts = out.groupby(COHORT_COLUMN, sort=False).size()
    notes.append("merged " + ", ".join(f"{name} {int(n)}" for name, n in counts.items()) + f" studies ({len(out)})")
    return out, notes
