"""The demo's lesion stages (`bonescan demo --lesions`): where, not only whether, on the demo's own cohort.

The demo trains a lesion network (`bonescan.lesions`) on the cohort's training split as it trains the classifier.
Here its malignancy threshold is frozen at 1 false positive per validation study (`lesions.threshold`) and every
test study is read with it beside the classifier, so the report gains its lesion section (FROC, sensitivity at 0.5-4
false positives per study, BSI against truth, region Dice) and the example studies their overlays, DICOM SR
measurement groups and Segmentations. The commands `bonescan train --preset cpu-small-lesion`, `bonescan lesions
threshold` and `bonescan predict --lesions` do the same one by one.

Like the demo's other stages, each is skipped on a rerun when its outputs are complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .errors import ConfigError
from .presets import PRESETS

LESION_FP_BUDGET = 1.0  # false-positive hotspots per validation study at the frozen threshold (as in the README)


def check_lesion_preset(name: str) -> None:
    """ConfigError naming --lesion-preset unless `name` is a lesion preset."""
    if name not in PRESETS or PRESETS[name].task != "lesion":
        raise ConfigError("--lesion-preset", f"{name!r} is not a lesion preset; use cpu-small-lesion "
                                             "(or tiny-lesion for a quick look)")


def freeze_threshold(run_dir: Path, manifest: pd.DataFrame) -> dict:
    """The run's malignancy threshold record, chosen on the validation split unless it was already, on hotspots
    found as they are now (`lesions.foci`)."""
    from .lesions.foci import RULE as HOTSPOT_RULE
    from .lesions.threshold import THRESHOLD_FILE, freeze_malignancy_threshold

    frozen = run_dir / THRESHOLD_FILE
    if frozen.is_file():
        record = json.loads(frozen.read_text())
        if record.get("hotspots") == HOTSPOT_RULE:
            return record
    return freeze_malignancy_threshold(run_dir, manifest, split="val", fp_per_study=LESION_FP_BUDGET)


def read_test_lesions(classifier_run: Path, lesion_run: Path, manifest_path: Path, out: Path):
    """Predict the test split with both runs into `out` (predictions.csv, hotspots.csv, lesions/), unless it was
    after the run's threshold was frozen; the `evaluate.lesion_pipeline.LesionInputs` that the report's lesion
    section reads."""
    from .evaluate.lesion_pipeline import find_lesion_inputs
    from .lesions.threshold import THRESHOLD_FILE
    from .predict import predict_studies

    predictions = out / "predictions.csv"  # written last, after every study's lesion files
    threshold = lesion_run / THRESHOLD_FILE
    if not predictions.is_file() or predictions.stat().st_mtime_ns < threshold.stat().st_mtime_ns:
        report = predict_studies(classifier_run, manifest=manifest_path, split="test", lesions=lesion_run,
                                 lesions_out=out, workers=0)
        # A study that fails is listed in predictions.csv and left out of the lesion metrics, with a warning.
        report.write(predictions)
        if report.unwritten:  # hotspots.csv, which the evaluation reads
            raise report.unwritten[0]
    return find_lesion_inputs(predictions, manifest_path)


def lesion_summary(train_result, threshold: dict, metrics: dict, out: Path) -> dict:
    """The lesion figures of the demo's summary.json from the evaluation's metrics["lesions"]."""
    at_one = next((row for row in metrics.get("sensitivity_at_fp", []) if row["fp_per_study"] == 1.0), {})
    return {
        "best_val_score": train_result.best_val_auc,
        "best_epoch": train_result.best_epoch,
        "malignancy_threshold": threshold["malignancy_threshold"],
        "n_studies": metrics.get("n_studies"),
        "n_lesions": metrics.get("n_lesions"),
        "sensitivity_at_1_fp": at_one,
        "bsi": metrics.get("bsi", {}),
        "region_dice_mean": metrics.get("dice", {}).get("mean"),
        "test_lesions": str(out),
    }


def describe(summary: dict) -> str:
    """One line of the lesion figures for the user."""
    at_one, bsi = summary["sensitivity_at_1_fp"], summary["bsi"]

    def figure(value, digits: int = 2) -> str:
        return "undefined" if value is None else f"{value:.{digits}f}"

    sensitivity = (f"sensitivity {figure(at_one.get('sensitivity'))} (95 % CI {figure(at_one.get('ci_low'))}-"
                   f"{figure(at_one.get('ci_high'))}) at 1 false positive per study" if at_one else "no FROC")
    return (f"lesions: {summary['n_lesions'] or 0} metastases in {summary['n_studies'] or 0} test studies, "
            f"{sensitivity}; BSI against truth r {figure(bsi.get('pearson_r'), 3)}; skeletal-region Dice "
            f"{figure(summary['region_dice_mean'], 3)}; overlays and hotspots.csv in {summary['test_lesions']}")
