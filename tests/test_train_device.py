"""Device and precision choice, the allocator re-exec, and the training benchmark's report."""

from __future__ import annotations

import sys

import pytest
import torch

from bonescan import device
from bonescan.errors import ConfigError
from bonescan.train import bench_training


def test_auto_precision_follows_the_cpu_bf16_capability(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    chosen = device.choose_precision(cpu, "auto")
    assert chosen.autocast_dtype is torch.bfloat16 and chosen.channels_last and not chosen.grad_scaling
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: False)
    chosen = device.choose_precision(cpu, "auto")
    assert chosen.autocast_dtype is None and not chosen.channels_last and chosen.name == "fp32"
    with pytest.raises(ConfigError, match="fp16"):
        device.choose_precision(cpu, "fp16")
    with pytest.raises(ConfigError, match="unknown precision"):
        device.choose_precision(cpu, "int8")


def test_bf16_autocast_runs_convolutions_in_bf16_on_cpu():
    precision = device.choose_precision(torch.device("cpu"), "bf16")
    conv = torch.nn.Conv2d(1, 2, 3)
    with precision.autocast():
        out = conv(torch.rand(1, 1, 8, 8))
    assert out.dtype is torch.bfloat16


def test_cuda_request_without_a_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        device.select_device("cuda")
    assert device.select_device("auto").type == "cpu"


def test_reexec_sets_glibc_tunables_once(monkeypatch):
    calls = []
    monkeypatch.setattr(device.os, "execve", lambda path, args, env: calls.append((path, args, env)))
    monkeypatch.setattr(device.sys, "platform", "linux")
    for name in ("GLIBC_TUNABLES", "LD_PRELOAD", "BONESCAN_KEEP_ALLOCATOR"):
        monkeypatch.delenv(name, raising=False)
    device.reexec_with_tuned_allocator(["bonescan", "train", "--preset", "tiny"])
    assert len(calls) == 1
    path, args, env = calls[0]
    assert path == sys.executable and args == [sys.executable, "bonescan", "train", "--preset", "tiny"]
    assert env["GLIBC_TUNABLES"] == device.GLIBC_TUNABLES_VALUE
    monkeypatch.setenv("GLIBC_TUNABLES", device.GLIBC_TUNABLES_VALUE)  # the restarted process: no second exec
    device.reexec_with_tuned_allocator(["bonescan"])
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("BONESCAN_KEEP_ALLOCATOR", "1")
    device.reexec_with_tuned_allocator(["bonescan"])
    assert len(calls) == 1


def test_bench_training_reports_every_setting(monkeypatch):
    import bonescan.train

    # The roofline itself is measured by a large matmul; a fixed figure keeps this test short.
    monkeypatch.setattr(bonescan.train, "measure_matmul_peak", lambda dtype: 1e9)
    previous = torch.get_num_threads()
    try:
        lines = bench_training(["tiny"], ["fp32", "bf16"], steps=1, batch_size=2, threads=1, emulated_bf16=True)
    finally:
        torch.set_num_threads(previous)
    rows = [line for line in lines if line.startswith("tiny")]
    assert len(rows) == 2 and "fp32" in rows[0] and "bf16" in rows[1]
    assert all("MiB" in row and "%" in row for row in rows)
    assert any(line.startswith("matmul roofline: fp32 1.0 GFLOP/s, bf16 1.0") for line in lines)
    with pytest.raises(ConfigError, match="unknown precision"):
        bench_training(["tiny"], ["fp8"], steps=1)
