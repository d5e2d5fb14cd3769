"""How close synthetic scans are to real ones: the same measurable statistics on both, side by side.

Statistics of one anterior view (the view every reference has; a single-view scan is taken as anterior):
- counts: total counts of the view.
- top_margin, body_extent, empty_below: first body row, rows spanned head to feet, rows left below the feet,
  as fractions of the image height (where the department places the patient in the field).
- bone_soft_ratio: p99.5 / median of the body pixels (bone against soft tissue; bladder and hot spots sit in the
  last 0.5 %). Body pixels: the view smoothed with a 2-pixel Gaussian above 5 % of its 99th percentile (this
  gives the generic phantom the median 6.3 measured on it before).
- hotspot_contrast: hottest 3 x 3 mean over the median body pixel (usually the bladder or an injection site).
- noise_nps_high: noise power spectrum at high spatial frequencies (0.35-0.5 cycles/pixel) of 32 x 32 body
  patches, divided by the patch mean: 1 for Poisson counts, below 1 where the camera smoothed or resampled them.
- anatomy_r: correlation of the head-to-foot count profile (resampled between the first and last body rows) with
  the references' mean profile: how counts are distributed over the body.
- profile_r: the same for the row profile of the whole field (placement and anatomy together).

The references are real studies read with `bonescan.io`. A statistic of a profile is "inside" when every
reference lies within the synthetic cohort's 2.5-97.5 percentile range: a real study then looks like one of the
synthetic patients. The two profile correlations are measured against the references themselves and are shown,
not judged. `GE_DISCOVERY_FACTS` are ranges measured on four GE Discovery 670 studies that cannot be shipped
(their body spans about 68 % of the rows from near the top; their body mask was not recorded, so bone_soft_ratio
there is comparable in size only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter

from ..errors import BoneScanError, ConfigError
from ..fileio import atomic_path
from .case import case_seed, generate_case
from .sites import SITES, check_site

JUDGED = ("counts", "top_margin", "body_extent", "empty_below", "bone_soft_ratio", "hotspot_contrast",
          "noise_nps_high")
SHOWN = ("anatomy_r", "profile_r")
STATISTICS = JUDGED + SHOWN
PROFILE_BINS = 100
GE_DISCOVERY_FACTS = {"counts": (0.36e6, 0.68e6), "empty_below": (0.24, 0.31), "bone_soft_ratio": (8.0, 9.3)}


@dataclass
class ViewStats:
    """The statistics of one view, and its two profiles (field rows; body rows resampled to PROFILE_BINS)."""

    source: str
    values: dict[str, float]
    field_profile: np.ndarray
    body_profile: np.ndarray


@dataclass
class RealismReport:
    """Per site: the synthetic views' statistics; the references' statistics; the comparison table."""

    references: list[ViewStats]
    synthetic: dict[str, list[ViewStats]]
    failed_references: list[str] = field(default_factory=list)

    def summary(self, site: str, stat: str) -> tuple[float, float, float]:
        """2.5th percentile, median and 97.5th percentile of a statistic over a site's synthetic views."""
        values = np.array([v.values[stat] for v in self.synthetic[site]], float)
        lo, mid, hi = np.nanpercentile(values, [2.5, 50, 97.5])
        return float(lo), float(mid), float(hi)

    def inside(self, site: str, stat: str) -> bool:
        """Whether every reference lies within the site's synthetic 2.5-97.5 percentile range."""
        lo, _, hi = self.summary(site, stat)
        return all(lo <= ref.values[stat] <= hi for ref in self.references)

    def table(self) -> str:
        """A markdown table: each statistic's reference values and each site's median [2.5-97.5 %] range."""
        sites = list(self.synthetic)
        head = ["statistic", *(f"ref {Path(r.source).name[:18]}" for r in self.references), "GE D670 facts",
                *sites]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for stat in STATISTICS:
            cells = [stat, *(_fmt(stat, r.values[stat]) for r in self.references)]
            fact = GE_DISCOVERY_FACTS.get(stat)
            cells.append(f"{_fmt(stat, fact[0])}-{_fmt(stat, fact[1])}" if fact else "")
            for site in sites:
                lo, mid, hi = self.summary(site, stat)
                mark = "" if stat in SHOWN else (" ok" if self.inside(site, stat) else " OUT")
                cells.append(f"{_fmt(stat, mid)} [{_fmt(stat, lo)}-{_fmt(stat, hi)}]{mark}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def outside(self) -> dict[str, list[str]]:
        """Per site, the judged statistics on which some reference lies outside the synthetic range."""
        return {site: [s for s in JUDGED if not self.inside(site, s)] for site in self.synthetic}


def _fmt(stat: str, value: float) -> str:
    if stat == "counts":
        return f"{value / 1e6:.2f}M"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def body_mask(view: np.ndarray) -> np.ndarray:
    """Pixels inside the body: the view smoothed (2-pixel Gaussian) above 5 % of its 99th percentile."""
    smooth = gaussian_filter(view.astype(np.float32), 2.0)
    return smooth > 0.05 * max(float(np.percentile(smooth, 99)), 1e-6)


def view_statistics(view: np.ndarray, source: str = "") -> ViewStats:
    """The statistics of one whole-body view (rows head to feet), as the module docstring defines them."""
    view = np.asarray(view, np.float32)
    rows = view.shape[0]
    mask = body_mask(view)
    body_rows = np.flatnonzero(mask.sum(axis=1) >= 3)
    if body_rows.size < 10:
        raise ConfigError(source or "view", "no body found in the view (is it empty or not a whole-body scan?)")
    top, bottom = int(body_rows[0]), int(body_rows[-1])
    body = view[mask]
    median = max(float(np.median(body)), 1e-6)
    row_sums = view.sum(axis=1).astype(np.float64)
    field_profile = row_sums / max(row_sums.sum(), 1e-9)
    segment = row_sums[top:bottom + 1]
    body_profile = np.interp(np.linspace(0, len(segment) - 1, PROFILE_BINS), np.arange(len(segment)), segment)
    body_profile /= max(body_profile.sum(), 1e-9)
    values = {
        "counts": float(view.sum()),
        "top_margin": top / rows,
        "body_extent": (bottom - top + 1) / rows,
        "empty_below": (rows - 1 - bottom) / rows,
        "bone_soft_ratio": float(np.percentile(body, 99.5)) / median,
        "hotspot_contrast": float(uniform_filter(view, 3).max()) / median,
        "noise_nps_high": noise_power_high(view, mask),
    }
    return ViewStats(source, values, field_profile, body_profile)


def noise_power_high(view: np.ndarray, mask: np.ndarray, size: int = 32) -> float:
    """Mean normalised noise power at 0.35-0.5 cycles/pixel over size x size patches lying inside the body."""
    freq = np.fft.fftfreq(size)
    radius = np.hypot(freq[:, None], freq[None, :])
    band = (radius >= 0.35) & (radius <= 0.5)
    levels = []
    for r in range(0, view.shape[0] - size + 1, size):
        for c in range(0, view.shape[1] - size + 1, size // 2):
            if mask[r:r + size, c:c + size].mean() < 0.98:
                continue
            patch = view[r:r + size, c:c + size].astype(np.float64)
            mean = patch.mean()
            if mean <= 0.5:
                continue
            # Remove the smooth anatomy (a plane) so its power does not leak into the band.
            yy, xx = np.mgrid[:size, :size]
            design = np.stack([np.ones(size * size), yy.ravel(), xx.ravel()], 1)
            coef, *_ = np.linalg.lstsq(design, patch.ravel(), rcond=None)
            residual = patch - (design @ coef).reshape(size, size)
            power = np.abs(np.fft.fft2(residual)) ** 2 / (size * size)
            levels.append(float(power[band].mean()) / mean)
    return float(np.median(levels)) if levels else float("nan")


def reference_statistics(paths: Iterable[str | Path]) -> tuple[list[ViewStats], list[str]]:
    """Read real studies (files or folders, as `bonescan inspect` does) and measure their anterior views.

    Returns the statistics and, for each study that could not be used, 'source: reason'.
    """
    from ..io import find_studies, read_study

    stats, failed = [], []
    for source in find_studies(list(paths)):
        try:
            study = read_study(source)
            view = study.anterior if study.anterior is not None else study.posterior
            stats.append(view_statistics(view, source.source))
        except BoneScanError as error:
            failed.append(f"{source.source}: {error}")
    return stats, failed


def synthetic_statistics(site: str, cases: int, seed: int, difficulty: str = "paper") -> list[ViewStats]:
    """Generate `cases` studies of `site` in memory and measure their anterior views."""
    check_site(site)
    return [view_statistics(generate_case(f"r{i}", case_seed(seed, i), difficulty, site=site).anterior, f"{site} {i}")
            for i in range(cases)]


def compare_realism(references: Sequence[str | Path], sites: Sequence[str] = ("generic",), cases: int = 100,
                    seed: int = 0, difficulty: str = "paper") -> RealismReport:
    """Measure real reference studies and synthetic cohorts of each site on the same statistics."""
    if cases < 10:
        raise ConfigError("--cases", f"a realism check needs at least 10 synthetic studies, got {cases}")
    refs, failed = reference_statistics(references)
    if not refs:
        reasons = "; ".join(failed) if failed else "no study found"
        raise ConfigError("--realism", f"no usable reference study ({reasons})")
    profiles = np.mean([r.field_profile for r in refs], axis=0), np.mean([r.body_profile for r in refs], axis=0)
    synthetic = {}
    for site in sites:
        views = synthetic_statistics(site, cases, seed, difficulty)
        for v in views:
            v.values["profile_r"] = _corr(v.field_profile, profiles[0])
            v.values["anatomy_r"] = _corr(v.body_profile, profiles[1])
        synthetic[site] = views
    for r in refs:
        # Against the other references where there are some; a lone reference against itself (1.0).
        others = [o for o in refs if o is not r] or [r]
        r.values["profile_r"] = _corr(r.field_profile, np.mean([o.field_profile for o in others], axis=0))
        r.values["anatomy_r"] = _corr(r.body_profile, np.mean([o.body_profile for o in others], axis=0))
    return RealismReport(refs, synthetic, failed)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def all_sites() -> list[str]:
    """Every single-camera profile (not `mixed`, which is their blend)."""
    return list(SITES)


def write_realism_plot(report: RealismReport, target: str | Path) -> Path:
    """A PNG: per statistic, each site's synthetic values (box) and the references (marks); then the profiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = list(report.synthetic)
    n = len(STATISTICS) + 2
    cols = 4
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4 * cols, 3.2 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, stat in zip(axes.ravel(), STATISTICS):
        data = [[v.values[stat] for v in report.synthetic[s]] for s in sites]
        ax.boxplot(data, whis=(2.5, 97.5), showfliers=False)
        ax.set_xticks(range(1, len(sites) + 1), [s.replace("-", "\n") for s in sites], fontsize=7)
        for k, ref in enumerate(report.references):
            ax.axhline(ref.values[stat], color=f"C{k + 1}", lw=1.2, ls="--",
                       label=Path(ref.source).name[:24] if stat == STATISTICS[0] else None)
        fact = GE_DISCOVERY_FACTS.get(stat)
        if fact:
            ax.axhspan(*fact, color="0.85", zorder=0, label="GE D670 facts" if stat == "counts" else None)
        ax.set_title(stat, fontsize=9)
    axes.ravel()[0].legend(fontsize=6)
    for ax, (name, attr) in zip(axes.ravel()[len(STATISTICS):], (("field row profile", "field_profile"),
                                                                  ("body profile (head to feet)", "body_profile"))):
        for k, site in enumerate(sites):
            curves = np.array([getattr(v, attr) for v in report.synthetic[site]])
            x = np.linspace(0, 1, curves.shape[1])
            ax.plot(x, np.median(curves, axis=0), color=f"C{k + 4}", lw=1, label=site)
            ax.fill_between(x, *np.percentile(curves, [10, 90], axis=0), color=f"C{k + 4}", alpha=0.15)
        for k, ref in enumerate(report.references):
            curve = getattr(ref, attr)
            ax.plot(np.linspace(0, 1, len(curve)), curve, color=f"C{k + 1}", lw=1.5, ls="--")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("head -> feet", fontsize=7)
        ax.legend(fontsize=6)
    fig.suptitle("synthetic (boxes: median, quartiles, 2.5-97.5 %) against real references (dashed)", fontsize=10)
    fig.tight_layout()
    target = Path(target)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return target
