"""A training run killed with SIGKILL during epoch 2 and resumed ends with the uninterrupted run's results.

Both precisions are forced, so both code paths run on every CPU kind (bf16 is emulated, and slow, on AVX2-only
CPUs). Every run is a fresh process: on CPUs with AMX the exact mode must reach oneDNN before its first
convolution, which an in-process reference (after other tests' convolutions) could not guarantee.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from bonescan.device import EXACT_ONEDNN_ISA, cpu_has_amx
from bonescan.train import load_checkpoint
from trainkit import write_cohort, write_manifest_csv

EPOCHS = 4


def _train_command(csv, out, cache, precision, *extra):
    return [sys.executable, "-m", "bonescan", "train", "--manifest", str(csv), "--out", str(out), "--preset", "tiny",
            "--epochs", str(EPOCHS), "--precision", precision, "--cache-dir", str(cache), "--quiet", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sigkill_during_epoch_two_then_resume_matches_uninterrupted(tmp_path, precision):
    manifest = write_cohort(tmp_path / "data", n_train=48, n_val=12)
    csv = write_manifest_csv(tmp_path, manifest)
    cache = tmp_path / "cache"
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    env = dict(os.environ, OMP_NUM_THREADS="1")  # one thread: the same summation order in every process
    env.pop("ONEDNN_MAX_CPU_ISA", None)  # exact mode decides
    process = subprocess.Popen(_train_command(csv, killed, cache, precision), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # epoch 1's checkpoint is written: the process is in epoch 2
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    assert load_checkpoint(last)["epoch"] == 1

    # The resume and the uninterrupted reference run side by side (one thread each; the cache is complete after
    # epoch 1, so both only read it).
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for command in (_train_command(csv, killed, cache, precision, "--resume"),
                            _train_command(csv, reference, cache, precision))]
    errors = [run.communicate(timeout=300)[1] for run in runs]  # both finish before either is judged
    for run, error in zip(runs, errors):
        assert run.returncode == 0, error[-3000:]

    record = json.loads((reference / "config.json").read_text())
    assert record["precision"] == precision and record["exact"] is True
    if cpu_has_amx():
        assert record["onednn_max_cpu_isa"] == EXACT_ONEDNN_ISA

    def metrics(run):
        return pd.read_csv(run / "metrics.csv").drop(columns=["seconds"])

    pd.testing.assert_frame_equal(metrics(killed), metrics(reference))
    resumed = load_checkpoint(killed / "checkpoints" / "last.pt")["model"]
    expected = load_checkpoint(reference / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
