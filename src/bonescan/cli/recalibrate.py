"""`bonescan recalibrate`: a run's temperature and operating points refitted on a small labelled local set."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `recalibrate` to the bonescan app."""

    @app.command("recalibrate")
    def recalibrate(
        run: Path = typer.Option(..., "--run", help="Trained run folder with frozen operating points."),
        manifest: Path = typer.Option(..., "--manifest", help="Labelled local studies (every row is used, "
                                                              "whatever its split; excluded rows are not)."),
        out: Path = typer.Option(..., "--out", help="New run folder: a copy of RUN with the local operating "
                                                    "points and recalibration.json."),
        folds: int = typer.Option(5, "--folds", help="Cross-fitting folds for the honest 'after' figures."),
        precision: float = typer.Option(0.10, "--precision", help="Wanted 95%% CI half-width of sensitivity and "
                                                                  "specificity; smaller local sets are warned."),
        seed: int = typer.Option(0, "--seed", help="Seed of the fold assignment."),
    ) -> None:
        """Fit temperature and operating points to a local site; print sensitivity/specificity before and after."""
        from ..recalibrate import recalibrate_run

        folder, result = recalibrate_run(run, manifest, out, folds=folds, seed=seed, precision=precision)
        typer.echo(f"local set: {result.n} studies ({result.n_pos} metastatic); temperature {result.temperature:.2f}; "
                   f"after = {result.folds}-fold cross-fitted")
        typer.echo(f"{'point':<9} {'before: sensitivity':<30} {'after: sensitivity':<30} "
                   f"{'before: specificity':<30} after: specificity")
        for name, after in result.after.items():
            before = result.before[name]
            typer.echo(f"{name:<9} {before.sensitivity.text():<30} {after.sensitivity.text():<30} "
                       f"{before.specificity.text():<30} {after.specificity.text()}")
        typer.echo(f"Brier {result.calibration_before['brier']:.3f} -> {result.calibration_after['brier']:.3f}; "
                   f"ECE {result.calibration_before['ece']:.3f} -> {result.calibration_after['ece']:.3f}")
        for warning in result.warnings:
            typer.echo(f"warning: {warning}", err=True)
        typer.echo(f"wrote {folder}")
