"""The node's settings: one frozen dataclass that checks itself and names the option at fault."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

# `followup.joins.JOINS`' names, not imported from there: importing the follow-up package loads torch
NODE_JOINS = ("either", "union", "network")
AE_TITLE = re.compile(r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")  # no backslash


def check_ae_title(title: str, option: str) -> str:
    """An AE title of 1-16 printable ASCII characters without backslash or leading/trailing spaces."""
    if not AE_TITLE.match(title or ""):
        raise ConfigError(option, f"{title!r} is not an AE title (1-16 printable ASCII characters, no backslash)")
    return title


@dataclass(frozen=True)
class Destination:
    """Where results are sent by C-STORE: AE title, host and port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, option: str = "--forward") -> "Destination":
        """Parse "AE@host:port"."""
        match = re.fullmatch(r"([^@]+)@(\[[^\]]+\]|[^:@]+):(\d+)", text.strip())
        if not match:
            raise ConfigError(option, f"{text!r} is not AE@host:port (for example PACS@10.0.0.5:104)")
        port = int(match.group(3))
        if not 0 < port < 65536:
            raise ConfigError(option, f"port {port} is not between 1 and 65535")
        return cls(check_ae_title(match.group(1), option), match.group(2).strip("[]"), port)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    """Everything a running node depends on.

    complete_after: seconds after a study's last instance when it is read even if a view is missing (it then
        fails with the reason, e.g. a lone view). A study with both views (one two-frame instance, or two
        single-frame ones) is read at once.
    accept_secondary_capture: also accept Secondary Capture objects with modality NM (some vendors export
        whole-body scans so).
    lesions: a lesion run (`bonescan train --preset cpu-small-lesion`): each study's SR then also holds its
        hotspots, BSI and malignant lesions, and a DICOM Segmentation per view (hotspots and skeletal regions)
        goes with it; the lesion files (JSON, npz, overlay PNG) stay in the store's results/lesions/.
    followup: with `lesions`, compare each study with the latest earlier study of the same PatientID that this
        node has read, and send the follow-up SR too (`node.followup`).
    change_net: with `followup`, the change network (`bonescan followup-train`) as a second judge of new lesions;
        the verdict counts them as `join` of its count and the rules' (`followup.joins`).
    judge: with `followup`, a learned new-lesion judge (`bonescan followup-judge`) in the hand rules' place.
    keep_days: remove a study's files this many days after it was read, once its results were sent
        (`node.retention`); None keeps everything. retention_interval: seconds between retention passes.
    reserve_mb: free space that incoming instances leave on the store's disk, for the results and the queue of the
        studies already received: an instance that would leave less is refused with Out of Resources (0xA700), so
        the sender tries again later, rather than filling the disk that those studies' results need.
    """

    run: Path
    store: Path
    ae_title: str = "BONESCAN"
    host: str = "127.0.0.1"
    port: int = 11112
    forward: Destination | None = None
    allow: tuple[str, ...] = ()  # calling AE titles allowed; empty = any
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # when given, callers must present a certificate signed by it
    forward_tls_ca: Path | None = None  # when given, results go over TLS to a destination whose certificate it signed
    complete_after: float = 30.0
    accept_secondary_capture: bool = False
    operating_point: str = "youden"
    batch_size: int = 1  # on a CPU heat maps and DICOM writing outweigh the network: batching only adds latency
    device: str = "cpu"
    heatmaps: bool = True
    retry_base: float = 1.0  # seconds before the first resend; doubles per attempt
    retry_max: float = 60.0
    poll: float = 0.2  # seconds between looks at the queue when idle
    forward_timeout: float = 30.0
    lesions: Path | None = None
    followup: bool = False
    change_net: Path | None = None
    join: str = "either"
    judge: Path | None = None
    keep_days: float | None = None
    retention_interval: float = 3600.0
    reserve_mb: float = 500.0

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title, "--ae-title")
        for title in self.allow:
            check_ae_title(title, "--allow")
        if not 0 <= self.port < 65536:
            raise ConfigError("--port", f"{self.port} is not between 0 and 65535")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert/--tls-key", "TLS needs both a certificate and its private key")
        for option, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key), ("--tls-ca", self.tls_ca),
                             ("--forward-tls-ca", self.forward_tls_ca)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(option, f"{path}: no such file")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-ca", "verifying callers' certificates needs --tls-cert and --tls-key too")
        if self.forward_tls_ca is not None and self.forward is None:
            raise ConfigError("--forward-tls-ca", "there is no --forward destination to send to over TLS")
        if self.lesions is not None and not Path(self.lesions).is_dir():
            raise ConfigError("--lesions", f"{self.lesions}: no such run folder")
        if self.followup and self.lesions is None:
            raise ConfigError("--followup", "comparing a study with the patient's prior needs --lesions (a lesion run)")
        if self.change_net is not None and not self.followup:
            raise ConfigError("--change-net", "the change network judges follow-up comparisons: it needs --followup")
        if self.change_net is not None and not Path(self.change_net).is_file():
            raise ConfigError("--change-net", f"{self.change_net}: no such file")
        if self.judge is not None and not self.followup:
            raise ConfigError("--judge", "the new-lesion judge judges follow-up comparisons: it needs --followup")
        if self.judge is not None and not Path(self.judge).is_file():
            raise ConfigError("--judge", f"{self.judge}: no such file")
        if self.join not in NODE_JOINS:
            raise ConfigError("--join", f"unknown join {self.join!r}; choose one of {', '.join(NODE_JOINS)}")
        if self.keep_days is not None and not self.keep_days > 0:
            raise ConfigError("--keep-days", f"must be > 0 days, got {self.keep_days}")
        if not self.reserve_mb >= 0:
            raise ConfigError("--reserve-mb", f"must be >= 0 MB, got {self.reserve_mb}")
        if self.complete_after <= 0:
            raise ConfigError("--complete-after", f"must be > 0 seconds, got {self.complete_after}")
        if self.batch_size < 1:
            raise ConfigError("--batch-size", f"must be at least 1, got {self.batch_size}")
        if not 0 < self.retry_base <= self.retry_max:
            raise ConfigError("retry", "need 0 < retry_base <= retry_max")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def store_paths(self) -> "StorePaths":
        return StorePaths(Path(self.store))


@dataclass(frozen=True)
class StorePaths:
    """The node's folder: received instances, results, the queue database, the lock and the live-node file."""

    root: Path

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def database(self) -> Path:
        return self.root / "queue.sqlite"

    @property
    def lock(self) -> Path:
        return self.root / "node.lock"

    @property
    def live(self) -> Path:
        return self.root / "node.json"
