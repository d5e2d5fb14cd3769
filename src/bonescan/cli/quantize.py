"""`bonescan quantize`: the int8 engine of a trained run, calibrated and gated on its validation studies."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `quantize` to the bonescan app."""

    @app.command("quantize")
    def quantize(
        run: Path = typer.Option(..., "--run", help="Training run folder (config.json, checkpoints/best.pt)."),
        manifest: Optional[Path] = typer.Option(
            None, "--manifest", help="Cohort manifest whose val rows calibrate and gate int8 (default: the one "
                                     "recorded in RUN/config.json)."),
        checkpoint: str = typer.Option("best", "--checkpoint", help="Checkpoint of the run: best | last."),
        operating_point: str = typer.Option(
            "youden", "--operating-point", help="Frozen threshold the decisions are compared at: youden | rule-out "
                                                "| rule-in | 0.5 (0.5 when the run has no operating points)."),
        calibration_cases: int = typer.Option(300, "--calibration-cases", help="Val studies used to calibrate."),
        batch_size: int = typer.Option(8, "--batch-size", help="Studies per network batch."),
    ) -> None:
        """Build RUN/engines/<checkpoint>-int8.onnx; exit code 2 when its parity gate refuses it (figures kept).

        Gate on the val split: |AUC(int8) - AUC(fp32)| <= 0.005 and >= 99 % same decisions at the frozen
        operating point. `bonescan predict` then uses int8 where it passed and was measured faster than fp32.
        """
        from ..quantize import quantize_run

        result = quantize_run(run, manifest, checkpoint=checkpoint, operating_point=operating_point,
                              calibration_cases=calibration_cases, batch_size=batch_size,
                              notice=lambda message: print(f"bonescan: notice: {message}", file=sys.stderr, flush=True))
        for line in result.lines():
            typer.echo(line)
