"""`bonescan lesions threshold`: freeze a lesion run's malignancy threshold at a false-positive budget;
`bonescan lesions rescorer`: fit its hotspot rescorer, then freeze the threshold again."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from .counter import done_counter


# One option for both commands: the threshold and the rescorer must be chosen on the same maps.
FLIP_AVERAGE = typer.Option(
    None, "--flip-average/--no-flip-average",
    help="Average the network's maps with those of the mirrored study (twice the network's time; kept in the run "
         "and used wherever it is applied). Default: as the run has it.")
PRECISION = typer.Option(
    "auto", "--precision",
    help="auto | fp32 | bf16: the precision of the maps to choose on (recorded; auto: bf16 where this CPU runs it "
         "faster). Choose on the maps of the machines that will use the run.")


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
        flip_average: bool | None = FLIP_AVERAGE,
        precision: str = PRECISION,
    ) -> None:
        """Choose the malignancy threshold on SPLIT at a false-positive budget; write RUN/malignancy_threshold.json."""
        from ..cohort import load_manifest
        from ..lesions.threshold import freeze_malignancy_threshold

        record = freeze_malignancy_threshold(run, load_manifest(manifest), split, fp_per_study, device, flip_average,
                                             precision)
        typer.echo(f"malignancy threshold {record['malignancy_threshold']:.4f}: on {record['n_studies']} {split} "
                   f"studies ({record['n_lesions']} metastases) sensitivity {record['sensitivity_there']:.3f} at "
                   f"{record['fp_per_study_there']:.2f} false positives per study (budget {fp_per_study:g}); "
                   f"{record['precision']} maps{', averaged with the mirrored study' * record['flip_average']}")
        typer.echo(f"wrote {Path(run) / 'malignancy_threshold.json'}")

    @group.command("rescorer")
    def rescorer(
        run: Path = typer.Option(..., "--run", help="Lesion run (a lesion preset's RUN)."),
        manifest: Path = typer.Option(..., "--manifest", help="Studies with lesion truth the network did not "
                                                               "train on (e.g. a fresh `bonescan synth` seed)."),
        split: str | None = typer.Option(None, "--split", help="Only this split of --manifest. Default: all rows."),
        threshold_manifest: Path | None = typer.Option(None, "--threshold-manifest",
                                                       help="Manifest to freeze the threshold on (default: "
                                                            "--manifest)."),
        threshold_split: str = typer.Option("val", "--threshold-split", help="Split to freeze the threshold on."),
        fp_per_study: float = typer.Option(1.0, "--fp-per-study", help="False-positive hotspots per study allowed."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        flip_average: bool | None = FLIP_AVERAGE,
        precision: str = PRECISION,
    ) -> None:
        """Fit the run's hotspot rescorer (count candidates beside the network's, rescored by gradient boosting;
        RUN/hotspot_rescorer.skops), then freeze the malignancy threshold again on its scale."""
        from ..cohort import load_manifest
        from ..lesions.rescore_fit import fit_hotspot_rescorer
        from ..lesions.threshold import freeze_malignancy_threshold

        if threshold_manifest in (None, manifest) and split in (None, threshold_split):
            typer.echo(f"warning: the threshold is chosen on {threshold_split!r} studies the rescorer was fitted on; "
                       "its false positives there are fewer than on new studies (fit on another --split or give "
                       "--threshold-manifest)", err=True)
        progress = done_counter("studies")

        fitted = fit_hotspot_rescorer(run, load_manifest(manifest), split, device, progress, flip_average, precision)
        for case_id, reason in fitted.failed:
            typer.echo(f"left out {case_id}: {reason}", err=True)
        typer.echo(f"rescorer fitted on {fitted.n_studies} {'study' if fitted.n_studies == 1 else 'studies'} "
                   f"({fitted.n_candidates} candidates, "
                   f"{fitted.n_on_metastases} on metastases); count candidates kept from {fitted.keep_floor:.3f}; "
                   f"wrote {fitted.path}")
        record = freeze_malignancy_threshold(run, load_manifest(threshold_manifest or manifest), threshold_split,
                                             fp_per_study, device, flip_average, precision)
        typer.echo(f"malignancy threshold {record['malignancy_threshold']:.4f} (rescored): on {record['n_studies']} "
                   f"{threshold_split} studies ({record['n_lesions']} metastases) sensitivity "
                   f"{record['sensitivity_there']:.3f} at {record['fp_per_study_there']:.2f} false positives per "
                   f"study (budget {fp_per_study:g})")
        if fitted.failed:
            raise typer.Exit(2)

    @bench.command("lesions")
    def bench_lesions(
        lesions: Path = typer.Option(..., "--lesions", help="Lesion run (trained: post-processing time follows the "
                                                            "hotspots it finds)."),
        run: Path | None = typer.Option(None, "--run", help="Classifier run (default: an untrained --preset network; "
                                                            "its speed does not depend on the weights)."),
        preset: str = typer.Option("cpu-small", "--preset", help="Classifier preset without --run."),
        data: Path | None = typer.Option(
            None, "--data", help="Folder of studies; an empty or synthetic-cohort folder is filled with synthetic "
                                 "studies. Default: a temporary synthetic cohort."),
        cases: int = typer.Option(100, "--cases", help="Studies to predict with and without the lesion step."),
        parts_cases: int = typer.Option(20, "--parts-cases", help="Studies for the lesion step's parts."),
        batch_size: int = typer.Option(8, "--batch-size", help="Studies per network batch."),
        seed: int = typer.Option(0, "--seed", help="Seed of the synthetic studies and untrained weights."),
        rounds: int = typer.Option(3, "--rounds", help="Interleaved rounds of classifier and lesion step; the "
                                                       "median round is reported, with the range."),
    ) -> None:
        """The lesion step's time per study against the classifier's whole prediction, and where it goes."""
        from ..lesions.bench import benchmark_lesions

        result = benchmark_lesions(lesions, run, preset, data, cases, batch_size, parts_cases, seed,
                                   progress=lambda message: print(f"bench lesions: {message}", file=sys.stderr),
                                   rounds=rounds)
        for line in result.lines():
            typer.echo(line)
