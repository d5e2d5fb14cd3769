"""`bonescan import bs80k` and `bonescan import pairs`: public sets as distributed -> manifests and a summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def _report(result) -> None:
    for line in result.summary_lines():
        typer.echo(line)
    typer.echo(f"counts, problems and summary in {result.out_dir} ({result.seconds:.1f} s)")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the `import` command group to the bonescan app."""
    group = typer.Typer(help="Import public bone-scan sets as they are distributed.", no_args_is_help=True)
    app.add_typer(group, name="import")

    @group.command("bs80k")
    def bs80k(
        root: Optional[Path] = typer.Argument(None, help="The set's root folder (holding wholeBodyANT/ ...)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Folder for manifest.csv, regions/, counts and problems."),
        layout: Optional[Path] = typer.Option(None, "--layout", help="JSON or TOML file overriding the BS-80K layout."),
        print_layout: bool = typer.Option(False, "--print-layout", help="Print the layout in use (JSON) and stop."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Processes that check images (default: up to 4)."),
    ) -> None:
        """Manifests of whole-body ANT/POST pairs (with their VOC boxes) and of each region's crop pairs."""
        from ..errors import ConfigError
        from ..imports import import_bs80k, load_layout

        description = load_layout(layout)
        if print_layout:
            typer.echo(json.dumps(description.to_dict(), indent=1))
            return
        if root is None or out is None:
            raise ConfigError("bonescan import bs80k", "give the set's root folder and --out")
        _report(import_bs80k(root, out, description, workers=workers, progress=lambda text: typer.echo(text, err=True)))

    @group.command("pairs")
    def pairs(
        root: Path = typer.Argument(..., help="Folder of <id>_ant / <id>_post images (searched recursively)."),
        labels: Path = typer.Option(..., "--labels", help="CSV with an id column (case_id, patient_id or id) and label."),
        out: Path = typer.Option(..., "--out", help="Folder for manifest.csv, counts and problems."),
    ) -> None:
        """A manifest of whole-body image pairs (IICS-UNA and similar exports) with patient-level labels."""
        from ..imports import import_pairs

        _report(import_pairs(root, labels, out))

    @bench.command("import")
    def bench_import_command(
        data: Path = typer.Option(..., "--data", help="Folder for the synthetic tree and the import (reused)."),
        patients: int = typer.Option(3000, "--patients", help="Patients in the synthetic tree."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Processes (default: up to 4)."),
        check: bool = typer.Option(True, "--check/--no-check", help="Also time the duplicate / leakage check."),
    ) -> None:
        """Seconds to import a BS-80K-shaped tree and to check all its images for duplicates."""
        from ..bench_datasets import bench_import

        for line in bench_import(data, patients, workers, check):
            typer.echo(line)
