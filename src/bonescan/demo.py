"""The whole system on a synthetic cohort: generate, split, Table 1, train, evaluate, predict, summarise; with
`lesions`, also a lesion network and its hotspots, regions and BSI (`demo_lesions`).

Each stage leaves its outputs in one folder under `out` and is skipped on a rerun when they are complete
(`fresh=True` starts over). The demo drives the same library functions as the individual commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

from .demo_lesions import describe as describe_lesions
from .demo_lesions import freeze_threshold, lesion_summary, read_test_lesions
from .errors import ConfigError
from .fileio import write_text_atomic


@dataclass(frozen=True)
class DemoSettings:
    """What the demo generates and trains. The defaults run in minutes on a 2-core laptop CPU."""

    cases: int = 1000
    # train:val:test. Not the paper's 8:1:1: a 400-study test split gives confidence intervals a few hundredths
    # wide and subgroups (prostate by age) large enough to compare, for the training time of 500 studies.
    ratios: tuple[float, float, float] = (0.5, 0.1, 0.4)
    seed: int = 0
    # `demo`: the paper's picture (test AUC near its 0.93-0.97, older prostate patients hardest); `easy` for tests.
    difficulty: str = "demo"
    site: str = "generic"  # camera and site profile of the cohort (bonescan.synth.sites)
    preset: str = "cpu-small"
    # cpu-small's 6 epochs would take the demo past 5 minutes on 2 cores; 4 reach test AUC 0.95. None: the preset's.
    epochs: int | None = 4
    workers: int = 0  # 0: one per CPU core
    predict_examples: int = 4  # correctly read studies written with heat maps and DICOM results
    error_examples: int = 6  # and the most confident errors of the test split (the report lists every error)
    pretrained: str | None = None
    # `--lesions`: also a lesion network, its hotspots, regions and BSI in the report and the example results.
    lesions: bool = False
    lesion_preset: str = "cpu-small-lesion"
    # On the demo's 500 training studies 8 epochs were too few (sensitivity 0.18 at 1 false positive per study, BSI
    # r 0.35); 24 reach 0.82-0.83 and r 0.95 in 7.3-8.2 minutes on the 2-core Zen 4 EPYC (README). None: the preset's.
    lesion_epochs: int | None = 24

    def __post_init__(self) -> None:
        from .cohort import check_ratios
        from .demo_lesions import check_lesion_preset

        ratios = check_ratios(self.ratios)
        if min(ratios[:2]) * self.cases < 2 or (ratios[2] > 0 and ratios[2] * self.cases < 2):
            raise ConfigError("--cases", f"{self.cases} studies split {':'.join(f'{r:g}' for r in ratios)} leave a "
                              "split with fewer than 2 studies")
        if self.lesions:
            check_lesion_preset(self.lesion_preset)


@dataclass
class DemoResult:
    """Where everything went and how long each stage took."""

    out: Path
    report: Path
    summary: dict
    stage_seconds: dict[str, float] = field(default_factory=dict)


Say = Callable[[str], None]


def run_demo(out: str | Path, settings: DemoSettings = DemoSettings(), fresh: bool = False,
             say: Say = print, progress: bool = True) -> DemoResult:
    """Run every stage on a synthetic cohort in `out`; reuse finished stages unless `fresh`."""
    out = Path(out)
    if fresh and out.exists():
        _remove_demo_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    timer = _StageTimer(say)

    with timer("cohort"):
        manifest_path = _make_cohort(out / "cohort", settings, say)
    with timer("table 1"):
        manifest = _table1(manifest_path, out, say)
    with timer("training"):
        train_result = _train(manifest, manifest_path, out / "run", settings.preset, settings.epochs, settings.seed,
                              progress, settings.pretrained)
        say(f"best validation AUC {train_result.best_val_auc:.3f} at epoch {train_result.best_epoch} "
            f"of {train_result.epochs_run}")
    with timer("evaluation"):
        evaluation, frame = _evaluate(out / "run", manifest, out / "evaluation")
    lesion_run = lesion_inputs = None
    if settings.lesions:
        lesion_run = out / "lesion_run"
        with timer("lesion network"):
            lesion_train = _train(manifest, manifest_path, lesion_run, settings.lesion_preset, settings.lesion_epochs,
                                  settings.seed, progress)
            threshold = freeze_threshold(lesion_run, manifest)
            say(f"best validation score {lesion_train.best_val_auc:.3f} at epoch {lesion_train.best_epoch} of "
                f"{lesion_train.epochs_run}; malignancy threshold {threshold['malignancy_threshold']:.3f} "
                f"({threshold['fp_per_study_there']:.2f} false positives per validation study)")
        with timer("lesions of the test split"):
            lesion_inputs = read_test_lesions(out / "run", lesion_run, manifest_path, out / "test_lesions")
    with timer("heat maps and DICOM"):
        prediction = _predict_examples(out / "run", manifest, evaluation, out / "predict", settings, lesion_run)
        # Re-render the report now that heat maps of the error cases exist.
        evaluation = _final_report(frame, evaluation, out / "evaluation", out / "predict" / "heatmaps",
                                   lesion_inputs)

    summary = _summary(out, settings, train_result, evaluation, prediction, timer.seconds)
    if settings.lesions:
        summary["lesions"] = lesion_summary(lesion_train, threshold, evaluation.metrics.get("lesions", {}),
                                            out / "test_lesions")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, say)
    return DemoResult(out, evaluation.files["report"], summary, dict(timer.seconds))


class _StageTimer:
    """Announces each stage and records its wall time."""

    def __init__(self, say: Say):
        self.say = say
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.say(f"== {name}")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 1)
        self.say(f"   {name}: {self.seconds[name]:.1f} s")


def _remove_demo_folder(out: Path) -> None:
    # Only a folder that looks like a demo is removed, never an arbitrary one named by mistake.
    known = {"cohort", "run", "evaluation", "predict", "summary.json", "table1.csv", "cache", "lesion_run",
             "test_lesions"}
    unknown = [p.name for p in out.iterdir() if p.name not in known]
    if unknown:
        raise ConfigError(out, f"--fresh would delete files that the demo did not write: {', '.join(sorted(unknown)[:5])}")
    shutil.rmtree(out)


def _make_cohort(folder: Path, settings: DemoSettings, say: Say) -> Path:
    from .synth import generate_cohort

    workers = settings.workers or os.cpu_count() or 1
    result = generate_cohort(folder, settings.cases, settings.seed, settings.difficulty, workers,
                             site=settings.site, ratios=settings.ratios)
    say(f"{settings.cases} synthetic studies ({settings.difficulty}, site {settings.site}) in {folder}: "
        f"{result.written} written, {result.skipped} reused")
    return result.manifest


def _table1(manifest_path: Path, out: Path, say: Say) -> pd.DataFrame:
    from .cohort import load_manifest, table1_markdown, write_table1_csv

    manifest = load_manifest(manifest_path)
    say(table1_markdown(manifest))
    write_table1_csv(manifest, out / "table1.csv")
    return manifest


def _train(manifest: pd.DataFrame, manifest_path: Path, run_dir: Path, preset: str, epochs: int | None, seed: int,
           progress: bool, pretrained: str | None = None):
    """Train a run of `preset` (the classifier, or with `--lesions` the lesion network) in `run_dir`."""
    from .presets import preset_config
    from .train import RunPaths, train

    overrides = {"seed": seed}
    if epochs is not None:
        overrides["epochs"] = epochs
    if pretrained is not None:
        overrides["pretrained"] = pretrained
    config = preset_config(preset, **overrides)
    resume = RunPaths(run_dir).last.is_file()  # a finished run resumes to itself without training again
    return train(manifest, run_dir, config, resume=resume, cache_dir=run_dir.parent / "cache",
                 manifest_path=manifest_path, progress=progress)


def _evaluate(run_dir: Path, manifest: pd.DataFrame, out: Path):
    from .evaluate import evaluate_predictions, predictions_from_run

    frame = predictions_from_run(run_dir, manifest, "test", device="auto")
    result = evaluate_predictions(frame, out, split="test", report=False,
                                  inputs={"run": str(run_dir), "predictions": f"computed from {run_dir}"})
    # Frozen on the validation split, so `bonescan predict --run` uses the same thresholds.
    if result.operating_points.chosen_on == "val":
        result.operating_points.save(run_dir / "operating_points.json")
    return result, frame


def _predict_examples(run_dir: Path, manifest: pd.DataFrame, evaluation, out: Path, settings: DemoSettings,
                      lesion_run: Path | None = None):
    """Heat maps and DICOM results (with a lesion run, also hotspots, regions and BSI) for the test split's most
    confident errors plus a few correct studies."""
    from .cohort import write_manifest
    from .predict import predict_studies

    table = evaluation.predictions
    test = table[table["split"] == "test"] if "split" in table.columns else table
    threshold = evaluation.operating_points.thresholds["youden"]
    wrong = test[test["label"] != (test["probability"] >= threshold)]
    confident = (wrong["probability"] - threshold).abs().sort_values(ascending=False)
    right = test.drop(wrong.index).sort_values("probability", ascending=False)
    half = settings.predict_examples // 2
    chosen = set(wrong.loc[confident.index[:settings.error_examples], "case_id"]) | \
        set(right["case_id"].head(half)) | set(right["case_id"].tail(settings.predict_examples - half))
    # The chosen studies as a manifest of their own: results are then named by case id, which the report uses.
    examples = write_manifest(manifest[manifest["case_id"].isin(chosen)], out / "examples.csv")
    report = predict_studies(run_dir, manifest=examples, heatmap_dir=out / "heatmaps", dicom_dir=out / "dicom",
                             workers=0, lesions=lesion_run, lesions_out=out)
    report.write(out / "predictions.csv")
    if report.unwritten:  # hotspots.csv, which the report links to
        raise report.unwritten[0]
    return report


def _final_report(frame: pd.DataFrame, evaluation, out: Path, heatmaps: Path, lesions=None):
    from .evaluate import evaluate_predictions

    return evaluate_predictions(frame, out, split="test", heatmaps_dir=heatmaps,
                                operating_points=evaluation.operating_points,
                                inputs=evaluation.metrics.get("inputs"), lesions=lesions)


def _summary(out: Path, settings: DemoSettings, train_result, evaluation, prediction, seconds: dict) -> dict:
    overall = next((row for row in evaluation.metrics.get("auc", []) if row["dimension"] == "overall"), {})
    return {
        "settings": asdict(settings),
        "best_val_auc": train_result.best_val_auc,
        "best_epoch": train_result.best_epoch,
        "test_auc": overall,
        "report": str(evaluation.files["report"]),
        "predictions_with_heatmaps": str(out / "predict" / "predictions.csv"),
        "dicom_results": str(out / "predict" / "dicom"),
        "studies_predicted": len(prediction.studies),
        "studies_failed": len(prediction.failures),
        "stage_seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 1),
    }


def _print_summary(summary: dict, say: Say) -> None:
    auc = summary["test_auc"]
    if auc.get("auc") is not None:
        ci = (f"95 % CI {auc['ci_low']:.3f}-{auc['ci_high']:.3f}, DeLong" if auc.get("ci_low") is not None
              else f"no CI: {auc.get('reason') or 'too few cases'}")
        say(f"test AUC {auc['auc']:.3f} ({ci}; n = {auc['n']}, {auc['n_pos']} with metastasis)")
    else:
        say(f"test AUC undefined: {auc.get('reason', 'no evaluated cases')}")
    if "lesions" in summary:
        say(describe_lesions(summary["lesions"]))
    stages = ", ".join(f"{name} {sec:.0f} s" for name, sec in summary["stage_seconds"].items())
    say(f"time: {stages}; total {summary['total_seconds']:.0f} s")
    say(f"report: {summary['report']}")
