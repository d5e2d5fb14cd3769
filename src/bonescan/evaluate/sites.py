"""External validation: the same metrics per acquisition site, and how far each site falls from the others.

A network trained at one hospital loses accuracy at another (Pak et al. 2025: AUC 0.969 internal, 0.885
external). When the predictions carry a `site` column (the manifest's; synthetic cohorts write the camera
profile), each site gets its AUC with DeLong CI, its calibration (Brier, ECE) and sensitivity / specificity with
Wilson CIs at every frozen operating point; every pair of sites gets the unpaired DeLong test of its AUC
difference (sites hold different patients, so the groups are independent).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import pandas as pd

from .calibration import Calibration, calibration_summary
from .metrics import SubgroupComparison, labels_and_scores
from .operating_points import POINT_NAMES, OperatingPoints, confusion_counts
from .stats import AucEstimate, Proportion, clean_for_json, delong_auc, delong_unpaired_test

SITE_COLUMN = "site"


@dataclass
class SiteRow:
    """One site's discrimination, calibration and decisions at the frozen operating points."""

    site: str
    auc: AucEstimate
    calibration: Calibration
    decisions: dict[str, dict[str, Proportion]]  # point -> sensitivity / specificity

    def as_dict(self) -> dict:
        return clean_for_json({
            "site": self.site, "auc": self.auc.as_dict(),
            "calibration": {"brier": self.calibration.brier, "ece": self.calibration.ece},
            "decisions": {point: {name: prop.as_dict() for name, prop in values.items()}
                          for point, values in self.decisions.items()},
        })


@dataclass
class SiteSection:
    """Every site's row and the pairwise AUC differences."""

    rows: list[SiteRow]
    comparisons: list[SubgroupComparison]

    def as_dict(self) -> dict:
        return {"rows": [row.as_dict() for row in self.rows],
                "comparisons": [comparison.as_dict() for comparison in self.comparisons]}


def site_levels(frame: pd.DataFrame) -> list[str]:
    """Distinct known sites in `frame`, sorted; blank or missing sites count as 'unknown'."""
    if SITE_COLUMN not in frame:
        return []
    return sorted({_site(v) for v in frame[SITE_COLUMN]})


def site_section(evaluated: pd.DataFrame, points: OperatingPoints, confidence: float = 0.95) -> SiteSection | None:
    """Per-site metrics when the evaluated cases come from more than one site (None otherwise)."""
    levels = site_levels(evaluated)
    if len(levels) < 2:
        return None
    sites = evaluated[SITE_COLUMN].map(_site)
    rows = [_site_row(evaluated[sites == site], site, points, confidence) for site in levels]
    comparisons = []
    for first, second in combinations(levels, 2):
        a, b = evaluated[sites == first], evaluated[sites == second]
        result = delong_unpaired_test(*labels_and_scores(a), *labels_and_scores(b), confidence=confidence)
        comparisons.append(SubgroupComparison(f"site {first} vs {second}", first, second, result))
    return SiteSection(rows, comparisons)


def _site_row(part: pd.DataFrame, site: str, points: OperatingPoints, confidence: float) -> SiteRow:
    labels, scores = labels_and_scores(part)
    decisions = {}
    for name in POINT_NAMES:
        metrics = confusion_counts(labels, scores, points.thresholds[name]).metrics(confidence)
        decisions[name] = {key: metrics[key] for key in ("sensitivity", "specificity")}
    return SiteRow(site, delong_auc(labels, scores, confidence), calibration_summary(labels, scores), decisions)


def _site(value: object) -> str:
    text = "" if value is None or pd.isna(value) else str(value).strip()
    return text or "unknown"
