"""From a predictions table (or a trained run) to predictions.csv, metrics.json, operating_points.json, report.html.

Operating points are chosen on the validation split and frozen for the evaluated split (normally test). Without a
validation split they are chosen on the evaluated cases themselves, and the report says so in a warning.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import ConfigError, PredictionsError, RunError
from ..fileio import atomic_path, write_text_atomic
from . import metrics as M
from .calibration import apply_temperature, calibration_summary, fit_temperature
from .operating_points import (
    DECISION_RULE,
    MAIN_POINT,
    POINT_NAMES,
    OperatingPoints,
    choose_operating_points,
)
from .sites import site_section
from .stats import clean_for_json

SCHEMA = "bonescan.evaluate/1"
CLINICAL_COLUMNS = ("cancer_type", "sex", "age", "split", "patient_id", "site", "region", "path", "anterior",
                    "posterior")


@dataclass
class EvaluationResult:
    """What an evaluation wrote and computed."""

    out_dir: Path
    metrics: dict
    operating_points: OperatingPoints
    predictions: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        """The rows written to predictions.csv (same as `predictions`)."""
        return self.predictions


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def read_predictions_csv(path: str | Path) -> pd.DataFrame:
    """Read a predictions CSV (case_id, probability, optional label and clinical columns)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"case_id": str})
    except FileNotFoundError as error:
        raise PredictionsError(path, "no such file") from error
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise PredictionsError(path, f"cannot read as CSV: {error}") from error
    return frame


def normalise_cases(frame: pd.DataFrame, source: str | Path) -> pd.DataFrame:
    """A copy with case_id as stripped text and split in lower case; refuses duplicate case ids."""
    out = frame.copy()
    out["case_id"] = out["case_id"].astype(str).str.strip()
    duplicated = out["case_id"][out["case_id"].duplicated()].unique().tolist()
    if duplicated:
        raise PredictionsError(source, f"duplicate case_id: {', '.join(duplicated[:5])}")
    if "split" in out:
        out["split"] = out["split"].fillna("").astype(str).str.strip().str.lower()
    return out


def check_values(frame: pd.DataFrame, source: str | Path) -> pd.DataFrame:
    """A copy with probability as float in [0, 1] and label (where present) as int 0/1; refuses any other value."""
    out = frame.copy()
    probability = pd.to_numeric(out["probability"], errors="coerce")
    bad = out["case_id"][~probability.between(0.0, 1.0)].tolist()  # NaN (a failed prediction) fails too
    if bad:
        raise PredictionsError(source, f"probability missing or outside [0, 1] for {len(bad)} case(s): "
                                       f"{', '.join(bad[:5])}")
    out["probability"] = probability.astype(np.float64)
    if "label" in out:
        label = pd.to_numeric(out["label"], errors="coerce")
        bad = out["case_id"][~label.isin([0, 1])].tolist()
        if bad:
            raise PredictionsError(source, f"label missing or not 0/1 for {len(bad)} case(s): {', '.join(bad[:5])}")
        out["label"] = label.astype(np.int64)
    return out


def _check_frame(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Validate case_id / label / probability and normalise their types."""
    missing = [c for c in ("case_id", "label", "probability") if c not in frame.columns]
    if missing:
        raise PredictionsError(source, f"missing column(s): {', '.join(missing)} "
                                       "(labels can come from a manifest via --manifest)")
    if frame.empty:
        raise PredictionsError(source, "no cases: the table has a header but no rows")
    return check_values(normalise_cases(frame, source), source)


def join_manifest(predictions: pd.DataFrame, manifest: pd.DataFrame, source: str = "predictions") -> pd.DataFrame:
    """Add label and clinical columns from a loaded manifest; refuse unknown cases and disagreeing labels."""
    if "case_id" not in predictions.columns or "probability" not in predictions.columns:
        raise PredictionsError(source, "needs columns case_id and probability")
    preds = predictions.copy()
    preds["case_id"] = preds["case_id"].astype(str).str.strip()
    man = manifest.copy()
    man["case_id"] = man["case_id"].astype(str)
    unknown = sorted(set(preds["case_id"]) - set(man["case_id"]))
    if unknown:
        raise PredictionsError(source, f"{len(unknown)} case(s) not in the manifest: {', '.join(unknown[:5])}")
    take = ["case_id"] + [c for c in ("label", *CLINICAL_COLUMNS) if c in man.columns]
    merged = preds.merge(man[take], on="case_id", how="left", suffixes=("", "_manifest"))
    if "label_manifest" in merged:
        given = pd.to_numeric(merged["label"], errors="coerce")
        disagree = merged["case_id"][given.notna() & (given != merged["label_manifest"])].tolist()
        if disagree:
            raise PredictionsError(source, f"label differs from the manifest for {len(disagree)} case(s): "
                                           f"{', '.join(disagree[:5])}")
        merged["label"] = merged["label_manifest"]
    for column in [c for c in merged.columns if c.endswith("_manifest")]:
        base = column[: -len("_manifest")]
        merged[base] = merged[column].where(merged[column].notna(), merged.get(base))
        merged = merged.drop(columns=column)
    return merged


def load_predictions(predictions_csv: str | Path, manifest: str | Path | pd.DataFrame | None = None) -> pd.DataFrame:
    """Read a predictions CSV and, if given, join a manifest (path or loaded frame) for labels and clinical columns."""
    frame = read_predictions_csv(predictions_csv)
    if manifest is not None:
        if not isinstance(manifest, pd.DataFrame):
            from ..cohort import load_manifest

            manifest = load_manifest(manifest, check_files=False)
        frame = join_manifest(frame, manifest, str(predictions_csv))
    return _check_frame(frame, str(predictions_csv))


def predictions_from_run(run_dir: str | Path, manifest: pd.DataFrame, split: str = "test",
                         device: str = "cpu") -> pd.DataFrame:
    """Run a trained model on the validation split and on `split`, joined to the manifest's clinical columns.

    device: "cpu" (fp32), "cuda" (bf16 autocast where the GPU has it) or "auto" (the GPU when there is one).
    """
    try:
        from ..device import select_device
        from ..inference import load_run, predict_manifest  # heavy (torch): imported only when a run is evaluated
    except ImportError as error:
        raise RunError(run_dir, f"cannot load bonescan.inference to predict with this run: {error}") from error

    if "split" not in manifest.columns:
        raise PredictionsError("manifest", "has no split column: cannot tell validation from test cases")
    # fp32 on the CPU (where bf16 may be emulated, and exact figures cost little); the GPU's fast precision there.
    on_gpu = select_device(device).type == "cuda"
    loaded = load_run(run_dir, device=device, precision="auto" if on_gpu else "fp32")
    parts = []
    for name in dict.fromkeys(["val", split]):
        if not (manifest["split"].astype(str) == name).any():
            continue
        predicted = predict_manifest(loaded, manifest, name)
        predicted = predicted[["case_id", "probability"]].copy()
        parts.append(predicted)
    if not parts:
        raise PredictionsError("manifest", f"no cases in the val or {split} split")
    frame = join_manifest(pd.concat(parts, ignore_index=True), manifest, f"predictions of {run_dir}")
    return _check_frame(frame, f"predictions of {run_dir}")


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def _split_rows(frame: pd.DataFrame, split: str) -> tuple[pd.DataFrame, pd.DataFrame | None, list[str]]:
    """(evaluated rows, validation rows or None, warnings)."""
    warnings: list[str] = []
    has_split = "split" in frame and (frame["split"] != "").any()
    if split == "all" or not has_split:
        if not has_split and split not in ("all", "test"):
            raise PredictionsError("split", f"asked for split {split!r}, but the predictions carry no split column")
        if has_split and (frame["split"] == "val").any():
            warnings.append("split 'all' evaluates the validation cases too, so they are not used to choose "
                            "operating points")
        return frame, None, warnings
    evaluated = frame[frame["split"] == split]
    if evaluated.empty:
        found = ", ".join(sorted(set(frame["split"]))) or "none"
        raise PredictionsError("split", f"no cases in split {split!r} (splits present: {found})")
    validation = frame[frame["split"] == "val"] if split != "val" else None
    if validation is not None and validation.empty:
        validation = None
    return evaluated, validation, warnings


def _choose_points(evaluated: pd.DataFrame, validation: pd.DataFrame | None,
                   frozen: dict[str, float] | OperatingPoints | None, warnings: list[str]) -> OperatingPoints:
    if isinstance(frozen, OperatingPoints):
        return replace(frozen, thresholds=dict(frozen.thresholds), performance=dict(frozen.performance))
    if frozen is not None:
        missing = [name for name in POINT_NAMES if name not in frozen]
        if missing:
            raise PredictionsError("operating points", f"no threshold given for: {', '.join(missing)}")
        return OperatingPoints({name: float(frozen[name]) for name in POINT_NAMES}, "given", 0, 0,
                               warning="operating points given (frozen earlier), not chosen here")
    if validation is not None:
        labels = validation["label"].to_numpy()
        if 0 < labels.sum() < labels.size:
            return choose_operating_points(labels, validation["probability"].to_numpy(), "val")
        warnings.append("the validation split has a single class; operating points fall back to the evaluated set")
    note = ("operating points were chosen on the evaluated cases themselves (no usable validation split): "
            "their test performance is optimistic")
    warnings.append(note)
    return choose_operating_points(evaluated["label"].to_numpy(), evaluated["probability"].to_numpy(),
                                   "evaluated set", warning=note)


def _threshold_section(evaluated: pd.DataFrame, points: OperatingPoints, confidence: float) -> dict:
    out = {}
    for name in POINT_NAMES:
        rows = M.threshold_table(evaluated, points.thresholds[name], "cancer_type", confidence)
        out[name] = {"threshold": points.thresholds[name], "rows": rows, "chi_square": M.chi_square_across(rows)}
    return out


def _calibration_section(evaluated: pd.DataFrame, validation: pd.DataFrame | None, temperature_scaling: bool,
                         warnings: list[str]) -> dict:
    labels, probs = M.labels_and_scores(evaluated)
    section: dict[str, Any] = {"raw": calibration_summary(labels, probs), "temperature": None, "calibrated": None}
    if temperature_scaling:
        if validation is None:
            warnings.append("temperature scaling skipped: it is fitted on a validation split and there is none")
        else:
            t = fit_temperature(*M.labels_and_scores(validation))
            section["temperature"] = t
            section["calibrated"] = calibration_summary(labels, apply_temperature(probs, t))
    return section


def _errors_at(evaluated: pd.DataFrame, threshold: float, limit: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """False negatives (lowest probability first) and false positives (highest first) at `threshold`."""
    called = evaluated["probability"] >= threshold
    fn = evaluated[(evaluated["label"] == 1) & ~called].sort_values("probability", ascending=True)
    fp = evaluated[(evaluated["label"] == 0) & called].sort_values("probability", ascending=False)
    return fn.head(limit), fp.head(limit)


def _metrics_json(evaluated: pd.DataFrame, split: str, points: OperatingPoints, aucs: list, comparisons: list,
                  thresholds: dict, calibration: dict, warnings: list[str], inputs: dict) -> dict:
    return clean_for_json({
        "schema": SCHEMA,
        "bonescan_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs,
        "evaluated_split": split,
        "n": int(len(evaluated)),
        "n_pos": int(evaluated["label"].sum()),
        "operating_points": points.to_json_dict(),
        "auc": [row.as_dict() for row in aucs],
        "auc_comparisons": [c.as_dict() for c in comparisons],
        "threshold_metrics": {
            name: {
                "threshold": sec["threshold"],
                "rows": [r.as_dict() for r in sec["rows"]],
                "chi_square_across_cancer_types": {k: v.as_dict() for k, v in sec["chi_square"].items()},
            }
            for name, sec in thresholds.items()
        },
        "calibration": {
            "raw": calibration["raw"].as_dict(),
            "temperature": calibration["temperature"],
            "calibrated": calibration["calibrated"].as_dict() if calibration["calibrated"] else None,
        },
        "methods": {
            "auc_ci": "DeLong (fast midrank algorithm of Sun & Xu 2014), normal approximation, truncated to [0, 1]",
            "proportion_ci": "Wilson score interval",
            "chi_square": "Pearson chi-square without continuity correction across cancer types",
            "subgroup_test": "unpaired DeLong: D = (A1 - A2) / sqrt(V1 + V2), t reference with "
                             "Welch-Satterthwaite df as in pROC",
            "decision_rule": DECISION_RULE,
            "age_groups": "< 60 and >= 60 years",
        },
        "warnings": warnings,
    })


def _predictions_out(frame: pd.DataFrame, points: OperatingPoints, temperature: float | None) -> pd.DataFrame:
    keep = [c for c in ("case_id", "split", "label", "probability", "cancer_type", "sex", "age", "patient_id", "site",
                        "region")
            if c in frame.columns]
    out = M.with_groups(frame)[keep + (["age_group"] if "age" in frame else [])].copy()
    if temperature is not None:
        out["calibrated_probability"] = apply_temperature(out["probability"].to_numpy(), temperature)
    for name in POINT_NAMES:
        out[f"positive_{name}"] = (out["probability"] >= points.thresholds[name]).astype(int)
    return out


def evaluate_predictions(
    predictions: pd.DataFrame,
    out_dir: str | Path,
    split: str = "test",
    operating_points: dict[str, float] | OperatingPoints | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    temperature_scaling: bool = False,
    heatmaps_dir: str | Path | None = None,
    max_error_cases: int = 12,
    confidence: float = 0.95,
    inputs: dict | None = None,
    report: bool = True,
    lesions: Any = None,
) -> EvaluationResult:
    """Evaluate predictions (case_id, label, probability [+ clinical columns, split]) and write the report files.

    Writes out_dir/predictions.csv, metrics.json, operating_points.json and (unless `report` is False, e.g. for
    a quick metrics-only pass) report.html, each atomically. `operating_points` freezes given thresholds instead
    of choosing them on the validation split (an OperatingPoints keeps its provenance, a dict is marked "given").
    `lesions` (a `lesion_pipeline.LesionInputs`) adds lesion-level results: metrics.json "lesions" and a report
    section; its bootstrap uses `bootstrap` resamples, or 1000 when that is 0.
    """
    frame = _check_frame(predictions, (inputs or {}).get("predictions", "predictions"))
    out_dir = Path(out_dir)
    source = (inputs or {}).get("predictions")
    if source and (out_dir / "predictions.csv").resolve() == Path(source).resolve():
        # evaluate's own table keeps none of predict's lesion columns (bsi, n_malignant, lesions, ...)
        raise ConfigError(out_dir, f"holds the predictions being evaluated ({source}), and the evaluation writes "
                                   "its own predictions.csv there; give another folder")
    evaluated, validation, warnings = _split_rows(frame, split)
    if evaluated["label"].nunique() < 2:
        warnings.append(f"the evaluated cases are all {'positive' if evaluated['label'].iloc[0] else 'negative'}: "
                        "AUCs are undefined")
    points = _choose_points(evaluated, validation, operating_points, warnings)
    aucs = M.auc_table(evaluated, confidence, bootstrap, seed)
    comparisons = M.subgroup_comparisons(evaluated)
    thresholds = _threshold_section(evaluated, points, confidence)
    calibration = _calibration_section(evaluated, validation, temperature_scaling, warnings)
    if calibration["temperature"] is not None:
        points.temperature = calibration["temperature"]
    inputs = dict(inputs or {})
    inputs.update({"bootstrap": bootstrap, "seed": seed, "confidence": confidence})
    lesion_eval = None
    if lesions is not None:
        from .lesion_pipeline import evaluate_lesions

        lesion_eval = evaluate_lesions(evaluated, lesions, bootstrap or 1000, seed, confidence)
        warnings.extend(lesion_eval.warnings)
    metrics = _metrics_json(evaluated, split, points, aucs, comparisons, thresholds, calibration, warnings, inputs)
    sites = site_section(evaluated, points, confidence)
    if sites is not None:
        metrics["sites"] = clean_for_json(sites.as_dict())
    if lesion_eval is not None:
        metrics["lesions"] = lesion_eval.metrics
    shown = pd.concat([validation, evaluated]) if validation is not None else evaluated
    table = _predictions_out(shown, points, calibration["temperature"])

    html = None
    if report:
        from .report import render_report  # matplotlib and jinja2 only when a report is written

        fn, fp = _errors_at(evaluated, points.thresholds[MAIN_POINT], max_error_cases)
        html = render_report(
            evaluated=evaluated, validation=validation, split=split, points=points, aucs=aucs,
            comparisons=comparisons, thresholds=thresholds, calibration=calibration, metrics=metrics,
            false_negatives=fn, false_positives=fp, heatmaps_dir=heatmaps_dir, sites=sites,
            lesions=lesion_eval,
        )
    files = {
        "predictions": out_dir / "predictions.csv",
        "metrics": out_dir / "metrics.json",
        "operating_points": out_dir / "operating_points.json",
    }
    with atomic_path(files["predictions"]) as tmp:
        table.to_csv(tmp, index=False)
    write_text_atomic(files["metrics"], json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    points.save(files["operating_points"])
    if html is not None:
        files["report"] = write_text_atomic(out_dir / "report.html", html)
    return EvaluationResult(out_dir, metrics, points, table, files)


def evaluate_run(run_dir: str | Path, manifest: str | Path, out_dir: str | Path, split: str = "test",
                 device: str = "cpu", **options: Any) -> EvaluationResult:
    """Predict with a trained run on val and `split`, evaluate, and freeze the operating points into RUN/."""
    from ..cohort import load_manifest

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PredictionsError(run_dir, "run folder not found")
    table = load_manifest(manifest)
    frame = predictions_from_run(run_dir, table, split, device)
    inputs = {"run": str(run_dir), "manifest": str(manifest), "predictions": f"computed from {run_dir}"}
    result = evaluate_predictions(frame, out_dir, split=split, inputs=inputs, **options)
    # Thresholds chosen on the test cases would leak into every later prediction: only val-chosen ones are frozen.
    if result.operating_points.chosen_on == "val":
        result.files["run_operating_points"] = result.operating_points.save(run_dir / "operating_points.json")
    return result


__all__ = [
    "EvaluationResult",
    "evaluate_predictions",
    "evaluate_run",
    "join_manifest",
    "load_predictions",
    "predictions_from_run",
    "read_predictions_csv",
]
