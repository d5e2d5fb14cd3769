"""External validation: per-site metrics, pairwise DeLong tests and the report section."""

import numpy as np
import pandas as pd
import pytest

from bonescan.evaluate import evaluate_predictions
from bonescan.evaluate.operating_points import choose_operating_points
from bonescan.evaluate.sites import site_levels, site_section
from bonescan.evaluate.stats import delong_auc


def _site_frame(seed=0):
    """Site A separates well; site B's scores are noisier and shifted up (a brighter camera)."""
    rng = np.random.default_rng(seed)
    rows = []
    for site, noise, shift, n in (("A", 0.6, 0.0, 160), ("B", 1.6, 1.0, 120)):
        labels = rng.integers(0, 2, n)
        logits = 2.0 * (labels - 0.5) + rng.normal(0, noise, n) + shift
        for i, (y, z) in enumerate(zip(labels, logits)):
            rows.append({"case_id": f"{site}{i}", "label": int(y), "probability": float(1 / (1 + np.exp(-z))),
                         "site": site, "split": "test"})
    return pd.DataFrame(rows)


def test_each_site_gets_its_own_auc_and_decisions_at_the_frozen_points():
    frame = _site_frame()
    points = choose_operating_points(frame["label"], frame["probability"], "val")
    section = site_section(frame, points)
    assert [row.site for row in section.rows] == ["A", "B"]
    b = frame[frame["site"] == "B"]
    assert section.rows[1].auc.auc == pytest.approx(delong_auc(b["label"], b["probability"]).auc)
    assert section.rows[0].auc.auc > section.rows[1].auc.auc
    # Site B's scores are shifted up: at the same frozen threshold its specificity is lower than A's.
    spec = [row.decisions["youden"]["specificity"].value for row in section.rows]
    assert spec[1] < spec[0]
    (comparison,) = section.comparisons
    assert comparison.result.difference == pytest.approx(section.rows[0].auc.auc - section.rows[1].auc.auc)
    assert comparison.result.p_value < 0.05


def test_one_site_or_none_gives_no_section_and_blank_sites_are_unknown():
    frame = _site_frame()
    points = choose_operating_points(frame["label"], frame["probability"], "val")
    assert site_section(frame[frame["site"] == "A"], points) is None
    assert site_section(frame.drop(columns="site"), points) is None
    frame.loc[frame.index[:5], "site"] = " "
    assert site_levels(frame) == ["A", "B", "unknown"]


def test_evaluation_writes_the_site_section_to_metrics_and_report(tmp_path):
    frame = _site_frame()
    val = _site_frame(seed=1).assign(split="val", case_id=lambda f: "v" + f["case_id"])
    result = evaluate_predictions(pd.concat([frame, val]), tmp_path)
    assert [row["site"] for row in result.metrics["sites"]["rows"]] == ["A", "B"]
    html = (tmp_path / "report.html").read_text()
    assert "External validation: each site" in html and "A − B" in html
    assert set(pd.read_csv(tmp_path / "predictions.csv")["site"]) == {"A", "B"}
