"""`bonescan cohort split`, `cohort merge`, `cohort check` and `cohort table1`: the stratified 8:1:1 split that keeps
duplicates and patients together, several manifests as one, the duplicate / leakage check, and the paper's
Table 1."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the `cohort` command group to the bonescan app."""
    group = typer.Typer(help="Validate a cohort manifest, split it, and print Table 1.", no_args_is_help=True)
    app.add_typer(group, name="cohort")

    @group.command("split")
    def split(
        manifest: Path = typer.Option(..., "--manifest", help="Manifest CSV to split."),
        out: Path = typer.Option(..., "--out", help="Where to write the manifest with its split column."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random assignment."),
        ratios: str = typer.Option("0.8,0.1,0.1", "--ratios", help="train,val,test fractions (sum to 1)."),
        check: bool = typer.Option(
            True, "--check/--no-check",
            help="Hash every image first and keep exact and near duplicates (and each patient_id) in one split."),
        near_threshold: int = typer.Option(32, "--near-threshold", help="Whole-body near-duplicate bits (of 512)."),
        crop_near_threshold: int = typer.Option(8, "--crop-near-threshold", help="The same for region crops."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Hashing processes (default: up to 4)."),
        also: list[Path] = typer.Option(
            [], "--also", help="Another manifest of the same patients (e.g. the whole-body one beside a region's) "
                               "checked alongside, so duplicates found there keep these rows together too."),
    ) -> None:
        """Split train/val/test at random within each cancer type x label stratum (excluded rows kept, marked).

        With --check (the default) rows that share a patient_id or hold duplicate images stay in one split, and
        the duplicates found are written beside OUT as <OUT>_duplicates.csv.
        """
        from .. import cohort  # here, not at the top: pandas would slow every other command's start

        fractions = cohort.parse_ratios(ratios)
        table = cohort.load_manifest(manifest)
        groups = None
        if check:
            from ..leakage import check_manifest

            import pandas as pd

            checked = pd.concat([table, *(cohort.load_manifest(m, check_files=False) for m in also)],
                                ignore_index=True)
            report = check_manifest(checked, near_threshold, crop_near_threshold, workers)
            for line in report.summary_lines():
                typer.echo(line, err=True)
            report.write(out.with_name(f"{out.stem}_duplicates.csv"))
            groups = report.groups[: len(table)]  # the groups of this manifest's rows
        elif "patient_id" in table.columns:
            groups = table["patient_id"].astype(str).tolist()
        result = cohort.split_manifest(table, fractions, seed=seed, groups=groups)
        cohort.write_manifest(result, out)
        counts = result["split"].value_counts()
        summary = ", ".join(f"{name} {int(counts.get(name, 0))}" for name in (*cohort.SPLITS, cohort.EXCLUDED))
        typer.echo(f"wrote {out}: {summary}")

    @group.command("merge")
    def merge(
        manifests: list[Path] = typer.Argument(..., help="Two or more manifest CSVs (e.g. two sites' cohorts)."),
        out: Path = typer.Option(..., "--out", help="Where to write the merged manifest."),
        name: list[str] = typer.Option(
            [], "--name", help="Cohort name of each manifest, in order (default: its folder's name)."),
    ) -> None:
        """Merge manifests into one: splits and columns kept, paths rewritten, a `cohort` column; case ids shared
        between manifests are prefixed with the cohort's name."""
        from .. import cohort
        from ..cohort_merge import merge_manifests

        merged, notes = merge_manifests(manifests, name or None)
        for note in notes:
            typer.echo(note, err=True)
        cohort.write_manifest(merged, out)
        typer.echo(f"wrote {out}")

    @group.command("check")
    def check_command(
        manifests: list[Path] = typer.Option(..., "--manifest", help="Manifest CSV; repeat to check several together "
                                                                     "(e.g. whole-body and region manifests)."),
        out: Optional[Path] = typer.Option(None, "--out", help="CSV of every duplicate pair found."),
        near_threshold: int = typer.Option(32, "--near-threshold", help="Whole-body near-duplicate bits (of 512)."),
        crop_near_threshold: int = typer.Option(8, "--crop-near-threshold", help="The same for region crops."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Hashing processes (default: up to 4)."),
    ) -> None:
        """Exact and near-duplicate images, identical views across regions or ids, and groups crossing splits.

        Exit code 1 when a group of duplicates (or one patient) has rows in more than one split.
        """
        import pandas as pd

        from .. import cohort
        from ..leakage import check_manifest

        table = pd.concat([cohort.load_manifest(m, check_files=False) for m in manifests], ignore_index=True)
        report = check_manifest(table, near_threshold, crop_near_threshold, workers)
        for line in report.summary_lines():
            typer.echo(line)
        if out is not None:
            report.write(out)
            typer.echo(f"wrote {out}")
        if len(report.crossing):
            raise typer.Exit(code=1)

    @group.command("table1")
    def table1(
        manifest: Path = typer.Option(..., "--manifest", help="Manifest CSV (with a split column)."),
        out: Path | None = typer.Option(
            None, "--out", help="Where to write Table 1 as CSV (default: <manifest>_table1.csv beside the manifest)."
        ),
    ) -> None:
        """Print the paper's Table 1 (per cohort x cancer type) as markdown and write it as CSV."""
        from .. import cohort

        table = cohort.load_manifest(manifest, check_files=False)  # demographics need no image files
        typer.echo(cohort.table1_markdown(table), nl=False)
        out = out if out is not None else manifest.with_name(f"{manifest.stem}_table1.csv")
        cohort.write_table1_csv(table, out)
        typer.echo(f"wrote {out}", err=True)
