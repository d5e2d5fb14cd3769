"""The measurements both benchmarks share (FLOPs per study, matmul peak, peak RSS) and the training report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bonescan.bench
from bonescan.bench import bench_training, matmul_peak_gflops, model_gflop_per_case, peak_rss_mib
from bonescan.errors import ConfigError
from bonescan.model import MultiViewNet


def test_resnet50_two_view_study_costs_64_gflop():
    # Reference: ResNet-50 is 4.1 GMAC (8.2 GFLOP) at 224 x 224; two views at 768 x 256 are 2 * 3.92 times that,
    # the 64 GFLOP per study the roofline uses.
    gflop = model_gflop_per_case(MultiViewNet(), 768, 256)
    assert 60.0 < gflop < 68.0


def test_training_step_costs_about_three_forward_passes():
    # The backward pass computes gradients for the inputs and the weights of each layer, about twice the forward
    # cost; the first convolution needs no input gradient, so the step is a little under 3x the forward.
    model = MultiViewNet(backbone="resnet18")
    forward = model_gflop_per_case(model, 384, 128)
    step = model_gflop_per_case(model, 384, 128, backward=True)
    assert 2.5 * forward < step < 3.0 * forward


def test_matmul_peak_is_a_plausible_throughput():
    peak = matmul_peak_gflops(torch.float32, seconds=0.2, max_size=512)
    assert 0.1 < peak < 1e5


def test_peak_rss_covers_memory_just_touched():
    before = peak_rss_mib()
    block = np.ones(256 * 2**20 // 8)  # 256 MiB, every page written
    assert peak_rss_mib() >= max(before, 256.0)
    del block


def test_bench_training_reports_every_setting(monkeypatch):
    # The roofline itself is measured by a large matmul; a fixed figure keeps this test short.
    monkeypatch.setattr(bonescan.bench, "matmul_peak_gflops", lambda dtype: 1.0)
    previous = torch.get_num_threads()
    lines = bench_training(["tiny", "tiny-lesion"], ["fp32", "bf16"], steps=1, batch_size=2, threads=1,
                           emulated_bf16=True)
    assert torch.get_num_threads() == previous  # --threads applies only while the benchmark runs
    rows = [line for line in lines if line.startswith("tiny ")]
    assert len(rows) == 2 and "fp32" in rows[0] and "bf16" in rows[1]
    lesion_rows = [line.split() for line in lines if line.startswith("tiny-lesion ")]
    assert [row[1] for row in lesion_rows] == ["fp32", "bf16"] and lesion_rows[0][2] == "64x32"
    from bonescan.lesions.network import LesionNetConfig, build_lesion_net

    small, large = (model_gflop_per_case(build_lesion_net(LesionNetConfig()), h, w, backward=True)
                    for h, w in ((64, 32), (128, 64)))
    assert 0 < small and large == pytest.approx(4 * small, rel=0.05)  # the lesion network's FLOPs are counted
    assert all("MiB" in row and "%" in row for row in rows)
    assert any(line.startswith("matmul roofline: fp32 1.0 GFLOP/s, bf16 1.0") for line in lines)
    with pytest.raises(ConfigError, match="unknown precision"):
        bench_training(["tiny"], ["fp8"], steps=1)


def test_benchmark_studies_of_a_two_files_per_study_camera_are_counted_as_studies(tmp_path):
    from bonescan.bench import benchmark_sources
    from bonescan.synth import generate_cohort

    generate_cohort(tmp_path / "data", 3, seed=5, difficulty="paper", site="philips-brightview")
    assert len(list((tmp_path / "data" / "studies").glob("*.dcm"))) == 6
    said = []
    sources = benchmark_sources(tmp_path / "data", 3, 5, said.append)
    assert len(sources) == 3 and all(len(source.files) == 2 for source in sources) and said == []
    # a fourth study cannot be added to a cohort of other settings: refused, not three studies given as four
    with pytest.raises(ConfigError, match="holds a cohort made with"):
        benchmark_sources(tmp_path / "data", 4, 5, said.append)
