"""Helpers of the node tests: a tiny run, small NM studies, a destination SCP, an SCU, a node in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from dicom_factory import body_views, nm_dataset
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComprehensiveSRStorage, SecondaryCaptureImageStorage, SegmentationStorage, Verification,
)

from bonescan.model import MultiViewNet
from bonescan.presets import preset_config
from bonescan.train import CHECKPOINT_FORMAT, RunPaths

ROOT = Path(__file__).resolve().parents[1]
NM = "1.2.840.10008.5.1.4.1.1.20"
PATIENT_NAME = "Doe^Jane"  # must never appear in the node's log


def make_run(folder: Path, seed: int = 0) -> Path:
    """A RUN folder holding an untrained tiny network (64 x 32): enough to exercise the node end to end."""
    config = preset_config("tiny")
    torch.manual_seed(seed)
    return _save_run(folder, config, MultiViewNet(config.model))


def _save_run(folder: Path, config, model: torch.nn.Module) -> Path:
    """`model` with `config` as RUN/checkpoints/best.pt, as training writes it."""
    paths = RunPaths(folder)
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "kind": "best", "config": config.to_dict(), "epoch": 0,
               "val_auc": None, "model": model.state_dict()}
    torch.save(payload, paths.best)
    return folder


def make_lesion_run(folder: Path, seed: int = 0) -> Path:
    """A RUN folder holding an untrained tiny lesion network (64 x 32) that finds skeletal regions and no hotspots.

    Untrained, its hotspot map is nearly flat, so a study gets either none or some 300 of noise, whose SR and
    Segmentation take seconds to build; the hotspot and metastasis logits are pushed down to find none."""
    from bonescan.lesions.network import CHANNELS_PER_VIEW, HOTSPOT, MALIGNANCY, build_lesion_net

    config = preset_config("tiny-lesion")
    torch.manual_seed(seed)
    model = build_lesion_net(config.lesion)
    with torch.no_grad():
        output_bias = [value for name, value in model.named_parameters() if name.endswith("bias")][-1]
        for view in range(2):
            output_bias[[view * CHANNELS_PER_VIEW + HOTSPOT, view * CHANNELS_PER_VIEW + MALIGNANCY]] = -3.0
    return _save_run(folder, config, model)


def study(seed: int, rows: int = 256, cols: int = 64, **kwargs) -> Dataset:
    """One small two-frame NM study (anterior, posterior) with its own UIDs and a patient name."""
    ds = nm_dataset(body_views(rows, cols, seed=seed), view_codes=None, **kwargs)
    ds.PatientName = PATIENT_NAME
    return ds


def split_views(ds: Dataset) -> list[Dataset]:
    """The two frames of `ds` as two single-frame instances of the same study (anterior, posterior)."""
    import numpy as np

    frames = ds.pixel_array
    views = []
    for index, name in enumerate(("ANT", "POST")):
        one = nm_dataset(np.asarray(frames[index]), detector_vector=None, text={"ViewPosition": name},
                         study_uid=ds.StudyInstanceUID)
        one.PatientName = PATIENT_NAME
        views.append(one)
    return views


@dataclass
class Destination:
    """A storage SCP playing the PACS: records (study, SOP instance, SOP class) of everything it stores."""

    ae_title: str = "PACS"
    port: int = 0
    received: list[tuple[str, str, str, float]] = field(default_factory=list)
    server: object = None
    tls: object = None  # an ssl.SSLContext: the destination then only speaks TLS

    def start(self) -> "Destination":
        ae = AE(ae_title=self.ae_title)
        for context in (SecondaryCaptureImageStorage, ComprehensiveSRStorage, SegmentationStorage, Verification):
            ae.add_supported_context(context, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        lock = threading.Lock()

        def on_store(event):
            ds = event.dataset
            with lock:
                self.received.append((str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                                      time.time()))
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", self.port), block=False, ssl_context=self.tls,
                                      evt_handlers=[(evt.EVT_C_STORE, on_store)])
        self.port = self.server.server_address[1]
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    @property
    def address(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def by_study(self) -> dict[str, dict[str, set[str]]]:
        """study UID -> SOP class -> distinct SOP Instance UIDs stored."""
        table: dict[str, dict[str, set[str]]] = {}
        for study_uid, sop_uid, sop_class, _ in list(self.received):
            table.setdefault(study_uid, {}).setdefault(sop_class, set()).add(sop_uid)
        return table


def scu(ae_title: str = "CAMERA") -> AE:
    ae = AE(ae_title=ae_title)
    # Generous: the tests check that every instance is answered, not how fast. On a 2-core machine also training
    # and writing gigabytes, one answer once took over 30 s (the timeout this had; the intake fsyncs every instance).
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.add_requested_context(Verification)
    ae.add_requested_context(NM, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    return ae


def send(port: int, datasets: list[Dataset], ae_title: str = "CAMERA", called: str = "BONESCAN",
         tls_args=None) -> list[int | None]:
    """C-STORE each dataset over one association; the status of each (None when no answer came)."""
    assoc = scu(ae_title).associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)
    assert assoc.is_established, f"association with the node on port {port} failed"
    try:
        statuses = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status and "Status" in status else None)
        return statuses
    finally:
        assoc.release()


def wait_for(condition, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll until condition() is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class NodeProcess:
    """`bonescan node` in a subprocess (so a test can kill -9 it); log in STORE/../node-<n>.log."""

    def __init__(self, run: Path, store: Path, *args: str):
        self.run, self.store, self.args = run, store, list(args)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 60) -> int:
        self.starts += 1
        live = self.store / "node.json"
        live.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1"}
        self.log = self.store.parent / f"{self.store.name}-{self.starts}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bonescan", "node", "--run", str(self.run), "--store", str(self.store),
             "--port", "0", *self.args], stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), env=env)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if live.is_file():
                data = json.loads(live.read_text())
                return data["port"] if data["pid"] == self.proc.pid else None
            return None

        self.port = wait_for(ready, timeout, what="the node to listen")
        return self.port

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        return self.proc.wait(timeout=60)
