"""The lesion training task: what `bonescan train` does differently when `TrainConfig.task` is "lesion".

Loss per batch, over the studies with truth only (the others are counted in the log and stay out):
- regions: cross-entropy over background + 20 regions, per view (studies whose truth has region maps);
- hotspots: binary cross-entropy plus a soft Dice on the foreground (Dice keeps the few hot pixels, ~0.5 % of a
  view, from drowning in background);
- malignancy: binary cross-entropy inside true hotspots (metastasis 1, every other hotspot 0).
Validation score: the mean of the region Dice (averaged over the 20 regions) and the Dice of malignant hotspot
pixels (predicted hot and malignant against true metastasis pixels), on the validation split.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import ArrayCache
from ..device import Precision
from ..errors import ManifestError
from ..presets import TrainConfig
from ..train import DistContext
from .dataset import LesionScans, build_targets
from .network import HOTSPOT, MALIGNANCY, build_lesion_net
from .regions import N_LABELS


class LesionTask:
    """Skeletal regions + hotspots with malignancy, trained on the manifest's `truth` files."""

    score_name = "val_score"

    def __init__(self, config: TrainConfig, cache: ArrayCache, manifest: pd.DataFrame, train_rows: np.ndarray,
                 ctx: DistContext, progress: bool):
        self.config, self.cache = config, cache
        if ctx.is_main:
            self.targets = build_targets(cache, manifest)
        ctx.barrier()
        if not ctx.is_main:
            self.targets = build_targets(cache, manifest, build=False)
        without = int((~self.targets.has_truth[train_rows]).sum())
        if progress and ctx.is_main:
            print(f"lesion truth: {len(train_rows) - without} of {len(train_rows)} training studies; {without} "
                  "without truth stay out of the lesion loss"
                  + (f"; {len(self.targets.failures)} truth files unreadable" if self.targets.failures else ""),
                  file=sys.stderr)
        if without == len(train_rows):
            raise ManifestError("manifest", "no training study has lesion truth (a `truth` column naming .npz files "
                                            "written by `bonescan synth` or imported annotations)")

    def build_model(self, pretrained: str | None) -> nn.Module:
        return build_lesion_net(self.config.lesion)

    def dataset(self, rows: np.ndarray) -> LesionScans:
        return LesionScans(self.cache, self.targets, rows, self.config.augment, seed=self.config.seed)

    def loss(self, net: nn.Module, batch, precision: Precision) -> tuple[torch.Tensor, int]:
        images, regions, hot, weights = (t.to(precision.device, non_blocking=True) for t in batch)
        with precision.autocast():
            logits = net(images)
        return lesion_loss(logits.float(), regions, hot, weights), len(images)

    def validate(self, model: nn.Module, rows: np.ndarray, precision: Precision,
                 ctx: DistContext) -> tuple[float, float]:
        rows = rows[self.targets.has_truth[rows]]
        mine = rows[ctx.rank::ctx.world_size]
        sums = np.zeros(2 + 3 * N_LABELS + 3)  # loss, studies, region tp/fp/fn, malignant tp/fp/fn
        model.eval()
        dataset = LesionScans(self.cache, self.targets, mine)
        with torch.no_grad():
            for start in range(0, len(mine), self.config.eval_batch_size):
                items = [dataset[i] for i in range(start, min(start + self.config.eval_batch_size, len(mine)))]
                images, regions, hot, weights = (torch.stack(t).to(precision.device) for t in zip(*items))
                with precision.autocast():
                    logits = model(images).float()
                sums[0] += float(lesion_loss(logits, regions, hot, weights)) * len(images)
                sums[1] += len(images)
                sums[2:] += _overlaps(logits, regions, hot, weights).cpu().numpy()
        if ctx.active:
            import torch.distributed as dist

            total = torch.tensor(sums, dtype=torch.float64, device=precision.device)
            dist.all_reduce(total)
            sums = total.cpu().numpy()
        region = sums[2:2 + 3 * N_LABELS].reshape(3, N_LABELS)[:, 1:]
        region_dice = _dice(*region)
        malignant_dice = float(_dice(*sums[-3:]))
        present = region.sum(axis=0) > 0
        score = 0.5 * (float(region_dice[present].mean()) if present.any() else 0.0) + 0.5 * malignant_dice
        return float(sums[0] / max(sums[1], 1)), score

    def record(self) -> dict:
        return {"lesion_truth": {"studies_with_truth": int(self.targets.has_truth.sum()),
                                 "studies_without_truth": int((~self.targets.has_truth).sum()),
                                 "unreadable": self.targets.failures}}


def lesion_loss(logits: torch.Tensor, regions: torch.Tensor, hot: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Region CE + hotspot BCE and soft Dice + malignancy BCE, over the studies with truth (see the module doc)."""
    has_truth, has_regions = weights[:, 0], weights[:, 1]
    b, views = logits.shape[:2]
    flat = logits.reshape(b * views, *logits.shape[2:])
    study_weight = has_truth.repeat_interleave(views)
    region_weight = has_regions.repeat_interleave(views)
    per_view = F.cross_entropy(flat[:, :N_LABELS], regions.reshape(b * views, *regions.shape[2:]),
                               reduction="none").mean(dim=(1, 2))
    region_loss = (per_view * region_weight).sum() / region_weight.sum().clamp_min(1.0)
    truth_hot = (hot.reshape(b * views, *hot.shape[2:]) > 0).float()
    hot_logit = flat[:, HOTSPOT]
    bce = F.binary_cross_entropy_with_logits(hot_logit, truth_hot, reduction="none").mean(dim=(1, 2))
    mask = study_weight[:, None, None]
    probability = torch.sigmoid(hot_logit) * mask
    target = truth_hot * mask
    dice = 1.0 - (2.0 * (probability * target).sum() + 1.0) / (probability.sum() + target.sum() + 1.0)
    hot_loss = (bce * study_weight).sum() / study_weight.sum().clamp_min(1.0) + dice
    inside = truth_hot * mask
    malignant = (hot.reshape(b * views, *hot.shape[2:]) == 2).float()
    malignancy = F.binary_cross_entropy_with_logits(flat[:, MALIGNANCY], malignant, reduction="none")
    malignancy_loss = (malignancy * inside).sum() / inside.sum().clamp_min(1.0)
    return region_loss + hot_loss + malignancy_loss


def _overlaps(logits: torch.Tensor, regions: torch.Tensor, hot: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Summed true positives, false positives and false negatives per region label, then for malignant pixels."""
    predicted = logits[:, :, :N_LABELS].argmax(dim=2)
    keep = weights[:, 1].bool()
    predicted, truth = predicted[keep], regions[keep]
    p = F.one_hot(predicted.reshape(-1), N_LABELS).bool()
    t = F.one_hot(truth.reshape(-1), N_LABELS).bool()
    region = torch.stack([(p & t).sum(0), (p & ~t).sum(0), (~p & t).sum(0)]).reshape(-1).double()
    has = weights[:, 0].bool()
    malignant_pred = (logits[has][:, :, HOTSPOT] > 0) & (logits[has][:, :, MALIGNANCY] > 0)
    malignant_true = hot[has] == 2
    lesion = torch.stack([(malignant_pred & malignant_true).sum(), (malignant_pred & ~malignant_true).sum(),
                          (~malignant_pred & malignant_true).sum()]).double()
    return torch.cat([region, lesion])


def _dice(tp, fp, fn):
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)
