"""Training loop: cache -> DataLoader -> network, validation score per epoch, checkpoints, exact resume, DDP.

What is trained comes from a task (`TASKS`, chosen by `TrainConfig.task`): the study classifier (MultiViewNet,
BCE, validation AUC; `ClassifierTask` below) or the lesion network (`bonescan.lesions.task`). A task supplies the
model, the Dataset, the loss of a batch and a validation (loss, score); the loop, cache, checkpoints, resume, DDP
and progress bars are shared.

RUN folder:
    RUN/config.json              settings, seed, package versions, manifest hash, cache key, device, precision
    RUN/metrics.csv              one row per epoch (rewritten atomically after each epoch)
    RUN/checkpoints/last.pt      everything needed to continue: model, optimizer, scheduler, RNG, history
    RUN/checkpoints/best.pt      the model of the best validation AUC, with its config (loadable alone)

Under `torchrun --nproc_per_node=N` (RANK / WORLD_SIZE set) the same code runs DistributedDataParallel with a
DistributedSampler (gloo on CPU, nccl on GPU); only rank 0 writes. The batch size is global and is split across
processes, so a run's optimisation does not depend on N (up to BatchNorm statistics, which are per process).

Exact resume: the random streams depend only on (seed, epoch, rank) -- torch's global RNG is reseeded at every
epoch start, the sampler's order is a function of (seed, epoch), augmentation draws from a per-sample generator
-- and a checkpoint at each epoch end holds the model, optimizer and scheduler states, so continuing from
last.pt repeats the computations of an uninterrupted run. Repeating computations gives identical bits only where
the kernels are deterministic: fp32 everywhere, bf16 on AVX2 and AVX512-BF16 CPUs, and on AMX CPUs only with
`exact` (the default), which keeps oneDNN off its AMX kernels (see `bonescan.device`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from . import __version__
from .cameras import manifest_cameras
from .data import ArrayCache, CachedScans, build_cache
from .device import (
    ONEDNN_ISA_VARIABLE, Precision, cap_onednn_for_exact_runs, choose_precision, select_device, tune_allocator,
)
from .errors import ConfigError, ManifestError, RunError
from .fileio import write_text_atomic, write_torch_atomic
from .model import MultiViewNet, build_model
from .norm_stats import recalibrate_batch_norm, recalibration_rows
from .presets import TrainConfig

CHECKPOINT_FORMAT = 1
METRIC_COLUMNS = ["epoch", "train_loss", "val_loss", "val_auc", "lr", "best_val_auc", "seconds"]


@dataclass(frozen=True)
class RunPaths:
    """The files of one RUN folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"


@dataclass
class TrainResult:
    """What a finished (or stopped) training call produced."""

    run_dir: Path
    best_epoch: int
    best_val_auc: float
    epochs_run: int
    stopped_early: bool
    metrics: pd.DataFrame
    failures: list[dict] = field(default_factory=list)
    rank: int = 0  # this process's rank under torchrun


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def train(
    manifest: pd.DataFrame,
    run_dir: str | Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    force: bool = False,
    cache_dir: str | Path | None = None,
    fail_fast: bool = False,
    manifest_path: str | Path | None = None,
    progress: bool = True,
    stop_after_epochs: int | None = None,
) -> TrainResult:
    """Train the task's network on the manifest's train split, selecting by its validation score; write RUN.

    resume: continue from RUN/checkpoints/last.pt with the run's stored settings (`config` is then ignored).
    force: replace the training files of a previous run in RUN. stop_after_epochs: end this call after that
    many epochs in total (the run stays resumable), e.g. to train in slices.
    """
    paths = RunPaths(Path(run_dir))
    checkpoint = _prepare_run_dir(paths, resume, force)
    if checkpoint is not None:
        config = TrainConfig.from_dict(checkpoint["config"])
    manifest_digest = manifest_hash(manifest)
    if checkpoint is not None and checkpoint["manifest_hash"] != manifest_digest:
        raise RunError(paths.root, "the manifest differs from the one this run was trained on; cannot resume")
    _check_splits(manifest, source=str(manifest_path or "manifest"), needs_both_labels=config.task == "classify")

    if config.exact:
        cap_onednn_for_exact_runs()  # before the first convolution of this process
    tune_allocator()  # before DataLoader workers start, so they inherit it
    ctx = _init_distributed(config)
    try:
        return _train(manifest, paths, config, ctx, checkpoint, manifest_digest, cache_dir, fail_fast,
                      manifest_path, progress, stop_after_epochs, force)
    finally:
        if ctx.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    manifest: pd.DataFrame,
    paths: RunPaths,
    config: TrainConfig,
    ctx: DistContext,
    checkpoint: dict | None,
    manifest_digest: str,
    cache_dir: str | Path | None,
    fail_fast: bool,
    manifest_path: str | Path | None,
    progress: bool,
    stop_after_epochs: int | None,
    force: bool,
) -> TrainResult:
    device = select_device(config.device, ctx.local_rank)
    precision = choose_precision(device, config.precision)
    if config.batch_size % ctx.world_size:
        raise ConfigError("--batch-size", f"{config.batch_size} does not split evenly over {ctx.world_size} processes")

    # Only the train and val studies are cached (and read); rank 0 builds the cache, the others open it after.
    manifest = manifest[manifest["split"].isin(["train", "val"])].reset_index(drop=True)
    cache = None
    if ctx.is_main:
        cache = build_cache(manifest, config.preprocess, cache_dir, fail_fast=fail_fast, progress=progress)
    ctx.barrier()
    if cache is None:
        cache = build_cache(manifest, config.preprocess, cache_dir, fail_fast=fail_fast, progress=False)
    train_rows, val_rows = _split_rows(cache, str(manifest_path or "manifest"), config.task == "classify")

    if ctx.is_main and force and checkpoint is None:
        _clear_run(paths)
    ctx.barrier()

    task = make_task(config, cache, manifest, train_rows, ctx, progress)
    torch.manual_seed(config.seed)
    model = task.build_model(None if checkpoint is not None else config.pretrained).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if ctx.active:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    train_set = task.dataset(train_rows)
    sampler = DistributedSampler(
        train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed, drop_last=False
    )
    per_process_batch = config.batch_size // ctx.world_size
    loader = DataLoader(
        train_set,
        batch_size=per_process_batch,
        sampler=sampler,
        num_workers=config.workers,
        drop_last=len(train_rows) > config.batch_size,  # no tiny last batch for BatchNorm
        pin_memory=device.type == "cuda",
    )
    steps_per_epoch = max(len(loader), 1)
    norm_rows = recalibration_rows(train_rows, config.bn_recalibration_cases)
    optimizer = make_optimizer(model, config)
    scheduler = _make_scheduler(optimizer, config, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.grad_scaling)

    state = _TrainingState()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = _TrainingState.from_dict(checkpoint["state"])
    elif ctx.is_main:
        write_text_atomic(
            paths.config,
            json.dumps(
                _run_record(config, cache, manifest, manifest_digest, manifest_path, ctx, precision, train_rows,
                            val_rows, task.record()),
                indent=2,
            ),
        )

    last_epoch = config.epochs if stop_after_epochs is None else min(config.epochs, stop_after_epochs)
    while state.epoch < last_epoch and not state.finished:
        epoch = state.epoch
        started = time.perf_counter()
        torch.manual_seed(_epoch_seed(config.seed, epoch, ctx.rank))
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        bar = _epoch_bar(epoch, config.epochs, steps_per_epoch, progress and ctx.is_main)
        train_loss = _train_epoch(net, loader, optimizer, scheduler, scaler, task.loss, precision, bar)
        train_loss = _mean_over_processes(train_loss, ctx, device)
        recalibrate_batch_norm(model, cache, norm_rows, per_process_batch, precision)
        val_loss, val_auc = task.validate(model, val_rows, precision, ctx)
        improved = val_auc > state.best_val_auc
        if improved:
            state.best_val_auc, state.best_epoch, state.bad_epochs = val_auc, epoch + 1, 0
        else:
            state.bad_epochs += 1
        state.epoch = epoch + 1
        state.finished = state.bad_epochs >= config.patience or state.epoch >= config.epochs
        state.stopped_early = state.bad_epochs >= config.patience and state.epoch < config.epochs
        state.history.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": val_loss,
                task.score_name: val_auc,
                "lr": lr,
                f"best_{task.score_name}": state.best_val_auc,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
        bar.set_postfix(loss=f"{train_loss:.4f}", **{task.score_name: f"{val_auc:.4f}"})
        bar.close()
        if ctx.is_main:
            if improved:
                _save(paths.best, _best_checkpoint(model, config, state, manifest_digest, val_auc))
            _save(paths.last, _last_checkpoint(model, optimizer, scheduler, scaler, config, state, manifest_digest))
            write_text_atomic(paths.metrics, metrics_frame(state.history, task.score_name).to_csv(index=False))
        ctx.barrier()

    return TrainResult(
        run_dir=paths.root,
        best_epoch=state.best_epoch,
        best_val_auc=state.best_val_auc,
        epochs_run=state.epoch,
        stopped_early=state.stopped_early,
        metrics=metrics_frame(state.history, task.score_name),
        failures=cache.failures,
        rank=ctx.rank,
    )


@dataclass
class _TrainingState:
    epoch: int = 0  # epochs completed
    best_val_auc: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    finished: bool = False
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict) -> "_TrainingState":
        return cls(**data)


def metrics_frame(history: list[dict], score_name: str = "val_auc") -> pd.DataFrame:
    """Per-epoch metrics as a DataFrame with the metrics.csv columns (the task names its validation score)."""
    columns = [c.replace("val_auc", score_name) for c in METRIC_COLUMNS]
    return pd.DataFrame(history, columns=columns)


class ClassifierTask:
    """What the study-level classifier trains: MultiViewNet, BCE on the study label, validation AUC.

    The epoch loop asks a task for its model, its Dataset, the loss of one batch and a validation
    (loss, score); `TASKS` names the tasks `TrainConfig.task` may choose.
    """

    score_name = "val_auc"

    def __init__(self, config: TrainConfig, cache: ArrayCache, manifest: pd.DataFrame, train_rows: np.ndarray,
                 ctx: DistContext, progress: bool):
        self.config, self.cache = config, cache
        self.pos_weight = _pos_weight(cache, train_rows) if config.class_weighting else None
        self._loss_fn: nn.Module | None = None

    def build_model(self, pretrained: str | None) -> nn.Module:
        return build_model(self.config.model, pretrained)

    def dataset(self, rows: np.ndarray) -> CachedScans:
        return CachedScans(self.cache, rows, self.config.augment, seed=self.config.seed)

    def loss(self, net: nn.Module, batch, precision: Precision) -> tuple[torch.Tensor, int]:
        images, labels = (t.to(precision.device, non_blocking=True) for t in batch)
        if self._loss_fn is None:
            weight = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=precision.device)
            self._loss_fn = nn.BCEWithLogitsLoss(pos_weight=weight)
        with precision.autocast():
            logits = net(images)
        return self._loss_fn(logits.float(), labels), len(labels)

    def validate(self, model: nn.Module, rows: np.ndarray, precision: Precision,
                 ctx: DistContext) -> tuple[float, float]:
        probabilities, labels = predict_rows(model, self.cache, rows, self.config.eval_batch_size, precision, ctx)
        return _bce(labels, probabilities), _auc(labels, probabilities, "validation split")

    def record(self) -> dict:
        return {"pos_weight": self.pos_weight}


# Task name -> class, or "module:class" imported when chosen (the lesion task lives with the lesion package).
TASKS: dict[str, type | str] = {"classify": ClassifierTask, "lesion": "bonescan.lesions.task:LesionTask"}


def make_task(config: TrainConfig, cache: ArrayCache, manifest: pd.DataFrame, train_rows: np.ndarray,
              ctx: DistContext, progress: bool):
    """The training task `config.task` names, set up for this cache."""
    entry = TASKS.get(config.task)
    if entry is None:
        raise ConfigError("--task", f"unknown task {config.task!r}; choose one of {', '.join(TASKS)}")
    if isinstance(entry, str):
        import importlib

        module, _, name = entry.partition(":")
        entry = getattr(importlib.import_module(module), name)
    return entry(config, cache, manifest, train_rows, ctx, progress)


def manifest_hash(manifest: pd.DataFrame) -> str:
    """SHA-256 of the manifest's case ids, study files, labels and splits: which data a run was trained on."""
    columns = [c for c in ("case_id", "path", "anterior", "posterior", "label", "split") if c in manifest.columns]
    table = manifest[columns].reset_index(drop=True).astype(object).where(manifest[columns].notna().values, "")
    table = table.astype(str)
    return hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()


def predict_rows(
    model: MultiViewNet,
    cache: ArrayCache,
    rows: np.ndarray,
    batch_size: int,
    precision: Precision,
    ctx: DistContext | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels of cache rows, in row order; under DDP each process scores a share."""
    ctx = ctx or DistContext()
    mine = rows[ctx.rank :: ctx.world_size]
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            batch = torch.from_numpy(np.asarray(cache.arrays[mine[start : start + batch_size]], np.float32))
            with precision.autocast():
                logits = model(batch.to(precision.device, non_blocking=True))
            outputs.append(torch.sigmoid(logits.float()).cpu().numpy())
    probabilities = np.concatenate(outputs) if outputs else np.zeros(0, np.float32)
    if ctx.active:
        gathered: list = [None] * ctx.world_size
        dist.all_gather_object(gathered, (mine.tolist(), probabilities.tolist()))
        by_row = {row: p for part_rows, part_probs in gathered for row, p in zip(part_rows, part_probs)}
        probabilities = np.array([by_row[int(r)] for r in rows], dtype=np.float64)
    return probabilities.astype(np.float64), cache.labels[rows]


def _train_epoch(
    net: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    loss_fn,
    precision: Precision,
    bar,
) -> float:
    net.train()
    total, count = 0.0, 0
    for batch in loader:
        optimizer.zero_grad(set_to_none=True)
        loss, n = loss_fn(net, batch, precision)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += float(loss.detach()) * n
        count += n
        bar.update(1)
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD with Nesterov momentum) with weight decay on weights only."""
    # No weight decay on norm layers and biases: decaying them only fights the normalisation.
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """Linear warm-up, then cosine decay to zero over the remaining steps (stepped once per batch)."""
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _pos_weight(cache: ArrayCache, rows: np.ndarray) -> float:
    labels = cache.labels[rows]
    positives = int((labels == 1).sum())
    return float((labels == 0).sum()) / max(positives, 1)


def _auc(labels: np.ndarray, probabilities: np.ndarray, what: str) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        raise ManifestError(what, "has only one class, so the AUC is undefined; it needs positive and negative cases")
    return float(roc_auc_score(labels, probabilities))


def _bce(labels: np.ndarray, probabilities: np.ndarray) -> float:
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def _mean_over_processes(value: float, ctx: DistContext, device: torch.device) -> float:
    if not ctx.active:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / ctx.world_size


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    digest = hashlib.blake2b(f"train:{seed}:{epoch}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _epoch_bar(epoch: int, epochs: int, steps: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not enabled, leave=True,
                file=sys.stderr)


def _check_splits(manifest: pd.DataFrame, source: str, needs_both_labels: bool = True) -> None:
    """Train and val rows present; for the classifier (validated by AUC) both labels in val."""
    if "split" not in manifest.columns:
        raise ManifestError(source, "no `split` column; training needs train and val rows (see `bonescan cohort split`)")
    if "label" not in manifest.columns:
        raise ManifestError(source, "no `label` (or `grade`) column")
    splits = manifest["split"].fillna("").astype(str)
    for name in ("train", "val"):
        if not (splits == name).any():
            raise ManifestError(source, f"no rows with split = {name!r}; training needs both train and val rows")
    val_labels = manifest.loc[splits == "val", "label"].unique()
    if needs_both_labels and len(val_labels) < 2:
        raise ManifestError(
            source, f"the val split has only label {val_labels[0]}, so the validation AUC is undefined; "
            "it needs positive and negative cases"
        )


def _split_rows(cache: ArrayCache, source: str, needs_both_labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    train_rows, val_rows = cache.rows("train"), cache.rows("val")
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise ManifestError(source, f"after skipping {len(cache.failures)} unreadable studies, no train or no val rows are left")
    if needs_both_labels and len(np.unique(cache.labels[val_rows])) < 2:
        raise ManifestError(source, "after skipping unreadable studies, the val split has one class: AUC undefined")
    return train_rows, val_rows


def _prepare_run_dir(paths: RunPaths, resume: bool, force: bool) -> dict | None:
    """Check the RUN folder against --resume / --force; return the checkpoint to resume from, if any."""
    holds_run = paths.config.exists() or paths.checkpoints.exists() or paths.metrics.exists()
    if resume:
        if not paths.last.is_file():
            raise RunError(paths.root, "nothing to resume: no checkpoints/last.pt")
        return load_checkpoint(paths.last)
    if holds_run and not force:
        raise RunError(paths.root, "already holds a training run; use --resume to continue it or --force to replace it")
    return None


def _clear_run(paths: RunPaths) -> None:
    for path in (paths.config, paths.metrics):
        path.unlink(missing_ok=True)
    shutil.rmtree(paths.checkpoints, ignore_errors=True)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by train(); RunError when missing, corrupt or of another format."""
    path = Path(path)
    if not path.is_file():
        raise RunError(path, "checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for a truncated or foreign file
        raise RunError(path, f"cannot read the checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT or "model" not in checkpoint:
        raise RunError(path, "not a bonescan checkpoint (or written by an incompatible version)")
    return checkpoint


def _save(path: Path, payload: dict) -> None:
    write_torch_atomic(path, payload)


def _best_checkpoint(model: nn.Module, config: TrainConfig, state: _TrainingState, digest: str, auc: float) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "kind": "best",
        "config": config.to_dict(),
        "epoch": state.epoch,
        "val_auc": auc,
        "manifest_hash": digest,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }


def _last_checkpoint(model, optimizer, scheduler, scaler, config: TrainConfig, state: _TrainingState, digest: str) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "kind": "last",
        "config": config.to_dict(),
        "epoch": state.epoch,
        "manifest_hash": digest,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "state": state.to_dict(),
        # For the record; resume reseeds from (seed, epoch, rank) and does not need them.
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
    }


def _run_record(config, cache, manifest, digest, manifest_path, ctx, precision, train_rows, val_rows, task_record) -> dict:
    import sklearn
    import torchvision

    return {
        "bonescan_version": __version__,
        "seed": config.seed,
        "settings": config.to_dict(),
        "manifest": {
            "path": str(Path(manifest_path).resolve()) if manifest_path else None,
            "sha256": digest,
            "rows": len(manifest),
            "train_cases": int(len(train_rows)),
            "val_cases": int(len(val_rows)),
            "val_positives": int(cache.labels[val_rows].sum()),
            "train_positives": int(cache.labels[train_rows].sum()),
            "cameras": manifest_cameras(manifest, [cache.case_ids[i] for i in train_rows]),
        },
        "preprocess": config.preprocess.to_dict(),
        "cache": {"key": cache.key, "folder": str(cache.folder), "skipped_studies": cache.failures},
        **task_record,
        "world_size": ctx.world_size,
        "device": str(precision.device),
        "precision": precision.name,
        "channels_last": precision.channels_last,
        "exact": config.exact,
        "onednn_max_cpu_isa": os.environ.get(ONEDNN_ISA_VARIABLE),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "command": sys.argv,
    }


def _init_distributed(config: TrainConfig) -> DistContext:
    """Join the torchrun job described by RANK / WORLD_SIZE, if any (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = config.device != "cpu" and torch.cuda.is_available()
    if not use_cuda:
        # Share the cores among the processes on this node instead of oversubscribing them.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    initialised_here = False
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        initialised_here = True
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, initialised_here=initialised_here)
