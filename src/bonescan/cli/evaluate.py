"""`bonescan evaluate`: metrics with confidence intervals, frozen operating points and the HTML report;
`bonescan compare`: two models' predictions on the same cases, paired DeLong and McNemar tests."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import ConfigError


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the `evaluate` and `compare` commands to the bonescan app."""

    @app.command("evaluate")
    def evaluate(
        out: Path = typer.Option(..., "--out", help="Folder for predictions.csv, metrics.json, "
                                                    "operating_points.json and report.html."),
        predictions: Path | None = typer.Option(None, "--predictions", help="CSV of case_id, probability "
                                                "(and label, clinical columns, split if no manifest)."),
        run: Path | None = typer.Option(None, "--run", help="Trained run folder: predict the val and evaluated "
                                        "splits, and save the val-chosen operating points into it."),
        manifest: Path | None = typer.Option(None, "--manifest", help="Cohort manifest for labels, cancer type, "
                                             "sex, age, split and image paths."),
        split: str = typer.Option("test", "--split", help="Split to evaluate (test, val, train, or all)."),
        operating_points: Path | None = typer.Option(None, "--operating-points", help="Use the thresholds of "
                                                     "this operating_points.json instead of choosing on val."),
        bootstrap: int = typer.Option(0, "--bootstrap", help="Also give patient-level bootstrap AUC CIs with "
                                      "this many resamples (0: off)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
        temperature_scaling: bool = typer.Option(False, "--temperature-scaling", help="Fit a temperature on the "
                                                 "val split and report calibration after scaling."),
        heatmaps: Path | None = typer.Option(None, "--heatmaps", help="Folder of <case_id>.png heat maps to "
                                             "show in the error analysis."),
        max_errors: int = typer.Option(12, "--max-errors", help="False negatives and false positives shown "
                                       "(each)."),
        report: bool = typer.Option(True, "--report/--no-report", help="Write report.html (figures take a few "
                                    "seconds); metrics.json and the rest are always written."),
        lesions: Path | None = typer.Option(None, "--lesions", help="Folder of <case_id>.json/.npz lesion outputs "
                                            "(default: lesions/ beside --predictions, used when present and the "
                                            "manifest has a truth column)."),
        device: str = typer.Option("auto", "--device", help="With --run: auto (a GPU when there is one, in its "
                                   "fast precision; else the CPU in fp32) | cpu | cuda."),
        hit_tolerance: float = typer.Option(3.0, "--hit-tolerance", help="A hotspot hits a truth metastasis when "
                                            "its centroid is within this many pixels of it."),
    ) -> None:
        """Evaluate predictions: AUCs with DeLong CIs by subgroup, operating points, calibration, HTML report."""
        if (predictions is None) == (run is None):
            raise ConfigError("bonescan evaluate", "give exactly one of --predictions or --run")
        if bootstrap < 0 or max_errors < 0 or hit_tolerance < 0:
            raise ConfigError("--bootstrap/--max-errors/--hit-tolerance", "must not be negative")
        from .. import evaluate as ev  # heavy imports only when the command runs

        options = dict(bootstrap=bootstrap, seed=seed, temperature_scaling=temperature_scaling,
                       heatmaps_dir=heatmaps, max_error_cases=max_errors, report=report)
        if operating_points is not None:
            options["operating_points"] = ev.load_operating_points(operating_points)
        if run is not None and lesions is not None:
            raise ConfigError("--lesions", "goes with --predictions: the lesion outputs of bonescan predict")
        if run is not None:
            if manifest is None:
                raise ConfigError("--run", "needs --manifest to know the cases and their splits")
            result = ev.evaluate_run(run, manifest, out, split=split, device=device, **options)
        else:
            from ..evaluate.lesion_pipeline import find_lesion_inputs

            options["lesions"] = find_lesion_inputs(predictions, manifest, lesions)
            if options["lesions"] is not None:
                options["lesions"].tolerance = hit_tolerance
            frame = ev.load_predictions(predictions, manifest)
            inputs = {"predictions": str(predictions), "manifest": str(manifest) if manifest else None}
            result = ev.evaluate_predictions(frame, out, split=split, inputs=inputs, **options)
        overall = result.metrics["auc"][0]
        points = result.operating_points
        auc = "n/a" if overall["auc"] is None else f"{overall['auc']:.3f}"
        ci = "" if overall["ci_low"] is None else f" (95% CI {overall['ci_low']:.3f}-{overall['ci_high']:.3f})"
        typer.echo(f"{split}: {overall['n']} cases, AUC {auc}{ci}; operating points chosen on {points.chosen_on}")
        lesion = result.metrics.get("lesions", {})
        for row in lesion.get("sensitivity_at_fp", [])[1:2]:  # the 1 FP per study point
            ci = "" if row["ci_low"] is None else f" (95% CI {row['ci_low']:.3f}-{row['ci_high']:.3f})"
            typer.echo(f"lesions: {lesion['n_studies']} studies, {lesion['n_lesions']} metastases; sensitivity "
                       f"{row['sensitivity']:.3f}{ci} at <= {row['fp_per_study']:g} false positive per study")
            for other in lesion.get("sensitivity_at_fp_per_instance", [])[1:2]:
                typer.echo(f"lesions per outlined metastasis ({lesion['n_instances']}, confluent ones apart): "
                           f"sensitivity {other['sensitivity']:.3f} at <= {other['fp_per_study']:g} false positive "
                           "per study")
        patients = lesion.get("per_patient")
        if patients and patients["sensitivity"]["n"] and patients["specificity"]["n"]:
            sens, spec = patients["sensitivity"], patients["specificity"]
            typer.echo(f"lesions per patient (>= 1 malignant hotspot): sensitivity {sens['x']}/{sens['n']}, "
                       f"specificity {spec['x']}/{spec['n']}")
        for site, row in lesion.get("by_site", {}).items():
            found = ("no metastases to find" if row["sensitivity_at_1fp"] is None
                     else f"sensitivity {row['sensitivity_at_1fp']:.3f} at <= 1 false positive per study")
            typer.echo(f"lesions at {site}: {row['n_studies']} studies, {found}, {row['fp_per_study']:.2f} false "
                       "positives per study at the threshold")
        for warning in result.metrics["warnings"]:
            typer.echo(f"warning: {warning}", err=True)
        for name, path in result.files.items():
            typer.echo(f"wrote {path}")
        if run is not None and "run_operating_points" not in result.files:
            typer.echo("note: operating points not saved into the run (no validation split)", err=True)

    @app.command("compare")
    def compare(
        a: Path = typer.Option(..., "--a", help="Predictions CSV of model A (case_id, probability[, label, split])."),
        b: Path = typer.Option(..., "--b", help="Predictions CSV of model B, on the same cases."),
        manifest: Path | None = typer.Option(None, "--manifest", help="Cohort manifest for labels and splits."),
        split: str = typer.Option("test", "--split", help="Split to compare (test, val, train, or all)."),
        threshold: float | None = typer.Option(None, "--threshold", help="Also compare decisions at this "
                                               "probability threshold (McNemar's test on correct/incorrect)."),
        out: Path | None = typer.Option(None, "--out", help="Write the result as JSON."),
    ) -> None:
        """Compare two models' AUCs on the same cases (paired DeLong test): AUC A, AUC B, A - B with 95% CI, z, p."""
        from ..evaluate.compare import compare_prediction_files

        report = compare_prediction_files(a, b, manifest, split=split, threshold=threshold)
        for line in report.lines():
            typer.echo(line)
        if out is not None:
            typer.echo(f"wrote {report.write(out)}")
