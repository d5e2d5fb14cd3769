"""`bonescan pretrain`: a trunk for `--pretrained FILE`, learned from bone scans instead of ImageNet."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `pretrain` to the bonescan app."""

    @app.command("pretrain")
    def pretrain(
        studies: Optional[list[Path]] = typer.Argument(None, help="Unlabelled study files or folders."),
        out: Path = typer.Option(..., "--out", help="Trunk weights file (FILE.json beside it says how it was made)."),
        manifest: Optional[Path] = typer.Option(None, "--manifest", help="Studies of a manifest instead (labels "
                                                                          "unused; excluded rows skipped)."),
        from_run: Optional[Path] = typer.Option(None, "--from-run", help="Export the trunk of this trained run "
                                                                         "(supervised pretraining) instead."),
        preset: str = typer.Option("cpu-small", "--preset", help="Network and input size: the preset you will "
                                                                 "fine-tune with."),
        epochs: int = typer.Option(20, "--epochs"),
        batch_size: int = typer.Option(32, "--batch-size", help="Studies per batch (each seen twice)."),
        lr: float = typer.Option(1e-3, "--lr"),
        temperature: float = typer.Option(0.2, "--temperature", help="NT-Xent temperature."),
        seed: int = typer.Option(0, "--seed"),
        device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
        cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Array cache folder."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """Self-supervised (contrastive) pretraining on unlabelled studies, or export a trained run's trunk."""
        given = sum(x is not None and x != [] for x in (studies, manifest, from_run))
        if given != 1:
            raise ConfigError("bonescan pretrain", "give exactly one of: STUDIES..., --manifest or --from-run")
        if from_run is not None:
            from ..pretrain import export_trunk

            typer.echo(f"wrote {export_trunk(from_run, out)} (trunk of {from_run})")
            return
        from ..pretrain import PretrainConfig, contrastive_pretrain

        config = PretrainConfig(preset=preset, epochs=epochs, batch_size=batch_size, lr=lr, temperature=temperature,
                                seed=seed, device=device)
        table = _study_table(studies, manifest)
        result = contrastive_pretrain(table, out, config, cache_dir=cache_dir, progress=not quiet)
        for failure in result.failures:
            typer.echo(f"skipped {failure['case_id']}: {failure['reason']}", err=True)
        typer.echo(f"{result.studies} studies, {len(result.losses)} epochs in {result.seconds:.0f} s; NT-Xent "
                   f"{result.losses[0]:.3f} -> {result.losses[-1]:.3f}; own copy nearest in "
                   f"{100 * result.positive_top1[-1]:.0f} % of the batch")
        typer.echo(f"wrote {result.weights}; use: bonescan train --preset {preset} --pretrained {result.weights}")


def _study_table(studies: list[Path] | None, manifest: Path | None):
    import pandas as pd

    if manifest is not None:
        from ..cohort import load_manifest

        table = load_manifest(manifest)
        if "exclude_reason" in table:
            table = table[table["exclude_reason"] == ""]
        return table
    from ..io import find_studies

    rows, problems = [], []
    for source in find_studies(studies):
        if source.error is not None:
            problems.append(str(source.error))
            continue
        files = [str(path) for path in source.files]
        row = {"case_id": source.id, "path": files[0]} if len(files) == 1 else \
            {"case_id": source.id, "anterior": files[0], "posterior": files[1]}
        rows.append(row)
    for problem in problems:
        typer.echo(f"skipped: {problem}", err=True)
    if not rows:
        raise ConfigError("STUDIES", "no readable studies found")
    return pd.DataFrame(rows)
