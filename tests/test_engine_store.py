"""Engine records: what makes a stored engine stale, what makes its file untrustworthy, CPU flags from cpuinfo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bonescan.engine_store import EngineStore, Fingerprint, cpu_isa_flags, sha256_file
from bonescan.errors import RunError


@pytest.fixture()
def store(tmp_path: Path) -> EngineStore:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"weights v1")
    return EngineStore(tmp_path, "best")


def stored(store: EngineStore):
    """A record of an intact fp32 engine built on this machine."""
    now = store.fingerprint()
    record = store.new_record("fp32", now, [2, 64, 32], {"height": 64, "width": 32})
    store.folder.mkdir(exist_ok=True)
    store.model_path("fp32").write_bytes(b"onnx bytes")
    record.file_sha256 = sha256_file(store.model_path("fp32"))
    record.runtime = "onnxruntime"
    store.write(record)
    return store.read("fp32"), now


def test_a_fresh_record_matches_and_round_trips(store):
    record, now = stored(store)
    assert record.stale_reason(now) is None and store.file_problem(record) is None and record.usable
    data = json.loads(store.record_path("fp32").read_text())
    for key in ("checkpoint_sha256", "isa_flags", "versions", "precision", "input_shape", "parity", "speed",
                "file_sha256", "created"):
        assert key in data, key
    assert data["checkpoint_sha256"] == sha256_file(store.checkpoint_path)
    assert data["versions"]["torch"] and data["versions"]["onnxruntime"]


def test_changed_checkpoint_isa_or_version_makes_a_record_stale(store):
    record, now = stored(store)
    store.checkpoint_path.write_bytes(b"weights v2")  # retrained
    assert "checkpoint changed" in record.stale_reason(store.fingerprint())

    other_cpu = Fingerprint(now.checkpoint_sha256, ("avx2", "fma", "avx512f", "amx_int8"), now.versions)
    assert "amx_int8" in record.stale_reason(other_cpu)

    upgraded = Fingerprint(now.checkpoint_sha256, now.isa_flags, {**now.versions, "onnxruntime": "99.0"})
    reason = record.stale_reason(upgraded)
    assert "onnxruntime" in reason and "99.0" in reason


def test_a_truncated_or_missing_engine_file_is_named(store):
    record, _ = stored(store)
    store.model_path("fp32").write_bytes(b"onnx")  # truncated
    assert str(store.model_path("fp32")) in store.file_problem(record)
    assert "SHA-256" in store.file_problem(record)
    store.model_path("fp32").unlink()
    assert "missing" in store.file_problem(record)


def test_an_unreadable_record_is_refused_naming_it(store):
    stored(store)
    store.record_path("fp32").write_text("{ not json")
    with pytest.raises(RunError, match="best-fp32.json"):
        store.read("fp32")
    assert store.read("int8") is None


def test_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(RunError, match="best.pt"):
        EngineStore(tmp_path).fingerprint()


def test_isa_flags_come_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni amx_tile amx_int8\n")
    assert cpu_isa_flags(cpuinfo) == ["avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"]
    assert cpu_isa_flags(tmp_path / "absent") == []
