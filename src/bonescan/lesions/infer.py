"""A trained lesion network applied to studies: numbered hotspots with regions and malignancy, region maps, BSI.

From the network's maps (preprocessed size, posterior mirrored) to a `StudyLesions` at the stored image size:
- regions: the most likely class per network pixel, repeated to the stored size (nearest), posterior mirrored back;
- hotspots: metastatic candidates split at their count peaks, then the other hot pixels (see
  `hotspot_components`), found on the maps at the network's size (a quarter of the stored pixels, a quarter of the
  work) and shown by the stored pixels nearest them (`grid`), dropping pieces under MIN_AREA_MM2;
  malignancy is the largest metastasis probability over those stored pixels, read bilinearly (a small metastasis
  peaks at its centre; a mean would dilute it with its rim); the region is the most common skeletal region under it
  ("" if none);
- uptake ratio: mean counts in the hotspot / median counts of normal bone (region pixels outside every hotspot)
  of the same view, the latter at the network's size (each network pixel the mean of the stored pixels it shows);
- BSI: `bone_scan_index` over the hotspot pixels whose metastasis probability reaches the threshold (the network's
  outline of the metastasis, not the whole candidate hotspot, which may reach into the faint rim around it); with a
  rescorer, over the rescored malignant hotspots outlined the same way at the network's own threshold, and whole
  where the network saw none of a hotspot's pixels as metastatic (a faint focus only the rescorer found);
- study probability from the lesions: the largest hotspot malignancy (0 without hotspots).
Finding the hotspots at the stored size, after bilinear upsampling of the maps, took 2.5x as long (10.3 against
3.9 ms per study, one core of the 2-core Zen 4 EPYC, the demo's 24-epoch network). On the demo's 400 test studies
it gave the same BSI, study by study, and region Dice; sensitivity at 0.5 / 1 / 2 / 4 false positives per study
0.670 / 0.829 / 0.904 / 0.919 against 0.668 / 0.824 / 0.904 / 0.925 now, 22 studies with another count of malignant
hotspots (touching foci split otherwise).
A focus both views show at one place is reported once, by the view where it stands out more (`foci`).
Hotspots are numbered 1.. over the anterior view, then the posterior, each from head to feet.
A run with a fitted hotspot rescorer (`bonescan.lesions.rescore`) adds count candidates and rescores every hotspot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.uid import generate_uid
from scipy import ndimage

from ..cameras import CameraCheck
from ..device import Precision, choose_precision, select_device
from ..errors import RunError
from ..preprocess import preprocess_views
from ..presets import TrainConfig
from ..study import VIEWS
from .bsi import bone_scan_index_from_areas
from .decode import decode_maps
from .foci import RULE as HOTSPOT_RULE, best_view_of_each_focus
from .grid import NetworkGrid, network_grid
from .hotspots import Hotspot, StudyLesions, normal_bone_level
from .network import HOTSPOT, MALIGNANCY, LesionNet, build_lesion_net
from .regions import FLIP_LABELS, N_LABELS, region_under
from .rescore import Candidate, HotspotRescorer, load_rescorer, rescore_candidates

HOTSPOT_THRESHOLD = 0.5
METASTASIS_CANDIDATE = 0.2
# Distances of the hotspot finder in mm, turned into pixels of the maps it works on (`hotspot_components`); the
# figures were chosen in stored pixels of 2.4 mm (3, 2 and 2 pixels).
PEAK_DISTANCE_MM = 7.2  # closer count peaks are one lesion (the whole pixels within it)
PEAK_SMOOTHING_MM = 4.8  # Gaussian sigma of the counts: Poisson noise would otherwise make peaks of its own
RIM_DISTANCE_MM = 4.8  # hot pixels this close to a metastatic candidate are its rim
STORED_MM = 2.4  # the pixel `hotspot_components` assumes unless told
MALIGNANCY_THRESHOLD = 0.5
MIN_AREA_MM2 = 20.0  # about two 2.4 mm pixels on a side: smaller components are noise
# Studies per network call on a CPU. The network is memory-bound at full resolution: at batch 8 one activation
# (8 x 16 x 512 x 128 floats, 33 MB) outgrows the CPU's last-level cache, at 2 it stays in it. Measured on the
# 2-core EPYC (32 MB L3), cpu-small-lesion, ms per study: batch 8 18.2-18.9, 4 15.1-15.8, 2 13.2-14.0, 1 13.1-13.3.
CPU_BATCH = 2
_EIGHT = np.ones((3, 3), bool)


@dataclass
class LesionModel:
    """A lesion run loaded for prediction."""

    model: LesionNet
    config: TrainConfig
    precision: Precision
    run_dir: Path
    threshold: float = MALIGNANCY_THRESHOLD  # RUN/malignancy_threshold.json when frozen (`lesions.threshold`)
    rescorer: HotspotRescorer | None = None  # RUN/hotspot_rescorer.skops when fitted (`lesions.rescore`)
    outline_threshold: float = MALIGNANCY_THRESHOLD  # the network's own threshold when rescored (`lesions.threshold`)
    flip_average: bool = False  # maps averaged with the mirrored study's (frozen with the threshold)
    # What the user should know of how these maps differ from those the run's settings were chosen on
    # (`precision_notes`); predict, followup and the node pass them on.
    notes: tuple[str, ...] = ()
    # The cameras of its training studies: flags a study from another (`bonescan.cameras`).
    cameras: CameraCheck | None = None

    def maps(self, inputs: np.ndarray) -> np.ndarray:
        """B x 2 x H x W preprocessed studies -> B x 2 views x (regions, hotspot, metastasis) maps (region class ids,
        then the two probabilities), float32, network size. With `flip_average`, the mean of the network's maps of
        each study and of its mirror image (flipped back, region probabilities with left and right swapped)."""
        step = CPU_BATCH if self.precision.device.type == "cpu" else max(len(inputs), 1)
        # One autocast for all the chunks: it keeps the weights it casts to bf16 until it ends, where one per chunk
        # cast them again for each (0.6 ms per study at batch 2 on the 2-core Zen 4).
        with torch.no_grad(), self.precision.autocast():
            parts = [self._maps(inputs[start:start + step]) for start in range(0, len(inputs), step)]
        return np.concatenate(parts) if parts else np.zeros((0, 2, 3) + tuple(inputs.shape[-2:]), np.float32)

    def _maps(self, inputs: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(inputs, np.float32)).to(self.precision.device)
        if not self.flip_average:
            logits = self._logits(batch, as_float=False)
            if logits.device.type == "cpu":
                out = np.empty(logits.shape[:2] + (3,) + logits.shape[-2:], np.float32)
                decode_maps(logits, N_LABELS, out)
                return out
            logits = logits.float()
            regions = logits[:, :, :N_LABELS].argmax(dim=2, keepdim=True).float()
            return torch.cat([regions, torch.sigmoid(logits[:, :, HOTSPOT:MALIGNANCY + 1])], 2).cpu().numpy()
        logits = self._logits(batch)
        # The mirrored studies' maps, flipped back: their right-side classes are these studies' left ones.
        mirrored = self._logits(batch.flip(-1)).flip(-1)
        labels = torch.from_numpy(FLIP_LABELS).to(mirrored.device)
        # Class scores with the classes last: the output is channels-last, and softmax over a strided middle
        # dimension took 2.4x as long (9.8 against 4.0 ms per study and pass).
        classes = torch.softmax(logits[:, :, :N_LABELS].permute(0, 1, 3, 4, 2), -1) + \
            torch.softmax(mirrored[:, :, labels].permute(0, 1, 3, 4, 2), -1)
        probabilities = (torch.sigmoid(logits[:, :, HOTSPOT:MALIGNANCY + 1]) +
                         torch.sigmoid(mirrored[:, :, HOTSPOT:MALIGNANCY + 1])) / 2
        regions = classes.argmax(dim=-1).unsqueeze(2).float()
        return torch.cat([regions, probabilities], 2).cpu().numpy()

    def _logits(self, batch: torch.Tensor, as_float: bool = True) -> torch.Tensor:
        """B x 2 views x channels x H x W logits, in fp32 or (`as_float` False) in the precision they came in."""
        with torch.no_grad(), self.precision.autocast():
            logits = self.model(batch.contiguous(memory_format=torch.channels_last))
        return logits.float() if as_float else logits

    def read(self, study, study_key: str = "", one_per_focus: bool = True) -> tuple[StudyLesions, np.ndarray]:
        """One study's lesions and hotspot number map (`study_lesions`) with the run's threshold."""
        config = self.config.preprocess
        maps = self.maps(preprocess_views(study.anterior, study.posterior, config)[None])[0]
        spacing = (study.pixel_spacing or (2.4, 2.4))[0]
        return study_lesions(maps, study.anterior, study.posterior, spacing, config.mirror_posterior,
                             study_key=study_key, threshold=self.threshold, rescorer=self.rescorer,
                             outline_threshold=self.outline_threshold, one_per_focus=one_per_focus)


def tracking_key(study_id: str, name: str | None = None) -> str:
    """What seeds a study's hotspot tracking UIDs (`study_lesions`): its id and the name it is reported under (a
    manifest's case_id, else the id again), so that reading a study again, for a follow-up, gives its hotspots the
    UIDs of its own report."""
    return f"{study_id}:{name or study_id}"


def load_lesion_run(run_dir: str | Path, checkpoint: str = "best", device: str = "auto",
                    precision: str = "auto", flip_average: bool | None = None,
                    rescorer: bool = True) -> LesionModel:
    """Load RUN/checkpoints/<checkpoint>.pt of a lesion run with its frozen threshold and rescorer; RunError when it
    is not one, or when its rescorer was fitted on other maps than the run now makes.

    `precision` "auto" runs the network in bf16 where this CPU computes it faster (`device.choose_precision`) and
    in fp32 elsewhere. On the 2-core Zen 4 EPYC, the 12-epoch `cpu-small-lesion` run on the 119 test studies of
    `synth --cases 1200 --seed 11`: the same sensitivity at 0.5 / 1 / 2 / 4 false positives per study as fp32,
    109 against 108 false-positive hotspots at the frozen threshold, BSI against truth r 0.98759 against 0.98761,
    the network 9.0 against 12.1 ms per study (batch 2) and the lesion step of `predict` 31 against 39 ms.

    `flip_average` overrides the frozen record's (`lesions.threshold` and `lesions.rescore_fit` freeze the threshold
    and fit the rescorer on the maps they are asked for); `rescorer=False` leaves the rescorer out (refitting it)."""
    from ..train import RunPaths, load_checkpoint
    from .threshold import load_frozen_threshold

    paths = RunPaths(Path(run_dir))
    state = load_checkpoint(paths.best if checkpoint == "best" else paths.last)
    config = TrainConfig.from_dict(state["config"])
    if config.task != "lesion":
        raise RunError(run_dir, f"is a {config.task!r} run, not a lesion run (train one with a lesion preset, "
                                "e.g. --preset cpu-small-lesion)")
    model = build_lesion_net(config.lesion)
    model.load_state_dict(state["model"])
    chosen = choose_precision(select_device(device), precision)
    frozen = load_frozen_threshold(paths.root)
    flip = frozen.flip_average if flip_average is None else flip_average
    second_look = load_rescorer(paths.root) if rescorer else None
    if second_look is not None and second_look.info.get("flip_average", False) != flip:
        raise RunError(paths.root, f"its hotspot rescorer was fitted on maps {'with' if not flip else 'without'} "
                                   f"flip averaging, and the run is asked for maps {'with' if flip else 'without'}; "
                                   f"fit it again: bonescan lesions rescorer --{'' if flip else 'no-'}flip-average")
    notes = precision_notes(paths.root, chosen.name, frozen.precision,
                            second_look.info.get("precision") if second_look is not None else None)
    if frozen.hotspot_rule != HOTSPOT_RULE:
        notes += (f"lesion run {paths.root}: its malignancy threshold was chosen before hotspots were reported "
                  "once per focus (a focus both views show had one in each), so it now stays well inside its "
                  "false-positive budget and finds fewer lesions than it could; choose it again: bonescan lesions "
                  f"threshold --run {paths.root} --manifest MANIFEST",)
    # Channels-last (NHWC): the U-Net's full-resolution convolutions run 1.7x faster so in fp32 on the CPU too.
    return LesionModel(model.to(chosen.device, memory_format=torch.channels_last).eval(), config, chosen, paths.root,
                       frozen.threshold, second_look, frozen.outline_threshold, flip, notes,
                       CameraCheck.of_run(paths.root))


def precision_notes(run_dir: Path, precision: str, threshold_precision: str | None,
                    rescorer_precision: str | None) -> tuple[str, ...]:
    """A line when the run's frozen threshold or rescorer was chosen on maps of another precision than `precision`,
    the one its maps are now made in; none for records that do not name one (made before they did).

    Not an error, as a rescorer fitted without the run's flip averaging is: bf16 and fp32 maps differ by a few
    hundredths, so only hotspots near the threshold can be called otherwise, and a machine where bf16 is emulated
    (many times slower) should still be able to use a run frozen on one where it is native.
    """
    other = [f"{what} on {made} maps" for what, made in (("its malignancy threshold was chosen", threshold_precision),
                                                         ("its hotspot rescorer fitted", rescorer_precision))
             if made not in (None, precision)]
    if not other:
        return ()
    # fitting the rescorer freezes the threshold again on the same maps
    again = "rescorer" if rescorer_precision not in (None, precision) else "threshold"
    return (f"lesion run {run_dir}: its maps are made in {precision} here, but {' and '.join(other)}: hotspots "
            f"near the threshold may be called otherwise (to choose again on these maps: bonescan lesions {again} "
            f"--run {run_dir} --manifest MANIFEST --precision {precision})",)


@dataclass(frozen=True)
class PeakSettings:
    """Count peaks in pixels (`count_peaks`): Gaussian sigma of the smoothing, and the reach within which a peak is
    the highest."""

    smoothing: float = PEAK_SMOOTHING_MM / STORED_MM
    distance: int = int(PEAK_DISTANCE_MM / STORED_MM + 1e-6)

    @classmethod
    def at(cls, pixel_mm: float) -> "PeakSettings":
        """At pixels of `pixel_mm`: the whole pixels within PEAK_DISTANCE_MM, at least one (on the demo's 400 test
        studies, 4.8 mm network pixels: 1 pixel gave sensitivity 0.824 / 0.765 / 0.925 at 1 false positive per study,
        the frozen threshold and 4; 2 pixels 0.825 / 0.760 / 0.919)."""
        return cls(PEAK_SMOOTHING_MM / pixel_mm, max(1, int(PEAK_DISTANCE_MM / pixel_mm + 1e-6)))


def hotspot_components(hot: np.ndarray, metastasis: np.ndarray, counts: np.ndarray,
                       pixel_mm: float = STORED_MM) -> tuple[np.ndarray, int]:
    """(label image, count) of one view's hotspots from its hotspot and metastasis probability maps and its counts,
    all of one size, with pixels of `pixel_mm`.

    Two kinds of hotspot, so a metastasis touching a kidney, the bladder or a benign focus is not swallowed by it
    (its centroid would then lie in the larger neighbour):
    - metastatic candidates: connected pixels with metastasis map >= METASTASIS_CANDIDATE (lower than the malignancy
      threshold: a faint metastasis the network is unsure of should still be listed, with its low malignancy, rather
      than vanish). A group that holds several count peaks (maxima of the counts smoothed over PEAK_SMOOTHING_MM,
      PEAK_DISTANCE_MM apart) is split between them, each pixel going to its nearest peak, so neighbouring
      lesions are separate hotspots with their own centroids. The counts, not the metastasis map, locate the peaks:
      over touching metastases that map saturates into one plateau, while each focus keeps its own count maximum.
      Hot pixels (hotspot map >= HOTSPOT_THRESHOLD) within RIM_DISTANCE_MM of such a hotspot join it: its rim.
    - the other hot pixels: connected groups of their own (kidneys, bladder, benign uptake), malignancy below
      METASTASIS_CANDIDATE.
    """
    candidate = metastasis >= METASTASIS_CANDIDATE
    peaks = PeakSettings.at(pixel_mm)
    labels, n = _split_at_count_peaks(candidate, np.asarray(counts, np.float32), peaks)
    rest = (hot >= HOTSPOT_THRESHOLD) & ~candidate
    if n and rest.any():
        rim = nearest_label_within(labels, rest, RIM_DISTANCE_MM / pixel_mm)
        labels[rim > 0] = rim[rim > 0]
        rest &= rim == 0
    others, m = ndimage.label(rest, structure=_EIGHT)
    labels[others > 0] = others[others > 0] + n
    return labels, n + m


def nearest_label_within(labels: np.ndarray, pixels: np.ndarray, reach: float) -> np.ndarray:
    """For each of `pixels` (bool) within `reach` of a labelled pixel, the nearest label (0 elsewhere).

    Computed in each label's box widened by 2 x reach (a pixel within reach of a label lies within reach of its box,
    and its nearest labelled pixel within reach of itself), so the result is the whole view's distance transform's
    for a fraction of its cost (the whole view took 10-20 ms).
    """
    out = np.zeros(labels.shape, labels.dtype)
    inner, outer = int(np.ceil(reach)), 2 * int(np.ceil(reach))
    for box in ndimage.find_objects(labels):
        if box is None:
            continue
        window = tuple(slice(max(0, b.start - outer), min(size, b.stop + outer)) for b, size in zip(box, labels.shape))
        distance, (near_r, near_c) = ndimage.distance_transform_edt(labels[window] == 0, return_indices=True)
        near = labels[window][near_r, near_c]
        # only the pixels within reach of this label's box: there the window holds every label within reach
        keep = np.zeros(distance.shape, bool)
        keep[tuple(slice(max(0, b.start - inner) - w.start, min(size, b.stop + inner) - w.start)
                   for b, w, size in zip(box, window, labels.shape))] = True
        keep &= pixels[window] & (distance <= reach) & (out[window] == 0)
        out[window][keep] = near[keep]
    return out


def _split_at_count_peaks(candidate: np.ndarray, counts: np.ndarray,
                          peaks: PeakSettings = PeakSettings()) -> tuple[np.ndarray, int]:
    """(labels int32, count): connected groups of `candidate`, each split between its count peaks if it has several.

    Each pixel of a group with several peaks goes to the nearest of its own group's peaks, found in the group's box
    (over the whole view, a distance transform took 6 ms per view, and a pixel could go to a neighbouring group's
    peak, making a stray piece of its own).
    """
    components, n = ndimage.label(candidate, structure=_EIGHT)
    components = components.astype(np.int32)
    if n == 0:
        return components, 0
    boxes = ndimage.find_objects(components)
    peaks = count_peaks(counts, components, boxes, peaks) & candidate
    if np.bincount(components[peaks], minlength=n + 1).max() < 2:  # at most one peak pixel per group: none to split
        return components, n
    seeds, n_seeds = ndimage.label(peaks, structure=_EIGHT)
    # a peak (a group of touching peak pixels) lies in one component, since both are 8-connected
    component_of_peak = np.zeros(n_seeds + 1, np.int64)
    at_peaks = seeds > 0
    component_of_peak[seeds[at_peaks]] = components[at_peaks]
    peaks_per_component = np.bincount(component_of_peak[1:], minlength=n + 1)
    several = np.flatnonzero(peaks_per_component[1:] >= 2) + 1
    if not several.size:
        return components, n
    labels = components.copy()
    for component in several:
        box = boxes[component - 1]
        own = components[box] == component
        own_seeds = np.where(own, seeds[box], 0)
        _, (near_r, near_c) = ndimage.distance_transform_edt(own_seeds == 0, return_indices=True)
        labels[box][own] = own_seeds[near_r, near_c][own] + n  # peak pieces numbered after the components
    # renumber 1..count: the groups left whole, then the pieces in the order of their peaks
    whole = np.flatnonzero(peaks_per_component[1:] < 2) + 1
    pieces = np.flatnonzero(np.isin(component_of_peak[1:], several)) + 1 + n
    lookup = np.zeros(n + n_seeds + 1, np.int32)
    kept = np.concatenate([whole, pieces])
    lookup[kept] = np.arange(1, kept.size + 1)
    return lookup[labels], int(kept.size)


def count_peaks(counts: np.ndarray, components: np.ndarray, boxes: list | None = None,
                settings: PeakSettings = PeakSettings()) -> np.ndarray:
    """Bool map of the count peaks inside labelled components: pixels where the counts smoothed over
    `settings.smoothing` are the highest within `settings.distance`.

    Computed per component in its box widened by the smoothing's reach plus that distance, so inside the box the
    result is the whole view's, for a fraction of the work (the whole view took half the post-processing time).
    `boxes`: the components' `ndimage.find_objects`, when the caller has them.
    """
    sigma, distance = settings.smoothing, settings.distance
    margin = int(4.0 * sigma + 0.5) + distance  # gaussian_filter reaches 4 sigma
    peaks = np.zeros(counts.shape, bool)
    for box in ndimage.find_objects(components) if boxes is None else boxes:
        if box is None:
            continue
        outer = tuple(slice(max(0, b.start - margin), min(size, b.stop + margin)) for b, size in zip(box, counts.shape))
        smooth = ndimage.gaussian_filter(counts[outer], sigma)
        local = smooth >= ndimage.maximum_filter(smooth, size=2 * distance + 1)
        peaks[box] |= local[tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer))]
    return peaks


def maps_at_stored_size(maps: np.ndarray, shape: tuple[int, int],
                        mirror_posterior: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(regions uint8 [2, H, W] nearest, probabilities float32 [2 views, (hotspot, metastasis), H, W] bilinear) of
    network maps (see `LesionModel.maps`) at the stored size, the posterior mirrored back when it was mirrored."""
    grid = network_grid(tuple(maps.shape[-2:]), tuple(shape))
    return (regions_at_stored_size(grid, maps[:, 0].astype(np.uint8), mirror_posterior),
            probabilities_at_stored_size(maps, shape, mirror_posterior))


def regions_at_stored_size(grid: NetworkGrid, regions: np.ndarray, mirror_posterior: bool) -> np.ndarray:
    """uint8 [2, H, W]: network-size region ids [2, h, w] enlarged (nearest), the posterior mirrored back."""
    enlarged = grid.enlarge(regions)
    if mirror_posterior:
        enlarged[1] = enlarged[1, :, ::-1]
    return enlarged


def probabilities_at_stored_size(maps: np.ndarray, shape: tuple[int, int], mirror_posterior: bool) -> np.ndarray:
    """float32 [2 views, (hotspot, metastasis), H, W]: the network's probabilities upsampled bilinearly, the
    posterior mirrored back (what the hotspot rescorer measures its candidates on)."""
    probabilities = F.interpolate(torch.from_numpy(np.ascontiguousarray(maps[:, 1:])), size=shape, mode="bilinear",
                                  align_corners=False).numpy()
    if mirror_posterior:
        probabilities[1] = probabilities[1, :, :, ::-1]
    return probabilities


class NetworkMaps:
    """One study's network maps (`LesionModel.maps`) over its stored views: read at the network's size and in its
    layout (the posterior mirrored, when the network saw it so), shown at the stored size in each view's own layout
    (`grid.NetworkGrid`)."""

    def __init__(self, maps: np.ndarray, counts: tuple[np.ndarray, np.ndarray], mirror_posterior: bool = True):
        self.maps = maps
        self.counts = counts
        self.grid = network_grid(tuple(maps.shape[-2:]), tuple(counts[0].shape))
        self.mirrored = (False, bool(mirror_posterior))
        self.network_regions = maps[:, 0].astype(np.uint8)  # [2, h, w], the network's layout
        self._network_counts: dict[int, np.ndarray] = {}

    def regions(self) -> np.ndarray:
        """uint8 [2, H, W]: the region ids at the stored size, each view in its own layout."""
        return regions_at_stored_size(self.grid, self.network_regions, self.mirrored[1])

    def network_counts(self, view: int) -> np.ndarray:
        """The view's counts at the network's size and layout: each network pixel's mean over the stored pixels
        that show it."""
        if view not in self._network_counts:
            counts = self.counts[view][:, ::-1] if self.mirrored[view] else self.counts[view]
            self._network_counts[view] = self.grid.block_means(counts)
        return self._network_counts[view]

    def flip(self, view: int, window: tuple[slice, slice], mask: np.ndarray | None = None):
        """(window, mask) of stored pixels between the network's layout and the view's (the same both ways)."""
        if not self.mirrored[view]:
            return window, mask
        width = self.grid.stored_shape[1]
        flipped = (window[0], slice(width - window[1].stop, width - window[1].start))
        return flipped, None if mask is None else mask[:, ::-1]

    def probability(self, view: int, channel: int, window: tuple[slice, slice]) -> np.ndarray:
        """The hotspot (`channel` 0) or metastasis (1) probability read bilinearly at the stored pixels of a window
        of the view (in its own layout)."""
        inner, _ = self.flip(view, window)
        values = self.grid.bilinear_window(self.maps[view, 1 + channel], inner)
        return values[:, ::-1] if self.mirrored[view] else values

    def network_pixels(self, view: int, window: tuple[slice, slice], mask: np.ndarray) -> tuple[np.ndarray, ...]:
        """(rows, columns) at the network's size and layout of the network pixels that show a stored mask."""
        inner, mask = self.flip(view, window, mask)
        rows, cols = np.nonzero(mask)
        return self.grid.rows[rows + inner[0].start], self.grid.cols[cols + inner[1].start]


def network_candidates(net: NetworkMaps, regions: np.ndarray, min_pixels: float,
                       pixel_spacing: float) -> list[Candidate]:
    """The hotspots of both views (`hotspot_components` on the network's maps at its size) shown by at least
    `min_pixels` stored pixels, as stored-size candidates: malignancy from the network, region from `regions`
    (stored, the views' own layouts)."""
    pixel_mm = net.grid.network_mm(pixel_spacing)
    found = []
    for view in range(2):
        components, n = hotspot_components(net.maps[view, 1], net.maps[view, 2], net.network_counts(view), pixel_mm)
        for index, box in enumerate(ndimage.find_objects(components) if n else (), start=1):
            if box is None:
                continue
            window = net.grid.stored_window(box)
            mask = net.grid.enlarge_window(components, window) == index
            if not mask.any() or mask.sum() < min_pixels:
                continue
            window, mask = net.flip(view, window, mask)
            found.append(Candidate(view, window, mask, float(net.probability(view, 1, window)[mask].max()),
                                   region_under(regions[view], window, mask)))
    return found


def study_lesions(maps: np.ndarray, anterior: np.ndarray, posterior: np.ndarray, pixel_spacing: float,
                  mirror_posterior: bool = True, study_key: str = "",
                  threshold: float = MALIGNANCY_THRESHOLD,
                  rescorer: HotspotRescorer | None = None,
                  outline_threshold: float = MALIGNANCY_THRESHOLD,
                  one_per_focus: bool = True) -> tuple[StudyLesions, np.ndarray]:
    """(StudyLesions, hotspot number map uint16 [2, H, W]) of one study from its network maps (see `maps`).

    Hotspots are found at the network's size (`network_candidates`) and shown at the stored one. With a `rescorer`
    (`bonescan.lesions.rescore`) count candidates join the network's and every hotspot's malignancy is the
    rescorer's. The BSI then takes each malignant hotspot's pixels whose metastasis probability reaches
    `outline_threshold` (the network's own threshold), or the whole hotspot when it has none (on the 400 studies of
    seed 41 with the 37-epoch wide network: BSI r 0.981 against truth; 0.944 counting every malignant hotspot
    whole, 0.979 for the network alone).

    A focus both views show is reported once, in the view where it stands out more (`foci`); `one_per_focus`
    False reports it in both (as the follow-up's measured figures were made: it pairs the views itself).

    `study_key` seeds the hotspots' tracking UIDs, so predicting a study twice gives the same UIDs.
    """
    shape = anterior.shape
    counts = (np.asarray(anterior, np.float32), np.asarray(posterior, np.float32))
    net = NetworkMaps(maps, counts, mirror_posterior)
    regions = net.regions()
    numbers = np.zeros((2,) + shape, np.uint16)
    hotspots: list[Hotspot] = []
    min_pixels = MIN_AREA_MM2 / pixel_spacing**2
    found = network_candidates(net, regions, min_pixels, pixel_spacing)
    if rescorer is not None:
        probabilities = probabilities_at_stored_size(maps, shape, mirror_posterior)
        found = rescore_candidates(found, probabilities, counts, regions, pixel_spacing, rescorer, min_pixels)
    found.sort(key=lambda entry: (entry.view, entry.window[0].start, entry.window[1].start))
    # Uptake ratios relative to each view's normal bone (every view has a level, hotspots or not), at the network's
    # size: a quarter of the pixels of the stored size, each the mean of the stored pixels it stands for.
    covered = np.zeros((2,) + net.grid.network_shape, bool)  # network pixels that show a candidate
    for candidate in found:
        covered[candidate.view][net.network_pixels(candidate.view, candidate.window, candidate.mask)] = True
    levels = tuple(normal_bone_level(net.network_counts(view), net.network_regions[view] > 0, covered[view])
                   for view in range(2))
    uptake = [float(counts[c.view][c.window][c.mask].mean()) / levels[c.view] if levels[c.view] > 0
              else float("nan") for c in found]
    centroids = [c.centroid for c in found]  # each from its mask: computed once, for the pairing and the report
    keep = best_view_of_each_focus([c.view for c in found], np.array(centroids), uptake, shape[1],
                                   (pixel_spacing, pixel_spacing)) if one_per_focus else np.ones(len(found), bool)
    for place, (candidate, centroid, ratio, kept) in enumerate(zip(found, centroids, uptake, keep), start=1):
        if not kept:
            continue
        view, window, mask = candidate.view, candidate.window, candidate.mask
        number = len(hotspots) + 1
        numbers[view][window][mask] = number
        hotspots.append(Hotspot(
            number=number, view=VIEWS[view],
            box=(window[0].start, window[1].start, window[0].stop, window[1].stop),
            centroid=centroid, area_mm2=int(mask.sum()) * pixel_spacing**2, region=candidate.region,
            malignancy=candidate.malignancy,
            # seeded by the hotspot's place among both views' hotspots, not by its number: a read that keeps
            # both views' hotspots (the follow-up's) gives the hotspots of the study's report the same UIDs
            uptake_ratio=ratio, uid=generate_uid(
                entropy_srcs=[study_key or "study", VIEWS[view], str(place)]) if study_key else generate_uid(),
            mask=mask.copy()))
    # The BSI's malignant pixels: those of a malignant hotspot the network outlines as metastasis; with a rescorer,
    # which may call a hotspot malignant that the network did not, the whole hotspot where it outlines none. Every
    # view's hotspots count, those left out of the report as a focus the other view shows better too: the BSI
    # takes each region's larger view, and the truth outlines a focus in every view that shows it (BSI against truth
    # r 0.961 against 0.958 on the demo's test split, 0.986 against 0.976 at `paper` difficulty).
    outline_at = threshold if rescorer is None else outline_threshold
    involved = np.zeros((2, N_LABELS), np.int64)
    for candidate in found:
        if candidate.malignancy >= threshold:
            view, window, mask = candidate.view, candidate.window, candidate.mask
            outline = mask & (net.probability(view, 1, window) >= outline_at)
            labels = regions[view][window][outline if outline.any() else mask]
            involved[view] += np.bincount(labels, minlength=N_LABELS)[:N_LABELS]
    area = np.stack([net.grid.area(net.network_regions[view], N_LABELS) for view in range(2)])
    bsi, by_region = bone_scan_index_from_areas(area, involved)
    probability = max((h.malignancy for h in hotspots), default=0.0)
    return StudyLesions(hotspots, regions, bsi, by_region, probability, threshold, levels,
                        (pixel_spacing, pixel_spacing)), numbers
