"""Local recalibration: honest before/after figures, the size rule, and a complete new run folder."""

import json

import numpy as np
import pytest

from bonescan.cli import main
from bonescan.errors import PredictionsError
from bonescan.recalibrate import recalibrate_probabilities, required_cases, size_warnings

from trainkit import train_tiny_run


def _shifted_site(n=300, seed=0):
    """A separable local site whose scores sit far above the run's threshold of 0.5 (a hotter camera)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    logits = 3.0 * (labels - 0.5) + rng.normal(0, 1.0, n) + 2.5
    return labels, 1 / (1 + np.exp(-logits))


def test_refitted_points_restore_specificity_and_are_judged_by_cross_fitting():
    labels, probabilities = _shifted_site()
    result = recalibrate_probabilities(labels, probabilities, {"youden": 0.5, "rule-out": 0.3, "rule-in": 0.7,
                                                               "0.5": 0.5}, folds=5, seed=0)
    before, after = result.before["youden"], result.after["youden"]
    assert before.specificity.value < 0.5 < after.specificity.value
    assert after.threshold is None and result.points.thresholds["youden"] > 0.5
    # Rule-out keeps its promise (sensitivity >= 0.95 where chosen) within sampling error on held-out folds.
    assert result.after["rule-out"].sensitivity.ci_high >= 0.95
    # Scores that are too high: the fitted temperature must not be 1, and ECE improves.
    assert result.calibration_after["ece"] < result.calibration_before["ece"]
    assert result.points.temperature == pytest.approx(result.temperature)


def test_size_rule_matches_the_normal_approximation_and_warns_by_class():
    assert required_cases(0.9, 0.10) == 35  # 1.96^2 * 0.9 * 0.1 / 0.01 = 34.6
    assert required_cases(0.95, 0.05) == 73
    warnings = size_warnings(20, 200, {"youden": {"sensitivity": 0.9, "specificity": 0.9}}, 0.10)
    assert any("youden: 20 metastatic studies" in w and "needs about 35" in w for w in warnings)
    assert not any("youden: 200 non-metastatic" in w for w in warnings)


def test_too_few_studies_of_a_class_are_refused():
    labels, probabilities = _shifted_site(n=40)
    labels[:] = 0
    labels[:3] = 1
    with pytest.raises(PredictionsError, match="3 metastatic and 37 other"):
        recalibrate_probabilities(labels, probabilities, {"youden": 0.5, "rule-out": 0.3, "rule-in": 0.7, "0.5": 0.5})


def test_recalibrate_command_writes_a_new_run_and_leaves_the_old_one(tmp_path, capsys):
    run, manifest = train_tiny_run(tmp_path / "tiny", n_train=16, n_val=24, n_test=4)
    assert main(["recalibrate", "--run", str(run), "--manifest", str(manifest), "--out", str(tmp_path / "r2")]) == 2
    assert "evaluate it" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(run), "--manifest", str(manifest), "--out", str(tmp_path / "ev"),
                 "--no-report"]) == 0
    original = (run / "operating_points.json").read_text()
    assert main(["recalibrate", "--run", str(run), "--manifest", str(manifest), "--out", str(tmp_path / "r2"),
                 "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "before: sensitivity" in out and "3-fold cross-fitted" in out
    points = json.loads((tmp_path / "r2" / "operating_points.json").read_text())
    assert points["chosen_on"] == "local recalibration (44 studies)" and points["temperature"] > 0
    assert json.loads((tmp_path / "r2" / "recalibration.json").read_text())["n"] == 44
    assert (tmp_path / "r2" / "checkpoints" / "best.pt").is_file()
    assert (run / "operating_points.json").read_text() == original
    assert main(["recalibrate", "--run", str(run), "--manifest", str(manifest), "--out", str(tmp_path / "r2")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r2.")]
    # Predictions with the recalibrated run report the probability after its temperature beside the model's own;
    # the decision still compares the model's probability with the re-chosen threshold.
    import pandas as pd

    from bonescan.evaluate.calibration import apply_temperature

    assert main(["predict", "--run", str(tmp_path / "r2"), "--manifest", str(manifest), "--split", "test",
                 "--engine", "torch", "--out", str(tmp_path / "p2.csv")]) == 0
    rows = pd.read_csv(tmp_path / "p2.csv")
    assert np.allclose(rows["calibrated_probability"], apply_temperature(rows["probability"], points["temperature"]),
                       atol=1e-6)
    assert ((rows["probability"] >= points["youden"]) == (rows["decision"] == "metastasis")).all()
    assert main(["predict", "--run", str(run), "--manifest", str(manifest), "--split", "test", "--engine", "torch",
                 "--out", str(tmp_path / "p1.csv")]) == 0
    assert "calibrated_probability" not in pd.read_csv(tmp_path / "p1.csv").columns
