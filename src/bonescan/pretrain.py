"""A trunk for `--pretrained FILE` where ImageNet weights cannot be had, learned from bone scans themselves.

Two ways, both writing a state dict in torchvision's ResNet key layout with a one-channel `conv1` (and the
trunk's `stem_offset`), which `bonescan train --pretrained FILE` loads like ImageNet weights, plus FILE.json
recording how it was made:
- `contrastive_pretrain`: self-supervised on unlabelled studies (SimCLR: Chen et al., ICML 2020). Two augmented
  copies of each study (count resampling, gain, shift, zoom, mirror: `bonescan.data.augment_pair`, stronger than
  for supervised training); the trunk sees both views, each view's map is averaged, the two views are merged by
  an element-wise max as the classifier merges them, a two-layer projection follows, and the NT-Xent loss pulls a
  study's two copies together against the other studies of the batch. A short loop of our own: it reuses the
  classifier's trunk, cache and augmentations, where a contrastive library would bring its own.
- `export_trunk`: the trunk of a run trained with labels (e.g. `bonescan train` on a large synthetic cohort).
Pretraining runs in fp32 on the CPU or the GPU `device` names; a run is reproducible from its seed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .data import augment_pair, build_cache, sample_generator
from .errors import ConfigError, RunError
from .fileio import write_text_atomic, write_torch_atomic
from .model import MultiViewNet
from .presets import AugmentConfig, preset_config

# Contrastive views must differ more than supervised augmentations do, or the task is trivial (SimCLR's finding
# that augmentation strength matters more for contrastive than for supervised learning).
CONTRASTIVE_AUGMENT = AugmentConfig(gain=0.3, poisson_probability=0.8, poisson_peak=(20.0, 250.0), shift=0.08,
                                    scale=0.15, flip_probability=0.5)


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of a contrastive pretraining run; the network and input size come from `preset`."""

    preset: str = "cpu-small"
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    projection_dim: int = 128
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 4:
            raise ConfigError("pretrain settings", "epochs must be >= 1 and batch size >= 4 (contrastive "
                                                   "learning needs other studies in the batch)")
        if not (self.lr > 0 and self.temperature > 0):
            raise ConfigError("pretrain settings", "lr and temperature must be > 0")


@dataclass
class PretrainResult:
    """Where the trunk went and how training went."""

    weights: Path
    studies: int
    losses: list[float]  # mean NT-Xent per epoch
    positive_top1: list[float]  # share of studies whose nearest copy in the batch is their own, per epoch
    seconds: float
    failures: list[dict]


class ContrastiveNet(nn.Module):
    """The classifier's trunk, view max, and a projection head (discarded after pretraining)."""

    def __init__(self, trunk_source: MultiViewNet, projection_dim: int):
        super().__init__()
        self.net = trunk_source
        channels = trunk_source.trunk.out_channels
        self.projection = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True),
                                        nn.Linear(channels, projection_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_view = self.net.view_features(x).mean(dim=(3, 4))  # B x V x C
        return self.projection(per_view.amax(dim=1))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, float]:
    """NT-Xent loss of paired embeddings (row i of z1 and of z2 are one study) and the positive top-1 rate."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))  # a copy is not its own negative nor its own positive
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    top1 = float((similarity.argmax(dim=1) == targets).float().mean())
    return F.cross_entropy(similarity, targets), top1


def contrastive_pretrain(table: pd.DataFrame, out: str | Path, config: PretrainConfig = PretrainConfig(),
                         cache_dir: str | Path | None = None, progress: bool = True) -> PretrainResult:
    """Pretrain the preset's trunk on the studies of `table` (case_id + path or anterior/posterior; labels unused)."""
    out = Path(out)
    base = preset_config(config.preset)
    started = time.perf_counter()
    unlabelled = table.drop(columns=[c for c in ("label", "grade") if c in table.columns])
    cache = build_cache(unlabelled.reset_index(drop=True), base.preprocess, cache_dir, progress=progress)
    if len(cache) < config.batch_size:
        raise ConfigError("pretrain studies", f"{len(cache)} readable studies; contrastive pretraining needs at "
                                              f"least one batch ({config.batch_size})")
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = ContrastiveNet(MultiViewNet(base.model), config.projection_dim).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(cache) // config.batch_size  # full batches only: NT-Xent's negatives stay comparable
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps_per_epoch * config.epochs)
    losses, top1s = [], []
    from tqdm import tqdm

    for epoch in range(config.epochs):
        order = np.random.default_rng([config.seed, epoch]).permutation(len(cache))
        model.train()
        epoch_loss, epoch_top1 = [], []
        bar = tqdm(range(steps_per_epoch), desc=f"pretrain epoch {epoch + 1}/{config.epochs}", disable=not progress,
                   leave=False)
        for step in bar:
            rows = order[step * config.batch_size:(step + 1) * config.batch_size]
            copies = [_augmented(cache, rows, CONTRASTIVE_AUGMENT, config.seed, 2 * epoch + k).to(device) for k in (0, 1)]
            loss, top1 = nt_xent(model(copies[0]), model(copies[1]), config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            epoch_loss.append(float(loss.detach()))
            epoch_top1.append(top1)
            bar.set_postfix(loss=f"{epoch_loss[-1]:.3f}")
        losses.append(float(np.mean(epoch_loss)))
        top1s.append(float(np.mean(epoch_top1)))
        if not math.isfinite(losses[-1]):
            raise RunError(out, f"contrastive loss became {losses[-1]} in epoch {epoch + 1}; lower --lr")
    seconds = time.perf_counter() - started
    record = {"method": "contrastive (SimCLR NT-Xent)", "settings": asdict(config), "studies": len(cache),
              "augment": CONTRASTIVE_AUGMENT.to_dict(), "model": base.model.to_dict(),
              "preprocess": base.preprocess.to_dict(), "loss_per_epoch": losses, "positive_top1_per_epoch": top1s,
              "seconds": round(seconds, 1), "failures": cache.failures}
    _save_trunk(model.net, out, record)
    return PretrainResult(out, len(cache), losses, top1s, seconds, cache.failures)


def export_trunk(run_dir: str | Path, out: str | Path, checkpoint: str = "best") -> Path:
    """Write the trunk of a trained run as a `--pretrained` file."""
    from .inference import load_run

    loaded = load_run(run_dir, checkpoint)
    record = {"method": "supervised (trunk of a trained run)", "run": str(Path(run_dir).resolve()),
              "checkpoint": str(loaded.checkpoint_path), "epoch": loaded.epoch, "val_auc": loaded.val_auc,
              "model": loaded.config.model.to_dict(), "preprocess": loaded.preprocess_cfg.to_dict()}
    return _save_trunk(loaded.model.cpu(), Path(out), record)


def _augmented(cache, rows: np.ndarray, augment: AugmentConfig, seed: int, stream: int) -> torch.Tensor:
    pairs = []
    for row in rows:
        pair = torch.from_numpy(np.asarray(cache.arrays[int(row)], dtype=np.float32))
        pairs.append(augment_pair(pair, augment, sample_generator(seed, stream, int(row))))
    return torch.stack(pairs)


def _save_trunk(model: MultiViewNet, out: Path, record: dict) -> Path:
    state = {key: value.detach().cpu().contiguous() for key, value in model.trunk.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_torch_atomic(out, state)
    record = {**record, "backbone": model.config.backbone, "trunk_width": model.config.trunk_width,
              "use": f"bonescan train --pretrained {out} (same backbone and trunk width)"}
    write_text_atomic(out.with_name(out.name + ".json"), json.dumps(record, indent=2, default=str) + "\n")
    return out
