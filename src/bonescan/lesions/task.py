"""The lesion training task: what `bonescan train` does differently when `TrainConfig.task` is "lesion".

Loss per batch, over the studies with truth only (the others are counted in the log and stay out):
- regions: cross-entropy plus a soft Dice averaged over the regions present (studies whose truth has region maps);
- hotspot map (any hotspot): binary cross-entropy plus a soft Dice over the batch (Dice keeps the few hot pixels,
  ~0.5 % of a view, from drowning in background);
- metastasis map: P(pixel belongs to a metastasis), its own cross-entropy (metastasis pixels weighted
  METASTASIS_WEIGHT, up to SMALL_LESION_MAX_BOOST times more in small lesions, non-metastatic hotspots
  OTHER_HOTSPOT_WEIGHT as the hard negatives) plus a soft Dice on metastasis pixels only. Separate from the hotspot
  map on purpose: with one Dice over all hotspots, kidneys and bladder (~160 network pixels each against ~20 for a
  metastasis) dominate and metastases are never learned (measured). The map is unconditional (not "malignant if
  hot"), so a spurious blob the hotspot map finds still gets a low malignancy.
Pixels marked IGNORE (the band around a box of box-only truth, see `annotations.box_supervision`) count in neither.
Validation score, on the validation split: the mean of the region Dice (averaged over the 20 regions) and the
sensitivity for metastases at <= 1 false positive per study, at network size (`lesion_detections`): the goal's
measure, so the kept checkpoint is the one that finds most lesions at the false-positive budget. A pixel Dice of the
metastasis map rewards outlining large lesions over finding small ones; an F1 at one threshold misses a map that is
mildly raised all over the skeleton (a camera it was not trained on), which floods the hotspot finder's candidates.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage

from ..data import ArrayCache
from ..device import Precision
from ..errors import ConfigError, ManifestError, RunError
from ..presets import TrainConfig
from ..train import DistContext
from .dataset import IGNORE, LesionScans, build_targets
from .infer import METASTASIS_CANDIDATE
from .network import HOTSPOT, MALIGNANCY, build_lesion_net
from .regions import N_LABELS

# Pixel weights of the metastasis map's cross-entropy: hotspots that are not metastases (kidneys, bladder, injection
# sites, benign uptake) are its hard negatives; metastasis pixels weigh more so the rare positives are not drowned,
# but far from the ~1,000x of full class balance, which paints the whole skeleton (measured).
OTHER_HOTSPOT_WEIGHT = 2.0
METASTASIS_WEIGHT = 5.0
# Small metastases weigh more: a metastasis pixel's weight is multiplied by SMALL_LESION_FRACTION / (metastasis
# share of its SMALL_LESION_WINDOW^2 neighbourhood), between 1 and SMALL_LESION_MAX_BOOST. Inside a large lesion
# the share is ~1 (no boost); a lesion of 6 network pixels has a share of ~0.12 and weighs 4x per pixel, so it
# counts in the loss about as much as a lesion of 25 pixels instead of a quarter of it.
SMALL_LESION_WINDOW = 7
SMALL_LESION_FRACTION = 0.5
SMALL_LESION_MAX_BOOST = 4.0
# Validation counts lesion and false-positive scores in bins, so DDP ranks can sum them. The bins are even in the
# logit, not in the probability: a confident network puts its best lesions and its worst false positives above
# 0.99, and with bins of 0.01 no threshold separated them (sensitivity at 1 FP read as 0, the validation score
# halved to the region Dice, on 6 of 38 epochs of wide networks trained in bf16).
SCORE_BINS = 320
SCORE_LOGITS = (-2.0, 30.0)  # candidates start at probability 0.2 (logit -1.4); higher logits share the last bin


def warm_start_weights(pretrained: str | Path, config: TrainConfig) -> dict[str, torch.Tensor]:
    """The weights of an earlier lesion run (its folder: best checkpoint; or a checkpoint file) to start from.

    Training on from them with a fresh schedule (a warm restart) or on another site's studies; ConfigError naming
    --pretrained when the file is not a lesion run's or its network differs from this run's.
    """
    from ..train import RunPaths, load_checkpoint

    path = Path(pretrained)
    if str(pretrained) == "imagenet":
        raise ConfigError("--pretrained imagenet", "the lesion network has no ImageNet weights; give an earlier "
                                                   "lesion run (its folder or a checkpoint file), or leave it out")
    try:
        checkpoint = load_checkpoint(RunPaths(path).best if path.is_dir() else path)
    except RunError as error:
        raise ConfigError(f"--pretrained {pretrained}", error.reason) from None
    earlier = TrainConfig.from_dict(checkpoint["config"])
    if earlier.task != "lesion":
        raise ConfigError(f"--pretrained {pretrained}", f"is a {earlier.task!r} run, not a lesion run")
    shape = (config.lesion.channels, config.lesion.residual_units)  # what the weights must fit; dropout may differ
    if (earlier.lesion.channels, earlier.lesion.residual_units) != shape:
        raise ConfigError(f"--pretrained {pretrained}", f"its lesion network {earlier.lesion.to_dict()} differs "
                                                        f"from this run's {config.lesion.to_dict()}")
    return checkpoint["model"]


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
        net = build_lesion_net(self.config.lesion)
        if pretrained:
            net.load_state_dict(warm_start_weights(pretrained, self.config))
        return net

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
        # loss, studies, region tp/fp/fn, histograms of found-lesion and false-positive scores, lesions
        sums = np.zeros(2 + 3 * N_LABELS + 2 * SCORE_BINS + 1)
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
        found, false = sums[2 + 3 * N_LABELS:-1].reshape(2, SCORE_BINS)
        sensitivity = sensitivity_at_one_fp(found, false, sums[-1], sums[1])
        present = region.sum(axis=0) > 0
        score = 0.5 * (float(region_dice[present].mean()) if present.any() else 0.0) + 0.5 * sensitivity
        return float(sums[0] / max(sums[1], 1)), score

    def record(self) -> dict:
        return {"lesion_truth": {"studies_with_truth": int(self.targets.has_truth.sum()),
                                 "studies_without_truth": int((~self.targets.has_truth).sum()),
                                 "unreadable": self.targets.failures}}


def lesion_loss(logits: torch.Tensor, regions: torch.Tensor, hot: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Region CE + soft Dice, hotspot BCE + Dice, metastasis weighted BCE + Dice (see the module doc).

    Computed pixels first, classes last (batch, rows, columns, views, channels): the network's channels-last output
    is laid out so already, so its maps are read in place rather than copied (the whole output, ~100 MB at batch 8
    and 512 x 128, was copied twice per step before)."""
    has_truth, has_regions = weights[:, 0].bool(), weights[:, 1].bool()
    pixels = logits.permute(0, 3, 4, 1, 2)  # B, H, W, views, channels

    def pixel_order(maps: torch.Tensor) -> torch.Tensor:  # B x views x H x W -> the order of `pixels`
        return maps.permute(0, 2, 3, 1)

    def of(studies: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:  # a copy only when some are left out
        return maps if bool(studies.all()) else maps[studies]

    region_loss = logits.new_zeros(())
    if has_regions.any():
        region_logits = of(has_regions, pixels[..., :N_LABELS]).reshape(-1, N_LABELS)
        region_truth = pixel_order(of(has_regions, regions)).reshape(-1)
        # one softmax for both terms: cross-entropy is the negative log-likelihood of the log-softmax
        log_probability = F.log_softmax(region_logits, dim=1)
        region_loss = F.nll_loss(log_probability, region_truth) + _region_dice_loss(log_probability.exp(),
                                                                                    region_truth)
    if not has_truth.any():
        return region_loss
    hot = of(has_truth, hot)
    counted = (hot != IGNORE).float()
    any_hot, metastasis = ((hot == 1) | (hot == 2)).float(), (hot == 2).float()
    boost = small_lesion_boost(metastasis.flatten(0, 1)).view_as(metastasis)
    weight = counted * (1.0 + (OTHER_HOTSPOT_WEIGHT - 1.0) * (hot == 1).float()
                        + (METASTASIS_WEIGHT * boost - 1.0) * metastasis)
    counted, any_hot, metastasis, weight = (pixel_order(t) for t in (counted, any_hot, metastasis, weight))
    hot_loss = _bce_and_dice(of(has_truth, pixels[..., HOTSPOT]), any_hot, counted, counted)
    metastasis_loss = _bce_and_dice(of(has_truth, pixels[..., MALIGNANCY]), metastasis, weight, counted)
    return region_loss + hot_loss + metastasis_loss


def small_lesion_boost(metastasis: torch.Tensor) -> torch.Tensor:
    """Per-pixel factor (>= 1) for the metastasis pixels of N x H x W truth: larger where the lesion is small."""
    share = F.avg_pool2d(metastasis[:, None], SMALL_LESION_WINDOW, stride=1, padding=SMALL_LESION_WINDOW // 2,
                         count_include_pad=True)[:, 0]
    return (SMALL_LESION_FRACTION / share.clamp_min(1e-3)).clamp(1.0, SMALL_LESION_MAX_BOOST)


def _bce_and_dice(logit: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                  counted: torch.Tensor) -> torch.Tensor:
    """Pixel-weighted mean binary cross-entropy plus 1 - soft Dice over the batch (IGNORE pixels out of both)."""
    bce = F.binary_cross_entropy_with_logits(logit, target, weight=weight, reduction="sum") / counted.sum().clamp_min(1)
    probability = torch.sigmoid(logit) * counted
    dice = (2.0 * (probability * target).sum() + 1.0) / (probability.sum() + target.sum() + 1.0)
    return bce + 1.0 - dice


def _region_dice_loss(probability: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the region classes present in the batch (background excluded), from pixels x classes
    probabilities and the pixels' labels: small bones weigh as much as the skull, which cross-entropy alone lets
    them not do."""
    overlap = class_overlap(probability, truth, one_hot=probability.is_cuda)[1:]
    target = torch.bincount(truth, minlength=N_LABELS)[1:].to(probability.dtype)
    total = probability.sum(dim=0)[1:] + target
    present = target > 0
    dice = (2.0 * overlap + 1.0) / (total + 1.0)
    return 1.0 - dice[present].mean() if present.any() else probability.new_zeros(())


def class_overlap(probability: torch.Tensor, truth: torch.Tensor, one_hot: bool) -> torch.Tensor:
    """Each class's probability summed over the pixels labelled with it (pixels x classes, labels).

    On the CPU a gather and an index sum: no pixels x classes one-hot temporaries, 4x faster forward and 2x
    backward at 512 x 128 than the product with a one-hot target (a third of a training step of the wider network
    before). `one_hot` keeps the product where CUDA would add the gather's gradient and the index sum atomically,
    in an order that varies between runs (a GPU run then repeats as before; the product costs little there)."""
    if one_hot:
        return (probability * F.one_hot(truth, N_LABELS).to(probability.dtype)).sum(dim=0)
    on_truth = probability.gather(1, truth[:, None])[:, 0]
    return probability.new_zeros(N_LABELS).index_add(0, truth, on_truth)


def _overlaps(logits: torch.Tensor, regions: torch.Tensor, hot: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Summed true positives, false positives and false negatives per region label, then for malignant pixels."""
    predicted = logits[:, :, :N_LABELS].argmax(dim=2)
    keep = weights[:, 1].bool()
    predicted, truth = predicted[keep], regions[keep]
    p = F.one_hot(predicted.reshape(-1), N_LABELS).bool()
    t = F.one_hot(truth.reshape(-1), N_LABELS).bool()
    region = torch.stack([(p & t).sum(0), (p & ~t).sum(0), (~p & t).sum(0)]).reshape(-1).double()
    has = weights[:, 0].bool()
    # float64: in float32 every logit above ~17 is probability 1.0, and the score bins reach 30
    probability_maps = torch.sigmoid(logits[has][:, :, MALIGNANCY].double()).cpu().numpy()
    truth_maps = hot[has].cpu().numpy()
    found, false, lesions = np.zeros(SCORE_BINS), np.zeros(SCORE_BINS), 0
    for probability, truth in zip(probability_maps.reshape(-1, *probability_maps.shape[-2:]),
                                  truth_maps.reshape(-1, *truth_maps.shape[-2:])):
        lesion_scores, false_scores = lesion_detections(probability, truth)
        found += _histogram(lesion_scores[lesion_scores >= 0])
        false += _histogram(false_scores)
        lesions += lesion_scores.size
    detection = torch.from_numpy(np.concatenate([found, false, [lesions]])).to(region.device)
    return torch.cat([region, detection])


def lesion_detections(probability: np.ndarray, hot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score of each true metastasis, scores of the false positives) of one view at network size.

    Candidates are the connected groups of the metastasis map >= METASTASIS_CANDIDATE, as the hotspot finder takes
    them, each scored by its peak. True metastases are the connected groups of `hot` == 2; a candidate on truth
    finds the one it overlaps most (a candidate over several touching metastases finds one, as a hotspot's centroid
    hits one), and a metastasis scores the best candidate that found it (-1: none). A candidate touching no
    metastasis and no IGNORE pixel is a false positive.
    """
    eight = np.ones((3, 3), bool)
    truth, n_truth = ndimage.label(hot == 2, structure=eight)
    groups, n_groups = ndimage.label(probability >= METASTASIS_CANDIDATE, structure=eight)
    lesion_scores = np.full(n_truth, -1.0)
    if n_groups == 0:
        return lesion_scores, np.zeros(0)
    peaks = np.asarray(ndimage.maximum(probability, groups, np.arange(1, n_groups + 1)))
    both = (groups > 0) & (truth > 0)
    pairs, overlap = np.unique(groups[both].astype(np.int64) * (n_truth + 1) + truth[both], return_counts=True)
    group_of, truth_of = pairs // (n_truth + 1), pairs % (n_truth + 1)
    order = np.lexsort((-overlap, group_of))  # per candidate, its largest overlap first
    first = np.unique(group_of[order], return_index=True)[1]
    for group, lesion in zip(group_of[order][first], truth_of[order][first]):
        lesion_scores[lesion - 1] = max(lesion_scores[lesion - 1], peaks[group - 1])
    explained = np.zeros(n_groups + 1, bool)
    explained[groups[(groups > 0) & ((hot == 2) | (hot == IGNORE))]] = True
    return lesion_scores, peaks[~explained[1:]]


def sensitivity_at_one_fp(found: np.ndarray, false: np.ndarray, lesions: float, studies: float) -> float:
    """Sensitivity at <= 1 false positive per study from score histograms (`_histogram`): the best over
    thresholds at the bins' lower edges, as the FROC curve is read (`evaluate.froc`)."""
    if lesions <= 0:
        return 0.0
    found_above = np.cumsum(found[::-1])[::-1]  # lesions scored in this bin or higher
    false_above = np.cumsum(false[::-1])[::-1]
    allowed = false_above <= max(studies, 1.0)
    return float(found_above[allowed].max() / lesions) if allowed.any() else 0.0


def _histogram(scores: np.ndarray) -> np.ndarray:
    """Counts of probabilities in SCORE_BINS bins even in their logit over SCORE_LOGITS (see there)."""
    p = np.clip(np.asarray(scores, np.float64), 1e-300, 1.0)
    with np.errstate(divide="ignore"):
        logits = np.log(p) - np.log1p(-p)  # +inf at exactly 1: the last bin
    low, high = SCORE_LOGITS
    index = np.floor((np.clip(logits, low, high) - low) / (high - low) * SCORE_BINS).astype(np.int64)
    return np.bincount(np.minimum(index, SCORE_BINS - 1), minlength=SCORE_BINS)


def _dice(tp, fp, fn):
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)
