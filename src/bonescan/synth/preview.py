"""A contact sheet of synthetic cases (both views, grade and findings) for a person to look at."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from ..fileio import atomic_path
from .case import SyntheticCase, case_seed, generate_case
from .writer import case_id_for

CATEGORY_COLOURS = {"metastasis": "red", "benign": "orange", "artifact": "deepskyblue"}


def preview_cases(seed: int = 0, difficulty: str = "paper", per_grade: int = 2, pixel_spacing: float = 2.4,
                  max_tries: int = 200, site: str = "generic") -> list[SyntheticCase]:
    """The first `per_grade` cases of each grade 0-3 of the cohort `seed` (same cases a cohort run writes)."""
    chosen: dict[int, list[SyntheticCase]] = {g: [] for g in range(4)}
    for index in range(max_tries):
        case = generate_case(case_id_for(index, max_tries), case_seed(seed, index), difficulty, pixel_spacing, site)
        if len(chosen[case.demographics.grade]) < per_grade:
            chosen[case.demographics.grade].append(case)
        if all(len(v) >= per_grade for v in chosen.values()):
            break
    return [case for grade in range(4) for case in chosen[grade]]


def write_preview(cases: list[SyntheticCase], target: str | Path, mark_findings: bool = True, dpi: int = 90) -> Path:
    """Write a PNG sheet: per case, anterior and posterior side by side with grade and findings as caption.

    Views are shown in the usual inverted grey scale, windowed at the 99.5th percentile of body counts (the
    bladder and injection sites saturate, as on a reading station). With `mark_findings`, each finding is
    circled on the view where it is most visible: red metastasis, orange benign, blue artifact.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    per_row = 4
    n_rows = max((len(cases) + per_row - 1) // per_row, 1)
    fig, axes = plt.subplots(n_rows, 2 * per_row, figsize=(2 * per_row * 1.0, n_rows * 4.9), squeeze=False,
                             gridspec_kw={"wspace": 0.03, "hspace": 0.22, "left": 0.01, "right": 0.99,
                                          "top": 0.9, "bottom": 0.02})
    for ax in axes.ravel():
        ax.axis("off")
    last = max(_last_row(view) for case in cases for view in (case.anterior, case.posterior))
    for k, case in enumerate(cases):
        row_axes = axes[k // per_row]
        for j, (view, image) in enumerate((("anterior", case.anterior), ("posterior", case.posterior))):
            ax = row_axes[2 * (k % per_row) + j]
            ax.axis("on")
            data = image.astype(np.float32)
            body = data[data > 2]
            vmax = float(np.percentile(body, 99.5)) if body.size else 1.0
            ax.imshow(data[:last], cmap="gray_r", vmin=0, vmax=vmax, interpolation="antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("ANT" if view == "anterior" else "POST", fontsize=7)
            if mark_findings:
                for finding in case.findings:
                    if finding.kind == "superscan" or finding.view not in (view, "both"):
                        continue
                    row, col = finding.centre_anterior if view == "anterior" else finding.centre_posterior
                    radius = 2.5 * finding.size_mm / case.patient.pixel_spacing + 5
                    ax.add_patch(Circle((col, row), radius, fill=False, lw=0.6,
                                        color=CATEGORY_COLOURS[finding.category]))
        d = case.demographics
        caption = (f"{case.case_id}  grade {d.grade}\n{d.cancer_type} {d.sex} {d.age}y\n"
                   + "\n".join(textwrap.wrap(case.findings_summary(), 24)))
        axes[k // per_row, 2 * (k % per_row)].set_title(caption, fontsize=7, loc="left")
    fig.suptitle(f"bonescan synthetic cohort, difficulty '{cases[0].difficulty}', site '{cases[0].site}' "
                 "(circles: red metastasis, orange benign, blue artifact)" if cases else "", fontsize=9)
    target = Path(target)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return target


def _last_row(image: np.ndarray) -> int:
    """Crop the empty rows below the feet so the sheet shows more body."""
    rows = np.nonzero(image.sum(axis=1) > 0.02 * image.sum(axis=1).max())[0]
    return int(min(rows.max() + 20, image.shape[0])) if rows.size else image.shape[0]
