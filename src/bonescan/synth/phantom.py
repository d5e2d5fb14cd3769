"""Normal 99mTc-MDP whole-body anatomy: skeleton, soft tissue, kidneys and bladder in both views.

Landmarks are placed in fractions of body height (y: 0 at the vertex, 1 at the soles; x: from the midline,
positive towards the patient's left), then mapped to pixels with the patient's height, build, shift and tilt.
Uptake amplitudes are relative to a thoracic vertebra (1.0). Each bone is registered as a `BoneSite` so findings
can be placed on real bone with the bone's own depth (and so its own anterior/posterior visibility).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .raster import ViewCanvas, depth_weights
from .sites import PatientPrior

ROWS, COLS = 1024, 256
MIN_COUNTS, MAX_COUNTS = 0.3e6, 3.0e6  # mean counts per view, the clinical range of whole-body scans
SIDES = {"right": -1.0, "left": 1.0}  # x sign: the patient's right lies on the viewer's left of an anterior view


@dataclass
class Patient:
    """Body and acquisition parameters of one synthetic patient."""

    sex: str
    age: int
    height_mm: float
    build: float  # body width factor, 1 = average
    pixel_spacing: float  # mm per pixel, both axes
    top_row: float  # image row of the vertex
    centre_col: float
    tilt_deg: float  # small rotation of the whole body in the image plane
    arm_abduction_deg: float
    forearm_angle_deg: float  # forearm direction relative to the humerus; large values fold hands over the pelvis
    feet_apart: float  # extra half-distance between ankles (fraction of height)
    bone_uptake: float  # bone-to-soft-tissue contrast factor (young patients and superscans are higher)
    soft_tissue: float
    kidney_activity: float
    bladder_activity: float
    bladder_radius: float  # fraction of height
    counts_per_view: float  # target mean total counts of the two views

    @property
    def height_px(self) -> float:
        return self.height_mm / self.pixel_spacing


def sample_patient(rng: np.random.Generator, sex: str, age: int, pixel_spacing: float,
                   prior: PatientPrior | None = None) -> Patient:
    """Draw a plausible body and acquisition for a patient of this sex and age (at a site: its `prior`)."""
    prior = prior or PatientPrior()
    mean_height = 1690.0 if sex == "M" else 1580.0  # adult heights of the paper's population, mm
    height = float(np.clip(rng.normal(mean_height - 1.5 * max(age - 60, 0), 60.0), 1450.0, 1880.0))
    length_px = height / pixel_spacing
    if prior.top_margin_mm is None:
        top = float(rng.uniform(25.0, max(30.0, ROWS - length_px - 25.0)))
    else:  # the scan starts at the head; the feet must still fit
        top = float(min(rng.uniform(*prior.top_margin_mm) / pixel_spacing, max(ROWS - length_px - 5.0, 5.0)))
    folded = rng.random() < prior.folded_arms_share
    median, sigma, lo, hi = prior.counts
    return Patient(
        sex=sex,
        age=age,
        height_mm=height,
        build=float(np.clip(rng.normal(*prior.build), 0.8, 1.3)),
        pixel_spacing=pixel_spacing,
        top_row=top,
        centre_col=float(COLS / 2 + rng.normal(0, 3.0)),
        tilt_deg=float(rng.normal(0, 1.0)),
        arm_abduction_deg=float(rng.uniform(*prior.arm_abduction_deg)),
        forearm_angle_deg=float(rng.uniform(35.0, 60.0) if folded else rng.uniform(-4.0, 6.0)),
        feet_apart=float(rng.uniform(-0.006, 0.012)),
        bone_uptake=float(rng.lognormal(0.0, 0.15) * (1.15 if age < 40 else 1.0) * prior.bone_uptake),
        soft_tissue=float(rng.lognormal(0.0, 0.2) * prior.soft_tissue),
        kidney_activity=float(rng.lognormal(np.log(0.35), 0.35)),
        bladder_activity=float(rng.lognormal(np.log(3.0), 0.6)),
        bladder_radius=float(rng.uniform(0.012, 0.026)),
        counts_per_view=float(np.clip(rng.lognormal(np.log(median), sigma), max(lo, MIN_COUNTS),
                                      min(hi, MAX_COUNTS))),
    )


@dataclass
class BoneSite:
    """A bone drawn on the canvases: findings on it reuse its position, width, uptake and depth."""

    name: str
    region: str  # skull, spine, rib, sternum, clavicle, scapula, pelvis, humerus, femur, ..., knee, foot
    points: np.ndarray  # (n, 2) polyline of (row, col) pixels
    sigma: float  # pixels
    amplitude: float
    weights: tuple[float, float]
    axes: tuple[float, float, float] | None = None  # ellipse: (sigma along, sigma across, angle); None: a tube

    def point(self, rng: np.random.Generator, lo: float = 0.0, hi: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """A random point along the bone (as a fraction lo..hi of its length) and the local direction."""
        pts = self.points
        if len(pts) == 1:
            return pts[0].copy(), np.array([1.0, 0.0])
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        s = rng.uniform(lo, hi) * cum[-1]
        i = int(np.clip(np.searchsorted(cum, s) - 1, 0, len(seg) - 1))
        t = (s - cum[i]) / max(seg[i], 1e-6)
        direction = (pts[i + 1] - pts[i]) / max(seg[i], 1e-6)
        return pts[i] + t * (pts[i + 1] - pts[i]), direction


@dataclass
class Organ:
    """Physiological uptake outside bone (kidneys, bladder), as drawn: canvas pixels, view weights."""

    name: str
    centre: np.ndarray  # (row, col)
    axes: tuple[float, float, float]  # Gaussian (sigma along, sigma across, angle); a disc: (radius, radius, 0)
    weights: tuple[float, float]
    disc: bool = False


@dataclass
class Anatomy:
    """A rendered normal body: expected counts per view (before scaling) and the bones findings may sit on."""

    canvas: ViewCanvas
    sites: list[BoneSite] = field(default_factory=list)
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    organs: list[Organ] = field(default_factory=list)

    def sites_in(self, *regions: str) -> list[BoneSite]:
        return [site for site in self.sites if site.region in regions]


class _Body:
    """Maps body fractions to pixels and draws bones as registered sites (queued, then placed by `draw`)."""

    def __init__(self, patient: Patient, canvas: ViewCanvas, skeleton_scale: float, res: float):
        self.p = patient
        self.canvas = canvas
        self.res = res
        self.h = patient.height_px * res
        self.top, self.centre = patient.top_row * res, patient.centre_col * res
        self.bone_x = np.sqrt(patient.build)
        self.scale = skeleton_scale
        tilt = np.deg2rad(patient.tilt_deg)
        self.cos, self.sin = np.cos(tilt), np.sin(tilt)
        self.rotation = np.array([[self.cos, self.sin], [-self.sin, self.cos]])
        self.pivot = np.array([self.top + 0.5 * self.h, self.centre])
        self.sites: list[BoneSite] = []
        self.warp = True  # trunk and legs are laid out on the drawing scale; arms are placed in body fractions
        self._pending: list[_PendingBone] = []

    def px(self, xy, x_scale: float | None = None, warp: np.ndarray | bool | None = None) -> np.ndarray:
        """(x, y) body fractions -> (row, col) pixels, tilted about the pelvis.

        `warp` (one flag, or one per point) says whether y is on the drawing scale; by default `self.warp`.
        """
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        xs = self.bone_x if x_scale is None else x_scale
        warp = self.warp if warp is None else warp
        y = xy[:, 1]
        if np.all(warp):
            y = np.interp(y, _DRAWN_Y, _BODY_Y)
        elif np.any(warp):
            y = np.where(warp, np.interp(y, _DRAWN_Y, _BODY_Y), y)
        # Offsets from the pivot (rows, cols), turned by the tilt: [rows, cols] @ [[cos, sin], [-sin, cos]].
        offsets = np.empty_like(xy)
        np.multiply(y, self.h, out=offsets[:, 0])
        offsets[:, 0] += self.top - self.pivot[0]
        np.multiply(xy[:, 0], xs * self.h, out=offsets[:, 1])
        offsets[:, 1] += self.centre - self.pivot[1]
        out = offsets @ self.rotation
        out += self.pivot
        return out

    def bone(self, name: str, region: str, xy, sigma: float, amp: float, depth: float, thickness: float) -> None:
        """Queue a bone drawn as a Gaussian tube (or a blob for a single point); `draw` places and registers it."""
        self._pending.append(_PendingBone("tube", name, region, np.asarray(xy, np.float64).reshape(-1, 2), self.warp,
                                          (sigma, sigma), amp, depth, thickness))

    def ellipse(self, name: str, region: str, xy, sx: float, sy: float, amp: float, depth: float, thickness: float,
                angle_deg: float = 0.0) -> None:
        """Queue an elliptical Gaussian bone (vertebral body, iliac wing); `draw` places and registers it."""
        self._pending.append(_PendingBone("ellipse", name, region, np.asarray(xy, np.float64).reshape(1, 2),
                                          self.warp, (sx, sy), amp, depth, thickness, angle_deg))

    def draw(self) -> None:
        """Map every queued bone to pixels at once (one transform instead of one per bone), draw and register it."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        lengths = [len(bone.xy) for bone in pending]
        warp = np.repeat(np.array([bone.warp for bone in pending]), lengths)
        all_pts = self.px(np.concatenate([bone.xy for bone in pending]), warp=warp)
        tilt = np.deg2rad(self.p.tilt_deg)
        start = 0
        for bone, n in zip(pending, lengths):
            pts = all_pts[start:start + n]
            start += n
            weights = depth_weights(bone.depth, bone.thickness)
            amplitude = bone.amp * self.scale
            if bone.kind == "ellipse":
                sx, sy = bone.sigma
                sig_y, sig_x = max(sy * self.h, 0.8), max(sx * self.h * self.bone_x, 0.8)
                angle = float(np.deg2rad(bone.angle_deg) + tilt)
                self.canvas.blob((pts[0, 0], pts[0, 1]), sig_y, sig_x, angle, amplitude, weights)
                sigma = float(np.sqrt(sig_x * sig_y))
                axes = (sig_y, sig_x, angle)
            else:
                sigma = max(bone.sigma[0] * self.h, 0.8)
                axes = None
                if n == 1:
                    self.canvas.blob((pts[0, 0], pts[0, 1]), sigma, sigma, 0.0, amplitude, weights)
                else:
                    self.canvas.tube(pts, sigma, amplitude, weights)
            self.sites.append(BoneSite(bone.name, bone.region, pts, sigma, amplitude, weights, axes))


@dataclass
class _PendingBone:
    """A bone described in body fractions, waiting to be placed in pixels."""

    kind: str  # tube | ellipse
    name: str
    region: str
    xy: np.ndarray
    warp: bool
    sigma: tuple[float, float]  # tube: (sigma, sigma); ellipse: (sx, sy) in body fractions
    amp: float
    depth: float
    thickness: float
    angle_deg: float = 0.0


# Landmarks are drawn on a convenient scale and mapped to anthropometric heights from the vertex (fractions of
# stature: C7 0.15, T12 0.33, iliac crest 0.41, pubic symphysis 0.50, knee joint 0.715, ankle 0.96), which also
# match the real scan NM1 (shoulders 0.15, bladder 0.43, knees 0.68 of its body length).
_DRAWN_Y = np.array([0.0, 0.12, 0.182, 0.383, 0.5, 0.535, 0.597, 0.78, 0.96, 1.0])
_BODY_Y = np.array([0.0, 0.115, 0.155, 0.33, 0.42, 0.445, 0.5, 0.715, 0.96, 1.0])

TRUNK_CM = 21.0  # antero-posterior thickness of an average trunk


def render_anatomy(patient: Patient, rng: np.random.Generator, res: float = 0.5, skeleton_scale: float = 1.0,
                   soft_scale: float = 1.0, kidney_scale: float = 1.0, bladder_scale: float = 1.0) -> Anatomy:
    """Draw the normal body of `patient` (uptake units, unscaled, no noise) into both views.

    The canvas is `res` times the image size (half size by default: the camera's ~9 mm resolution is still
    sampled at 2 pixels per FWHM, at a quarter of the cost); site points and landmarks are canvas pixels.
    """
    shape = (int(round(ROWS * res)), int(round(COLS * res)))
    canvas = ViewCanvas.empty(shape)
    b = _Body(patient, canvas, skeleton_scale * patient.bone_uptake, res)
    trunk = TRUNK_CM * patient.build
    amp_jitter = lambda: float(rng.lognormal(0.0, 0.08))  # noqa: E731 - small bone-to-bone uptake variation
    landmarks: dict[str, np.ndarray] = {}

    # Skull: calvarium rim, skull base, facial bones and mandible.
    angles = np.linspace(0, 2 * np.pi, 25)
    b.bone("calvarium", "skull", np.stack([0.041 * np.cos(angles), 0.06 + 0.056 * np.sin(angles)], 1),
           0.0045, 0.55, 0.5, 17)
    b.ellipse("skull vault", "skull", (0, 0.055), 0.026, 0.032, 0.35, 0.5, 17)
    b.ellipse("facial bones", "skull", (0, 0.097), 0.019, 0.011, 0.9, 0.15, 17)
    b.ellipse("skull base", "skull", (0, 0.108), 0.026, 0.008, 0.35, 0.7, 17)
    b.bone("mandible", "skull", [(-0.036, 0.098), (-0.026, 0.122), (0, 0.13), (0.026, 0.122), (0.036, 0.098)],
           0.004, 0.5, 0.25, 15)
    landmarks["vertex"] = b.px((0, 0))[0]

    # Spine: vertebral bodies as elliptical blobs merging into a column, lateral curvature varies a little.
    scoliosis = rng.normal(0, 0.004)
    levels = ([f"C{i}" for i in range(3, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)])
    ys = np.concatenate([np.linspace(0.125, 0.172, 5), np.linspace(0.182, 0.383, 12), np.linspace(0.398, 0.5, 5)])
    vertebra_y: dict[str, float] = {}
    for level, y in zip(levels, ys):
        x = scoliosis * np.sin(np.pi * (y - 0.18) / 0.32)
        width = 0.007 if level[0] == "C" else (0.0095 + 0.002 * (y - 0.18) / 0.2 if level[0] == "T" else 0.0125)
        height = 0.0055 if level[0] == "C" else (0.0078 if level[0] == "T" else 0.0095)
        amp = {"C": 0.75, "T": 1.0, "L": 1.05}[level[0]] * amp_jitter()
        b.ellipse(level, "spine", (x, y), width, height, amp, 0.72, trunk if level[0] != "C" else 12)
        vertebra_y[level] = float(y)
    b.ellipse("sacrum", "pelvis", (0, 0.535), 0.019, 0.022, 0.85, 0.8, trunk)
    b.ellipse("coccyx", "pelvis", (0, 0.567), 0.006, 0.008, 0.4, 0.8, trunk)

    # Thorax: ribs (posterior arcs deep, anterior arcs shallow), sternum, clavicles, scapulae.
    rib_width = [0.045, 0.058, 0.067, 0.074, 0.079, 0.082, 0.084, 0.085, 0.083, 0.079, 0.072, 0.06]
    for side_name, side in SIDES.items():
        for k in range(12):
            y0 = vertebra_y[f"T{k + 1}"]
            wide = rib_width[k] * (1.0 + 0.05 * (patient.build - 1.0))
            t = np.linspace(0, 1, 4)
            post = np.stack([side * (0.012 + (wide - 0.012) * np.sin(t * np.pi / 2)),
                             y0 - 0.004 * np.sin(t * np.pi) + 0.045 * (1 - np.cos(t * np.pi / 2))], 1)
            amp = 0.24 * amp_jitter()
            b.bone(f"{side_name} rib {k + 1} posterior", "rib", post, 0.0032, amp, 0.85, trunk)
            if k < 10:
                end_x, drop = (0.028 + 0.004 * k), 0.035 + 0.004 * k
                ant = np.stack([side * (wide - (wide - end_x) * (1 - np.cos(t * np.pi / 2))),
                                post[-1, 1] + drop * np.sin(t * np.pi / 2)], 1)
                b.bone(f"{side_name} rib {k + 1} anterior", "rib", ant, 0.003, 0.17 * amp_jitter(), 0.15, trunk)
        b.bone(f"{side_name} clavicle", "clavicle",
               [(side * 0.016, 0.19), (side * 0.055, 0.182), (side * 0.09, 0.174)], 0.0038, 0.45, 0.2, trunk)
        b.ellipse(f"{side_name} sternoclavicular joint", "sternum", (side * 0.014, 0.187), 0.006, 0.005, 0.65, 0.1,
                  trunk)
        b.bone(f"{side_name} scapular spine", "scapula", [(side * 0.05, 0.215), (side * 0.096, 0.192)],
               0.0035, 0.45, 0.85, trunk)
        b.ellipse(f"{side_name} scapula", "scapula", (side * 0.072, 0.24), 0.016, 0.03, 0.2, 0.85, trunk,
                  angle_deg=-side * 12)
        b.bone(f"{side_name} scapular border", "scapula", [(side * 0.052, 0.22), (side * 0.062, 0.285),
                                                           (side * 0.09, 0.215)], 0.003, 0.28, 0.85, trunk)
        b.ellipse(f"{side_name} shoulder", "shoulder", (side * 0.1, 0.194), 0.009, 0.009, 0.85, 0.5, trunk * 0.7)
        landmarks[f"{side_name} shoulder"] = b.px((side * 0.1, 0.194))[0]
    b.ellipse("manubrium", "sternum", (0, 0.2), 0.009, 0.009, 0.8, 0.05, trunk)
    b.bone("sternal body", "sternum", [(0, 0.212), (0, 0.285)], 0.0055, 0.55, 0.05, trunk)

    # Pelvis and hips.
    for side_name, side in SIDES.items():
        b.ellipse(f"{side_name} iliac wing", "pelvis", (side * 0.066, 0.522), 0.024, 0.02, 0.42, 0.6, trunk,
                  angle_deg=side * 20)
        b.bone(f"{side_name} iliac crest", "pelvis",
               [(side * 0.035, 0.503), (side * 0.075, 0.496), (side * 0.1, 0.512), (side * 0.098, 0.535)],
               0.0045, 0.38, 0.6, trunk)
        b.bone(f"{side_name} sacroiliac joint", "pelvis", [(side * 0.022, 0.518), (side * 0.028, 0.552)], 0.0045,
               1.05 * amp_jitter(), 0.8, trunk)
        b.ellipse(f"{side_name} acetabulum", "pelvis", (side * 0.068, 0.573), 0.011, 0.011, 0.65, 0.5, trunk)
        b.bone(f"{side_name} pubic ramus", "pelvis", [(side * 0.062, 0.585), (side * 0.022, 0.594), (side * 0.004, 0.596)],
               0.004, 0.5, 0.2, trunk)
        b.bone(f"{side_name} ischium", "pelvis", [(side * 0.06, 0.58), (side * 0.056, 0.606), (side * 0.03, 0.606),
                                                   (side * 0.018, 0.596)], 0.0042, 0.42, 0.6, trunk)

    # Legs: femora, knees, tibiae and fibulae, ankles and feet.
    for side_name, side in SIDES.items():
        apart = side * patient.feet_apart
        knee_x, ankle_x = side * 0.05 + 0.5 * apart, side * 0.047 + apart
        b.ellipse(f"{side_name} greater trochanter", "femur", (side * 0.094, 0.587), 0.008, 0.009, 0.55, 0.5, trunk)
        b.bone(f"{side_name} femoral neck", "femur", [(side * 0.068, 0.575), (side * 0.088, 0.59)], 0.006, 0.5, 0.5,
               trunk)
        b.bone(f"{side_name} femur", "femur", [(side * 0.085, 0.6), (knee_x, 0.766)], 0.0065, 0.4, 0.5, 14)
        b.ellipse(f"{side_name} distal femur", "knee", (knee_x, 0.772), 0.014, 0.009, 0.75 * amp_jitter(), 0.45, 12)
        b.ellipse(f"{side_name} patella", "knee", (knee_x, 0.779), 0.006, 0.007, 0.45, 0.1, 12)
        b.ellipse(f"{side_name} tibial plateau", "knee", (knee_x, 0.794), 0.013, 0.007, 0.65 * amp_jitter(), 0.4, 12)
        b.bone(f"{side_name} tibia", "tibia", [(knee_x, 0.8), (ankle_x - side * 0.002, 0.955)], 0.006, 0.4, 0.3, 10)
        b.bone(f"{side_name} fibula", "tibia", [(knee_x + side * 0.012, 0.808), (ankle_x + side * 0.01, 0.952)], 0.0028,
               0.15, 0.6, 10)
        b.ellipse(f"{side_name} ankle", "foot", (ankle_x, 0.962), 0.009, 0.007, 0.75, 0.5, 9)
        b.ellipse(f"{side_name} tarsus", "foot", (ankle_x + side * 0.002, 0.976), 0.011, 0.009, 0.7, 0.4, 9)
        for toe in (-0.012, -0.004, 0.004, 0.012):
            b.bone(f"{side_name} metatarsal", "foot", [(ankle_x + side * 0.003, 0.98),
                                                      (ankle_x + side * (0.008 + toe), 0.998)], 0.0025, 0.28, 0.2, 6)
        landmarks[f"{side_name} knee"] = b.px((knee_x, 0.783))[0]
        landmarks[f"{side_name} sole"] = b.px((ankle_x, 1.0))[0]

    # Arms: pose varies (abduction, forearms at the sides or folded over the pelvis).
    arm_paths: dict[str, np.ndarray] = {}
    b.warp = False
    for side_name, side in SIDES.items():
        shoulder = np.array([side * 0.104, float(np.interp(0.2, _DRAWN_Y, _BODY_Y))])
        abd = np.deg2rad(patient.arm_abduction_deg + rng.normal(0, 2.0))
        elbow = shoulder + 0.172 * np.array([side * np.sin(abd), np.cos(abd)])
        fore = abd - np.deg2rad(patient.forearm_angle_deg + rng.normal(0, 3.0))
        wrist = elbow + 0.145 * np.array([side * np.sin(fore), np.cos(fore)])
        hand_dir = np.array([side * np.sin(fore), np.cos(fore)])
        hand = wrist + 0.075 * hand_dir
        b.bone(f"{side_name} humeral head", "humerus", [shoulder + (0, 0.004)], 0.0085, 0.7, 0.5, 10)
        b.bone(f"{side_name} humerus", "humerus", [shoulder + (0, 0.01), elbow], 0.0045, 0.3, 0.5, 9)
        b.bone(f"{side_name} elbow", "forearm", [elbow], 0.0065, 0.3, 0.5, 8)
        normal = np.array([hand_dir[1], -hand_dir[0]]) * 0.005
        b.bone(f"{side_name} radius", "forearm", [elbow + normal, wrist + normal], 0.0028, 0.22, 0.4, 7)
        b.bone(f"{side_name} ulna", "forearm", [elbow - normal, wrist - normal], 0.0028, 0.22, 0.6, 7)
        b.bone(f"{side_name} wrist", "hand", [wrist + 0.012 * hand_dir], 0.006, 0.55, 0.5, 5)
        for f in np.linspace(-1, 1, 4):
            tip = hand + np.array([hand_dir[1], -hand_dir[0]]) * 0.01 * f
            b.bone(f"{side_name} fingers", "hand", [wrist + 0.02 * hand_dir, tip], 0.0022, 0.25, 0.5, 4)
        arm_paths[side_name] = np.array([shoulder, elbow, wrist, hand])
        landmarks[f"{side_name} elbow"] = b.px(elbow)[0]
        landmarks[f"{side_name} wrist"] = b.px(wrist)[0]

    b.warp = True

    # Soft tissue: one body outline (overlaps kept at the maximum), uniform uptake, seen equally from both sides.
    soft = ViewCanvas.empty(shape)
    sb = _Body(patient, soft, 1.0, res)
    level = 0.65 * patient.soft_tissue * soft_scale
    w = depth_weights(0.5, trunk)
    build = patient.build
    parts = [
        ([(0, 0.04), (0, 0.085)], 0.05, 0.9),
        ([(0, 0.11), (0, 0.17)], 0.032, 0.8),
        ([(0, 0.215), (0, 0.3)], 0.1 * build, 1.0),
        ([(0, 0.3), (0, 0.47)], 0.09 * build ** 1.3, 1.0),
        ([(0, 0.49), (0, 0.56)], 0.105 * build, 1.0),
    ]
    for xy, radius, amp in parts:
        soft.solid(sb.px(xy, x_scale=1.0), radius * sb.h, level * amp, w, combine_max=True)
    for side_name, side in SIDES.items():
        apart = side * patient.feet_apart
        mid_thigh = (side * 0.054 + 0.25 * apart, 0.68)
        soft.solid(sb.px([(side * 0.058, 0.58), mid_thigh]), 0.052 * build * sb.h, level * 0.75, w, combine_max=True)
        soft.solid(sb.px([mid_thigh, (side * 0.05 + 0.5 * apart, 0.78)]), 0.038 * build * sb.h, level * 0.6, w,
                   combine_max=True)
        soft.solid(sb.px([(side * 0.05 + 0.5 * apart, 0.78), (side * 0.047 + apart, 0.96)]),
                   0.03 * build * sb.h, level * 0.5, w, combine_max=True)
        soft.solid(sb.px([(side * 0.047 + apart, 0.96), (side * 0.05 + apart, 0.995)]),
                   0.018 * sb.h, level * 0.4, w, combine_max=True)
        path = arm_paths[side_name]
        sb.warp = False
        soft.solid(sb.px(path[:2]), 0.026 * build * sb.h, level * 0.6, w, combine_max=True)
        soft.solid(sb.px(path[1:]), 0.019 * build * sb.h, level * 0.5, w, combine_max=True)
        sb.warp = True
    canvas.add_canvas(soft)

    # Kidneys (posterior, the left one higher) and the bladder (anterior, often the hottest spot).
    organs = []
    for side_name, side, y in (("right", -1.0, 0.39), ("left", 1.0, 0.38)):
        pt = b.px((side * 0.042, y))[0]
        act = patient.kidney_activity * kidney_scale
        axes = (0.026 * b.h, 0.013 * b.h, float(np.deg2rad(side * -15)))
        canvas.blob((pt[0], pt[1]), *axes, act, depth_weights(0.72, trunk))
        organs.append(Organ(f"{side_name} kidney", pt, axes, depth_weights(0.72, trunk)))
    bladder = b.px((rng.normal(0, 0.004), 0.568))[0]
    radius = patient.bladder_radius * b.h
    canvas.solid(bladder[None, :], radius, patient.bladder_activity * bladder_scale, depth_weights(0.3, trunk))
    landmarks["bladder"] = bladder
    organs.append(Organ("bladder", bladder, (radius, radius, 0.0), depth_weights(0.3, trunk), disc=True))

    b.draw()
    return Anatomy(canvas=canvas, sites=b.sites, landmarks=landmarks, organs=organs)
