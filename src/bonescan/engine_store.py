"""Where exported engines live in a RUN, what their records say, and whether a stored one may still be used.

An exported engine is an ONNX file beside a small JSON record, both under RUN/engines/:

    RUN/engines/<checkpoint>-fp32.onnx   the network exported from RUN/checkpoints/<checkpoint>.pt
    RUN/engines/<checkpoint>-fp32.json   its record
    RUN/engines/<checkpoint>-int8.onnx   the int8 network of `bonescan quantize` (only when it passed its gate)
    RUN/engines/<checkpoint>-int8.json   its record, with the gate's figures (also when it was refused)

A record holds the SHA-256 of the checkpoint and of the engine file, the CPU's instruction-set flags, the torch
and runtime versions, the precision, the input shape, the preprocessing settings (so a prediction needs no
checkpoint and no torch), the parity figures and the measured speed of each candidate engine on this machine.
A record is trusted only while the checkpoint, the CPU's ISA flags and the versions still match
(`stale_reason`); the engine file's own hash catches a file truncated or overwritten since (`file_problem`).

Nothing here imports torch: checking a stored engine must cost milliseconds, not the 1-2 s of `import torch`.
The CPU's ISA is therefore read from /proc/cpuinfo flags, the ones that decide which kernels torch, ONNX Runtime
and OpenVINO pick (AVX2/FMA, AVX-512, VNNI, AMX); torch's own `get_cpu_capability()` is recorded beside them when
the engine is built (torch is loaded then anyway), for people reading the record.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .cpuinfo import CPUINFO, cpuinfo_field
from .errors import RunError
from .fileio import write_text_atomic

RECORD_FORMAT = 2  # 2: OpenVINO pinned to f32 for fp32 (it ran bf16 on AMX CPUs) and a bf16 candidate
ENGINES_DIR = "engines"
PRECISIONS = ("fp32", "int8")
RUNTIMES = ("onnxruntime", "openvino")
# Flags that change which kernels run (and so speed and, for int8, the arithmetic): a difference means rebuild.
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
             "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "avx512_fp16")
VERSIONED_PACKAGES = ("torch", "onnx", "onnxruntime", "openvino")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cpu_isa_flags(cpuinfo: str | Path = CPUINFO) -> list[str]:
    """The ISA_FLAGS this CPU has, from /proc/cpuinfo (empty where that file does not exist)."""
    present = set((cpuinfo_field("flags", cpuinfo) or "").split())
    return [flag for flag in ISA_FLAGS if flag in present]


def cpu_model_name(cpuinfo: str | Path = CPUINFO) -> str:
    """The CPU's model name (for people reading a record; not compared)."""
    return cpuinfo_field("model name", cpuinfo) or platform.processor() or "unknown"


def package_versions() -> dict[str, str | None]:
    """Installed versions of torch and the runtimes, read from package metadata (nothing is imported)."""
    versions: dict[str, str | None] = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@dataclass(frozen=True)
class Fingerprint:
    """What a stored engine must still match to be used: checkpoint, CPU ISA, versions."""

    checkpoint_sha256: str
    isa_flags: tuple[str, ...]
    versions: dict[str, str | None]

    @classmethod
    def current(cls, checkpoint: Path) -> "Fingerprint":
        return cls(sha256_file(checkpoint), tuple(cpu_isa_flags()), package_versions())


@dataclass
class EngineRecord:
    """The JSON record beside an exported engine file."""

    precision: str
    file: str  # the engine file's name, inside RUN/engines/
    file_sha256: str | None
    checkpoint: str  # the checkpoint file, relative to the RUN
    checkpoint_sha256: str
    isa_flags: list[str]
    versions: dict[str, str | None]
    input_shape: list[int]  # per study: 2 x H x W
    preprocess: dict
    parity: dict = field(default_factory=dict)
    speed: dict = field(default_factory=dict)  # seconds per study of each candidate, the batch, the chosen runtime
    runtime: str | None = None  # the runtime that runs this engine fastest here; None: the torch engine is faster
    gate: dict | None = None  # int8 only: the parity gate's thresholds, figures and verdict
    torch_cpu_capability: str | None = None
    cpu_model: str = ""
    created: str = ""
    format: int = RECORD_FORMAT

    @property
    def usable(self) -> bool:
        """True when this engine was chosen to run here (passed its checks and was measured fastest)."""
        return self.runtime is not None and self.file_sha256 is not None and (self.gate is None or self.gate["passed"])

    def stale_reason(self, now: Fingerprint) -> str | None:
        """Why this record no longer describes the checkpoint and machine at hand; None when it still does."""
        if self.format != RECORD_FORMAT:
            return f"record format {self.format}, this bonescan writes {RECORD_FORMAT}"
        if self.checkpoint_sha256 != now.checkpoint_sha256:
            return "the checkpoint changed since the engine was built (SHA-256 differs)"
        if tuple(self.isa_flags) != tuple(now.isa_flags):
            return (f"built on a CPU with {' '.join(self.isa_flags) or 'no listed ISA flags'}, "
                    f"this one has {' '.join(now.isa_flags) or 'none'}")
        changed = [f"{name} {self.versions.get(name)} -> {now.versions.get(name)}"
                   for name in VERSIONED_PACKAGES if self.versions.get(name) != now.versions.get(name)]
        if changed:
            return "versions changed: " + ", ".join(changed)
        return None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


@dataclass(frozen=True)
class EngineStore:
    """The engines of one RUN and checkpoint."""

    run_dir: Path
    checkpoint: str = "best"

    @property
    def folder(self) -> Path:
        return self.run_dir / ENGINES_DIR

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / f"{self.checkpoint}.pt"

    def model_path(self, precision: str) -> Path:
        return self.folder / f"{self.checkpoint}-{precision}.onnx"

    def record_path(self, precision: str) -> Path:
        return self.folder / f"{self.checkpoint}-{precision}.json"

    @contextlib.contextmanager
    def build_lock(self):
        """Hold the RUN's engine-building lock: processes that start together (two `predict` calls, the ranks of
        a torchrun job) build an engine once, the others wait and then reuse it. A folder that cannot hold the
        lock file (read-only run) is used without it."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = open(self.folder / ".build.lock", "a")
        except OSError:
            yield
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
            yield

    def fingerprint(self) -> Fingerprint:
        """The current checkpoint hash, ISA flags and versions; RunError when the checkpoint is missing."""
        if not self.checkpoint_path.is_file():
            raise RunError(self.checkpoint_path, "checkpoint not found")
        return Fingerprint.current(self.checkpoint_path)

    def read(self, precision: str) -> EngineRecord | None:
        """The stored record, or None when there is none; RunError naming the file when it cannot be parsed."""
        path = self.record_path(precision)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return EngineRecord(**data)
        except (OSError, ValueError, TypeError) as error:
            raise RunError(path, f"engine record cannot be read ({type(error).__name__}: {error})") from error

    def write(self, record: EngineRecord) -> Path:
        """Write a record atomically (the engine file is written first, so a record never points at nothing)."""
        record.created = record.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
        return write_text_atomic(self.record_path(record.precision), record.to_json())

    def file_problem(self, record: EngineRecord) -> str | None:
        """Why the engine file of a record cannot be trusted (missing, or bytes that differ); None when intact."""
        path = self.folder / record.file
        if not path.is_file():
            return f"engine file {path} is missing"
        if record.file_sha256 is None or sha256_file(path) != record.file_sha256:
            return f"engine file {path} does not match its record (SHA-256 differs: truncated or overwritten)"
        return None

    def new_record(self, precision: str, now: Fingerprint, input_shape: list[int], preprocess: dict) -> EngineRecord:
        """A record for an engine about to be built from this checkpoint on this machine."""
        return EngineRecord(
            precision=precision, file=self.model_path(precision).name, file_sha256=None,
            checkpoint=str(self.checkpoint_path.relative_to(self.run_dir)), checkpoint_sha256=now.checkpoint_sha256,
            isa_flags=list(now.isa_flags), versions=dict(now.versions), input_shape=list(input_shape),
            preprocess=dict(preprocess), cpu_model=cpu_model_name(),
        )
