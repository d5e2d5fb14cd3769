"""The lesion section of report.html: FROC, BSI and ROC figures and the HTML fragment, from a LesionEvaluation."""

from __future__ import annotations

import numpy as np

from ..lesions.regions import REGIONS
from . import figures as F
from .lesion_pipeline import VIEWS, LesionEvaluation


def froc_figure(curve, points: list[dict]) -> bytes:
    """FROC curve on a log axis of false positives per study, with the sensitivity-at-FP points and their CIs."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.8))
    ax = fig.add_axes((0.13, 0.14, 0.82, 0.78))
    fp = np.maximum(curve.fp_per_study, 1e-2)
    ax.step(fp, curve.sensitivity, where="post", linewidth=1.6, label=f"{curve.n_lesions} lesions, "
            f"{curve.n_studies} studies")
    for row in points:
        if row["sensitivity"] is not None:
            low, high = row["ci_low"], row["ci_high"]
            yerr = None if low is None else [[row["sensitivity"] - low], [high - row["sensitivity"]]]
            ax.errorbar([row["fp_per_study"]], [row["sensitivity"]], yerr=yerr, fmt="o", color="C3",
                        markersize=4, capsize=3)
    ax.set_xscale("log")
    ax.set_xlim(0.1, max(8.0, float(fp.max()) * 1.1))
    ax.set_ylim(-0.01, 1.01)
    ax.set_xticks([0.125, 0.25, 0.5, 1, 2, 4, 8], ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.minorticks_off()
    ax.set_xlabel("False positives per study")
    ax.set_ylabel("Lesion sensitivity")
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    ax.grid(True, linewidth=0.3)
    return F._png(fig)


def bsi_figure(predicted: np.ndarray, truth: np.ndarray, agreement: dict) -> bytes:
    """BSI scatter against truth (identity line) and the Bland-Altman plot, side by side."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.8))
    scatter, ba = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    top = max(float(np.max(predicted, initial=0)), float(np.max(truth, initial=0)), 0.1) * 1.05
    scatter.plot([0, top], [0, top], linestyle=":", color="0.6", linewidth=1)
    scatter.scatter(truth, predicted, s=10)
    r = agreement.get("pearson_r")
    scatter.set_title(f"BSI (%), r = {r:.3f}" if r is not None else "BSI (%)", fontsize=10)
    scatter.set_xlabel("Truth BSI (%)")
    scatter.set_ylabel("Predicted BSI (%)")
    scatter.grid(True, linewidth=0.3)
    ba.scatter((predicted + truth) / 2, predicted - truth, s=10)
    for key, style in (("bias", "-"), ("loa_low", "--"), ("loa_high", "--")):
        if agreement.get(key) is not None:
            ba.axhline(agreement[key], linestyle=style, color="C3", linewidth=1)
    ba.set_title("Bland-Altman: bias and 95 % limits of agreement", fontsize=10)
    ba.set_xlabel("Mean of predicted and truth BSI (%)")
    ba.set_ylabel("Predicted - truth (%)")
    ba.grid(True, linewidth=0.3)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.9, wspace=0.28)
    return F._png(fig)


def render_lesion_section(evaluation: LesionEvaluation, number: str = "7") -> str:
    """The report's lesion section as an HTML fragment (figures embedded)."""
    import jinja2

    from .report import TEMPLATE_DIR, fmt_num, fmt_p

    m = evaluation.metrics
    figures = {}
    if evaluation.froc is not None:
        figures["froc"] = F.data_uri(froc_figure(evaluation.froc, m["sensitivity_at_fp"]))
    if evaluation.bsi_pairs is not None and evaluation.bsi_pairs[0].size:
        figures["bsi"] = F.data_uri(bsi_figure(*evaluation.bsi_pairs, m["bsi"]))
    if evaluation.roc_curves:
        figures["roc"] = F.data_uri(F.roc_figure([("Study score: classifier vs lesions",
                                                   evaluation.roc_curves)], columns=1))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update({"num": fmt_num, "p": fmt_p, "pct": _pct})
    region_titles = {r.name: r.title for r in REGIONS}
    return env.get_template("report_lesions.html.j2").render(
        m=m, figures=figures, number=number, region_titles=region_titles, views=VIEWS)


def _pct(proportion: dict | None) -> str:
    """'93.4% (247/265; 90.0-95.6)' from a Proportion dict."""
    if not proportion or not proportion.get("n"):
        return "–"
    return (f"{100 * proportion['value']:.1f}% ({proportion['x']}/{proportion['n']}; "
            f"{100 * proportion['ci_low']:.1f}–{100 * proportion['ci_high']:.1f})")
