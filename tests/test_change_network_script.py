"""scripts/change_network.py (the follow-up change-network experiment) keeps working as the follow-up code changes:
its pairs carry the truth's new lesions and the earlier visit lies registered on the later one."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bonescan.synth.followup import generate_followup_cohort

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "change_network.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("change_network", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, script):
    root = tmp_path_factory.mktemp("change")
    generate_followup_cohort(root / "cohort", patients=4, seed=3, site="mixed")
    out = root / "pairs.npz"
    count = script.build_pairs(out, [root / "cohort"], workers=1)
    return out, count


def test_pairs_hold_each_later_visit_with_the_earlier_one_registered_and_the_new_lesions(pairs, script):
    path, count = pairs
    data = np.load(path)
    assert count == len(data["x"]) >= 4  # every patient has at least one later visit
    assert data["x"].shape[1:] == (4, script.PREPROCESS.height, script.PREPROCESS.width)
    assert data["y"].shape[1:] == (2, script.PREPROCESS.height, script.PREPROCESS.width)
    masked = data["y"].reshape(count, -1).any(1)
    assert not masked[data["n_new"] == 0].any()  # only lesions unseen before are painted
    assert (data["n_new"] > 0).any() and masked[data["n_new"] > 0].all()  # and every new lesion is painted
    later, earlier = data["x"][:, :2].astype(np.float32), data["x"][:, 2:].astype(np.float32)
    registered = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(later, earlier)]
    unrelated = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(later, np.roll(earlier, 1, axis=0))]
    assert np.median(registered) > 0.8 and np.median(registered) > np.median(unrelated)


def test_components_count_a_lesion_seen_in_both_views_once(script):
    probability = np.zeros((2, 64, 32), np.float32)
    probability[0, 10:13, 5:8] = 0.9  # one lesion, both views
    probability[1, 11:14, 5:8] = 0.8
    probability[1, 40:42, 20:22] = 0.7  # a second, posterior only
    probability[0, 50, 2] = 0.35  # faint, one pixel
    assert len(script.components(probability, 0.5, 1)) == 2
    assert len(script.components(probability, 0.3, 1)) == 3
    assert len(script.components(probability, 0.3, 2)) == 2


def test_training_writes_a_network_that_evaluate_reads(pairs, tmp_path):
    path, _ = pairs
    net = tmp_path / "net.pt"
    run = subprocess.run([sys.executable, str(SCRIPT), "train", str(path), str(net), "--epochs", "1"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert net.is_file() and "epoch 1/1" in run.stdout
    run = subprocess.run([sys.executable, str(SCRIPT), "evaluate", str(net), str(path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "chosen on" in run.stdout and "change network sensitivity" in run.stdout
