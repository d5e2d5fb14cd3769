"""Local recalibration: fit a run's probabilities and operating points to a new site's labelled studies.

A department adopting a network trained elsewhere scores a small labelled local set with it, and bonescan
- measures the frozen operating points there as they are ("before": sensitivity and specificity with Wilson CIs,
  Brier and ECE of the probabilities);
- fits temperature scaling and re-chooses every operating point (Youden, rule-out, rule-in) on the local set;
- measures the recalibrated points honestly ("after") by k-fold cross-fitting: each fold's decisions come from a
  temperature and thresholds fitted on the other folds, so no study judges the threshold it helped choose;
- writes a new run folder: a copy of the run whose operating_points.json holds the thresholds and temperature
  fitted on the whole local set, with recalibration.json beside it (before, after, warnings, the local set).

Size rule (warned, not refused): estimating a proportion p to a 95 % CI half-width w needs about
z^2 p (1 - p) / w^2 cases in its denominator (normal approximation of the binomial); p is the operating point's
sensitivity (metastatic studies) or specificity (others) where the run was validated, w is `--precision`.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import norm

from .errors import ConfigError, PredictionsError, RunError
from .evaluate.calibration import apply_temperature, calibration_summary, fit_temperature
from .evaluate.operating_points import POINT_NAMES, OperatingPoints, choose_operating_points, confusion_counts
from .evaluate.stats import Proportion, clean_for_json
from .fileio import write_text_atomic

RECALIBRATION_FILE = "recalibration.json"
OPERATING_POINTS_FILE = "operating_points.json"
MIN_PER_CLASS = 5  # below this, neither a temperature nor a threshold can be fitted, let alone cross-fitted
COPY_IGNORED = ("engines", "*.lock", "*.tmp")  # engines are rebuilt (and re-gated) for the new run


@dataclass
class PointFigures:
    """Sensitivity and specificity of one operating point on the local set."""

    threshold: float | None  # None after cross-fitting: each fold had its own threshold
    sensitivity: Proportion
    specificity: Proportion


@dataclass
class Recalibration:
    """Before and after on the local set, and what is frozen into the new run."""

    n: int
    n_pos: int
    before: dict[str, PointFigures]
    after: dict[str, PointFigures]
    calibration_before: dict
    calibration_after: dict
    temperature: float
    points: OperatingPoints  # fitted on the whole local set
    folds: int
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        def figures(table: dict[str, PointFigures]) -> dict:
            return {name: {"threshold": f.threshold, "sensitivity": f.sensitivity.as_dict(),
                           "specificity": f.specificity.as_dict()} for name, f in table.items()}

        return clean_for_json({
            "n": self.n, "n_pos": self.n_pos, "folds": self.folds, "temperature": self.temperature,
            "before": figures(self.before), "after_cross_fitted": figures(self.after),
            "calibration_before": self.calibration_before, "calibration_after_cross_fitted": self.calibration_after,
            "frozen_thresholds": self.points.thresholds, "warnings": self.warnings,
        })


def required_cases(expected: float, half_width: float, confidence: float = 0.95) -> int:
    """Cases needed to estimate a proportion near `expected` to +/- `half_width` (normal approximation)."""
    z = norm.ppf(0.5 + confidence / 2.0)
    p = min(max(expected, 0.01), 0.99)
    return int(math.ceil(z * z * p * (1.0 - p) / (half_width * half_width)))


def size_warnings(n_pos: int, n_neg: int, expected: dict[str, dict[str, float]], half_width: float,
                  confidence: float = 0.95) -> list[str]:
    """One warning per operating point whose sensitivity or specificity the local set cannot pin down."""
    out = []
    for name in POINT_NAMES:
        for metric, have, who in (("sensitivity", n_pos, "metastatic"), ("specificity", n_neg, "non-metastatic")):
            p = expected.get(name, {}).get(metric, 0.9)
            need = required_cases(p, half_width, confidence)
            if have < need:
                out.append(f"{name}: {have} {who} studies; estimating {metric} near {p:.2f} to +/-{half_width:.2f} "
                           f"needs about {need}")
    return out


def recalibrate_probabilities(labels: np.ndarray, probabilities: np.ndarray, thresholds: dict[str, float],
                              folds: int = 5, seed: int = 0, confidence: float = 0.95) -> Recalibration:
    """Before / cross-fitted after figures and the whole-set fit, from local labels and the run's probabilities."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        raise PredictionsError("local set", f"{n_pos} metastatic and {n_neg} other studies: recalibration needs "
                                            f"at least {MIN_PER_CLASS} of each")
    folds = int(min(folds, n_pos, n_neg))
    if folds < 2:
        raise ConfigError("--folds", "cross-fitting needs at least 2 folds")
    before = {name: _figures(y, p >= t, t, confidence) for name, t in thresholds.items() if name in POINT_NAMES}
    called = {name: np.zeros(y.size, bool) for name in POINT_NAMES}
    calibrated = np.zeros(y.size)
    from sklearn.model_selection import StratifiedKFold

    for fit_rows, held_out in StratifiedKFold(folds, shuffle=True, random_state=seed).split(p, y):
        temperature = fit_temperature(y[fit_rows], p[fit_rows])
        points = choose_operating_points(y[fit_rows], p[fit_rows], "local folds")
        calibrated[held_out] = apply_temperature(p[held_out], temperature)
        for name in POINT_NAMES:
            called[name][held_out] = p[held_out] >= points.thresholds[name]
    after = {name: _figures(y, called[name], None, confidence) for name in POINT_NAMES}
    temperature = fit_temperature(y, p)
    points = choose_operating_points(y, p, f"local recalibration ({y.size} studies)")
    points.temperature = temperature
    return Recalibration(int(y.size), n_pos, before, after, calibration_summary(y, p).as_dict(),
                         calibration_summary(y, calibrated).as_dict(), temperature, points, folds)


def recalibrate_run(run_dir: str | Path, manifest: str | Path, out_dir: str | Path, folds: int = 5, seed: int = 0,
                    precision: float = 0.10, confidence: float = 0.95) -> tuple[Path, Recalibration]:
    """Score the local manifest with RUN, recalibrate, and write the new run folder `out_dir`."""
    from .cohort import load_manifest
    from .inference import predict_manifest

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / OPERATING_POINTS_FILE).is_file():
        raise RunError(run_dir, f"has no {OPERATING_POINTS_FILE}: evaluate it (bonescan evaluate --run) first, "
                                "so there are frozen operating points to recalibrate")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError("--out", f"{out_dir} exists and is not empty; choose a new folder")
    if not 0.0 < precision < 0.5:
        raise ConfigError("--precision", f"must be a CI half-width between 0 and 0.5, got {precision}")
    original = json.loads((run_dir / OPERATING_POINTS_FILE).read_text(encoding="utf-8"))
    table = load_manifest(manifest)
    if "label" not in table or table["label"].isna().any():
        raise PredictionsError(manifest, "recalibration needs a label (or grade) for every study")
    predicted = predict_manifest(run_dir, table[table["exclude_reason"] == ""] if "exclude_reason" in table
                                 else table)
    failures = predicted.attrs.get("failures") or {}
    labelled = predicted.merge(table[["case_id", "label"]], on="case_id", suffixes=("_cache", ""))
    result = recalibrate_probabilities(labelled["label"].to_numpy(), labelled["probability"].to_numpy(),
                                       {name: float(original[name]) for name in POINT_NAMES}, folds, seed, confidence)
    expected = original.get("val_performance") or original.get("performance_where_chosen") or {}
    result.warnings += size_warnings(result.n_pos, result.n - result.n_pos, expected, precision, confidence)
    if failures:
        result.warnings.append(f"{len(failures)} stud(ies) could not be read and were left out: "
                               + ", ".join(list(map(str, failures))[:5]))
    _write_run(run_dir, out_dir, result, manifest)
    return out_dir, result


def _figures(labels: np.ndarray, called: np.ndarray, threshold: float | None, confidence: float) -> PointFigures:
    counts = confusion_counts(labels, called.astype(np.float64), 0.5)
    metrics = counts.metrics(confidence)
    return PointFigures(threshold, metrics["sensitivity"], metrics["specificity"])


def _write_run(run_dir: Path, out_dir: Path, result: Recalibration, manifest: str | Path) -> None:
    """Copy the run, then replace its operating points; the folder appears complete or not at all."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        shutil.copytree(run_dir, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*COPY_IGNORED))
        result.points.save(staging / OPERATING_POINTS_FILE)
        record = {"source_run": str(run_dir.resolve()), "local_manifest": str(Path(manifest).resolve()),
                  **result.as_dict()}
        write_text_atomic(staging / RECALIBRATION_FILE, json.dumps(record, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
