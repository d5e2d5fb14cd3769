"""The self-contained HTML report: every figure and thumbnail embedded as a data URI, printable, readable offline."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from ..errors import BoneScanError
from ..study import VIEWS
from . import figures as F
from . import metrics as M
from . import published as P
from .operating_points import MAIN_POINT, POINT_NAMES, ConfusionCounts
from .stats import AucEstimate

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
TEMPLATE_NAME = "report.html.j2"

POINT_TITLES = {
    "youden": "Youden",
    "rule-out": "Rule-out (sens ≥ 0.95)",
    "rule-in": "Rule-in (spec ≥ 0.95)",
    "0.5": "0.5",
}
DIMENSION_TITLES = {
    "overall": "Overall",
    "cancer_type": "Cancer type",
    "sex": "Sex",
    "age_group": "Age group",
    "cancer_age": "Cancer type × age group",
    "region": "Region",
}
GROUP_TITLES = {"M": "male", "F": "female", "<60": "< 60 y", ">=60": "≥ 60 y", "all": "all cases"}


def group_title(group: str) -> str:
    """Display name of a subgroup level ('prostate >=60' -> 'prostate ≥ 60 y')."""
    parts = str(group).split(" ")
    return " ".join(GROUP_TITLES.get(p, p) for p in parts)


def fmt_auc(est: AucEstimate | None) -> str:
    """'0.955 (0.931-0.979)' or the AUC alone when its interval is undefined."""
    if est is None or est.auc is None or math.isnan(est.auc):
        return "–"
    if est.ci_low is None or math.isnan(est.ci_low):
        return f"{est.auc:.3f}"
    return f"{est.auc:.3f} ({est.ci_low:.3f}–{est.ci_high:.3f})"


def fmt_p(p: float | None) -> str:
    """p-value for display: three significant digits, '< 0.001' below that."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_num(x: float | None, digits: int = 3) -> str:
    """A number with fixed digits, '–' for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


# ----------------------------------------------------------------------------------------------------------------
# Figures


def _curves(frame: pd.DataFrame, column: str, levels: list[str]) -> list[F.Curve]:
    out = []
    for level in levels:
        part = frame[frame[column].astype(str) == level]
        if len(part):
            out.append((group_title(level), part["label"].to_numpy(), part["probability"].to_numpy()))
    return out


def roc_figures(evaluated: pd.DataFrame) -> list[dict[str, str]]:
    """The Fig. 2-style ROC figures as [{title, uri}]: by cancer type, sex, age group, cancer type x age group."""
    frame = M.with_groups(evaluated)
    dims = M.subgroup_dimensions(frame)
    overall: F.Curve = ("all cases", frame["label"].to_numpy(), frame["probability"].to_numpy())
    panels = []
    for dim, title in (("cancer_type", "By cancer type"), ("sex", "By sex"), ("age_group", "By age group")):
        if dims.get(dim):
            panels.append((title, [overall, *_curves(frame, dim, dims[dim])]))
    if not panels:
        panels.append(("All cases", [overall]))
    out = [{"title": "ROC curves overall and by cancer type, sex and age group (cf. the paper's Fig. 2)",
            "uri": F.data_uri(F.roc_figure(panels, columns=min(3, len(panels))))}]
    if dims.get("cancer_age") and dims.get("cancer_type"):
        grid = []
        for cancer in dims["cancer_type"]:
            part = frame[frame["cancer_type"].astype(str) == cancer]
            grid.append((f"{cancer}: by age group", _curves(part, "age_group", list(M.AGE_GROUPS))))
        out.append({"title": "ROC curves by age group within each cancer type (the paper's prostate finding)",
                    "uri": F.data_uri(F.roc_figure(grid, columns=min(4, len(grid))))})
    return out


# ----------------------------------------------------------------------------------------------------------------
# Tables


def table1_html_rows(frame: pd.DataFrame) -> dict[str, Any]:
    """Table 1 of the evaluated cohort from bonescan.cohort.table1, laid out as in the paper; a note if impossible."""
    if "label" not in frame.columns:
        return {"note": "Table 1 needs labels (give --manifest).", "blocks": []}
    from ..cohort import table1, with_unknown_demographics

    data = with_unknown_demographics(frame)  # a missing demographic column is shown as unknown
    if "split" in data and not set(data["split"].astype(str)) <= {"train", "val", "test"}:
        data = data.drop(columns="split")
    try:
        tidy = table1(data)
    except BoneScanError as error:
        return {"note": f"Table 1 not computed: {error}", "blocks": []}
    titles = {"train": "Training cohort", "val": "Validation cohort (operating points)",
              "test": "Test cohort (evaluated)", "all": "Evaluated cases"}
    header = [c for c in tidy["cancer_type"].unique()]
    blocks = []
    for cohort, block in tidy.groupby("cohort", sort=False):
        cells = block.set_index("cancer_type")
        rows = [
            ("Number", [str(int(cells.loc[c, "n"])) for c in header]),
            ("Male", [str(int(cells.loc[c, "male"])) for c in header]),
            ("Female", [str(int(cells.loc[c, "female"])) for c in header]),
            *([("Sex unknown", [str(int(cells.loc[c, "sex_unknown"])) for c in header])]
              if tidy["sex_unknown"].any() else []),
            ("Age, mean ± SD", [f"{fmt_num(cells.loc[c, 'age_mean'], 1)} ± {fmt_num(cells.loc[c, 'age_sd'], 1)}"
                                for c in header]),
            ("< 60 years", [str(int(cells.loc[c, "age_lt_60"])) for c in header]),
            ("≥ 60 years", [str(int(cells.loc[c, "age_ge_60"])) for c in header]),
            *([("Age unknown", [str(int(cells.loc[c, "age_unknown"])) for c in header])]
              if tidy["age_unknown"].any() else []),
            ("No metastasis", [str(int(cells.loc[c, "no_metastasis"])) for c in header]),
            ("Metastasis", [str(int(cells.loc[c, "metastasis"])) for c in header]),
            ("Metastasis rate", [f"{100 * cells.loc[c, 'metastasis_rate']:.2f}%"
                                 if not math.isnan(cells.loc[c, "metastasis_rate"]) else "–" for c in header]),
        ]
        blocks.append({"title": titles.get(cohort, cohort), "rows": rows})
    return {"header": header, "blocks": blocks, "note": None}


def table2_rows(aucs: list[M.AucRow]) -> list[dict[str, Any]]:
    """Table 2 layout: published AUCs of EXINIbone, BONENAVI v1/v2 and Zhao 2020 beside ours."""
    ours = {(r.dimension, r.group): r.estimate for r in aucs}
    rows = []
    for (dim, group), values in P.PUBLISHED_AUC.items():
        est = ours.get((dim, group))
        rows.append({
            "label": f"{DIMENSION_TITLES[dim]}: {group_title(group)}" if dim != "overall" else "Total",
            "published": [fmt_num(v) if v is not None else "–" for v in values],
            "ours": fmt_auc(est),
            "n": f"{est.n} ({est.n_pos}+)" if est is not None else "–",
        })
    return rows


def _thumbnail_cells(row: pd.Series, heatmaps_dir: Path | None) -> dict[str, Any]:
    """Thumbnails of both views (and a heat map) of one case; a note instead where the study cannot be read."""
    cell: dict[str, Any] = {"views": [], "heatmap": None, "note": None}
    source = None
    if isinstance(row.get("path"), str) and row.get("path"):
        source = row["path"]
    elif isinstance(row.get("anterior"), str) and isinstance(row.get("posterior"), str):
        source = [row["anterior"], row["posterior"]]
    if source is None:
        cell["note"] = "no image path"
    else:
        try:
            from ..io import read_study

            region = row.get("region")
            study = read_study(source, region=region if isinstance(region, str) and region else None)
            for name in VIEWS:
                image = getattr(study, name)
                if image is not None:
                    cell["views"].append({"name": name, "uri": F.data_uri(F.view_thumbnail(image))})
        except (BoneScanError, OSError, ValueError, ImportError) as error:
            cell["note"] = f"study not shown: {error}"
    if heatmaps_dir is not None:
        heatmap = Path(heatmaps_dir) / f"{row['case_id']}.png"
        if heatmap.is_file():
            cell["heatmap"] = F.data_uri(heatmap.read_bytes())
    return cell


def error_rows(frame: pd.DataFrame, heatmaps_dir: Path | None) -> list[dict[str, Any]]:
    """Rows of the error-analysis table with thumbnails."""
    rows = []
    for _, row in frame.iterrows():
        rows.append({
            "case_id": row["case_id"],
            "probability": f"{row['probability']:.3f}",
            "cancer_type": row.get("cancer_type", "–"),
            "sex": row.get("sex", "–"),
            "age": fmt_num(row.get("age"), 0) if "age" in row else "–",
            **_thumbnail_cells(row, heatmaps_dir),
        })
    return rows


# ----------------------------------------------------------------------------------------------------------------


def render_report(
    *,
    evaluated: pd.DataFrame,
    validation: pd.DataFrame | None,
    split: str,
    points,
    aucs: list[M.AucRow],
    comparisons: list[M.SubgroupComparison],
    thresholds: dict,
    calibration: dict,
    metrics: dict,
    false_negatives: pd.DataFrame,
    false_positives: pd.DataFrame,
    heatmaps_dir: str | Path | None = None,
    sites=None,
    lesions: Any = None,
) -> str:
    """Render report.html from the computed sections (and the lesion section of a `LesionEvaluation`)."""
    heatmaps = Path(heatmaps_dir) if heatmaps_dir else None
    overall = {name: sec["rows"][0] for name, sec in thresholds.items()}  # threshold_table puts overall first
    counts = {
        POINT_TITLES[name]: (row.threshold, ConfusionCounts(row.tp, row.fp, row.tn, row.fn))
        for name, row in overall.items()
    }
    calibration_curves = [("model", calibration["raw"])]
    if calibration["calibrated"] is not None:
        calibration_curves.append((f"temperature {calibration['temperature']:.2f}", calibration["calibrated"]))
    cohort = pd.concat([validation, evaluated]) if validation is not None else evaluated
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update({"auc": fmt_auc, "p": fmt_p, "num": fmt_num, "group": group_title})
    template = env.get_template(TEMPLATE_NAME)
    return template.render(
        metrics=metrics,
        split=split,
        points=points,
        point_names=POINT_NAMES,
        point_titles=POINT_TITLES,
        main_point=MAIN_POINT,
        aucs=aucs,
        dimension_titles=DIMENSION_TITLES,
        comparisons=comparisons,
        thresholds=thresholds,
        threshold_metrics=M.THRESHOLD_METRICS,
        calibration=calibration,
        roc_figures=roc_figures(evaluated),
        confusion_uri=F.data_uri(F.confusion_figure(counts)),
        reliability_uri=F.data_uri(F.reliability_figure(calibration_curves)),
        table1=table1_html_rows(cohort),
        table2=table2_rows(aucs),
        published_systems=[P.SYSTEMS[k] for k in P.SYSTEMS],
        published_source=P.SOURCE,
        false_negatives=error_rows(false_negatives, heatmaps),
        false_positives=error_rows(false_positives, heatmaps),
        n_validation=0 if validation is None else len(validation),
        sites=sites,
        lesion_html=_lesion_html(lesions),
    )


def _lesion_html(lesions: Any) -> str | None:
    if lesions is None:
        return None
    from .lesion_report import render_lesion_section

    return render_lesion_section(lesions)
