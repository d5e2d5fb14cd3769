"""Cohort manifest: validation, the stratified train/val/test split, and the paper's Table 1.

A manifest is a CSV with one row per study:

- `case_id` (unique); demographics `cancer_type` in {lung, prostate, breast, other}, `sex` in {M, F}, `age` in
  years, each optional: a missing column or a blank cell (or "unknown") means unknown, as in public sets such as
  BS-80K that publish none;
- `path` (one file holding both views) or `anterior` + `posterior` (one file per view); relative paths are
  relative to the manifest's folder;
- `grade` 0-3 (label = grade >= 2, as in the paper) and/or `label` 0/1; when both are given they must agree;
- optional `exclude_reason` (non-empty = excluded from the split and from Table 1) and `split`
  in {train, val, test, excluded} (a row marked "excluded" is excluded too, with or without a reason).
  Any other column is kept as it is.

`load_manifest` returns a DataFrame with the paths made absolute (None where absent), `cancer_type` lower case,
`sex` upper case (both "unknown" where not known), `age` float (NaN where unknown), an integer `label`,
`exclude_reason` and `split` as strings ("" where empty).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError, ManifestError
from .fileio import atomic_path

CANCER_TYPES = ("lung", "prostate", "breast", "other")
SEXES = ("M", "F")
SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"
PATH_COLUMNS = ("path", "anterior", "posterior", "truth")
REQUIRED_COLUMNS = ("case_id",)
UNKNOWN = "unknown"  # a demographic value not given (blank cell or missing column)
METASTASIS_GRADE = 2  # grades 2 and 3 are metastasis in the paper
AGE_THRESHOLD = 60.0  # Table 1 splits age at 60 years


def load_manifest(path: str | Path, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a manifest CSV; raise one ManifestError listing every problem found."""
    path = Path(path)
    raw = _read_csv(path)
    problems = _column_problems(raw)
    columns = set(raw.columns)
    base = path.resolve().parent
    resolved = {col: _resolve_paths(raw[col], base) for col in PATH_COLUMNS if col in columns}
    table = pd.DataFrame(index=raw.index)
    labels: list[int | None] = [None] * len(raw)
    grades: list[int | None] = [None] * len(raw)

    if "case_id" in columns:
        problems += _duplicate_problems(raw)
    for i, row in raw.iterrows():
        where = _where(i, row)
        problems += _row_problems(row, where, columns)
        grade, label, label_problems = _parse_label(row, where, columns)
        problems += label_problems
        grades[i], labels[i] = grade, label
        excluded = bool(str(row.get("exclude_reason", "")).strip()) or _is_excluded_split(row.get("split", ""))
        if check_files and not excluded:
            problems += _file_problems(resolved, i, where)

    if problems:
        raise _manifest_error(path, problems)

    table["case_id"] = raw["case_id"].str.strip()
    for col, values in resolved.items():
        table[col] = pd.Series(values, index=raw.index, dtype=object)
    table["cancer_type"] = _categorical(raw, "cancer_type").str.lower()
    table["sex"] = _categorical(raw, "sex").str.upper().replace(UNKNOWN.upper(), UNKNOWN)
    table["age"] = [_as_float(text) if not _is_unknown(text) else math.nan for text in _text(raw, "age")]
    if "grade" in columns:
        table["grade"] = pd.array(grades, dtype="Int64")
    table["label"] = np.asarray(labels, dtype=np.int64)
    table["exclude_reason"] = raw["exclude_reason"].str.strip() if "exclude_reason" in columns else ""
    table["split"] = raw["split"].str.strip().str.lower() if "split" in columns else ""
    extras = [col for col in raw.columns if col not in table.columns]
    if extras:
        typed = pd.read_csv(path)  # extra columns keep pandas' own type inference
        typed.columns = raw.columns  # the same header, with names stripped as in `raw`
        for col in extras:
            table[col] = typed[col].to_numpy()
    return table


def split_manifest(
    df: pd.DataFrame, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, groups: Sequence | None = None
) -> pd.DataFrame:
    """Assign train/val/test at random within each cancer type x label stratum; excluded rows get "excluded".

    An unknown cancer type is a stratum of its own, so rows are still stratified by label. `groups` (one key per
    row, e.g. patient id or duplicate cluster; see `bonescan.leakage`) keeps rows of one group in one split.

    Per stratum of n cases: val = round(n * r_val) and test = round(n * r_test), rounding halves up, and train
    takes the rest. With equal val and test ratios (the paper's 8:1:1) val and test therefore get identical
    cancer type x label counts, as in the paper's Table 1, whose counts this rule reproduces.
    """
    r_train, r_val, r_test = check_ratios(ratios)
    out = df.copy()
    if "cancer_type" not in out.columns:
        out["cancer_type"] = UNKNOWN
    excluded = _excluded_mask(out)
    if groups is not None and len(set(groups)) < len(out):
        out["split"] = _grouped_split(out, excluded, list(groups), (r_val, r_test), seed)
        return out
    split = np.full(len(out), EXCLUDED, dtype=object)
    rng = np.random.default_rng(seed)
    included = out[~excluded]
    positions = {index: pos for pos, index in enumerate(out.index)}
    for _, stratum in included.groupby(["cancer_type", "label"], sort=True):
        n = len(stratum)
        n_val = min(_round_half_up(n * r_val), n)
        n_test = min(_round_half_up(n * r_test), n - n_val)
        order = rng.permutation(n)
        names = np.array(["train"] * n, dtype=object)
        names[order[:n_val]] = "val"
        names[order[n_val : n_val + n_test]] = "test"
        for index, name in zip(stratum.index, names):
            split[positions[index]] = name
    out["split"] = split
    return out


def table1(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 as a tidy table: one row per cohort x cancer type (plus "total").

    Columns: cohort, cancer_type, n, male, female, sex_unknown, age_mean, age_sd (sample SD, over known ages),
    age_lt_60, age_ge_60, age_unknown, no_metastasis, metastasis, metastasis_rate (fraction). Cancer type
    "unknown" is a column of its own when any row lacks it. Excluded rows are left out; without a split column the
    whole manifest is one cohort named "all".
    """
    kept = with_unknown_demographics(df[~_excluded_mask(df)])
    if "split" in kept.columns and (kept["split"].astype(str) != "").any():
        unknown = sorted(set(kept["split"].astype(str)) - set(SPLITS))
        if unknown:
            raise ManifestError("manifest", f"rows without a train/val/test split: {', '.join(map(repr, unknown))}")
        cohorts = [(name, kept[kept["split"] == name]) for name in SPLITS if (kept["split"] == name).any()]
    else:
        cohorts = [("all", kept)]
    rows = []
    cancers = (*CANCER_TYPES, UNKNOWN) if (kept["cancer_type"] == UNKNOWN).any() else CANCER_TYPES
    for cohort, part in cohorts:
        for cancer in (*cancers, "total"):
            group = part if cancer == "total" else part[part["cancer_type"] == cancer]
            rows.append({"cohort": cohort, "cancer_type": cancer, **_characteristics(group)})
    return pd.DataFrame(rows)


def table1_markdown(df: pd.DataFrame) -> str:
    """Table 1 laid out as in the paper: characteristics as rows, cancer types as columns, one block per cohort."""
    table = table1(df)
    titles = {"train": "Training cohort", "val": "Validating cohort", "test": "Testing cohort", "all": "All cases"}
    cancers = list(dict.fromkeys(table["cancer_type"]))
    names = {"lung": "Lung cancer", "prostate": "Prostate cancer", "breast": "Breast cancer",
             "other": "Other cancers", UNKNOWN: "Cancer type unknown", "total": "Total"}
    header = ["Characteristic", *(names[c] for c in cancers)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    shown = [(label, render) for label, render, column in _MARKDOWN_ROWS if column is None or table[column].any()]
    for cohort, block in table.groupby("cohort", sort=False):
        cells = block.set_index("cancer_type").loc[cancers]
        lines.append(f"| **{titles.get(cohort, cohort)}** |" + " |" * (len(header) - 1))
        for label, render in shown:
            lines.append("| " + " | ".join([label, *(render(cells.loc[c]) for c in cells.index)]) + " |")
    return "\n".join(lines) + "\n"


def with_unknown_demographics(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with cancer_type, sex ("unknown" where missing or blank) and age (NaN) columns always present."""
    out = df.copy()
    for col in ("cancer_type", "sex"):
        values = out[col] if col in out.columns else pd.Series(UNKNOWN, index=out.index)
        out[col] = [UNKNOWN if _is_unknown(v) else str(v) for v in values]
    out["age"] = pd.to_numeric(out["age"], errors="coerce") if "age" in out.columns else math.nan
    return out


def write_table1_csv(df: pd.DataFrame, target: str | Path) -> Path:
    """Write table1(df) to `target` as CSV, atomically."""
    with atomic_path(target) as tmp:
        table1(df).to_csv(tmp, index=False)
    return Path(target)


def write_manifest(df: pd.DataFrame, target: str | Path) -> Path:
    """Write a manifest CSV atomically, with file paths made relative to the target's folder."""
    target = Path(target)
    out = df.copy()
    folder = target.resolve().parent
    for col in PATH_COLUMNS:
        if col in out.columns:
            out[col] = [os.path.relpath(v, folder) if isinstance(v, str) and v else "" for v in out[col]]
    with atomic_path(target) as tmp:
        out.to_csv(tmp, index=False)
    return target


# --- validation -------------------------------------------------------------------------------------------


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ManifestError(path, "no such manifest file")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ManifestError(path, f"not a readable CSV file ({error})") from None
    raw.columns = [str(col).strip() for col in raw.columns]
    return raw.reset_index(drop=True)


def _column_problems(raw: pd.DataFrame) -> list[str]:
    columns = set(raw.columns)
    missing = [col for col in REQUIRED_COLUMNS if col not in columns]
    if "grade" not in columns and "label" not in columns:
        missing.append("grade or label")
    if "path" not in columns and not {"anterior", "posterior"} <= columns:
        missing.append("path or anterior + posterior")
    return [f"missing column: {name}" for name in missing]


def _where(i: int, row: pd.Series) -> str:
    case_id = str(row.get("case_id", "")).strip()
    line = i + 2  # line 1 is the header
    return f"line {line} (case_id {case_id!r})" if case_id else f"line {line}"


def _duplicate_problems(raw: pd.DataFrame) -> list[str]:
    ids = raw["case_id"].str.strip()
    problems = []
    for case_id, group in ids[ids.duplicated(keep=False) & (ids != "")].groupby(ids):
        lines = ", ".join(str(i + 2) for i in group.index)
        problems.append(f"duplicate case_id {case_id!r} on lines {lines}")
    return problems


def _row_problems(row: pd.Series, where: str, columns: set[str]) -> list[str]:
    problems = []
    if "case_id" in columns and not row["case_id"].strip():
        problems.append(f"{where}: empty case_id")
    if "cancer_type" in columns and row["cancer_type"].strip().lower() not in (*CANCER_TYPES, UNKNOWN, ""):
        problems.append(f"{where}: unknown cancer_type {row['cancer_type']!r} "
                        f"(expected {', '.join(CANCER_TYPES)}, or blank for unknown)")
    if "sex" in columns and not _is_unknown(row["sex"]) and row["sex"].strip().upper() not in SEXES:
        problems.append(f"{where}: sex {row['sex']!r} is not M or F (or blank for unknown)")
    if "age" in columns and not _is_unknown(row["age"]):
        age = _as_float(row["age"])
        if age is None or not 0.0 <= age <= 130.0:
            problems.append(f"{where}: age {row['age']!r} is not a number of years between 0 and 130")
    if "split" in columns and row["split"].strip().lower() not in ("", *SPLITS, EXCLUDED):
        problems.append(f"{where}: split {row['split']!r} is not train, val, test or excluded")
    path_given = "path" in columns and row["path"].strip()
    pair_given = all(col in columns and row[col].strip() for col in ("anterior", "posterior"))
    if not path_given and not pair_given and ("path" in columns or {"anterior", "posterior"} <= columns):
        problems.append(f"{where}: neither path nor both anterior and posterior given")
    return problems


def _parse_label(row: pd.Series, where: str, columns: set[str]) -> tuple[int | None, int | None, list[str]]:
    grade = label = None
    problems = []
    grade_text = row["grade"].strip() if "grade" in columns else ""
    label_text = row["label"].strip() if "label" in columns else ""
    if grade_text:
        value = _as_float(grade_text)
        if value is None or value != int(value) or not 0 <= value <= 3:
            problems.append(f"{where}: grade {grade_text!r} is not an integer 0-3")
        else:
            grade = int(value)
    if label_text:
        value = _as_float(label_text)
        if value not in (0.0, 1.0):
            problems.append(f"{where}: label {label_text!r} is not 0 or 1")
        else:
            label = int(value)
    if not grade_text and not label_text and ({"grade", "label"} & columns):
        problems.append(f"{where}: neither grade nor label given")
    if grade is not None:
        from_grade = int(grade >= METASTASIS_GRADE)
        if label is not None and label != from_grade:
            problems.append(f"{where}: label {label} conflicts with grade {grade} (grade >= 2 means label 1)")
        label = from_grade
    return grade, label, problems


def _resolve_paths(values: pd.Series, base: Path) -> list[str | None]:
    resolved: list[str | None] = []
    for value in values:
        text = value.strip()
        resolved.append(str((base / Path(text).expanduser()).resolve()) if text else None)
    return resolved


def _file_problems(resolved: dict[str, list[str | None]], i: int, where: str) -> list[str]:
    problems = []
    for col, values in resolved.items():
        value = values[i]
        if value is not None and not Path(value).is_file():
            problems.append(f"{where}: {col} file not found: {value}")
    return problems


def _manifest_error(path: Path, problems: list[str]) -> ManifestError:
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    error = ManifestError(path, f"{count}: " + "; ".join(problems))
    error.problems = problems  # type: ignore[attr-defined]
    return error


def _is_unknown(value: object) -> bool:
    """Blank, NaN or the word "unknown": a demographic value not given."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return str(value).strip().lower() in ("", UNKNOWN)


def _text(raw: pd.DataFrame, col: str) -> pd.Series:
    return raw[col].str.strip() if col in raw.columns else pd.Series("", index=raw.index)


def _categorical(raw: pd.DataFrame, col: str) -> pd.Series:
    """Stripped text of a demographic column, "unknown" where the cell is blank or the column is missing."""
    return _text(raw, col).map(lambda v: UNKNOWN if _is_unknown(v) else v)


def _as_float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# --- split and Table 1 --------------------------------------------------------------------------------------


def parse_ratios(text: str) -> tuple[float, float, float]:
    """"0.8,0.1,0.1" -> (0.8, 0.1, 0.1): train, val and test fractions as the CLI takes them; ConfigError if not."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError("--ratios", f"{text!r} is not three comma-separated numbers, e.g. 0.8,0.1,0.1") from None
    if len(values) != 3:
        raise ConfigError("--ratios", f"{text!r} must give exactly three ratios: train,val,test")
    return check_ratios(values)


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """The train, val and test fractions as floats; ConfigError unless three non-negative numbers summing to 1."""
    values = tuple(float(r) for r in ratios)
    if len(values) != 3 or any(r < 0 or not math.isfinite(r) for r in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError("--ratios", f"split ratios {ratios!r} must be three non-negative numbers summing to 1")
    return values  # type: ignore[return-value]


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def _excluded_mask(df: pd.DataFrame) -> pd.Series:
    """Rows with an exclude_reason, or already marked split "excluded"."""
    excluded = pd.Series(False, index=df.index)
    if "exclude_reason" in df.columns:
        excluded |= df["exclude_reason"].fillna("").astype(str).str.strip() != ""
    if "split" in df.columns:
        excluded |= df["split"].map(_is_excluded_split).astype(bool)
    return excluded


def _grouped_split(out: pd.DataFrame, excluded: pd.Series, groups: list, ratios: tuple[float, float],
                   seed: int) -> np.ndarray:
    """Split whole groups within strata; a group's stratum is its most frequent cancer type and its highest label.

    Groups are drawn in random order; each joins val, else test, when that brings the split closer to
    round(n * ratio) rows of the stratum, else train.
    """
    r_val, r_test = ratios
    split = np.full(len(out), EXCLUDED, dtype=object)
    members: dict[object, list[int]] = {}
    for pos, (key, is_excluded) in enumerate(zip(groups, excluded.to_numpy())):
        if not is_excluded:
            members.setdefault(key, []).append(pos)
    strata: dict[tuple[str, int], list] = {}
    cancers, labels = out["cancer_type"].astype(str).to_numpy(), out["label"].to_numpy()
    for key, rows in members.items():
        values, counts = np.unique(cancers[rows], return_counts=True)
        stratum = (str(values[np.argmax(counts)]), int(labels[rows].max()))
        strata.setdefault(stratum, []).append(key)
    rng = np.random.default_rng(seed)
    for stratum in sorted(strata):
        keys = sorted(strata[stratum], key=str)
        n = sum(len(members[k]) for k in keys)
        n_val = min(_round_half_up(n * r_val), n)
        n_test = min(_round_half_up(n * r_test), n - n_val)
        filled, target = {"val": 0, "test": 0, "train": 0}, {"val": n_val, "test": n_test, "train": n}
        for k in rng.permutation(len(keys)):
            rows = members[keys[k]]
            # A group joins val (then test) only when that brings the split closer to its target.
            name = next(s for s in ("val", "test", "train") if 2 * filled[s] + len(rows) <= 2 * target[s])
            filled[name] += len(rows)
            split[rows] = name
    return split


def _is_excluded_split(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower() == EXCLUDED


def _characteristics(group: pd.DataFrame) -> dict:
    n = len(group)
    age = group["age"].astype(float)
    known = age.dropna()
    metastasis = int((group["label"] == 1).sum())
    return {
        "n": n,
        "male": int((group["sex"] == "M").sum()),
        "female": int((group["sex"] == "F").sum()),
        "sex_unknown": int((~group["sex"].isin(SEXES)).sum()),
        "age_mean": float(known.mean()) if len(known) else math.nan,
        "age_sd": float(known.std(ddof=1)) if len(known) > 1 else math.nan,
        "age_lt_60": int((known < AGE_THRESHOLD).sum()),
        "age_ge_60": int((known >= AGE_THRESHOLD).sum()),
        "age_unknown": int(age.isna().sum()),
        "no_metastasis": n - metastasis,
        "metastasis": metastasis,
        "metastasis_rate": metastasis / n if n else math.nan,
    }


def _mean_sd(cell: pd.Series) -> str:
    if math.isnan(cell["age_mean"]):
        return "-"
    sd = "-" if math.isnan(cell["age_sd"]) else f"{cell['age_sd']:.1f}"
    return f"{cell['age_mean']:.1f} ± {sd}"


def _rate(cell: pd.Series) -> str:
    return "-" if math.isnan(cell["metastasis_rate"]) else f"{100 * cell['metastasis_rate']:.2f}%"


# (row title, cell renderer, column that must be non-zero somewhere for the row to be shown, or None: always).
_MARKDOWN_ROWS = (
    ("Number", lambda c: str(int(c["n"])), None),
    ("Male", lambda c: str(int(c["male"])), None),
    ("Female", lambda c: str(int(c["female"])), None),
    ("Sex unknown", lambda c: str(int(c["sex_unknown"])), "sex_unknown"),
    ("Age, mean ± SD", _mean_sd, None),
    ("< 60 years", lambda c: str(int(c["age_lt_60"])), None),
    ("≥ 60 years", lambda c: str(int(c["age_ge_60"])), None),
    ("Age unknown", lambda c: str(int(c["age_unknown"])), "age_unknown"),
    ("No metastasis", lambda c: str(int(c["no_metastasis"])), None),
    ("Metastasis", lambda c: str(int(c["metastasis"])), None),
    ("Metastasis rate", _rate, None),
)
