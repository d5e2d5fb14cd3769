"""One synthetic study from one seed: patient, anatomy, findings, camera blur and counting noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from .cohort import Demographics, sample_demographics
from .findings import DifficultyProfile, Finding, FindingPainter, difficulty_profile, paint_findings
from .phantom import Patient, render_anatomy, sample_patient

RES = 0.5  # anatomy canvas scale; upsampled to full size before the camera blur
COLLIMATOR_SIGMA_MM = 3.2  # extra Gaussian blur (system FWHM ~ 9-10 mm with the drawn bone widths)
BACKGROUND_COUNTS = 0.08  # room and scatter background per pixel outside the body
MIN_COUNTS, MAX_COUNTS = 0.3e6, 3.0e6  # mean counts per view, the clinical range of whole-body scans


@dataclass
class SyntheticCase:
    """A generated study: uint16 count images (rows head -> feet; posterior as seen from behind) and truth."""

    case_id: str
    seed: int
    difficulty: str
    demographics: Demographics
    patient: Patient
    anterior: np.ndarray
    posterior: np.ndarray
    findings: list[Finding]

    @property
    def n_metastases(self) -> int:
        """Focal metastases; a superscan counts as one (it is diffuse)."""
        return sum(f.category == "metastasis" for f in self.findings)

    def findings_summary(self) -> str:
        """Short text: kinds with counts, e.g. 'metastasis x5; degenerative_knee; injection_site'."""
        counts: dict[str, int] = {}
        for finding in self.findings:
            counts[finding.kind] = counts.get(finding.kind, 0) + 1
        return "; ".join(k if n == 1 else f"{k} x{n}" for k, n in counts.items()) or "none"


def case_seed(cohort_seed: int, index: int) -> int:
    """The seed of case `index` of a cohort: independent of cohort size and of the number of workers."""
    return int(np.random.SeedSequence([cohort_seed, index]).generate_state(1, np.uint32)[0])


def generate_case(case_id: str, seed: int, difficulty: str | DifficultyProfile = "paper",
                  pixel_spacing: float = 2.4) -> SyntheticCase:
    """Generate one study deterministically from `seed`."""
    profile = difficulty if isinstance(difficulty, DifficultyProfile) else difficulty_profile(difficulty)
    rng = np.random.default_rng(seed)
    demo = sample_demographics(rng, profile)
    patient = sample_patient(rng, demo.sex, demo.age, pixel_spacing)
    patient.counts_per_view = float(np.clip(patient.counts_per_view * profile.counts_scale, MIN_COUNTS, MAX_COUNTS))
    if demo.superscan:
        # Intense skeletal uptake, faint or absent kidneys, little urinary activity, low soft tissue.
        anatomy = render_anatomy(patient, rng, RES, skeleton_scale=float(rng.uniform(2.0, 2.8)), soft_scale=0.5,
                                 kidney_scale=0.05, bladder_scale=0.15)
    else:
        anatomy = render_anatomy(patient, rng, RES)
    painter = FindingPainter(anatomy, rng, pixel_spacing, RES)
    paint_findings(painter, demo.grade, demo.age, profile, demo.superscan)
    anterior, posterior = _acquire(anatomy.canvas.anterior, anatomy.canvas.posterior[:, ::-1], patient, rng)
    return SyntheticCase(case_id, seed, profile.name, demo, patient, anterior, posterior, painter.findings)


def _acquire(anterior: np.ndarray, posterior: np.ndarray, patient: Patient,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blur with the collimator response, upsample to full size, scale to the count total, add Poisson noise."""
    # Blurring before the (linear) upsampling is equivalent up to interpolation error and 4x cheaper.
    sigma = COLLIMATOR_SIGMA_MM / patient.pixel_spacing * RES
    blurred = [gaussian_filter(view, sigma, truncate=3.0) for view in (anterior, posterior)]
    scale = patient.counts_per_view / max(0.5 * float(blurred[0].sum() + blurred[1].sum()) / RES**2, 1e-6)
    out = []
    for view in blurred:
        expected = upsample2(view)
        expected *= scale
        expected += BACKGROUND_COUNTS
        out.append(np.minimum(poisson_counts(rng, expected), 65535).astype(np.uint16))
    return out[0], out[1]


def upsample2(image: np.ndarray) -> np.ndarray:
    """Double both axes by linear interpolation, pixel centres aligned (canvas pixel i covers 2i and 2i+1)."""
    out = np.empty((image.shape[0] * 2, image.shape[1]), np.float32)
    nxt = np.concatenate([image[1:], image[-1:]], axis=0)
    prv = np.concatenate([image[:1], image[:-1]], axis=0)
    out[0::2] = 0.75 * image + 0.25 * prv
    out[1::2] = 0.75 * image + 0.25 * nxt
    wide = np.empty((out.shape[0], image.shape[1] * 2), np.float32)
    nxt = np.concatenate([out[:, 1:], out[:, -1:]], axis=1)
    prv = np.concatenate([out[:, :1], out[:, :-1]], axis=1)
    wide[:, 0::2] = 0.75 * out + 0.25 * prv
    wide[:, 1::2] = 0.75 * out + 0.25 * nxt
    return wide


def poisson_counts(rng: np.random.Generator, expected: np.ndarray) -> np.ndarray:
    """Poisson samples of `expected`; the near-empty background takes an exact inverse-CDF shortcut.

    numpy's sampler costs the same per pixel whatever the mean, and half of a whole-body image is air with a
    mean well below one count; there P(k >= 4) < 1e-4, so four CDF steps are exact to that level.
    """
    counts = np.zeros(expected.shape, np.int64)
    low = expected < 0.3
    lam = expected[low]
    u = rng.random(lam.shape, dtype=np.float32)
    term = np.exp(-lam)
    cdf = term.copy()
    small = np.zeros(lam.shape, np.int64)
    for k in range(1, 5):
        small += u > cdf
        term *= lam / k
        cdf += term
    counts[low] = small
    high = ~low
    counts[high] = rng.poisson(expected[high])
    return counts
