"""`bonescan cohort split` and `bonescan cohort table1`: the stratified 8:1:1 split and the paper's Table 1."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import ConfigError


def _parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError("--ratios", f"{text!r} is not three comma-separated numbers, e.g. 0.8,0.1,0.1") from None
    if len(values) != 3:
        raise ConfigError("--ratios", f"{text!r} must give exactly three ratios: train,val,test")
    return values  # type: ignore[return-value]


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
    ) -> None:
        """Split train/val/test at random within each cancer type x label stratum (excluded rows kept, marked)."""
        from .. import cohort  # here, not at the top: pandas would slow every other command's start

        fractions = _parse_ratios(ratios)
        table = cohort.load_manifest(manifest)
        result = cohort.split_manifest(table, fractions, seed=seed)
        cohort.write_manifest(result, out)
        counts = result["split"].value_counts()
        summary = ", ".join(f"{name} {int(counts.get(name, 0))}" for name in (*cohort.SPLITS, cohort.EXCLUDED))
        typer.echo(f"wrote {out}: {summary}")

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
