"""`bonescan predict`: probabilities, decisions, heat maps and DICOM results; `bonescan bench predict`: speed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .counter import done_counter


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `predict` and `bench predict` to the bonescan app."""

    @app.command("predict")
    def predict(
        paths: Optional[list[Path]] = typer.Argument(
            None, help="DICOM or image files, or folders (searched recursively); or use --manifest."),
        run: Path = typer.Option(..., "--run", help="Training run folder (config.json, checkpoints/best.pt)."),
        manifest: Optional[Path] = typer.Option(
            None, "--manifest", help="Predict this cohort manifest's studies (excluded rows skipped); rows are "
                                     "keyed by case_id, ready for `bonescan reader create --predictions`."),
        split: Optional[str] = typer.Option(
            None, "--split", help="With --manifest: only this split (train, val, test). Default: every row."),
        out: Optional[Path] = typer.Option(None, "--out", help="Write the results as .csv or .json."),
        operating_point: str = typer.Option(
            "youden", "--operating-point", help="Frozen threshold: youden | rule-out | rule-in | 0.5."),
        heatmaps: Optional[Path] = typer.Option(None, "--heatmaps", help="Folder for Grad-CAM overlay PNGs."),
        dicom_out: Optional[Path] = typer.Option(
            None, "--dicom-out", help="Folder for DICOM results: heat-map Secondary Capture + Comprehensive SR."),
        batch_size: int = typer.Option(8, "--batch-size", help="Studies per network batch."),
        workers: Optional[int] = typer.Option(
            None, "--workers", help="Reader processes decoding studies ahead of the network (default: cores / 2; "
                                    "none when the studies fit in one batch)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        precision: str = typer.Option("auto", "--precision", help="auto | fp32 | bf16 | fp16 (GPU); of the lesion "
                                      "network too (auto: bf16 where this CPU runs it faster)."),
        compile: str = typer.Option("auto", "--compile", help="torch.compile the network: auto | on | off."),
        checkpoint: str = typer.Option("best", "--checkpoint", help="Checkpoint of the run: best | last."),
        lesions: Optional[Path] = typer.Option(
            None, "--lesions", help="Lesion run (a lesion preset's RUN): hotspots, regions and BSI per study."),
        lesions_out: Optional[Path] = typer.Option(
            None, "--lesions-out", help="Folder for hotspots.csv and lesions/ (default: the --out file's folder)."),
        engine: str = typer.Option(
            "auto", "--engine", help="auto: the engine measured fastest here (stored exported int8/fp32, else "
                                     "torch; see `bonescan quantize`) | torch."),
    ) -> None:
        """Predict bone metastasis for every study found, or every study of a manifest; failures are listed.

        Exit code 0 when every study was predicted, 2 when any study failed (all others are still reported).
        """
        from ..errors import OutputError
        from ..predict import predict_studies
        from ..predict_sharded import join_predict_job
        from .ranks import leave_unless_rank_0

        progress = done_counter("studies")

        job = join_predict_job(out, device)  # under torchrun: each rank predicts a share, rank 0 merges them
        predict_studies = job.sharded(predict_studies)
        report = predict_studies(
            run, paths, operating_point=operating_point, batch_size=batch_size, workers=workers,
            heatmap_dir=heatmaps, dicom_dir=dicom_out, device=device, precision=precision, compile=compile,
            checkpoint=checkpoint, progress=progress, manifest=manifest, split=split, engine=engine,
            notice=lambda message: _stderr(f"bonescan: notice: {message}"),
            lesions=lesions, lesions_out=lesions_out or (out.parent if out is not None else Path(".")),
        )
        leave_unless_rank_0(job.rank)  # rank 0 writes the merged output and reports for the whole job
        point = report.operating_point
        if point.warning:
            _stderr(f"bonescan: warning: {point.warning}")
        unwritable = None
        if out is not None:
            try:
                report.write(out)
                typer.echo(f"wrote {len(report.studies)} studies ({len(report.failures)} failed) to {out}")
            except OutputError as error:  # a full disk: the readings are not lost with the table
                unwritable = error
        if out is None or unwritable is not None:
            for study in report.studies:
                # without a table to hold them, the readings of studies whose files failed too
                if study.status == "ok" or unwritable is not None and study.probability is not None:
                    typer.echo(f"{study.name}\t{study.probability:.4f}\t{study.decision}")
        typer.echo(f"operating point {point.name} (threshold {point.threshold:.4f}); {report.engine}; "
                   f"{len(report.studies)} studies in {report.seconds:.1f} s")
        for line in report.notices:
            if line.startswith("lesion step"):
                typer.echo(line)
            elif line.startswith("lesion run"):  # the lesion run's settings were chosen on other maps
                _stderr(f"bonescan: warning: {line}")
        for failure in report.failures:
            _stderr(f"bonescan: failed: {failure.name}: {failure.error}")
        for error in report.unwritten:
            _stderr(f"bonescan: failed: {error}")
        unwritten = sum(failure.unwritten for failure in report.failures)
        if unwritten:  # the same reason for each: say once what to do
            _stderr(f"bonescan: {unwritten} of the failed studies were read, but their files could not be written; "
                    "make room (or fix the folder's permissions) and predict them again")
        if unwritable is not None:
            _stderr(f"bonescan: error: {unwritable}; the readings are on standard output instead")
        if not report.ok or unwritable is not None:
            raise typer.Exit(code=2)

    @bench.command("predict")
    def bench_predict(
        cases: int = typer.Option(400, "--cases", help="Studies to predict end to end."),
        data: Optional[Path] = typer.Option(
            None, "--data", help="Folder of studies to read; an empty or synthetic-cohort folder is filled with "
                                 "synthetic studies (kept for the next run). Default: a temporary synthetic cohort."),
        preset: str = typer.Option("paper", "--preset", help="Network of this preset, untrained (without --run)."),
        run: Optional[Path] = typer.Option(None, "--run", help="Use this run's trained network instead."),
        batch_size: int = typer.Option(8, "--batch-size", help="Studies per network batch."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Reader processes (default: cores / 2)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        precision: str = typer.Option("auto", "--precision", help="auto | fp32 | bf16 | fp16 (GPU)."),
        compile: str = typer.Option("auto", "--compile", help="torch.compile the network: auto | on | off."),
        parity_cases: int = typer.Option(16, "--parity-cases", help="Studies compared against fp32."),
        model_cases: Optional[int] = typer.Option(
            None, "--model-cases", help="Studies for the model-only timing (default: 4 batches)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the synthetic studies and the untrained weights."),
        engine: str = typer.Option("auto", "--engine", help="auto: the engine `predict` would choose | torch."),
        cold_start: bool = typer.Option(
            True, "--cold-start/--no-cold-start", help="Also time a fresh process to engine ready and first study."),
    ) -> None:
        """Seconds and studies/s end to end and model-only, matmul peaks, roofline fraction, peak RSS, parity."""
        from ..bench import benchmark_prediction

        result = benchmark_prediction(
            cases=cases, data=data, preset=preset, run_dir=run, batch_size=batch_size, workers=workers,
            device=device, precision=precision, compile=compile, parity_cases=parity_cases,
            model_cases=model_cases, seed=seed, progress=lambda message: _stderr(f"bench predict: {message}"),
            engine=engine, cold_start=cold_start,
        )
        for line in result.lines():
            typer.echo(line)
