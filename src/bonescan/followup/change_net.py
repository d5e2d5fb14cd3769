"""The change network: new lesions seen from both visits at once, a second judge beside the follow-up rules.

The rules (`match`, `uptake`) decide which of the lesion reader's hotspots are new; what they cannot reach are foci
the lesion network never marks and new foci inside an old lesion's outline. The change network sees the later study
and the earlier one registered onto it (the later study fixed, `register.register_study`), both preprocessed as the
lesion network's input, and paints per view (posterior mirrored) the pixels of lesions unseen on every earlier
visit. Its new lesions are the connected areas above its threshold of both views laid over each other, so a lesion
seen from the front and from behind counts once.

How its count joins the rules' for the PCWG3 verdict: `joins`. Measured on synthetic follow-up cohorts, README
"Follow-up". Trained by `bonescan followup-train` (`change_train`); its file holds the weights,
the channels, and the threshold and smallest area chosen on a validation cohort.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.networks.nets import UNet
from scipy import ndimage

from ..errors import ConfigError
from ..fileio import write_torch_atomic
from ..lesions.hotspots import StudyLesions
from ..preprocess import PreprocessConfig, preprocess_views
from ..study import VIEWS, Study
from .readers import region_at
from .register import ViewTransform, register_study

PREPROCESS = PreprocessConfig(height=512, width=128, normalization="counts")  # the lesion network's input
CHANNELS = (16, 32, 64, 128, 128)
FILE_FORMAT = "bonescan change network 1"


class ChangeNet(torch.nn.Module):
    """MONAI UNet over (later anterior, posterior, earlier anterior, posterior, row, column) -> new-lesion logit per
    view; the row and column ramps tell it where on the body a pixel lies, as the lesion network's."""

    def __init__(self, channels: Sequence[int] = CHANNELS):
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.unet = UNet(spatial_dims=2, in_channels=6, out_channels=2, channels=tuple(channels),
                         strides=(2,) * (len(channels) - 1), num_res_units=0, norm="batch", act="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        rows = torch.linspace(-1, 1, h, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
        cols = torch.linspace(-1, 1, w, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
        return self.unet(torch.cat([x, rows, cols], 1))


def warp_onto(earlier: np.ndarray, later: np.ndarray, transform: ViewTransform) -> np.ndarray:
    """The earlier view resampled onto the later view's pixel grid (`transform`: later -> earlier, in mm)."""
    moving = sitk.GetImageFromArray(np.asarray(earlier, np.float32))
    moving.SetSpacing((transform.moving_spacing[1], transform.moving_spacing[0]))
    fixed = sitk.GetImageFromArray(np.zeros(np.shape(later), np.float32))
    fixed.SetSpacing((transform.fixed_spacing[1], transform.fixed_spacing[0]))
    return sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform.as_sitk(), sitk.sitkLinear, 0.0))


def pair_input(later: Study, earlier: Study) -> np.ndarray:
    """The network's input for one pair of visits: [4, 512, 128] float32 (later views, earlier views on the later
    grid), each visit normalised on its own so another count level or camera reads alike."""
    transforms = register_study(later, earlier)
    warped = [warp_onto(getattr(earlier, v), getattr(later, v), transforms[v]) for v in VIEWS]
    return np.concatenate([preprocess_views(np.asarray(later.anterior), np.asarray(later.posterior), PREPROCESS),
                           preprocess_views(warped[0], warped[1], PREPROCESS)])


def probability_maps(net: ChangeNet, inputs: np.ndarray, batch: int = 16) -> np.ndarray:
    """[n, 2, 512, 128] new-lesion probabilities of [n, 4, 512, 128] inputs."""
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(inputs), batch):
            x = torch.from_numpy(np.asarray(inputs[i:i + batch], np.float32)).contiguous(
                memory_format=torch.channels_last)
            out.append(torch.sigmoid(net(x)).numpy())
    return np.concatenate(out) if out else np.zeros((0, 2, PREPROCESS.height, PREPROCESS.width), np.float32)


def area_masks(probability: np.ndarray, threshold: float, min_pixels: int) -> list[np.ndarray]:
    """New lesions of one [2, H, W] map: connected areas above `threshold` of both views laid over each other (8
    neighbours), of at least `min_pixels` pixels."""
    labels, n = ndimage.label(probability.max(0) > threshold, structure=np.ones((3, 3)))
    return [area for area in (labels == k for k in range(1, n + 1)) if area.sum() >= min_pixels]


def grid_pixels(hotspot, study_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) on the network's grid of a hotspot's pixels (its outline; posterior columns mirrored), in the
    view's probability map: the inverse of `new_areas`' mapping."""
    scale_r, scale_c = study_shape[0] / PREPROCESS.height, study_shape[1] / PREPROCESS.width
    r0, c0, r1, c1 = hotspot.box
    rows, cols = np.mgrid[r0:r1, c0:c1]
    if hotspot.mask is not None and hotspot.mask.shape == rows.shape:
        rows, cols = rows[hotspot.mask], cols[hotspot.mask]
    grid_rows = np.minimum((rows.ravel() / scale_r).astype(int), PREPROCESS.height - 1)
    grid_cols = np.minimum((cols.ravel() / scale_c).astype(int), PREPROCESS.width - 1)
    if hotspot.view == "posterior":
        grid_cols = PREPROCESS.width - 1 - grid_cols
    return grid_rows, grid_cols


@dataclass(frozen=True)
class NewArea:
    """One new lesion of the change network, in the later study's pixels of the view where it shows most."""

    number: int
    view: str
    box: tuple[int, int, int, int]  # (row0, col0, row1, col1), end exclusive
    centroid: tuple[float, float]  # (row, col)
    area_mm2: float
    probability: float  # the highest pixel probability inside
    region: str  # skeletal region under the centroid, from the lesion reader's region map ("" unknown)
    # [box rows, box cols] bool: the area's own pixels inside `box` (None: the whole box), so that what lies under
    # it is read from its outline, not from the corners of its box
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    # (rows, cols) of its cells on the network's grid, both views laid over each other (None: not known)
    grid: tuple[np.ndarray, np.ndarray] | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict:
        return {"number": self.number, "view": self.view, "box": list(self.box),
                "centroid": [round(v, 1) for v in self.centroid], "area_mm2": round(self.area_mm2, 1),
                "probability": round(self.probability, 4), "region": self.region}


def new_areas(probability: np.ndarray, later: Study, lesions: StudyLesions | None, threshold: float,
              min_pixels: int) -> list[NewArea]:
    """The network's new lesions of one [2, 512, 128] map, mapped back to the later study's pixels."""
    rows, cols = np.asarray(later.anterior).shape
    scale_r, scale_c = rows / PREPROCESS.height, cols / PREPROCESS.width
    row_mm, col_mm = later.pixel_spacing or (1.0, 1.0)
    found = []
    for number, area in enumerate(area_masks(probability, threshold, min_pixels), 1):
        view_index = int(np.argmax([probability[v][area].max() for v in range(2)]))
        r, c = np.nonzero(area)
        grid = (r, c)
        if view_index == 1:  # posterior maps are mirrored like the lesion network's
            c = PREPROCESS.width - 1 - c
        box = (int(r.min() * scale_r), int(c.min() * scale_c), int(np.ceil((r.max() + 1) * scale_r)),
               int(np.ceil((c.max() + 1) * scale_c)))
        centroid = ((r.mean() + 0.5) * scale_r - 0.5, (c.mean() + 0.5) * scale_c - 0.5)
        # each study pixel of the box takes the network pixel it falls in (posterior columns mirrored back)
        rows_in = np.minimum((np.arange(box[0], box[2]) / scale_r).astype(int), PREPROCESS.height - 1)
        cols_in = np.minimum((np.arange(box[1], box[3]) / scale_c).astype(int), PREPROCESS.width - 1)
        if view_index == 1:
            cols_in = PREPROCESS.width - 1 - cols_in
        mask = area[np.ix_(rows_in, cols_in)]
        region = ""
        if lesions is not None and lesions.regions.shape[1:] == (rows, cols):
            region = region_at(lesions.regions[view_index], centroid)
        found.append(NewArea(number, VIEWS[view_index], box, (float(centroid[0]), float(centroid[1])),
                             float(area.sum() * scale_r * row_mm * scale_c * col_mm),
                             float(probability[view_index][area].max()), region, mask, grid))
    return found


def apart_from(areas: Sequence[NewArea], hotspots, study_shape: tuple[int, int]) -> list[int]:
    """Numbers of the `areas` whose grid cells meet none of `hotspots`' (both views laid over each other, as the
    areas were made); an area without its cells counts as apart."""
    taken = np.zeros((PREPROCESS.height, PREPROCESS.width), bool)
    for hotspot in hotspots:
        taken[grid_pixels(hotspot, study_shape)] = True
    return [area.number for area in areas if area.grid is None or not taken[area.grid].any()]


@dataclass
class ChangeModel:
    """A trained change network with its operating point."""

    net: ChangeNet
    threshold: float
    min_pixels: int
    path: Path

    @property
    def name(self) -> str:
        return f"change network ({self.path.name}, threshold {self.threshold:g}, >= {self.min_pixels} pixels)"

    def probability(self, later: Study, earlier: Study) -> np.ndarray:
        """[2, 512, 128] new-lesion probabilities of `later` against `earlier` (registered here, the later study
        fixed; posterior mirrored)."""
        return probability_maps(self.net, pair_input(later, earlier)[None])[0]

    def areas(self, later: Study, earlier: Study, lesions: StudyLesions | None = None,
              probability: np.ndarray | None = None) -> list[NewArea]:
        """The new lesions of `later` against `earlier`, from `probability` when the caller has it already."""
        if probability is None:
            probability = self.probability(later, earlier)
        return new_areas(probability, later, lesions, self.threshold, self.min_pixels)


def save_change_model(path: str | Path, net: ChangeNet, threshold: float, min_pixels: int,
                      trained_on: dict | None = None) -> Path:
    """Write the network and its operating point to `path` (atomically)."""
    path = Path(path)
    document = {"format": FILE_FORMAT, "state": net.state_dict(), "channels": net.channels,
                "threshold": float(threshold), "min_pixels": int(min_pixels), "trained_on": trained_on or {}}
    return write_torch_atomic(path, document)


def load_change_model(path: str | Path) -> ChangeModel:
    """Read a change-network file (weights only: nothing in it runs code on loading)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "no such change-network file (bonescan followup-train writes one)")
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ConfigError(path, f"not a change-network file ({type(error).__name__}: {error})") from error
    if not isinstance(document, dict) or document.get("format") != FILE_FORMAT:
        raise ConfigError(path, f"not a change-network file (expected format {FILE_FORMAT!r}); "
                                "bonescan followup-train writes one")
    net = ChangeNet(document["channels"])
    try:
        net.load_state_dict(document["state"])
    except RuntimeError as error:
        raise ConfigError(path, f"its weights do not fit the change network: {error}") from error
    net.eval()
    return ChangeModel(net.to(memory_format=torch.channels_last), float(document["threshold"]),
                       int(document["min_pixels"]), path)
