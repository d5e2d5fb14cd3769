"""Findings drawn onto a rendered body: metastases, benign confounders and acquisition artifacts.

Each finding is drawn on real bone (a `BoneSite`) with that bone's depth, so a lesion in a vertebra is brighter
in the posterior view and one in the sternum in the anterior view, as on a real scan. Contrast is the lesion's
peak uptake relative to the normal uptake of the bone it sits on (artifacts: relative to a thoracic vertebra).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .phantom import COLS, Anatomy, BoneSite
from .raster import depth_weights


@dataclass(frozen=True)
class DifficultyProfile:
    """How visible metastases are and how often benign look-alikes and artifacts appear."""

    name: str
    grade2_lesions: tuple[int, int]  # few atypical lesions
    grade3_lesions: tuple[int, int]  # typical multiple lesions
    grade2_contrast: tuple[float, float]
    grade3_contrast: tuple[float, float]
    lesion_sigma_mm: tuple[float, float]
    benign_rate: float  # scales the age-dependent number of benign findings
    benign_contrast: tuple[float, float]
    artifact_rate: float
    superscan_share: float  # of grade 3
    grade3_share: float  # of metastatic cases
    counts_scale: float
    lookalike_rate: float = 0.0  # expected metastasis look-alikes of an old man (see `lookalike_count_mean`)
    lookalike_contrast: tuple[float, float] = (1.0, 2.5)  # relative to the bone, as metastases are


DIFFICULTIES: dict[str, DifficultyProfile] = {
    # Clear multiple hot spots, few look-alikes: a small CNN at 384x128 learns it in minutes.
    "easy": DifficultyProfile("easy", (3, 6), (8, 30), (2.5, 4.5), (2.5, 5.0), (7.0, 11.0), 0.3, (0.5, 1.2),
                              0.5, 0.03, 0.7, 1.5),
    # Between the two: lesions a small CNN finds in minutes, but older men's healed fractures and arthropathy are
    # metastases' twins, so it reads older prostate patients worst, as the paper's network did (`make demo`).
    # `make demo` (1000 studies 5:1:4, cpu-small 4 epochs): test AUC 0.951 and 0.955 (seeds 0 and 1, n = 400),
    # prostate the hardest cancer type. With 1.0 look-alikes and grade-2 contrast 2.0-3.5 (600 studies, 6 epochs,
    # 1000 further studies): 0.941, and older prostate patients no harder than younger ones.
    "demo": DifficultyProfile("demo", (2, 4), (6, 30), (2.4, 4.0), (2.2, 4.5), (6.5, 10.5), 0.5, (0.6, 1.5),
                              0.8, 0.04, 0.65, 1.4, lookalike_rate=2.5, lookalike_contrast=(1.8, 3.2)),
    # Faint solitary lesions and benign uptake of the same brightness, as in the paper's false negatives/positives.
    "paper": DifficultyProfile("paper", (1, 3), (4, 40), (0.7, 2.0), (1.0, 4.0), (4.0, 9.0), 1.0, (0.8, 3.0),
                               1.0, 0.05, 0.6, 1.0, lookalike_rate=0.9, lookalike_contrast=(0.8, 2.5)),
    "hard": DifficultyProfile("hard", (1, 2), (3, 15), (0.5, 1.2), (0.7, 2.5), (3.5, 7.0), 1.5, (1.0, 3.5),
                              1.3, 0.05, 0.5, 0.7),
}


def difficulty_profile(name: str) -> DifficultyProfile:
    """The profile called `name`, or a ConfigError listing the known ones."""
    try:
        return DIFFICULTIES[name]
    except KeyError:
        raise ConfigError("--difficulty", f"unknown difficulty {name!r}; choose one of {', '.join(DIFFICULTIES)}") from None


@dataclass
class Finding:
    """Ground truth of one hot spot, in full-image pixels (row, col) of each view as stored."""

    kind: str  # metastasis, superscan, degenerative_knee, rib_fractures, injection_site, ...
    category: str  # metastasis | benign | artifact
    region: str
    bone: str
    centre_anterior: tuple[float, float]
    centre_posterior: tuple[float, float]
    size_mm: float  # Gaussian sigma along the long axis
    contrast: float
    view: str  # anterior | posterior | both: where it is at least half as bright as in the better view
    # Drawn shape, for truth masks: Gaussian (sigma along, sigma across) in full-image pixels, long-axis angle from
    # the row axis in the anterior layout (radians), and the transmission to the anterior and posterior detectors.
    sigma_px: tuple[float, float] = (0.0, 0.0)
    angle: float = 0.0
    weights: tuple[float, float] = (1.0, 1.0)

    def to_json(self) -> dict:
        return {
            "kind": self.kind, "category": self.category, "region": self.region, "bone": self.bone,
            "centre_anterior": [round(v, 1) for v in self.centre_anterior],
            "centre_posterior": [round(v, 1) for v in self.centre_posterior],
            "size_mm": round(self.size_mm, 1), "contrast": round(self.contrast, 2), "view": self.view,
        }


@dataclass
class FindingPainter:
    """Draws findings on an anatomy's canvas and records their ground truth."""

    anatomy: Anatomy
    rng: np.random.Generator
    pixel_spacing: float
    res: float
    findings: list[Finding] = field(default_factory=list)
    wrist_injection_share: float = 0.4  # of injection sites at the wrist (or the hand's back) rather than the elbow

    def _record(self, kind: str, category: str, site: BoneSite | None, region: str, centre: np.ndarray,
                sigma_px: float, contrast: float, weights: tuple[float, float], bone: str = "",
                sigma_across_px: float | None = None, angle: float = 0.0) -> None:
        # Canvas pixel i covers image pixels i/res .. (i+1)/res - 1, so its centre sits half a canvas pixel on.
        row = (float(centre[0]) + 0.5) / self.res - 0.5
        col = (float(centre[1]) + 0.5) / self.res - 0.5
        wa, wp = weights
        view = "both" if min(wa, wp) >= 0.5 * max(wa, wp) else ("anterior" if wa > wp else "posterior")
        self.findings.append(Finding(
            kind, category, region, bone or (site.name if site else ""), (row, col), (row, COLS - 1 - col),
            sigma_px / self.res * self.pixel_spacing, contrast, view,
            (sigma_px / self.res, (sigma_px if sigma_across_px is None else sigma_across_px) / self.res), angle,
            weights))

    def hot_spot(self, kind: str, category: str, site: BoneSite, centre: np.ndarray, direction: np.ndarray,
                 sigma_mm: float, elongation: float, contrast: float) -> None:
        """A Gaussian hot spot on `site`, elongated along `direction` (row, col) by `elongation`."""
        sigma = max(sigma_mm / self.pixel_spacing * self.res, 0.6)
        angle = float(np.arctan2(direction[1], direction[0]))
        self.anatomy.canvas.blob((centre[0], centre[1]), sigma * elongation, sigma, angle,
                                 contrast * site.amplitude, site.weights)
        self._record(kind, category, site, site.region, centre, sigma * elongation, contrast, site.weights,
                     sigma_across_px=sigma, angle=angle)

    # --- metastases -------------------------------------------------------------------------------------------
    METASTASIS_REGIONS = {"spine": 0.34, "rib": 0.2, "pelvis": 0.2, "skull": 0.05, "sternum": 0.04,
                          "scapula": 0.04, "femur": 0.06, "humerus": 0.04, "clavicle": 0.03}

    def metastases(self, count: int, contrast: tuple[float, float], sigma_mm: tuple[float, float]) -> None:
        """`count` focal metastases in the axial skeleton and proximal long bones."""
        regions = list(self.METASTASIS_REGIONS)
        p = np.array(list(self.METASTASIS_REGIONS.values()))
        for _ in range(count):
            region = regions[self.rng.choice(len(regions), p=p / p.sum())]
            sites = [s for s in self.anatomy.sites_in(region) if s.name.split()[-1] not in ("fingers",)]
            site = sites[self.rng.integers(len(sites))]
            # Long bones: metastases sit in the proximal third (red marrow), not the shaft's far end.
            hi = 0.35 if region in ("femur", "humerus") else 1.0
            centre, direction = site.point(self.rng, 0.0, hi)
            if len(site.points) == 1:  # blob-shaped bone: anywhere within it
                centre = centre + self.rng.normal(0, 0.45 * site.sigma, 2)
            elongation = 1.6 if region in ("rib", "clavicle") else float(self.rng.uniform(1.0, 1.4))
            self.hot_spot("metastasis", "metastasis", site, centre, direction,
                          float(self.rng.uniform(*sigma_mm)), elongation, float(self.rng.uniform(*contrast)))

    def superscan_marrow(self, count: int) -> None:
        """Faint heterogeneous uptake through the axial skeleton that comes with a diffuse superscan."""
        for _ in range(count):
            site_list = self.anatomy.sites_in("spine", "pelvis", "rib")
            site = site_list[self.rng.integers(len(site_list))]
            centre, direction = site.point(self.rng)
            sigma = max(float(self.rng.uniform(6, 12)) / self.pixel_spacing * self.res, 0.6)
            self.anatomy.canvas.blob((centre[0], centre[1]), sigma, sigma, 0.0,
                                     float(self.rng.uniform(0.2, 0.6)) * site.amplitude, site.weights)

    # --- benign confounders -------------------------------------------------------------------------------------
    BENIGN_KINDS = {"degenerative_knee": 0.24, "degenerative_spine": 0.26, "degenerative_shoulder": 0.12,
                    "degenerative_foot": 0.1, "rib_fractures": 0.12, "compression_fracture": 0.08,
                    "postoperative": 0.08}

    def benign(self, kind: str, contrast: tuple[float, float]) -> None:
        """One benign look-alike of `kind` (it may draw several hot spots, e.g. a row of rib fractures)."""
        rng = self.rng
        c = lambda: float(rng.uniform(*contrast))  # noqa: E731
        side = "right" if rng.random() < 0.5 else "left"
        by_name = {s.name: s for s in self.anatomy.sites}
        if kind in ("degenerative_knee", "degenerative_shoulder", "degenerative_foot"):
            part = {"degenerative_knee": ("distal femur", "tibial plateau"), "degenerative_shoulder": ("shoulder",),
                    "degenerative_foot": ("tarsus", "ankle")}[kind]
            sides = ["right", "left"] if rng.random() < 0.4 else [side]
            for s in sides:
                site = by_name[f"{s} {part[rng.integers(len(part))]}"]
                # Osteoarthritis favours the medial compartment: shift towards the midline.
                medial = 1.0 if s == "right" else -1.0
                centre = site.points[0] + np.array([0.0, medial * 0.4 * site.sigma])
                self.hot_spot(kind, "benign", site, centre, np.array([0.0, 1.0]), float(rng.uniform(4, 7)), 1.3, c())
        elif kind == "degenerative_spine":
            levels = ["L2", "L3", "L4", "L5"] if rng.random() < 0.8 else ["C5", "C6", "C7"]
            first = int(rng.integers(len(levels)))
            for level in levels[first:first + int(rng.integers(1, 3))]:
                site = by_name[level]
                lateral = 1.0 if rng.random() < 0.5 else -1.0  # osteophytes at the vertebral margin
                centre = site.points[0] + np.array([0.0, lateral * 1.3 * site.sigma])
                self.hot_spot(kind, "benign", site, centre, np.array([1.0, 0.0]), float(rng.uniform(3.5, 6)), 1.2, c())
        elif kind == "rib_fractures":
            first = int(rng.integers(3, 8))
            for k in range(first, first + int(rng.integers(2, 5))):
                site = by_name[f"{side} rib {k} posterior"]
                # Same distance along each rib -> the classic vertical row of small round foci.
                centre, direction = site.point(rng, 0.88, 0.88)
                self.hot_spot(kind, "benign", site, centre, direction, float(rng.uniform(3, 4.5)), 1.0,
                              c() * 1.3)
        elif kind == "compression_fracture":
            level = ["T10", "T11", "T12", "L1", "L2", "L3"][int(rng.integers(6))]
            site = by_name[level]
            sigma_mm = 2.2 * site.sigma / self.res * self.pixel_spacing
            # A horizontal band across the whole vertebral body (the long axis runs along the columns).
            self.hot_spot(kind, "benign", site, site.points[0], np.array([0.0, 1.0]), sigma_mm / 3.0, 3.0, c())
        elif kind == "postoperative":
            choice = rng.integers(3)
            if choice == 0:  # sternotomy
                site = by_name["sternal body"]
                centre, direction = site.point(rng, 0.5, 0.5)
                sigma_mm = 0.45 * np.linalg.norm(site.points[-1] - site.points[0]) / self.res * self.pixel_spacing
                self.hot_spot(kind, "benign", site, centre, direction, sigma_mm / 3.0, 3.0, c() * 0.6)
            else:  # knee or hip arthroplasty: uptake around the prosthesis
                site = by_name[f"{side} {'tibial plateau' if choice == 1 else 'greater trochanter'}"]
                self.hot_spot(kind, "benign", site, site.points[0], np.array([1.0, 0.0]), float(rng.uniform(8, 12)),
                              1.4, c() * 0.7)
        else:
            raise ValueError(kind)

    # Benign uptake that looks like a metastasis: one focal spot on a bone metastases favour, as bright as one.
    # Healed fractures after falls and facet / costovertebral arthropathy; older men carry most of them, which is
    # why the paper's network read prostate patients >= 60 worst (AUC 0.938 against 0.992 below 60).
    LOOKALIKE_KINDS = {"healed_rib_fracture": 0.4, "facet_arthropathy": 0.3, "pelvic_fracture": 0.15,
                       "costovertebral_arthropathy": 0.15}

    def lookalike(self, kind: str, contrast: tuple[float, float], sigma_mm: tuple[float, float]) -> None:
        """One benign spot of `kind` drawn like a solitary metastasis (same bones, size and contrast range)."""
        rng = self.rng
        by_name = {s.name: s for s in self.anatomy.sites}
        side = "right" if rng.random() < 0.5 else "left"
        lateral = 1.0 if side == "left" else -1.0
        if kind == "healed_rib_fracture":
            k = int(rng.integers(2, 13))
            part = "anterior" if k <= 10 and rng.random() < 0.35 else "posterior"
            site = by_name[f"{side} rib {k} {part}"]
            centre, direction = site.point(rng, 0.25, 1.0)
            elongation = 1.6
        elif kind == "facet_arthropathy":  # the facet joints lie just beside the midline of the lumbar spine
            site = by_name[["L1", "L2", "L3", "L4", "L5", "T11", "T12"][int(rng.integers(7))]]
            centre, direction = site.points[0] + np.array([0.0, lateral * 0.6 * site.sigma]), np.array([1.0, 0.0])
            elongation = float(rng.uniform(1.0, 1.4))
        elif kind == "pelvic_fracture":  # sacral insufficiency or pubic ramus fracture
            names = ["sacrum", f"{side} pubic ramus", f"{side} iliac wing", f"{side} sacroiliac joint"]
            site = by_name[names[int(rng.integers(len(names)))]]
            centre, direction = site.point(rng)
            if len(site.points) == 1:
                centre = centre + rng.normal(0, 0.45 * site.sigma, 2)
            elongation = float(rng.uniform(1.0, 1.4))
        elif kind == "costovertebral_arthropathy":
            site = by_name[f"T{int(rng.integers(4, 13))}"]
            centre, direction = site.points[0] + np.array([0.0, lateral * 1.4 * site.sigma]), np.array([1.0, 0.0])
            elongation = 1.0
        else:
            raise ValueError(kind)
        self.hot_spot(kind, "benign", site, centre, direction, float(rng.uniform(*sigma_mm)), elongation,
                      float(rng.uniform(*contrast)))

    # --- artifacts ----------------------------------------------------------------------------------------------
    def artifact(self, kind: str) -> None:
        """Injection site, urine contamination, a catheter line or a urinary catheter with its bag (not bone;
        contrast relative to a vertebra)."""
        rng, lm, h = self.rng, self.anatomy.landmarks, self.anatomy_height()
        side = "right" if rng.random() < 0.5 else "left"
        if kind == "injection_site":
            where = lm[f"{side} {'wrist' if rng.random() < self.wrist_injection_share else 'elbow'}"] \
                + rng.normal(0, 1.0, 2)
            self._spot(kind, where, float(rng.uniform(2.5, 4)), float(rng.lognormal(np.log(4.0), 0.8)), 0.3, 7)
        elif kind == "urine_contamination":
            base = lm["bladder"] + np.array([rng.uniform(0.03, 0.15), rng.uniform(-0.07, 0.07)]) * h
            for _ in range(int(rng.integers(1, 4))):
                self._spot(kind, base + rng.normal(0, 0.01 * h, 2), float(rng.uniform(3, 8)),
                           float(rng.lognormal(np.log(2.5), 0.6)), 0.05, 14)
        elif kind == "catheter":
            sign = -1.0 if side == "right" else 1.0
            shoulder = lm[f"{side} shoulder"]
            port = shoulder + np.array([0.04 * h, -sign * 0.05 * h])
            neck = shoulder + np.array([-0.02 * h, -sign * 0.075 * h])
            line = np.array([port, port + (neck - port) * 0.5 + np.array([0, sign * 0.01 * h]), neck,
                             neck + np.array([0.07 * h, 0.0])])
            sigma = max(1.6 / self.pixel_spacing * self.res, 0.6)
            self.anatomy.canvas.tube(line, sigma, 0.25, depth_weights(0.1, 21))
            self._spot(kind, port, 5.0, float(rng.uniform(0.6, 1.5)), 0.05, 21)
        elif kind == "urinary_catheter":
            # Urine runs from the bladder down between the thighs to a collecting bag laid between the feet.
            bladder = lm["bladder"]
            soles = 0.5 * (lm["right sole"] + lm["left sole"])
            knees = 0.5 * (lm["right knee"] + lm["left knee"])
            bag = soles + np.array([-rng.uniform(0.02, 0.08) * h, rng.normal(0, 0.01 * h)])
            sway = rng.normal(0, 0.012 * h)
            line = np.array([bladder, 0.5 * (bladder + knees) + np.array([0.0, sway]),
                             knees + np.array([0.0, 0.6 * sway]), bag])
            self._line(kind, line, 2.0, float(rng.uniform(0.3, 1.0)), 0.3, 10)
            # A bag holds a good part of the urine excreted since injection: often hotter than the bladder.
            self._spot(kind, bag, float(rng.uniform(10, 18)), float(rng.lognormal(np.log(3.0), 0.5)), 0.5, 6)
        else:
            raise ValueError(kind)

    def anatomy_height(self) -> float:
        lm = self.anatomy.landmarks
        return float(0.5 * (lm["right sole"][0] + lm["left sole"][0]) - lm["vertex"][0])

    def _line(self, kind: str, points: np.ndarray, sigma_mm: float, contrast: float, depth: float,
              thickness: float) -> None:
        """A tube of activity along `points` (canvas pixels), recorded as one finding at its midpoint."""
        sigma = max(sigma_mm / self.pixel_spacing * self.res, 0.6)
        weights = depth_weights(depth, thickness)
        self.anatomy.canvas.tube(points, sigma, contrast, weights)
        length = float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())
        # Size: the SD of positions along a uniform segment of that length (L / sqrt(12)).
        self._record(kind, "artifact", None, "soft tissue", points[len(points) // 2], length / np.sqrt(12.0),
                     contrast, weights, bone="none")

    def _spot(self, kind: str, centre: np.ndarray, sigma_mm: float, contrast: float, depth: float,
              thickness: float) -> None:
        sigma = max(sigma_mm / self.pixel_spacing * self.res, 0.6)
        weights = depth_weights(depth, thickness)
        self.anatomy.canvas.blob((centre[0], centre[1]), sigma, sigma, 0.0, contrast, weights)
        self._record(kind, "artifact", None, "soft tissue", centre, sigma, contrast, weights, bone="none")


ARTIFACT_RATES = {"injection_site": 0.3, "urine_contamination": 0.05, "catheter": 0.04}  # generic phantom


def benign_count_mean(age: float, profile: DifficultyProfile) -> float:
    """Expected number of benign findings: degenerative change and fractures climb steeply after 60."""
    return profile.benign_rate * (0.25 + 1.6 / (1.0 + np.exp(-(age - 62.0) / 6.0)))


def lookalike_count_mean(age: float, sex: str | None, profile: DifficultyProfile) -> float:
    """Expected metastasis look-alikes of a patient with benign findings: few before 55, most in older men."""
    return profile.lookalike_rate * (1.0 if sex != "F" else 0.45) / (1.0 + np.exp(-(age - 63.0) / 5.0))


def paint_findings(painter: FindingPainter, grade: int, age: float, profile: DifficultyProfile,
                   superscan: bool, sex: str | None = None,
                   artifact_rates: dict[str, float] | None = None) -> None:
    """Draw the findings that make a case of this grade, plus age-related benign uptake and artifacts.

    `artifact_rates` (kind -> probability per study) replaces ARTIFACT_RATES, e.g. with a site's own.
    """
    rng = painter.rng
    kinds = list(FindingPainter.BENIGN_KINDS)
    kind_p = np.array(list(FindingPainter.BENIGN_KINDS.values()))
    mean = benign_count_mean(age, profile)
    n_benign = 0 if grade == 0 else (1 + rng.poisson(mean) if grade == 1 else rng.poisson(0.6 * mean))
    for _ in range(int(n_benign)):
        painter.benign(kinds[rng.choice(len(kinds), p=kind_p / kind_p.sum())], profile.benign_contrast)
    lookalikes = lookalike_count_mean(age, sex, profile) * (0.0 if grade == 0 else 1.0 if grade == 1 else 0.6)
    if lookalikes > 0:
        names = list(FindingPainter.LOOKALIKE_KINDS)
        p = np.array(list(FindingPainter.LOOKALIKE_KINDS.values()))
        for _ in range(int(rng.poisson(lookalikes))):
            painter.lookalike(names[rng.choice(len(names), p=p / p.sum())], profile.lookalike_contrast,
                              profile.lesion_sigma_mm)
    if grade == 2:
        lo, hi = profile.grade2_lesions
        painter.metastases(int(rng.integers(lo, hi + 1)), profile.grade2_contrast, profile.lesion_sigma_mm)
    elif grade == 3 and superscan:
        painter.superscan_marrow(int(rng.integers(25, 45)))
        painter._record("superscan", "metastasis", None, "axial skeleton", painter.anatomy.landmarks["bladder"],
                        0.0, 0.0, (1.0, 1.0), bone="diffuse")
    elif grade == 3:
        lo, hi = profile.grade3_lesions
        count = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
        painter.metastases(count, profile.grade3_contrast, profile.lesion_sigma_mm)
    for kind, rate in (ARTIFACT_RATES if artifact_rates is None else artifact_rates).items():
        if rng.random() < rate * profile.artifact_rate:
            painter.artifact(kind)
