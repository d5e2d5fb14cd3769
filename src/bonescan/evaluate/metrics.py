"""Subgroup tables over a predictions frame (columns label, probability, cancer_type, sex, age).

AUCs with DeLong CIs overall and per cancer type, sex, age group and cancer type x age group; threshold metrics
with Wilson CIs; the paper's chi-square comparison across cancer types; DeLong tests between independent
subgroups; optional patient-level bootstrap CIs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from .operating_points import confusion_counts
from .stats import (
    AucComparison,
    AucEstimate,
    BootstrapInterval,
    ChiSquareResult,
    bootstrap_ci,
    chi_square_homogeneity,
    delong_auc,
    delong_unpaired_test,
)

CANCER_ORDER = ("lung", "prostate", "breast", "other")
SEX_ORDER = ("M", "F")
AGE_CUTOFF = 60.0
AGE_GROUPS = ("<60", ">=60")
THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
UNKNOWN = "unknown"  # a demographic not given: shown as its own level, left out of tests between subgroups


def age_group(age: float | None) -> str:
    """'<60', '>=60' or 'unknown' (the paper's split at 60 years)."""
    if age is None or pd.isna(age):
        return "unknown"
    return "<60" if float(age) < AGE_CUTOFF else ">=60"


def with_groups(frame: pd.DataFrame) -> pd.DataFrame:
    """Copy of `frame` with age_group and cancer_age (e.g. 'prostate <60') columns where the inputs exist."""
    out = frame.copy()
    if "age" in out:
        out["age_group"] = [age_group(a) for a in out["age"]]
    for col in ("cancer_type", "sex", "region"):
        if col in out:
            out[col] = [UNKNOWN if pd.isna(v) or str(v) in ("", UNKNOWN) else str(v) for v in out[col]]
    if "cancer_type" in out and "age_group" in out:
        out["cancer_age"] = [f"{c} {g}" for c, g in zip(out["cancer_type"], out["age_group"])]
    return out


def ordered_levels(values: Iterable, preferred: Iterable[str] = ()) -> list[str]:
    """Distinct values, `preferred` ones first in their order, then the rest sorted, "unknown" (blank) last."""
    values = list(values)
    present = {str(v) for v in values if not pd.isna(v) and str(v) not in (UNKNOWN, "")}
    first = [p for p in preferred if p in present]
    unknown = [UNKNOWN] if any(pd.isna(v) or str(v) in (UNKNOWN, "") for v in values) else []
    return first + sorted(present - set(first)) + unknown


def _cancer_age_levels(frame: pd.DataFrame) -> list[str]:
    levels = []
    for cancer in ordered_levels(frame["cancer_type"], CANCER_ORDER):
        for group in AGE_GROUPS:
            level = f"{cancer} {group}"
            if (frame["cancer_age"] == level).any():
                levels.append(level)
    return levels


def subgroup_dimensions(frame: pd.DataFrame) -> dict[str, list[str]]:
    """The subgroup dimensions available in `frame` (after with_groups) and their levels, in display order."""
    dims: dict[str, list[str]] = {}
    if "cancer_type" in frame:
        dims["cancer_type"] = ordered_levels(frame["cancer_type"], CANCER_ORDER)
    if "sex" in frame:
        dims["sex"] = ordered_levels(frame["sex"], SEX_ORDER)
    if "age_group" in frame:
        dims["age_group"] = ordered_levels(frame["age_group"], AGE_GROUPS)
    if "cancer_age" in frame:
        dims["cancer_age"] = _cancer_age_levels(frame)
    if "region" in frame:  # region crops of one body part each (e.g. chestR); whole-body rows are "unknown"
        dims["region"] = ordered_levels(frame["region"])
    return dims


@dataclass
class AucRow:
    """One line of the AUC table."""

    dimension: str  # overall, cancer_type, sex, age_group, cancer_age, region
    group: str
    estimate: AucEstimate
    bootstrap: BootstrapInterval | None = None

    def as_dict(self) -> dict:
        """JSON-ready dict."""
        out = {"dimension": self.dimension, "group": self.group, **self.estimate.as_dict()}
        if self.bootstrap is not None:
            out["bootstrap"] = self.bootstrap.as_dict()
        return out


def _subset(frame: pd.DataFrame, dimension: str, group: str) -> pd.DataFrame:
    return frame if dimension == "overall" else frame[frame[dimension].astype(str) == group]


def auc_table(frame: pd.DataFrame, confidence: float = 0.95, bootstrap: int = 0, seed: int = 0) -> list[AucRow]:
    """AUC with DeLong CI overall and per subgroup; with `bootstrap` > 0 also patient-level percentile CIs."""
    frame = with_groups(frame)
    cells = [("overall", "all")] + [(d, g) for d, levels in subgroup_dimensions(frame).items() for g in levels]
    rows = []
    for dimension, group in cells:
        part = _subset(frame, dimension, group)
        estimate = delong_auc(part["label"].to_numpy(), part["probability"].to_numpy(), confidence)
        boot = None
        if bootstrap > 0:
            patients = part["patient_id"].to_numpy() if "patient_id" in part else None
            boot = bootstrap_ci(part["label"].to_numpy(), part["probability"].to_numpy(), patient_ids=patients,
                                n_boot=bootstrap, seed=seed, confidence=confidence)
        rows.append(AucRow(dimension, group, estimate, boot))
    return rows


@dataclass
class SubgroupComparison:
    """An unpaired DeLong test between two independent subgroups."""

    label: str
    first: str
    second: str
    result: AucComparison

    def as_dict(self) -> dict:
        """JSON-ready dict."""
        return {"comparison": self.label, "first": self.first, "second": self.second, **self.result.as_dict()}


def _compare(frame: pd.DataFrame, column: str, first: str, second: str, label: str) -> SubgroupComparison:
    a = frame[frame[column].astype(str) == first]
    b = frame[frame[column].astype(str) == second]
    result = delong_unpaired_test(a["label"].to_numpy(), a["probability"].to_numpy(),
                                  b["label"].to_numpy(), b["probability"].to_numpy())
    return SubgroupComparison(label, first, second, result)


def subgroup_comparisons(frame: pd.DataFrame) -> list[SubgroupComparison]:
    """Age < 60 vs >= 60 and male vs female, overall and within each cancer type where both groups have cases."""
    frame = with_groups(frame)
    dims = subgroup_dimensions(frame)
    scopes: list[tuple[str, pd.DataFrame]] = [("all", frame)]
    if "cancer_type" in dims:
        scopes += [(c, frame[frame["cancer_type"].astype(str) == c]) for c in dims["cancer_type"]]
    out = []
    for scope, part in scopes:
        if "age_group" in part and set(AGE_GROUPS) <= set(part["age_group"]):
            out.append(_compare(part, "age_group", "<60", ">=60", f"{scope}: age <60 vs >=60"))
        if "sex" in part and set(SEX_ORDER) <= set(part["sex"].astype(str)):
            out.append(_compare(part, "sex", "M", "F", f"{scope}: male vs female"))
    return out


@dataclass
class ThresholdRow:
    """Sensitivity, specificity, accuracy, PPV, NPV of one subgroup at one threshold."""

    dimension: str
    group: str
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    metrics: dict  # name -> Proportion

    def as_dict(self) -> dict:
        """JSON-ready dict."""
        return {"dimension": self.dimension, "group": self.group, "threshold": self.threshold,
                "tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn,
                **{name: prop.as_dict() for name, prop in self.metrics.items()}}


def threshold_table(frame: pd.DataFrame, threshold: float, dimension: str = "cancer_type",
                    confidence: float = 0.95) -> list[ThresholdRow]:
    """Threshold metrics with Wilson CIs overall and per level of `dimension` (if present)."""
    frame = with_groups(frame)
    cells = [("overall", "all")]
    if dimension in frame:
        cells += [(dimension, g) for g in subgroup_dimensions(frame).get(dimension, [])]
    rows = []
    for dim, group in cells:
        part = _subset(frame, dim, group)
        counts = confusion_counts(part["label"].to_numpy(), part["probability"].to_numpy(), threshold)
        rows.append(ThresholdRow(dim, group, float(threshold), counts.tp, counts.fp, counts.tn, counts.fn,
                                 counts.metrics(confidence)))
    return rows


def chi_square_across(rows: list[ThresholdRow]) -> dict[str, ChiSquareResult]:
    """The paper's chi-square test of accuracy, sensitivity, specificity, PPV and NPV across subgroups."""
    groups = [r for r in rows if r.dimension != "overall" and r.group != UNKNOWN]
    names = [r.group for r in groups]
    return {
        metric: chi_square_homogeneity(names, [r.metrics[metric].x for r in groups],
                                       [r.metrics[metric].n for r in groups])
        for metric in THRESHOLD_METRICS
    }


def labels_and_scores(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The label and probability columns as arrays."""
    return frame["label"].to_numpy(dtype=np.int8), frame["probability"].to_numpy(dtype=np.float64)
