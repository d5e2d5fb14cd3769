"""`bonescan annotations convert`: Pascal VOC boxes and COCO region masks -> per-study truth files + manifest."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the `annotations` command group to the bonescan app."""
    group = typer.Typer(help="Turn real annotations (VOC boxes, COCO masks) into lesion truth.", no_args_is_help=True)
    app.add_typer(group, name="annotations")

    @group.command("convert")
    def convert(
        manifest: Path = typer.Option(..., "--manifest", help="Manifest CSV with boxes_anterior / boxes_posterior "
                                      "(VOC XML) and/or regions_coco (COCO JSON) columns."),
        out: Path = typer.Option(..., "--out", help="Folder for truth/<case_id>.npz and manifest.csv with a truth "
                                 "column."),
        mapping: Path | None = typer.Option(None, "--mapping", help='JSON {"boxes": {name: category}, "regions": '
                                            '{category: region}}; default: BS-80K (nidus = metastasis, other '
                                            'names physiological).'),
    ) -> None:
        """Validate every study's annotations against its images and write one truth file per study."""
        from ..lesions.annotations import convert_annotations, load_mapping

        report = convert_annotations(manifest, out, load_mapping(mapping))
        for error in report.failures:
            typer.echo(f"refused: {error}", err=True)
        typer.echo(f"wrote {len(report.written)} truth file(s) and {report.manifest}; "
                   f"{len(report.without_annotations)} stud(ies) without annotations stay in classification only; "
                   f"{len(report.failures)} refused")
        if report.failures and not report.written:
            raise typer.Exit(2)
