"""`bonescan train`: train the two-view network; `bonescan bench train`: training-step speed and memory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def parse_channels(text: Optional[str], option: str = "--lesion-channels") -> Optional[tuple[int, ...]]:
    """`option` "32,64,128" -> (32, 64, 128); None when not given."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of integers", param_hint=option) from None


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `train` and `bench train` to the bonescan app."""

    @app.command("train")
    def train_command(
        manifest: Path = typer.Option(..., "--manifest", help="Manifest CSV with a split column (train / val)."),
        out: Path = typer.Option(..., "--out", help="RUN folder: config.json, metrics.csv, checkpoints/."),
        preset: str = typer.Option("paper", "--preset", help="paper | cpu-small | tiny; lesion task: cpu-small-lesion | tiny-lesion."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Maximum epochs."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch (split over processes)."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
        optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adamw (cosine decay) | sgd."),
        weight_decay: Optional[float] = typer.Option(None, "--weight-decay"),
        patience: Optional[int] = typer.Option(None, "--patience", help="Early stopping: epochs without a better val AUC."),
        class_weighting: Optional[bool] = typer.Option(
            None, "--class-weighting/--no-class-weighting", help="Weight positives by negatives / positives."
        ),
        backbone: Optional[str] = typer.Option(None, "--backbone", help="resnet18 | resnet34 | resnet50 | resnet101."),
        trunk_width: Optional[int] = typer.Option(None, "--trunk-width", help="First-stage channels (64 = torchvision)."),
        aggregation: Optional[str] = typer.Option(None, "--aggregation", help="max | mean | concat."),
        pooling: Optional[str] = typer.Option(None, "--pooling", help="pyramid | gap."),
        views: Optional[str] = typer.Option(None, "--views", help="both | anterior | posterior."),
        norm: Optional[str] = typer.Option(None, "--norm", help="batch | group."),
        dropout: Optional[float] = typer.Option(None, "--dropout"),
        lesion_channels: Optional[str] = typer.Option(
            None, "--lesion-channels", help="Lesion task: U-Net channels per level, e.g. 32,64,128,256,256 "
                                            "(cpu-small-lesion: 16,32,64,128,128)."),
        height: Optional[int] = typer.Option(None, "--height", help="Input rows (paper: 768)."),
        width: Optional[int] = typer.Option(None, "--width", help="Input columns (paper: 256)."),
        normalization: Optional[str] = typer.Option(None, "--normalization", help="minmax | counts."),
        no_augment: bool = typer.Option(False, "--no-augment", help="Train without augmentation."),
        pretrained: Optional[str] = typer.Option(
            None, "--pretrained", help="'imagenet' (local torch hub cache), a torchvision state-dict file, or a file from "
                    "`bonescan pretrain`; lesion task: an earlier lesion run (folder or checkpoint) to train on "
                    "from."
        ),
        allow_download: bool = typer.Option(
            False, "--allow-download", help="With --pretrained imagenet: let torchvision download the weights "
                                            "when they are not in the local torch hub cache."),
        seed: Optional[int] = typer.Option(None, "--seed"),
        precision: Optional[str] = typer.Option(None, "--precision", help="auto | fp32 | bf16 | fp16."),
        device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda."),
        bn_recalibration: Optional[int] = typer.Option(
            None, "--bn-recalibration", help="Training studies for BatchNorm statistics before validation (0: off).",
        ),
        exact: Optional[bool] = typer.Option(
            None, "--exact/--no-exact",
            help="Bit-reproducible (default). --no-exact lets oneDNN use its faster, run-to-run varying AMX kernels.",
        ),
        workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader worker processes."),
        region: Optional[str] = typer.Option(
            None, "--region", help="Train on crops of this body region (e.g. chestR) at its input size; default: "
                                   "the manifest's region column, if it names one region."),
        cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Array cache folder."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
        force: bool = typer.Option(False, "--force", help="Replace a previous run's files in --out."),
        fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first unreadable study."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """Train MultiViewNet (or, with a lesion preset, the lesion network) on a manifest's train split."""
        from ..cohort import load_manifest
        from ..presets import preset_config
        from ..crops import apply_region
        from ..train import train
        from .ranks import leave_unless_rank_0

        config = preset_config(
            preset,
            epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
            patience=patience, class_weighting=class_weighting, pretrained=pretrained, seed=seed,
            precision=precision, device=device, workers=workers, exact=exact,
            bn_recalibration_cases=bn_recalibration,
            model={"backbone": backbone, "trunk_width": trunk_width, "aggregation": aggregation, "pooling": pooling,
                   "views": views, "norm": norm, "dropout": dropout},
            preprocess={"height": height, "width": width, "normalization": normalization},
            augment={"enabled": False} if no_augment else {},
            lesion={"channels": parse_channels(lesion_channels)},
        )
        if lesion_channels is not None and config.task != "lesion":
            raise typer.BadParameter(f"preset {preset!r} trains the classifier; use a lesion preset",
                                     param_hint="--lesion-channels")
        if allow_download and config.pretrained == "imagenet":
            from ..model import download_imagenet_weights

            download_imagenet_weights(config.model.backbone)
        table = load_manifest(manifest)
        config, table = apply_region(config, table, region, str(manifest), height=height, width=width)
        result = train(table, out, config, resume=resume, force=force, cache_dir=cache_dir, fail_fast=fail_fast,
                       manifest_path=manifest, progress=not quiet)
        leave_unless_rank_0(result.rank)  # under torchrun only rank 0 reports
        for failure in result.failures:
            typer.echo(f"skipped {failure['case_id']}: {failure['reason']}", err=True)
        ending = "stopped early" if result.stopped_early else "finished"
        # by the run's own metrics: with --resume, `config` is the command line's, not the run's
        score = ("validation AUC" if "val_auc" in result.metrics.columns else
                 "validation score (mean of region Dice and sensitivity at <= 1 false positive per study)")
        typer.echo(
            f"{ending} after {result.epochs_run} epochs; best {score} {result.best_val_auc:.4f} "
            f"at epoch {result.best_epoch}; run: {out}"
        )

    @bench.command("train")
    def bench_train(
        presets: str = typer.Option("paper,cpu-small", "--presets",
                                    help="Comma-separated presets (lesion presets too, e.g. cpu-small-lesion)."),
        precisions: str = typer.Option("fp32,bf16", "--precisions", help="Comma-separated: fp32, bf16."),
        steps: int = typer.Option(2, "--steps", help="Timed steps per setting (after one warm-up step)."),
        batch_size: int = typer.Option(2, "--batch-size", help="Cases per step."),
        threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: all cores)."),
        emulated_bf16: bool = typer.Option(
            False, "--emulated-bf16", help="Time bf16 even on a CPU without bf16 kernels (very slow)."
        ),
    ) -> None:
        """Seconds per case of a training step, fraction of the measured matmul roofline, peak RSS."""
        from ..bench import bench_training

        for line in bench_training(
            [p.strip() for p in presets.split(",") if p.strip()],
            [p.strip() for p in precisions.split(",") if p.strip()],
            steps=steps, batch_size=batch_size, threads=threads, emulated_bf16=emulated_bf16,
        ):
            typer.echo(line)
