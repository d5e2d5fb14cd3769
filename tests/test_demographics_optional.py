"""Datasets without demographics (e.g. BS-80K): evaluation and its report show "unknown" instead of refusing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from bonescan.evaluate import evaluate_predictions


def _frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = (np.arange(n) % 3 == 0).astype(int)
    z = rng.normal(size=n) + 2.0 * label
    return pd.DataFrame({
        "case_id": [f"c{i:03d}" for i in range(n)],
        "label": label,
        "probability": 1 / (1 + np.exp(-(z - 1.0))),
        "split": np.where(np.arange(n) % 2, "val", "test"),
        # sex partly known, cancer type and age not given at all; two regions of crops
        "sex": np.where(np.arange(n) % 4 == 0, "F", ""),
        "region": np.where(np.arange(n) % 5 < 2, "chestR", "pelvis"),
    })


def test_evaluation_without_demographics_reports_unknown_and_regions(tmp_path):
    evaluate_predictions(_frame(), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    text = json.dumps(metrics)
    assert '"group": "unknown"' in text  # the unknown sex is a level of its own
    assert '"group": "chestR"' in text and '"group": "pelvis"' in text  # per-region AUCs
    html = (tmp_path / "report.html").read_text()
    assert "Sex unknown" in html and "Age unknown" in html and "Region" in html
    assert "Table 1 needs" not in html
