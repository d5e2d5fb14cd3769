"""One synthetic study from one seed: patient, anatomy, findings, camera blur and counting noise."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import pdtr

from .cohort import Demographics, sample_demographics
from .findings import DifficultyProfile, Finding, FindingPainter, difficulty_profile, paint_findings
from .phantom import MAX_COUNTS, MIN_COUNTS, Anatomy, Patient, render_anatomy, sample_patient
from .sites import CameraModel, site_profile

RES = 0.5  # anatomy canvas scale; upsampled to full size before the camera blur


@dataclass
class VisitInfo:
    """A study as one visit of a followed patient: who, when, what changed, and the lasting identity of findings."""

    patient_id: str
    timepoint: int  # days after the patient's baseline study
    change: str  # stable | progression | response | flare (see `synth.followup`)
    identities: list[int]  # per finding: the same number at every visit of the patient; 0 = not followed
    baseline_date: dt.date


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
    site: str = "generic"  # the camera / site profile it was made with (see `sites`)
    anatomy: Anatomy | None = field(default=None, repr=False)  # the drawn body, for region and lesion truth
    visit: VisitInfo | None = None  # set for the visits of a follow-up cohort

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
                  pixel_spacing: float = 2.4, site: str = "generic") -> SyntheticCase:
    """Generate one study deterministically from `seed`, as the camera and department of `site` would make it.

    `pixel_spacing` applies to the generic site; a camera profile brings its own.
    """
    profile = difficulty if isinstance(difficulty, DifficultyProfile) else difficulty_profile(difficulty)
    camera = site_profile(site, seed)
    pixel_spacing = camera.pixel_spacing_mm or pixel_spacing
    rng = np.random.default_rng(seed)
    demo = sample_demographics(rng, profile)
    patient = sample_patient(rng, demo.sex, demo.age, pixel_spacing, camera.patients)
    patient.counts_per_view = float(np.clip(patient.counts_per_view * profile.counts_scale, MIN_COUNTS, MAX_COUNTS))
    if demo.superscan:
        # Intense skeletal uptake, faint or absent kidneys, little urinary activity, low soft tissue.
        anatomy = render_anatomy(patient, rng, RES, skeleton_scale=float(rng.uniform(2.0, 2.8)), soft_scale=0.5,
                                 kidney_scale=0.05, bladder_scale=0.15)
    else:
        anatomy = render_anatomy(patient, rng, RES)
    painter = FindingPainter(anatomy, rng, pixel_spacing, RES, wrist_injection_share=camera.wrist_injection_share)
    paint_findings(painter, demo.grade, demo.age, profile, demo.superscan, sex=demo.sex,
                   artifact_rates=camera.artifact_rates)
    anterior, posterior = _acquire(anatomy.canvas.anterior, anatomy.canvas.posterior[:, ::-1], patient, rng,
                                   camera.camera)
    return SyntheticCase(case_id, seed, profile.name, demo, patient, anterior, posterior, painter.findings,
                         camera.name, anatomy)


def _acquire(anterior: np.ndarray, posterior: np.ndarray, patient: Patient, rng: np.random.Generator,
             camera: CameraModel = CameraModel()) -> tuple[np.ndarray, np.ndarray]:
    """Blur with the collimator response, add scatter, scale to the count total, upsample, add Poisson noise."""
    # Blurring before the (linear) upsampling is equivalent up to interpolation error and 4x cheaper; so are the
    # count scaling and the background, as linear interpolation keeps sums and constants.
    sigma = camera.collimator_sigma_mm / patient.pixel_spacing * RES
    views = gaussian_filter(np.stack([anterior, posterior]), (0.0, sigma, sigma), truncate=3.0)
    if camera.scatter_fraction > 0:
        # Scattered photons accepted by the energy window: a broad halo around the body, same total counts.
        wide = camera.scatter_sigma_mm / patient.pixel_spacing * RES
        halo = gaussian_filter(views, (0.0, wide, wide), mode="constant", truncate=3.0)
        views *= np.float32(1.0 - camera.scatter_fraction)
        views += np.float32(camera.scatter_fraction) * halo
    # Mean total of the two views at full size: each canvas pixel becomes 1 / RES**2 image pixels.
    views *= np.float32(patient.counts_per_view / max(0.5 * float(views.sum(dtype=np.float64)) / RES**2, 1e-6))
    views += np.float32(camera.background_counts)
    counts = poisson_counts(rng, upsample2(views))
    np.minimum(counts, 65535, out=counts)
    counts = counts.astype(np.uint16)
    return counts[0], counts[1]


def upsample2(image: np.ndarray) -> np.ndarray:
    """Double the last two axes by linear interpolation, pixel centres aligned (pixel i covers 2i and 2i+1)."""
    image = np.asarray(image, np.float32)
    lead, (rows, cols) = image.shape[:-2], image.shape[-2:]
    quarter = np.float32(0.25) * image
    # Rows: new row 2i is 3/4 of row i and 1/4 of row i-1; row 2i+1 takes 1/4 of row i+1 (edges repeat).
    tall = np.empty(lead + (rows, 2, cols), np.float32)
    even, odd = tall[..., 0, :], tall[..., 1, :]
    np.subtract(image, quarter, out=even)
    odd[...] = even
    even[..., 1:, :] += quarter[..., :-1, :]
    even[..., 0, :] += quarter[..., 0, :]
    odd[..., :-1, :] += quarter[..., 1:, :]
    odd[..., -1, :] += quarter[..., -1, :]
    tall = tall.reshape(lead + (2 * rows, cols))
    # Columns, the same way.
    quarter = np.float32(0.25) * tall
    wide = np.empty(lead + (2 * rows, cols, 2), np.float32)
    even, odd = wide[..., 0], wide[..., 1]
    np.subtract(tall, quarter, out=even)
    odd[...] = even
    even[..., 1:] += quarter[..., :-1]
    even[..., 0] += quarter[..., 0]
    odd[..., :-1] += quarter[..., 1:]
    odd[..., -1] += quarter[..., -1]
    return wide.reshape(lead + (2 * rows, 2 * cols))


# Poisson sampling. numpy's sampler costs 50-250 ns per pixel (more for larger means), and an image pair holds half a
# million pixels. Here each pixel is sampled exactly by splitting its mean into a grid value g * STEP below GRID_MAX
# and a remainder below STEP: Poisson(lambda) = Poisson(g * STEP) + Poisson(remainder). The grid part is an
# inverse-CDF lookup in a precomputed table (a guide table gives the start of the search), needed only where g > 0
# (air is below one step); the remainders are a sparse Poisson process thinned from rate STEP. A mean of GRID_MAX
# or more is split into equal pieces below it, whose samples add up (a sum of independent Poissons is Poisson).
_GRID_STEP = 0.1
_GRID_MAX = 25.0
_GUIDE_BINS = 256


@lru_cache(maxsize=1)
def _poisson_tables() -> tuple[np.ndarray, np.ndarray, int]:
    """CDF table (rows: grid means, columns: counts; flattened, float32), guide table (flattened) and row length.

    float32 CDFs and uniforms resolve probabilities to 2^-24 (6e-8): fewer than 0.04 pixels of an image differ.
    """
    means = np.arange(int(round(_GRID_MAX / _GRID_STEP))) * _GRID_STEP
    width = int(_GRID_MAX + 12.0 * np.sqrt(_GRID_MAX) + 20)  # the CDF tail beyond is below 1e-15
    cdf = pdtr(np.arange(width)[None, :], means[:, None]).astype(np.float32)  # Poisson CDF P(X <= k; mean)
    cdf[:, -1] = 1.0
    # guide[g, m]: the smallest count whose CDF exceeds m / bins; a uniform u in bin m needs a count >= that.
    edges = (np.arange(_GUIDE_BINS) / _GUIDE_BINS).astype(np.float32)
    guide = np.stack([np.searchsorted(row, edges, side="right") for row in cdf]).astype(np.int32)
    guide += (np.arange(len(means), dtype=np.int32) * width)[:, None]
    return cdf.ravel(), guide.ravel(), width


def poisson_counts(rng: np.random.Generator, expected: np.ndarray) -> np.ndarray:
    """Exact Poisson samples (int32) of the means in `expected` (float32, any shape)."""
    lam = np.ascontiguousarray(expected, np.float32).reshape(-1)
    high = np.flatnonzero(lam >= np.float32(_GRID_MAX - _GRID_STEP))
    if high.size:
        pieces = np.ceil(lam[high] / np.float32(_GRID_MAX - _GRID_STEP)).astype(np.int64)
        piece_means = np.repeat(lam[high] / pieces, pieces)
        lam = lam.copy()
        lam[high] = 0.0
    counts = _poisson_below_grid_max(rng, lam)
    if high.size:
        piece_counts = _poisson_below_grid_max(rng, piece_means)
        counts[high] = np.add.reduceat(piece_counts, np.cumsum(pieces) - pieces)
    return counts.reshape(np.shape(expected))


def _poisson_below_grid_max(rng: np.random.Generator, lam: np.ndarray) -> np.ndarray:
    """Exact Poisson samples (int32) of float32 means below _GRID_MAX (1-D)."""
    cdf, guide, width = _poisson_tables()
    grid = (lam * np.float32(1.0 / _GRID_STEP)).astype(np.int32)
    counts = np.zeros(lam.size, np.int32)
    # Grid part where g > 0: inverse CDF, the smallest k with u < CDF[k], searched from the guide table's start.
    body = np.flatnonzero(grid)
    g = grid[body]
    u = rng.random(body.size, dtype=np.float32)
    key = g * np.int32(_GUIDE_BINS)
    key += (u * np.float32(_GUIDE_BINS)).astype(np.int32)
    pos = guide[key]
    todo = np.flatnonzero(u >= cdf[pos])
    while todo.size:
        pos[todo] += 1
        todo = todo[u[todo] >= cdf[pos[todo]]]
    g *= np.int32(width)
    counts[body] = pos - g
    # Remainder part: candidate events of a Poisson process at rate STEP per pixel (exponential gaps, so they come
    # sorted and the look-ups below run through memory in order), each kept with probability remainder / STEP.
    where = _poisson_process(rng, _GRID_STEP, lam.size)
    n_candidates = where.size
    remainder = lam[where] - grid[where] * np.float32(_GRID_STEP)
    kept = where[rng.random(n_candidates, dtype=np.float32) * np.float32(_GRID_STEP) < remainder]
    np.add.at(counts, kept, np.int32(1))
    return counts


def _poisson_process(rng: np.random.Generator, rate: float, size: int) -> np.ndarray:
    """Sorted pixel indices of the events of a Poisson process with `rate` events per pixel over `size` pixels."""
    expected = rate * size
    positions = np.cumsum(rng.standard_exponential(int(expected + 8.0 * np.sqrt(expected) + 16)) / rate)
    while positions[-1] < size:  # not enough events drawn yet (rare): continue the process
        more = np.cumsum(rng.standard_exponential(int(8.0 * np.sqrt(expected) + 16)) / rate) + positions[-1]
        positions = np.concatenate([positions, more])
    return positions[:np.searchsorted(positions, size)].astype(np.int32)
