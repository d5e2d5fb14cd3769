"""Region crops as network input: the body regions of crops, their input sizes, the crop rule, region runs.

Public sets such as BS-80K also ship automatic crops of body regions, one anterior and one posterior crop per
patient and region, each with its own label (abnormal when a metastasis box falls inside the region). A region is
a body part plus the side where there are two: the names are BS-80K's (`vertbra` spelled as in the set).

A study of a declared region is read with the crop rule below instead of the whole-body rule
(`bonescan.io.checks`), its two views may differ in shape (each view is cropped on its own; each is resized to the
region's input size), and it is trained and predicted at the region's input size. The region travels in the
preprocessing settings (`PreprocessConfig.region`), so a run, its array cache and its exported engine all know it.

Input sizes (rows x columns) are multiples of 32 (the ResNet's stride) near each crop's shape: BS-80K's right-chest
crop is about 165 x 65 pixels (rows x columns), hence 160 x 64; the others are estimates from the anatomy of a
1024 x 256 whole-body view, to be overridden with `--height` / `--width` where a set's crops differ.

Crop rule: a 2-D image of at least MIN_CROP_SIDE pixels along each side and at most MAX_CROP_SIDE, so that a
thumbnail icon or a whole-body view given by mistake is refused, and counts as for whole-body views (finite,
not all zero).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError, ManifestError, NotABoneScanError
from .preprocess import PreprocessConfig

if TYPE_CHECKING:
    import pandas as pd

    from .presets import TrainConfig

MIN_CROP_SIDE = 16
MAX_CROP_SIDE = 1024


@dataclass(frozen=True)
class Region:
    """One body region: BS-80K's folder stem (part + side) and the network input size for its crops."""

    name: str
    part: str
    side: str  # "L", "R" or "" for midline regions
    height: int
    width: int


def _region(part: str, side: str, height: int, width: int) -> Region:
    return Region(part + side, part, side, height, width)


# (part, sides, rows, columns): paired regions have L and R crops, midline ones a single crop.
_TABLE = (
    ("ankle", "LR", 96, 64),
    ("chest", "LR", 160, 64),
    ("elbow", "LR", 96, 64),
    ("knee", "LR", 96, 64),
    ("sho", "LR", 96, 96),
    ("head", "", 128, 128),
    ("pelvis", "", 128, 192),
    ("vertbra", "", 320, 64),
)
REGIONS: dict[str, Region] = {
    r.name: r for part, sides, h, w in _TABLE for r in ([_region(part, s, h, w) for s in sides] or
                                                        [_region(part, "", h, w)])
}


def region(name: str) -> Region:
    """The region called `name` (e.g. "chestR"); one ConfigError listing the known names otherwise."""
    if name not in REGIONS:
        raise ConfigError("--region", f"unknown region {name!r}; known: {', '.join(sorted(REGIONS))}")
    return REGIONS[name]


def check_region_crop(image: np.ndarray, source: str | Path, view: str, name: str) -> None:
    """Refuse a view that cannot be a crop of region `name` (see the module's crop rule)."""
    if image.ndim != 2:
        raise NotABoneScanError(source, f"{view} crop of region {name} has shape {image.shape}; a crop is one 2-D image")
    rows, cols = image.shape
    if min(rows, cols) < MIN_CROP_SIDE or max(rows, cols) > MAX_CROP_SIDE:
        raise NotABoneScanError(
            source, f"a {rows} x {cols} (rows x columns) {view} view cannot be a {name} crop: crops have"
                    f" {MIN_CROP_SIDE} to {MAX_CROP_SIDE} pixels along each side")


def region_preprocess(config: PreprocessConfig, name: str, height: int | None = None,
                      width: int | None = None) -> PreprocessConfig:
    """`config` for crops of region `name`: the region's input size unless given, and the region recorded."""
    spec = region(name)
    return replace(config, region=spec.name, height=height or spec.height, width=width or spec.width)


def manifest_region(manifest: "pd.DataFrame", source: str = "manifest") -> str | None:
    """The one region named in a manifest's `region` column (None without one, or when all rows are blank)."""
    if "region" not in manifest.columns:
        return None
    names = sorted({str(v).strip() for v in manifest["region"] if isinstance(v, str) and v.strip()})
    if len(names) > 1:
        raise ManifestError(source, f"rows of several regions ({', '.join(names)}); choose one with --region")
    if names:
        region(names[0])
    return names[0] if names else None


def select_region(manifest: "pd.DataFrame", name: str, source: str = "manifest") -> "pd.DataFrame":
    """The rows of region `name` (every row when the manifest has no `region` column); refuses none left."""
    region(name)
    if "region" not in manifest.columns:
        return manifest
    chosen = manifest[manifest["region"].astype(str).str.strip() == name]
    if chosen.empty:
        found = sorted({str(v) for v in manifest["region"] if isinstance(v, str) and v})
        raise ManifestError(source, f"no rows of region {name!r} (regions present: {', '.join(found) or 'none'})")
    return chosen.reset_index(drop=True)


def apply_region(config: "TrainConfig", manifest: "pd.DataFrame", name: str | None, source: str = "manifest",
                 height: int | None = None, width: int | None = None) -> tuple["TrainConfig", "pd.DataFrame"]:
    """Training settings and manifest rows for region `name` (default: the manifest's one region, if any).

    Without a region either way, both come back unchanged (a whole-body run).
    """
    name = name or manifest_region(manifest, source)
    if name is None:
        return config, manifest
    chosen = select_region(manifest, name, source)
    return replace(config, preprocess=region_preprocess(config.preprocess, name, height, width)), chosen
