"""`bonescan train` under torchrun with 2 CPU processes (gloo) matches the single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from bonescan.train import load_checkpoint
from trainkit import write_cohort, write_manifest_csv


@pytest.mark.slow
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("bf16", 2e-2)])
def test_two_process_gloo_run_matches_single_process(tmp_path, precision, tolerance):
    manifest = write_cohort(tmp_path / "data", n_train=32, n_val=12)
    csv = write_manifest_csv(tmp_path, manifest)
    cache = tmp_path / "cache"
    # GroupNorm instead of BatchNorm and no dropout: then a case's loss does not depend on which process or
    # batch-mates it has, so the 2 x 4 split of each global batch of 8 computes the same gradient as one batch
    # of 8. (With BatchNorm each process normalises with the statistics of its own 4 cases, and dropout masks are
    # drawn per process: both legitimately change the numbers.) What remains is floating-point summation order
    # (DDP averages two partial gradients; oneDNN may block a batch of 4 differently from 8), hence a tolerance.
    # bf16 (forced, so its channels_last model runs here on every CPU kind) rounds each partial result to 8 bits of
    # mantissa, so the two summation orders differ by more than in fp32: after 8 AdamW steps the weight tensors
    # differ by up to ~1 % (relative L2) here, hence the looser bounds.
    options = ["--preset", "tiny", "--epochs", "2", "--norm", "group", "--dropout", "0", "--cache-dir", str(cache),
               "--precision", precision]
    # Both runs are fresh processes, so on CPUs with AMX the exact mode reaches oneDNN before its first convolution.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bonescan",
         "train", "--manifest", str(csv), "--out", str(tmp_path / "ddp"), "--quiet", *options],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("best validation AUC") == 1  # only rank 0 reports
    completed = subprocess.run(
        [sys.executable, "-m", "bonescan", "train", "--manifest", str(csv), "--out", str(tmp_path / "single"),
         "--quiet", *options],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    record = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert record["world_size"] == 2 and record["precision"] == precision
    ddp = pd.read_csv(tmp_path / "ddp" / "metrics.csv")
    single = pd.read_csv(tmp_path / "single" / "metrics.csv")
    assert list(ddp["epoch"]) == list(single["epoch"]) == [1, 2]
    for column in ("train_loss", "val_loss", "val_auc", "lr"):
        np.testing.assert_allclose(ddp[column], single[column], rtol=tolerance, atol=1e-4, err_msg=column)
    ddp_weights = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["model"]
    single_weights = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")["model"]
    for name, value in single_weights.items():
        if precision == "fp32":
            torch.testing.assert_close(ddp_weights[name], value, rtol=1e-3, atol=1e-4, msg=name)
        elif value.dim() > 1:  # bf16: each weight tensor as a whole (near-zero biases make elementwise bounds loose)
            change = float((ddp_weights[name] - value).norm() / value.norm())
            assert change < 3e-2, f"{name}: relative difference {change:.3g}"
