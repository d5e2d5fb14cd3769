"""A trained run for inference: load its checkpoint, score preprocessed arrays or a manifest's studies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .data import build_cache
from .device import Precision, choose_precision, select_device
from .errors import ConfigError, RunError
from .model import MultiViewNet
from .preprocess import PreprocessConfig
from .presets import TrainConfig
from .train import RunPaths, load_checkpoint, predict_rows


@dataclass
class LoadedRun:
    """A network in eval mode with the settings it was trained with."""

    model: MultiViewNet
    config: TrainConfig
    preprocess_cfg: PreprocessConfig
    checkpoint_path: Path
    epoch: int
    val_auc: float | None
    precision: Precision


def load_run(
    run_dir: str | Path, checkpoint: str = "best", device: str = "cpu", precision: str = "fp32"
) -> LoadedRun:
    """Load RUN/checkpoints/<checkpoint>.pt ("best" or "last") or a checkpoint file path into an eval-mode model."""
    run_dir = Path(run_dir)
    if checkpoint in ("best", "last"):
        if not run_dir.is_dir():
            raise RunError(run_dir, "run folder not found")
        paths = RunPaths(run_dir)
        path = paths.best if checkpoint == "best" else paths.last
    else:
        path = Path(checkpoint)
    payload = load_checkpoint(path)
    try:
        config = TrainConfig.from_dict(payload["config"])
    except (KeyError, TypeError) as error:
        raise RunError(path, f"checkpoint settings are incomplete or of another version ({error})") from error
    model = MultiViewNet(config.model)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunError(path, f"weights do not fit the network in its settings ({first})") from error
    chosen = choose_precision(select_device(device), precision)
    model = model.to(chosen.device).eval()
    if chosen.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return LoadedRun(
        model=model,
        config=config,
        preprocess_cfg=config.preprocess,
        checkpoint_path=path,
        epoch=int(payload.get("epoch", 0)),
        val_auc=payload.get("val_auc"),
        precision=chosen,
    )


def predict_arrays(loaded: LoadedRun, arrays: np.ndarray | torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """Probabilities of metastasis for N x 2 x H x W preprocessed arrays (the run's input size)."""
    arrays = torch.as_tensor(np.asarray(arrays) if not isinstance(arrays, torch.Tensor) else arrays)
    expected = (2, loaded.preprocess_cfg.height, loaded.preprocess_cfg.width)
    if arrays.dim() != 4 or tuple(arrays.shape[1:]) != expected:
        raise ConfigError(
            "arrays", f"expected N x {expected[0]} x {expected[1]} x {expected[2]} (this run's input), "
            f"got {tuple(arrays.shape)}"
        )
    outputs = []
    with torch.no_grad():
        for start in range(0, len(arrays), batch_size):
            batch = arrays[start : start + batch_size].to(loaded.precision.device, torch.float32)
            with loaded.precision.autocast():
                logits = loaded.model(batch)
            outputs.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(outputs).astype(np.float64) if outputs else np.zeros(0)


def predict_manifest(
    run: str | Path | LoadedRun,
    manifest: pd.DataFrame,
    split: str | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Score a manifest's studies (one split, or all): DataFrame[case_id, probability] (+ label when known).

    Studies go through the same array cache as training. Studies that fail to read are left out; they are
    listed in the result's `attrs["failures"]`.
    """
    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    table = manifest
    if split is not None:
        if "split" not in manifest.columns:
            raise ConfigError("split", f"the manifest has no split column, so split={split!r} selects nothing")
        table = manifest[manifest["split"] == split]
        if table.empty:
            raise ConfigError("split", f"no manifest rows with split = {split!r}")
    if loaded.preprocess_cfg.region is not None:  # a region run scores only its region's crops
        from .crops import select_region

        table = select_region(table, loaded.preprocess_cfg.region)
    cache = build_cache(table.reset_index(drop=True), loaded.preprocess_cfg, cache_dir)
    rows = cache.rows()
    probabilities, labels = predict_rows(loaded.model, cache, rows, batch_size, loaded.precision)
    result = pd.DataFrame({"case_id": [cache.case_ids[r] for r in rows], "probability": probabilities})
    if (labels >= 0).all() and len(labels):
        result["label"] = labels
    result.attrs["failures"] = cache.failures
    return result
