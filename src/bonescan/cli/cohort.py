"""CLI commands for this job (filled in as the job lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this job's commands to the bonescan app."""
