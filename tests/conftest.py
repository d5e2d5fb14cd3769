"""Fixtures shared by the test modules (keep generic: files on disk, the real NM1 scan)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def nm1_path() -> Path:
    """NM1: a real GE whole-body bone scan (one anterior view, JPEG lossless) from the pydicom-data package."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("JPEG-LL.dcm")
    if path is None:
        pytest.fail("pydicom-data is not installed: pip install pydicom-data (a dev dependency)")
    return Path(path)


@pytest.fixture
def one_thread():
    """Run torch on one thread: tiny models are faster so, and results don't depend on the core count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def eager_engine_timing(monkeypatch):
    """Time the torch engine eager when choosing an engine: compiling a tiny network on an AMX CPU would cost
    more than the tests."""
    from bonescan import engine_select

    monkeypatch.setattr(engine_select, "TORCH_COMPILE", "off")


@pytest.fixture(autouse=True)
def fp32_exported_engines(monkeypatch):
    """Exported engines in fp32 only, so that which engine wins, and how close it comes to torch's fp32, does not
    depend on the CPU kind; the bf16 candidate has its own tests."""
    from bonescan import engine_select

    monkeypatch.setattr(engine_select, "EXPORTED_BF16", False)
