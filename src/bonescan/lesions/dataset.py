"""Lesion truth in the network's geometry, cached beside the image cache, and the Dataset the lesion task trains on.

Targets per cached study and view, at the preprocessed size (posterior mirrored like the images):
- `regions` uint8: skeletal-region labels, sampled at the pixel centres (nearest);
- `hot` uint8: 0 background, 1 hotspot that is not a metastasis (benign, artifact, physiological), 2 metastasis,
  3 (IGNORE) neither: the band around a box of box-only truth, which may or may not be lesion. A network pixel is
  hot when at least a quarter of its area is, so a lesion a few stored pixels wide survives the downscaling.
  Box-only truth (`truth.boxes`) trains through `annotations.box_supervision`: each box's core is the hotspot,
  the band around its edge is ignored, the rest is background.
Studies without truth (no `truth` column, or an empty cell) keep weight 0 in every lesion loss; box-only truth
(`has_regions` false) keeps weight 0 in the region loss only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..errors import AnnotationError
from ..data import ArrayCache, CachedScans, augment_pair, sample_generator
from ..fileio import atomic_path, write_text_atomic
from ..presets import AugmentConfig
from ..preprocess import PreprocessConfig
from .annotations import box_supervision
from .regions import FLIP_LABELS
from .truth import load_truth

HOT_FRACTION = 0.25
IGNORE = 3
TARGETS_FORMAT = 2  # part of the targets folder name: a new format rebuilds the targets


@dataclass
class LesionTargets:
    """Per-row lesion targets of an ArrayCache (memory-mapped) and which rows have truth."""

    regions: np.ndarray  # N x 2 x H x W uint8
    hot: np.ndarray  # N x 2 x H x W uint8
    has_truth: np.ndarray  # N bool
    has_regions: np.ndarray  # N bool
    failures: list[dict]


def targets_in_network_geometry(regions: np.ndarray, instances: np.ndarray, malignant_ids: Sequence[int],
                                preprocess: PreprocessConfig,
                                ignore: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(regions, hot) [2, h, w] uint8 from stored-size [2, H, W] truth, laid out as the preprocessed images.

    `ignore` [2, H, W] bool: stored pixels that are neither lesion nor background; network pixels that are not hot
    and touch one become IGNORE."""
    regions, instances = np.asarray(regions), np.asarray(instances)
    ignore = np.zeros(instances.shape, bool) if ignore is None else np.asarray(ignore, bool)
    if preprocess.mirror_posterior:
        regions = np.stack([regions[0], regions[1, :, ::-1]])
        instances = np.stack([instances[0], instances[1, :, ::-1]])
        ignore = np.stack([ignore[0], ignore[1, :, ::-1]])
    rows, cols = regions.shape[1:]
    h, w = preprocess.height, preprocess.width
    r = np.clip(((np.arange(h) + 0.5) * rows / h).astype(np.int64), 0, rows - 1)
    c = np.clip(((np.arange(w) + 0.5) * cols / w).astype(np.int64), 0, cols - 1)
    small_regions = regions[:, r][:, :, c]
    masks = torch.from_numpy(np.stack([instances > 0, np.isin(instances, list(malignant_ids)), ignore])
                             .astype(np.float32))
    area = F.interpolate(masks.reshape(6, 1, rows, cols), size=(h, w), mode="area").reshape(3, 2, h, w).numpy()
    hot = np.where(area[1] >= HOT_FRACTION, 2, np.where(area[0] >= HOT_FRACTION, 1,
                                                         np.where(area[2] > 0, IGNORE, 0))).astype(np.uint8)
    return small_regions.astype(np.uint8), hot


def build_targets(cache: ArrayCache, manifest: pd.DataFrame, build: bool = True) -> LesionTargets:
    """Lesion targets of every cache row from the manifest's `truth` column, built once and reused.

    The folder name hashes the cache key and every truth file's (path, size, mtime); `build=False` only opens it
    (the other processes of a DDP job, after rank 0 built it).
    """
    paths = _truth_paths(cache, manifest)
    stamps = []
    for path in paths:
        try:
            stat = os.stat(path) if path else None
        except OSError:
            stat = None
        stamps.append([path, stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    digest = hashlib.sha256(json.dumps([TARGETS_FORMAT, cache.key, stamps]).encode()).hexdigest()[:16]
    folder = cache.folder / f"lesions-{digest}"
    if build and not (folder / "index.json").is_file():
        _write_targets(folder, cache, paths)
    index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    return LesionTargets(np.load(folder / "regions.npy", mmap_mode="r"), np.load(folder / "hot.npy", mmap_mode="r"),
                         np.array(index["has_truth"], bool), np.array(index["has_regions"], bool), index["failures"])


def _truth_paths(cache: ArrayCache, manifest: pd.DataFrame) -> list[str]:
    if "truth" not in manifest.columns:
        return [""] * len(cache)
    by_case = {str(k): v for k, v in zip(manifest["case_id"], manifest["truth"])}
    return [v if isinstance(v, str) else "" for v in (by_case.get(case) for case in cache.case_ids)]


def _write_targets(folder: Path, cache: ArrayCache, paths: list[str]) -> None:
    h, w = cache.preprocess.height, cache.preprocess.width
    regions = np.zeros((len(cache), 2, h, w), np.uint8)
    hot = np.zeros((len(cache), 2, h, w), np.uint8)
    has_truth, has_regions, failures = [False] * len(cache), [False] * len(cache), []
    for row, path in enumerate(paths):
        if not path:
            continue
        try:
            truth = load_truth(path)
        except AnnotationError as error:
            failures.append({"case_id": cache.case_ids[row], "source": path, "reason": str(error)})
            continue
        malignant = [i + 1 for i, c in enumerate(truth.category) if c == "metastasis"]
        instances, ignore = box_supervision(truth)
        regions[row], hot[row] = targets_in_network_geometry(truth.regions, instances, malignant, cache.preprocess,
                                                             ignore)
        # Region-only truth (no findings annotated) teaches regions only; the lesion losses leave it out.
        has_truth[row], has_regions[row] = truth.has_findings, truth.has_regions
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in (("regions", regions), ("hot", hot)):
        with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as handle:
            np.save(handle, array)
    # The index is written last: a folder with index.json is complete.
    write_text_atomic(folder / "index.json", json.dumps({"has_truth": has_truth, "has_regions": has_regions,
                                                         "failures": failures}))


class LesionScans(CachedScans):
    """(images 2 x H x W, regions 2 x H x W, hot 2 x H x W, weights [has_truth, has_regions]) for chosen rows.

    Augmentation: the scan-level intensity changes of `augment_pair` (count statistics, gain), then a left-right
    flip (region labels swap sides) and a shift by whole pixels, applied to images and targets alike. Random
    streams are per (seed, epoch, row), as for the classifier, so a resumed run repeats its samples.
    """

    def __init__(self, cache: ArrayCache, targets: LesionTargets, rows: Sequence[int],
                 augment: AugmentConfig | None = None, seed: int = 0):
        super().__init__(cache, rows, augment, seed)
        self.targets = targets
        # Geometry is applied here to images and targets together; augment_pair only changes intensities.
        self.intensity = None if augment is None else replace(augment, shift=0.0, scale=0.0, flip_probability=0.0)

    def __getitem__(self, index: int):
        row = int(self.rows[index])
        pair = torch.from_numpy(np.asarray(self.cache.arrays[row], dtype=np.float32))
        regions = torch.from_numpy(np.asarray(self.targets.regions[row], dtype=np.int64))
        hot = torch.from_numpy(np.asarray(self.targets.hot[row], dtype=np.int64))
        if self.augment is not None and self.augment.enabled:
            generator = sample_generator(self.seed, self.epoch, row)
            pair = augment_pair(pair, self.intensity, generator)
            if float(torch.rand((), generator=generator)) < self.augment.flip_probability:
                pair, hot = pair.flip(-1), hot.flip(-1)
                regions = torch.from_numpy(FLIP_LABELS)[regions.flip(-1)]
            h, w = pair.shape[-2:]
            dy = int(round(float(torch.rand((), generator=generator) * 2 - 1) * self.augment.shift * h))
            dx = int(round(float(torch.rand((), generator=generator) * 2 - 1) * self.augment.shift * w))
            pair, regions, hot = (_shift(t, dy, dx) for t in (pair, regions, hot))
        weights = torch.tensor([float(self.targets.has_truth[row]), float(self.targets.has_regions[row])])
        return pair, regions, hot, weights


def _shift(tensor: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the content by (dy, dx) pixels, filling with zeros (background, label 0)."""
    out = torch.zeros_like(tensor)
    h, w = tensor.shape[-2:]
    src_r, dst_r = slice(max(-dy, 0), h - max(dy, 0)), slice(max(dy, 0), h - max(-dy, 0))
    src_c, dst_c = slice(max(-dx, 0), w - max(dx, 0)), slice(max(dx, 0), w - max(-dx, 0))
    out[..., dst_r, dst_c] = tensor[..., src_r, src_c]
    return out
