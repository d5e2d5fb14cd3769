"""Evaluation of bone-metastasis predictions: metrics with DeLong and Wilson CIs, operating points, HTML report.

The statistics (`stats`, `operating_points`, `calibration`) import quickly; the report pipeline (matplotlib,
jinja2) loads on first use of `evaluate_predictions` / `evaluate_run` / `load_predictions`.
"""

from __future__ import annotations

from typing import Any

from .operating_points import (
    MAIN_POINT,
    POINT_NAMES,
    ConfusionCounts,
    OperatingPoints,
    choose_operating_points,
    confusion_counts,
    load_operating_points,
)
from .stats import (
    AucComparison,
    AucEstimate,
    Proportion,
    bootstrap_ci,
    chi_square_homogeneity,
    compare_models,
    delong_auc,
    delong_paired_test,
    delong_unpaired_test,
    mcnemar_test,
    wilson_interval,
)

_PIPELINE_NAMES = ("EvaluationResult", "evaluate_predictions", "evaluate_run", "load_predictions",
                   "predictions_from_run")


def __getattr__(name: str) -> Any:
    # The pipeline pulls in matplotlib; load it only when asked for.
    if name in _PIPELINE_NAMES:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MAIN_POINT",
    "POINT_NAMES",
    "AucComparison",
    "AucEstimate",
    "ConfusionCounts",
    "OperatingPoints",
    "Proportion",
    "bootstrap_ci",
    "chi_square_homogeneity",
    "choose_operating_points",
    "compare_models",
    "confusion_counts",
    "delong_auc",
    "delong_paired_test",
    "delong_unpaired_test",
    "load_operating_points",
    "mcnemar_test",
    "wilson_interval",
    *_PIPELINE_NAMES,
]
