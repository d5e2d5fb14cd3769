"""Lesion truth of a synthetic study: skeletal-region label maps and finding instance masks, both views.

Regions: every registered bone of the phantom is drawn again with unit peak into a label canvas (anterior layout,
at the anatomy canvas scale); a pixel takes the region whose bones add up to the most there, provided that reaches
BONE_LEVEL of a bone's peak (about 1.55 drawn sigmas from its axis: the bone as seen, inside the collimator blur).
The map is repeated to the stored image size and mirrored for the posterior view, as the study stores it.

Instances: each painted finding and each physiological organ (kidneys, bladder) covers the pixels where its added
uptake, after the collimator blur, reaches FOOTPRINT_FRACTION (one half: the full width at half maximum) of its
peak. A Gaussian blurred by a Gaussian stays Gaussian (covariances add), so the footprint is an exact ellipse. An
instance appears in a view where its transmission to that detector is at least VISIBLE_FRACTION of the better
view's: a vertebral lesion shows in both views (its contrast against its own bone is the same in both), a lesion
in the sternum or an anterior rib only in front. A superscan is diffuse: its instance is the axial skeleton.
"""

from __future__ import annotations

import numpy as np

from ..lesions.regions import BY_NAME, N_LABELS
from ..lesions.truth import LesionTruth
from .case import SyntheticCase
from .sites import SITES
from .phantom import BoneSite, Organ
from .raster import LabelCanvas

BONE_LEVEL = 0.3
FOOTPRINT_FRACTION = 0.5
VISIBLE_FRACTION = 0.25
AXIAL_REGIONS = ("cervical_spine", "thoracic_spine", "lumbar_spine", "sternum", "ribs_right", "ribs_left", "pelvis")

# Phantom regions that map onto one skeletal region whatever the side; the others take the bone's side.
_UNSIDED = {"skull": "skull", "sternum": "sternum", "pelvis": "pelvis"}
_SIDED = {"rib": "ribs", "clavicle": "clavicle", "scapula": "scapula", "shoulder": "humerus", "humerus": "humerus",
          "forearm": "forearm_hand", "hand": "forearm_hand", "femur": "femur", "tibia": "lower_leg_foot",
          "foot": "lower_leg_foot"}
_SPINE = {"C": "cervical_spine", "T": "thoracic_spine", "L": "lumbar_spine"}


def region_of_bone(bone: str, phantom_region: str) -> str:
    """The skeletal region (a `lesions.regions` name) of a phantom bone, or "" when it is not bone."""
    if phantom_region == "spine":
        return _SPINE.get(bone[:1], "")
    if phantom_region in _UNSIDED:
        return _UNSIDED[phantom_region]
    side = bone.split(" ", 1)[0]
    if side not in ("right", "left"):
        return ""
    if phantom_region == "knee":  # distal femur and patella belong to the femur, the tibial plateau below
        return f"{'lower_leg_foot' if 'tibia' in bone else 'femur'}_{side}"
    base = _SIDED.get(phantom_region)
    return f"{base}_{side}" if base else ""


def phantom_truth(case: SyntheticCase) -> LesionTruth:
    """Region maps and instance masks of a generated case, at its stored image size (needs `case.anatomy`)."""
    if case.anatomy is None:
        raise ValueError(f"case {case.case_id} was generated without its anatomy; lesion truth needs it")
    shape = case.anterior.shape
    regions = _region_maps(case.anatomy.sites, case.anatomy.canvas.shape, shape)
    instances = np.zeros((2,) + shape, np.uint16)
    category, kind, region = [], [], []
    blur = SITES[case.site].camera.collimator_sigma_mm / case.patient.pixel_spacing
    scale = shape[0] / case.anatomy.canvas.shape[0]
    for finding in case.findings:
        number = len(category) + 1
        if finding.kind == "superscan":
            axial = np.isin(regions, [BY_NAME[name].label for name in AXIAL_REGIONS])
            instances[axial & (instances == 0)] = number
            where = ""
        else:
            for view, centre in enumerate((finding.centre_anterior, finding.centre_posterior)):
                if _visible(finding.weights, view):
                    angle = finding.angle if view == 0 else -finding.angle  # the posterior is stored mirrored
                    _paint_ellipse(instances[view], number, centre, finding.sigma_px, angle, blur)
            where = "" if finding.category == "artifact" else region_of_bone(finding.bone, finding.region)
        category.append(finding.category)
        kind.append(finding.kind)
        region.append(where)
    for organ in case.anatomy.organs:
        number = len(category) + 1
        row, col = ((float(v) + 0.5) * scale - 0.5 for v in organ.centre)
        along, across, angle = organ.axes
        for view, (r, c, a) in enumerate(((row, col, angle), (row, shape[1] - 1 - col, -angle))):
            if _visible(organ.weights, view):
                if organ.disc:
                    _paint_disc(instances[view], number, (r, c), along * scale)
                else:
                    _paint_ellipse(instances[view], number, (r, c), (along * scale, across * scale), a, blur)
        category.append("physiological")
        kind.append(_organ_kind(organ))
        region.append("")
    # Follow-up visits: each finding keeps its number across the patient's visits; organs are not followed.
    identity = None if case.visit is None else case.visit.identities + [0] * len(case.anatomy.organs)
    return LesionTruth(regions, instances, category, kind, region, identity=identity)


def _organ_kind(organ: Organ) -> str:
    return "kidney" if organ.name.endswith("kidney") else organ.name


def _visible(weights: tuple[float, float], view: int) -> bool:
    return weights[view] >= VISIBLE_FRACTION * max(weights)


def _region_maps(sites: list[BoneSite], canvas_shape: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """uint8 [2, H, W]: region labels of both views at the stored size (posterior mirrored)."""
    canvas = LabelCanvas(canvas_shape, N_LABELS)
    for site in sites:
        name = region_of_bone(site.name, site.region)
        if not name:
            continue
        label = BY_NAME[name].label
        if site.axes is not None:
            canvas.blob(label, (site.points[0, 0], site.points[0, 1]), *site.axes)
        elif len(site.points) == 1:
            canvas.blob(label, (site.points[0, 0], site.points[0, 1]), site.sigma, site.sigma, 0.0)
        else:
            canvas.tube(label, site.points, site.sigma)
    small = canvas.labels(BONE_LEVEL)
    factor_r, factor_c = shape[0] // canvas_shape[0], shape[1] // canvas_shape[1]
    anterior = np.repeat(np.repeat(small, factor_r, axis=0), factor_c, axis=1)
    return np.stack([anterior, anterior[:, ::-1]])


def _paint_ellipse(target: np.ndarray, number: int, centre, sigma: tuple[float, float], angle: float,
                   blur: float) -> None:
    """Set `number` where a Gaussian (sigma along/across, angle) blurred by `blur` reaches FOOTPRINT_FRACTION."""
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.array([[cos, -sin], [sin, cos]])  # columns: the long axis (row, col) and the short axis
    cov = rot @ np.diag([sigma[0] ** 2, sigma[1] ** 2]) @ rot.T + blur**2 * np.eye(2)
    inverse = np.linalg.inv(cov)
    limit = -2.0 * np.log(FOOTPRINT_FRACTION)  # squared Mahalanobis radius of the contour
    reach = np.sqrt(limit * np.diag(cov))  # half-extent of the ellipse along rows and columns
    r0, r1 = int(np.floor(centre[0] - reach[0])), int(np.ceil(centre[0] + reach[0])) + 1
    c0, c1 = int(np.floor(centre[1] - reach[1])), int(np.ceil(centre[1] + reach[1])) + 1
    r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, target.shape[0]), min(c1, target.shape[1])
    if r0 >= r1 or c0 >= c1:
        return
    dy, dx = np.meshgrid(np.arange(r0, r1) - centre[0], np.arange(c0, c1) - centre[1], indexing="ij")
    q = inverse[0, 0] * dy * dy + 2.0 * inverse[0, 1] * dy * dx + inverse[1, 1] * dx * dx
    target[r0:r1, c0:c1][q <= limit] = number


def _paint_disc(target: np.ndarray, number: int, centre, radius: float) -> None:
    r0, r1 = max(int(np.floor(centre[0] - radius)), 0), min(int(np.ceil(centre[0] + radius)) + 1, target.shape[0])
    c0, c1 = max(int(np.floor(centre[1] - radius)), 0), min(int(np.ceil(centre[1] + radius)) + 1, target.shape[1])
    if r0 >= r1 or c0 >= c1:
        return
    dy, dx = np.meshgrid(np.arange(r0, r1) - centre[0], np.arange(c0, c1) - centre[1], indexing="ij")
    target[r0:r1, c0:c1][dy * dy + dx * dx <= radius * radius] = number

