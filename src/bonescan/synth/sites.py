"""Camera and site profiles: how a department's gamma camera and habits shape its whole-body bone scans.

A profile sets who lies on the table and how (`PatientPrior`: body placement in the field, arm position, body
size, bone and soft-tissue uptake, counts the scan speed gives), what the camera does to the image
(`CameraModel`: collimator blur, scatter, background), which artifacts the department's patients bring
(catheter with a urine bag, injection site at the wrist) and how it writes DICOM (`HeaderConvention`: view codes
or not, detector vector, one two-frame file or one file per view).

Sources. The GE Discovery 670 profile rests on measured real studies (4 anterior views; facts listed in the
project's design notes): 2 frames of 1024 x 256, 2.40 mm pixels, 0.36-0.68 M counts per view, no view codes,
detector vector [1, 2], the body from near the top of the field over about two thirds of the rows (24-31 %
empty below the feet), arms beside the body, body-pixel p99.5 / median 8.0-9.3. The Siemens and Philips
profiles take their collimators and detector sizes from vendor datasheets as remembered (no datasheet was at
hand); every number marked "assumption" below is a plausible value, not a measurement. The matrix is 1024 x 256
for every profile: it is the whole-body matrix these cameras write by default (GE measured; Siemens and Philips
from their whole-body protocols as remembered), and the phantom renders at that size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError

MATRIX = (1024, 256)  # rows x columns of a whole-body view, the phantom's canvas size


@dataclass(frozen=True)
class PatientPrior:
    """How patients are drawn and placed: distributions `sample_patient` draws from (defaults: the generic phantom).

    top_margin_mm: range of the distance from the image's top edge to the vertex; None places the body anywhere
        that fits (the generic phantom's habit, unlike real departments, which start the scan at the head).
    counts: (median, lognormal sigma, low, high) of the mean total counts per view: scan speed x dose.
    """

    top_margin_mm: tuple[float, float] | None = None
    folded_arms_share: float = 0.15  # forearms folded over the pelvis instead of beside the body
    arm_abduction_deg: tuple[float, float] = (4.0, 14.0)
    build: tuple[float, float] = (1.0, 0.09)  # mean, SD of the width factor (also scales trunk thickness)
    bone_uptake: float = 1.0  # scales each patient's bone uptake (bone-to-soft-tissue contrast)
    soft_tissue: float = 1.0  # scales each patient's soft-tissue uptake
    counts: tuple[float, float, float, float] = (0.9e6, 0.5, 0.3e6, 3.0e6)


@dataclass(frozen=True)
class CameraModel:
    """What the camera adds: collimator blur (beyond the drawn bone widths), scatter halo and background."""

    collimator_sigma_mm: float = 3.2
    scatter_fraction: float = 0.0  # share of counts moved into a broad halo (Compton scatter in the window)
    scatter_sigma_mm: float = 30.0
    background_counts: float = 0.08  # per pixel, room background


@dataclass(frozen=True)
class HeaderConvention:
    """How the camera's software writes a study into DICOM."""

    manufacturer: str = "bonescan synthetic"
    model: str = "phantom"
    view_codes: str | None = "SCT"  # SCT (CID 26), SRT (legacy G-5215 / G-5216) or None: no View Code Sequence
    files: int = 1  # 1: one file with two frames; 2: one single-frame file per view
    # Every file carries a Detector Vector (the NM IOD requires it): [1, 2], or [1] / [2] for a file per view;
    # detector 1 is the anterior head, the GE whole-body convention readers fall back on without view codes.
    series_description: str = "WB ANT/POST"  # one file: may name both views; two files: "{view}" is filled in

    def __post_init__(self) -> None:
        if self.view_codes not in ("SCT", "SRT", None):
            raise ConfigError("view_codes", f"must be SCT, SRT or None, got {self.view_codes!r}")
        if self.files not in (1, 2):
            raise ConfigError("files", f"a study is written as 1 or 2 files, got {self.files}")


@dataclass(frozen=True)
class SiteProfile:
    """One department: its camera, its patients, its artifacts, its DICOM."""

    name: str
    description: str
    pixel_spacing_mm: float | None  # None: the caller's --pixel-spacing (generic phantom only)
    patients: PatientPrior = field(default_factory=PatientPrior)
    camera: CameraModel = field(default_factory=CameraModel)
    header: HeaderConvention = field(default_factory=HeaderConvention)
    # Artifact kind -> probability per study (before the difficulty's artifact_rate).
    artifact_rates: dict[str, float] = field(default_factory=lambda: {
        "injection_site": 0.3, "urine_contamination": 0.05, "catheter": 0.04})
    wrist_injection_share: float = 0.4  # of injection sites: wrist or back of the hand rather than the elbow
    matrix: tuple[int, int] = MATRIX


SITES: dict[str, SiteProfile] = {
    # The phantom as it always was: bodies anywhere in the field, a wide count range, SCT view codes.
    "generic": SiteProfile("generic", "bonescan phantom, no particular camera", None),
    "ge-discovery": SiteProfile(
        "ge-discovery", "GE Discovery NM/CT 670 / NM 830, LEHR, 2 frames without view codes", 2.40,
        PatientPrior(
            # Measured: vertex near the top row; 24-31 % of rows empty below the feet at these statures.
            top_margin_mm=(40.0, 110.0),
            folded_arms_share=0.05,  # measured: arms beside the body, hands by the thighs
            arm_abduction_deg=(2.0, 9.0),
            build=(0.97, 0.08),  # assumption: the measured patients were slim
            # Tuned to the measured body-pixel p99.5 / median of 8.0-9.3 (the generic phantom gives ~6.3).
            bone_uptake=2.1, soft_tissue=0.45,
            counts=(0.5e6, 0.2, 0.36e6, 0.70e6),  # measured: 0.36-0.68 M counts per view (a fast scan)
        ),
        # GE LEHR: ~7.4 mm FWHM at 10 cm (datasheet as remembered); the generic blur already matches it.
        CameraModel(collimator_sigma_mm=3.2, scatter_fraction=0.15, scatter_sigma_mm=30.0, background_counts=0.03),
        HeaderConvention("GE MEDICAL SYSTEMS", "Discovery NM/CT 670", view_codes=None, files=1,
                         series_description="WB BONE"),
        # Seen on the measured studies: a urinary catheter to a bag between the feet; an injection site at a wrist.
        artifact_rates={"injection_site": 0.45, "urine_contamination": 0.05, "catheter": 0.03,
                        "urinary_catheter": 0.06},
        wrist_injection_share=0.7,
    ),
    "siemens-symbia": SiteProfile(
        "siemens-symbia", "Siemens Symbia (T / Intevo), LEHR, 2 frames with legacy SRT view codes",
        2.08,  # assumption: the 53.3 cm detector width over 256 columns
        PatientPrior(
            top_margin_mm=(20.0, 80.0),  # assumption: the scan starts at the head, as everywhere
            folded_arms_share=0.1, arm_abduction_deg=(3.0, 12.0),
            build=(1.02, 0.1),  # assumption: a European population, somewhat broader
            bone_uptake=1.35, soft_tissue=0.8,  # assumption: as GE (3 h after injection, same tracer)
            counts=(1.3e6, 0.25, 0.8e6, 2.4e6),  # assumption: 10-15 cm/min, EANM's >= 1.5 M recommendation
        ),
        # Symbia LEHR: ~7.5 mm FWHM at 10 cm (datasheet as remembered).
        CameraModel(collimator_sigma_mm=3.3, scatter_fraction=0.12, scatter_sigma_mm=30.0, background_counts=0.05),
        HeaderConvention("SIEMENS NM", "Symbia T2", view_codes="SRT", files=1,
                         series_description="WB Bone"),
        artifact_rates={"injection_site": 0.35, "urine_contamination": 0.06, "catheter": 0.05,
                        "urinary_catheter": 0.04},  # assumption
        wrist_injection_share=0.4,
    ),
    "philips-brightview": SiteProfile(
        "philips-brightview", "Philips BrightView / Forte, LEHR, one file per view with SCT view codes",
        2.21,  # assumption: Philips whole-body pixel at zoom 1
        PatientPrior(
            top_margin_mm=(10.0, 120.0),  # assumption
            folded_arms_share=0.2,  # assumption: arms on the chest or folded are commoner in some departments
            arm_abduction_deg=(3.0, 14.0),
            build=(1.0, 0.1),
            bone_uptake=1.3, soft_tissue=0.85,  # assumption
            counts=(1.0e6, 0.3, 0.5e6, 2.0e6),  # assumption: 12-15 cm/min
        ),
        # Philips LEHR: ~7.4 mm FWHM at 10 cm (datasheet as remembered); Forte's thicker crystal blurs a little more.
        CameraModel(collimator_sigma_mm=3.5, scatter_fraction=0.18, scatter_sigma_mm=35.0, background_counts=0.06),
        HeaderConvention("Philips Medical Systems", "BrightView", view_codes="SCT", files=2,
                         series_description="WB {view}"),
        artifact_rates={"injection_site": 0.3, "urine_contamination": 0.07, "catheter": 0.04,
                        "urinary_catheter": 0.03},  # assumption
        wrist_injection_share=0.3,
    ),
}

# `mixed`: each study from one of the camera profiles above, in these shares (assumption: a regional network).
MIXED_SHARES = {"ge-discovery": 0.45, "siemens-symbia": 0.3, "philips-brightview": 0.25}
SITE_NAMES = (*SITES, "mixed")


def check_site(name: str) -> str:
    """`name` if it is a known site profile (or `mixed`), else a ConfigError listing them."""
    if name not in SITE_NAMES:
        raise ConfigError("--site", f"unknown site {name!r}; choose one of {', '.join(SITE_NAMES)}")
    return name


def site_profile(name: str, seed: int) -> SiteProfile:
    """The profile a study of `seed` gets at site `name`: the named one, or for `mixed` one drawn from the seed."""
    check_site(name)
    if name != "mixed":
        return SITES[name]
    # A stream of its own, so the site is known before the study is generated (to find its files on resume).
    u = np.random.default_rng([int(seed), 0x517E]).random()
    names, shares = list(MIXED_SHARES), np.cumsum(list(MIXED_SHARES.values()))
    return SITES[names[int(np.searchsorted(shares / shares[-1], u, side="right"))]]
