"""Device and precision choice, and the in-process allocator setting."""

from __future__ import annotations

import os

import pytest
import torch

from bonescan import device
from bonescan.errors import ConfigError


def test_auto_precision_follows_where_bf16_is_faster(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_bf16_is_faster", lambda: True)
    chosen = device.choose_precision(cpu, "auto")
    assert chosen.autocast_dtype is torch.bfloat16 and chosen.channels_last and not chosen.grad_scaling
    monkeypatch.setattr(device, "cpu_bf16_is_faster", lambda: False)
    chosen = device.choose_precision(cpu, "auto")
    assert chosen.autocast_dtype is None and not chosen.channels_last and chosen.name == "fp32"
    with pytest.raises(ConfigError, match="fp16"):
        device.choose_precision(cpu, "fp16")
    with pytest.raises(ConfigError, match="unknown precision"):
        device.choose_precision(cpu, "int8")


@pytest.mark.parametrize("vendor, avx512_bf16, amx, native, auto", [("GenuineIntel", False, False, False, "fp32"),
                                                                      ("GenuineIntel", True, False, True, "fp32"),
                                                                      ("GenuineIntel", False, True, True, "bf16"),
                                                                      ("GenuineIntel", True, True, True, "bf16"),
                                                                      ("AuthenticAMD", False, False, False, "fp32"),
                                                                      ("AuthenticAMD", True, False, True, "bf16")])
def test_bf16_counts_only_where_native_and_auto_takes_it_only_where_faster(monkeypatch, vendor, avx512_bf16, amx,
                                                                           native, auto):
    # oneDNN says yes on AVX-512 CPUs without BF16 too (emulated there: slower than fp32); with AVX512-BF16 but no
    # AMX bf16 is native, and faster than fp32 on AMD, no faster on Intel (see cpu_bf16_is_faster).
    monkeypatch.setattr(device, "onednn_reports_bf16", lambda: True)
    monkeypatch.setattr(device, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert device.cpu_supports_bf16() is native
    assert device.choose_precision(torch.device("cpu"), "auto").name == auto
    monkeypatch.setattr(device, "onednn_reports_bf16", lambda: False)  # a torch built without oneDNN bf16
    assert device.cpu_supports_bf16() is False
    assert device.choose_precision(torch.device("cpu"), "auto").name == "fp32"


def test_the_cpu_vendor_is_read_from_cpuinfo_and_empty_where_it_cannot_be(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n\nprocessor\t: 1\n"
                       "vendor_id\t: AuthenticAMD\n")
    assert device.cpu_vendor(cpuinfo) == "AuthenticAMD"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: an ARM core\n")  # no vendor line (aarch64 kernels)
    assert device.cpu_vendor(cpuinfo) == ""
    assert device.cpu_vendor(tmp_path / "missing") == ""


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


def test_allocator_is_tuned_in_process_and_exported(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert not device.allocator_tuned()
    assert device.tune_allocator() == "tuned in-process (mallopt: no mmap, no trim)"
    assert os.environ["GLIBC_TUNABLES"] == device.GLIBC_TUNABLES_VALUE  # for processes started from here
    assert device.tune_allocator().startswith("tuned (GLIBC_TUNABLES")  # second call sees the exported setting


def test_unrelated_glibc_tunables_do_not_count_as_a_tuned_allocator(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.rtld.optional_static_tls=2048")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert not device.allocator_tuned()
    assert device.tune_allocator().startswith("tuned in-process")
    assert os.environ["GLIBC_TUNABLES"] == "glibc.rtld.optional_static_tls=2048"  # the user's setting is kept
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    assert device.allocator_tuned()


def test_exact_runs_cap_onednn_below_amx_only_on_amx_cpus_and_keep_a_user_setting(monkeypatch):
    monkeypatch.delenv(device.ONEDNN_ISA_VARIABLE, raising=False)
    monkeypatch.setattr(device, "cpu_has_amx", lambda: False)
    assert device.cap_onednn_for_exact_runs() is None
    assert device.ONEDNN_ISA_VARIABLE not in os.environ
    monkeypatch.setattr(device, "cpu_has_amx", lambda: True)
    assert device.cap_onednn_for_exact_runs() == "AVX512_CORE_BF16" == os.environ[device.ONEDNN_ISA_VARIABLE]
    monkeypatch.setenv(device.ONEDNN_ISA_VARIABLE, "AVX2")
    assert device.cap_onednn_for_exact_runs() == "AVX2"


def test_the_avx2_emulation_makes_bonescan_choose_as_on_a_cpu_without_native_bf16():
    """scripts/avx2_emulation (behind scripts/test_as_avx2.sh) must keep hiding native bf16 as torch changes."""
    import subprocess
    import sys
    from pathlib import Path

    emulation = Path(__file__).resolve().parents[1] / "scripts" / "avx2_emulation"
    probe = ("import sys, torch; from bonescan.device import choose_precision, cpu_has_amx, cpu_has_native_bf16; "
             "print(cpu_has_amx(), cpu_has_native_bf16(), choose_precision(torch.device('cpu')).autocast_dtype, "
             "'torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(emulation), os.environ.get("PYTHONPATH")]))}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False", "None", "True"]
    untouched = subprocess.run([sys.executable, "-c", "import sys, os, bonescan; "
                                "print('torch' in sys.modules, os.environ['ONEDNN_MAX_CPU_ISA'])"],
                               env=env, capture_output=True, text=True, timeout=300)
    assert untouched.stdout.split() == ["False", "AVX2"]  # a process that never imports torch does not load it
