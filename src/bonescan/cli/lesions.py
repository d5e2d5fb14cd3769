"""`bonescan lesions threshold`: freeze a lesion run's malignancy threshold at a false-positive budget."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the `lesions` group to the bonescan app."""
    group = typer.Typer(help="Settings of a trained lesion run.", no_args_is_help=True)
    app.add_typer(group, name="lesions")

    @group.command("threshold")
    def threshold(
        run: Path = typer.Option(..., "--run", help="Lesion run (a lesion preset's RUN)."),
        manifest: Path = typer.Option(..., "--manifest", help="Manifest with a split and a truth column."),
        split: str = typer.Option("val", "--split", help="Split to choose on (never the one you report)."),
        fp_per_study: float = typer.Option(1.0, "--fp-per-study", help="False-positive hotspots per study allowed."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    ) -> None:
        """Choose the malignancy threshold on SPLIT at a false-positive budget; write RUN/malignancy_threshold.json."""
        from ..cohort import load_manifest
        from ..lesions.threshold import freeze_malignancy_threshold

        record = freeze_malignancy_threshold(run, load_manifest(manifest), split, fp_per_study, device)
        typer.echo(f"malignancy threshold {record['malignancy_threshold']:.4f}: on {record['n_studies']} {split} "
                   f"studies ({record['n_lesions']} metastases) sensitivity {record['sensitivity_there']:.3f} at "
                   f"{record['fp_per_study_there']:.2f} false positives per study (budget {fp_per_study:g})")
        typer.echo(f"wrote {Path(run) / 'malignancy_threshold.json'}")
