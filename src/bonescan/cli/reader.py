"""`bonescan reader ...`: create a reader study, serve the reading station, export answers, analyze readers vs AI."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError


def _reader_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError("--readers", "name at least one reader, comma-separated (e.g. a,b,c)")
    return names


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the reader-study commands to the bonescan app."""
    reader = typer.Typer(help="Reader studies: blinded and AI-consulted reading, readers vs AI.", no_args_is_help=True)
    app.add_typer(reader, name="reader")

    @reader.command("create")
    def create(
        study: Path = typer.Option(..., "--study", help="Study folder to create (or a blinded study to extend)."),
        mode: str = typer.Option(..., "--mode", help="blinded | ai-consulted"),
        cases: Optional[Path] = typer.Option(None, "--cases", help="Case list CSV: case_id + path or anterior/posterior."),
        readers: Optional[str] = typer.Option(None, "--readers", help="Comma-separated reader names, e.g. a,b,c."),
        predictions: Optional[Path] = typer.Option(None, "--predictions", help="AI predictions CSV (ai-consulted)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the per-reader random reading order."),
        split: Optional[str] = typer.Option(None, "--split", help="Read only the case-list rows of this split."),
        threshold: float = typer.Option(0.5, "--threshold", help="AI decision threshold when there is no decision column."),
        decision_column: str = typer.Option("decision", "--decision-column", help="Predictions column with the AI's 0/1 decision."),
        close_open_reads: bool = typer.Option(False, "--close-open-reads", help="Open the consulted phase although blinded reads are unfinished."),
    ) -> None:
        """Create a reader study, or add the ai-consulted phase (same cases, reshuffled) to a blinded one."""
        from ..reader.study import create_study

        created = create_study(
            study, mode=mode, cases_csv=cases, readers=_reader_list(readers), predictions_csv=predictions,
            seed=seed, split=split, threshold=threshold, decision_column=decision_column,
            close_open_reads=close_open_reads,
            progress=lambda done, total: typer.echo(f"\rrendered {done}/{total} studies", err=True, nl=done == total),
        )
        sizes = ", ".join(f"{name}: {len(queue)}" for name, queue in created.queues.items())
        typer.echo(f"{created.study_dir}: {created.phase} phase opened (cases per reader: {sizes})")
        if created.passwords:
            typer.echo("Reader passwords (shown once; only their hashes are stored):")
            for name, password in created.passwords.items():
                typer.echo(f"  {name}\t{password}")

    @reader.command("serve")
    def serve_command(
        study: Path = typer.Option(..., "--study", help="Reader study folder."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        port: int = typer.Option(8000, "--port", help="Port to listen on."),
    ) -> None:
        """Serve the reading station until interrupted (Ctrl-C)."""
        from ..reader.app import serve
        from ..reader.store import ReaderStore

        ReaderStore.open(study)  # refuse a folder that is not a reader study before binding the port
        typer.echo(f"Reading station for {study} on http://{host}:{port}/ (Ctrl-C stops it; answers are saved as given)")
        serve(study, host=host, port=port)

    @reader.command("export")
    def export(
        study: Path = typer.Option(..., "--study", help="Reader study folder."),
        out: Optional[Path] = typer.Option(None, "--out", help="CSV to write (default STUDY/export/reads.csv)."),
    ) -> None:
        """Write every read (answers, confidences, server-measured seconds) to CSV."""
        from ..reader.study import export_reads

        typer.echo(str(export_reads(study, out)))

    @reader.command("password")
    def password(
        study: Path = typer.Option(..., "--study", help="Reader study folder."),
        name: str = typer.Option(..., "--reader", help="Reader whose password is replaced."),
    ) -> None:
        """Give a reader a new password (printed once) and sign out their browsers."""
        from ..reader.study import reset_password

        typer.echo(f"{name}\t{reset_password(study, name)}")

    @reader.command("analyze")
    def analyze(
        study: Path = typer.Option(..., "--study", help="Reader study folder."),
        truth: Optional[Path] = typer.Option(None, "--truth", help="Manifest with case_id and label/grade (default: labels of the case list)."),
        ai: Optional[Path] = typer.Option(None, "--ai", help="AI predictions CSV (default: those of the ai-consulted phase)."),
        ai_seconds: Optional[float] = typer.Option(None, "--ai-seconds", help="The AI's total time for all cases, in seconds."),
        threshold: float = typer.Option(0.5, "--threshold", help="AI decision threshold when --ai has no decision column."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default STUDY/analysis)."),
    ) -> None:
        """Readers vs AI: the paper's Fig. 3 table, reading times, McNemar tests, discordant cases (HTML + CSV)."""
        from ..reader.analysis import analyze_study

        result = analyze_study(study, truth_csv=truth, ai_csv=ai, ai_seconds=ai_seconds, threshold=threshold, out_dir=out)
        typer.echo(result.summary())
        for path in result.files:
            typer.echo(str(path))
