"""A training run killed with SIGKILL during epoch 2 and resumed ends with the uninterrupted run's results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from bonescan.presets import preset_config
from bonescan.train import load_checkpoint, train
from trainkit import write_cohort, write_manifest_csv

EPOCHS = 4


@pytest.mark.slow
def test_sigkill_during_epoch_two_then_resume_matches_uninterrupted(tmp_path):
    manifest = write_cohort(tmp_path / "data", n_train=48, n_val=12)
    csv = write_manifest_csv(tmp_path, manifest)
    cache = tmp_path / "cache"
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same thread count as the in-process reference below
    process = subprocess.Popen(
        [sys.executable, "-m", "bonescan", "train", "--manifest", str(csv), "--out", str(killed), "--preset", "tiny",
         "--epochs", str(EPOCHS), "--cache-dir", str(cache), "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    last = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # epoch 1's checkpoint is written: the process is in epoch 2
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    assert load_checkpoint(last)["epoch"] == 1

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = preset_config("tiny", epochs=EPOCHS)
        train(manifest.assign(), killed, config, resume=True, cache_dir=cache, progress=False)
        reference = tmp_path / "reference"
        train(manifest, reference, config, cache_dir=cache, progress=False)
    finally:
        torch.set_num_threads(previous)

    def metrics(run):
        return pd.read_csv(run / "metrics.csv").drop(columns=["seconds"])

    pd.testing.assert_frame_equal(metrics(killed), metrics(reference))
    resumed = load_checkpoint(killed / "checkpoints" / "last.pt")["model"]
    expected = load_checkpoint(reference / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
