"""`bonescan inspect PATH...`: one JSON line per study found, or per failure."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from ..errors import BoneScanError
from ..io import StudySource, find_studies, read_study
from ..study import Study


def study_summary(source: StudySource, study: Study) -> dict:
    """What `inspect` reports about one study that was read."""
    first = study.anterior if study.anterior is not None else study.posterior
    counts = {
        name: {"total": float(image.sum(dtype=float)), "max": float(image.max())}
        for name in study.views
        for image in [getattr(study, name)]
    }
    return {
        "id": source.id,
        "source": study.source,
        "views": study.views,
        "shape": list(first.shape) if first is not None else None,
        "pixel_spacing": list(study.pixel_spacing) if study.pixel_spacing else None,
        "counts": counts,
        "view_rule": study.view_rule,
        "warnings": study.warnings,
        "meta": asdict(study.meta),
    }


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `inspect` to the bonescan app."""

    @app.command("inspect")
    def inspect(
        paths: list[Path] = typer.Argument(..., help="DICOM or image files, or folders (searched recursively)."),
        region: Optional[str] = typer.Option(
            None, "--region", help="The views are crops of this body region (e.g. chestR), not whole-body views."),
    ) -> None:
        """Read each study and print one JSON line: views, shape, spacing, counts, view rule, or the error."""
        if region is not None:
            from ..crops import region as known_region

            known_region(region)
        sources = find_studies(paths)
        if not sources:
            raise BoneScanError(", ".join(map(str, paths)), "no DICOM or image files found")
        failures = 0
        for source in sources:
            try:
                line = study_summary(source, read_study(source, region=region))
            except BoneScanError as error:
                failures += 1
                line = {"id": source.id, "source": source.source, "error": str(error)}
                print(f"bonescan: error: {error}", file=sys.stderr)
            typer.echo(json.dumps(line))
        if failures:
            raise typer.Exit(code=2)
