"""`bonescan bench node`: studies per minute and per-study latency through a real node, with kill -9 restarts.

The node runs as `bonescan node` in a subprocess, exactly as deployed; this process plays the cameras (one
pynetdicom SCU per association, each resending from its first unacknowledged study after a lost association)
and the PACS (a storage SCP recording when each result arrives). Latency of a study: from the moment its
camera starts sending it (the node's first byte, on loopback) to the arrival of its last result at the PACS.
Studies per minute: studies completed over the time from the first byte sent to the last result stored.
`--kills N` kills the node with SIGKILL N times while it works (evenly over the run) and restarts it; the
figures then include the restarts, and the report counts lost and duplicated results. `--lesions RUN` runs the
node with a lesion run: a study's latency then ends with the last of its SC, SR and Segmentations. `--followup`
adds the node's follow-up: the studies are the visits of followed patients (`bonescan synth --follow-up`), sent in
date order, and a later visit's latency ends with its follow-up SR and side-by-side SC; first and later visits are
reported apart; `--change-net FILE` has the node's follow-up judge new lesions with the change network too.
A study is one file or two (a camera that writes one file per view, as `--site mixed` cohorts hold):
its files go over one association one after the other, and its latency starts with the first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from .config import StorePaths
from .followup import FOLLOWUP_DIR, latest_comparison
from .status import median_p95

SR = "1.2.840.10008.5.1.4.1.1.88.33"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SC = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class NodeBenchmark:
    cases: int
    associations: int
    completed: int
    lost: int
    duplicated: int  # studies with more results of a kind than they make (one SR; one SC, or two with lesions)
    resent: int  # results received again with the same SOP Instance UID (after a kill)
    kills: int
    seconds: float
    latencies: list[float]
    model_seconds: float  # the network alone on one study (forward pass, same threads)
    weights: str
    threads: int
    rate: float
    batch_size: int
    segmentations: int | None = None  # distinct Segmentations at the destination (with a lesion run)
    # with --followup: latencies of the later visits (compared with a prior) and of the first visits, and the
    # follow-up SRs received
    followup_latencies: list[float] | None = None
    followup_reports: int | None = None
    first_visit_latencies: list[float] | None = None
    change_network_records: int | None = None  # later visits whose stored comparison holds the change network's areas

    def lines(self) -> list[str]:
        median, p95 = _median_p95(self.latencies)
        pace = f"{self.rate:g} studies/s offered" if self.rate > 0 else "as fast as the cameras can send"
        return [
            f"node: {self.cases} studies over {self.associations} associations ({pace}), {self.kills} kill -9 "
            f"restarts; {self.weights}; torch threads {self.threads}, batch size {self.batch_size}",
            f"results at the destination: {self.completed} studies, lost {self.lost}, duplicated {self.duplicated} "
            f"(same-UID resends absorbed: {self.resent})"
            + (f"; {self.segmentations} Segmentations" if self.segmentations is not None else ""),
            f"throughput: {60 * self.completed / self.seconds:.1f} studies/min ({self.seconds:.1f} s from first byte "
            "to last result)",
            f"latency first byte -> result stored at the destination: median {median:.2f} s, p95 {p95:.2f} s",
            f"model alone: {self.model_seconds:.3f} s per study; median latency above it: "
            f"{median - self.model_seconds:.2f} s",
        ] + self._followup_lines()

    def _followup_lines(self) -> list[str]:
        if self.followup_latencies is None:
            return []
        later, first = self.followup_latencies, self.first_visit_latencies or []
        (median, p95), (first_median, first_p95) = _median_p95(later), _median_p95(first)
        lines = [f"follow-up: {self.followup_reports} follow-up SRs for {len(later)} later visits; latency of a later "
                 f"visit (to its follow-up SR and SC) median {median:.2f} s, p95 {p95:.2f} s; of a first visit median "
                 f"{first_median:.2f} s, p95 {first_p95:.2f} s"]
        if self.change_network_records is not None:
            lines.append(f"change network: judged {self.change_network_records} of {len(later)} later visits")
        return lines


def _median_p95(values: list[float]) -> tuple[float, float]:
    return median_p95(values) or (float("nan"), float("nan"))


def _studies_judged_by_change_network(folder: Path) -> int:
    """Later visits whose latest stored comparison (followup/<study>/*/followup.json) holds the change network's
    result: proof that the node ran the network it was given, not only the rules."""
    return sum((latest_comparison(study) or {}).get("change_network") is not None for study in folder.glob("*"))


def untrained_run(folder: Path, preset: str, seed: int = 0) -> str:
    """A RUN folder holding an untrained (seeded) network of `preset`: speed does not depend on the weights."""
    import torch

    from ..model import MultiViewNet
    from ..presets import preset_config
    from ..train import CHECKPOINT_FORMAT, RunPaths

    config = preset_config(preset)
    torch.manual_seed(seed)
    paths = RunPaths(folder)
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "kind": "best", "config": config.to_dict(), "epoch": 0, "val_auc": None,
                "model": MultiViewNet(config.model).state_dict()}, paths.best)
    return f"untrained {preset} network (seed {seed})"


def model_seconds_per_study(run: Path, repeats: int = 5) -> float:
    """Median seconds of the network's forward pass on one study (the node reads studies as they come)."""
    import torch

    from ..inference import load_run
    from .worker import build_engine

    loaded = load_run(run)
    engine = build_engine(loaded.model, "cpu", 1)
    batch = torch.rand(1, 2, loaded.preprocess_cfg.height, loaded.preprocess_cfg.width)
    engine.probabilities(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.probabilities(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class _Pacs:
    """The destination: records (study, SOP instance, class, arrival time) of every result."""

    def __init__(self):
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage, SegmentationStorage

        self.received: list[tuple[str, str, str, float]] = []
        self._lock = threading.Lock()
        ae = AE(ae_title="BENCHPACS")
        for context in (SecondaryCaptureImageStorage, ComprehensiveSRStorage, SegmentationStorage):
            ae.add_supported_context(context, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.maximum_pdu_size = 0

        def on_store(event):
            ds = event.dataset
            with self._lock:
                self.received.append((str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                                      time.time()))
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        self.address = f"BENCHPACS@127.0.0.1:{self.server.server_address[1]}"

    def table(self) -> dict[str, dict[str, dict[str, float]]]:
        """study -> SOP class -> SOP instance -> first arrival time."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        with self._lock:
            for study, sop, sop_class, at in self.received:
                out.setdefault(study, {}).setdefault(sop_class, {}).setdefault(sop, at)
        return out


Study = tuple[Path, ...]  # the files of one study: one, or one per view


def study_name(study: Study) -> str:
    return study[0].name


class _Camera(threading.Thread):
    def __init__(self, index: int, files: list[Study], port: dict, starts: dict, pace: float, offset: float):
        super().__init__(daemon=True, name=f"camera{index}")
        self.index, self.files, self.port, self.starts, self.pace = index, files, port, starts, pace
        self.offset = offset
        self.acknowledged = 0

    def run(self) -> None:
        from pynetdicom import AE

        ae = AE(ae_title=f"BENCH{self.index}")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.20", ["1.2.840.10008.1.2.1"])
        deadline = time.monotonic() + 3600
        begin = time.time()
        while self.acknowledged < len(self.files) and time.monotonic() < deadline:
            assoc = ae.associate("127.0.0.1", self.port["port"], ae_title="BONESCAN")
            if not assoc.is_established:
                time.sleep(0.2)
                continue
            try:
                while self.acknowledged < len(self.files):
                    if self.pace > 0:  # offered load: cameras staggered, study k due at begin + (k + offset) / pace
                        due = begin + (self.acknowledged + self.offset) / self.pace
                        time.sleep(max(0.0, due - time.time()))
                    study = self.files[self.acknowledged]
                    if not assoc.is_established:  # the node went away while this camera waited
                        break
                    self.starts.setdefault(study_name(study), time.time())
                    if not all(self._store(assoc, path) for path in study):  # a lost study is sent again whole
                        break
                    self.acknowledged += 1
            finally:
                if assoc.is_established:
                    assoc.release()

    @staticmethod
    def _store(assoc, path: Path) -> bool:
        try:
            status = assoc.send_c_store(path)
        except RuntimeError:  # aborted between the check and the send
            return False
        return bool(status) and status.Status == 0x0000


def _study_files(data: Path, cases: int, seed: int, say: Callable[[str], None]) -> list[Study]:
    studies = data / "studies"
    have = len(list(studies.glob("*.dcm"))) if studies.is_dir() else 0
    if have < cases:
        from ..synth import generate_cohort

        say(f"generating {cases - have} synthetic studies in {data}")
        generate_cohort(data, cases, seed=seed, difficulty="paper", workers=1)
    return [(path,) for path in sorted(studies.glob("*.dcm"))[:cases]]


def _followup_files(data: Path, cases: int, seed: int, say: Callable[[str], None]) -> tuple[list[Study], set[str]]:
    """The visits of the first followed patients that make at least `cases` studies (whole patients), in date
    order, and the names (`study_name`) of the later visits (each has its prior among them)."""
    import pandas as pd
    import pydicom

    from ..synth.followup import generate_followup_cohort

    manifest = data / "manifest.csv"
    if not manifest.is_file() or len(pd.read_csv(manifest)) < cases:
        patients = (cases + 1) // 2  # 2-3 visits each
        say(f"generating {patients} followed patients in {data}")
        generate_followup_cohort(data, patients, seed=seed)
    df = pd.read_csv(manifest)
    if "timepoint" not in df or "patient_id" not in df:
        raise ConfigError(manifest, "bench node --followup needs a follow-up cohort (bonescan synth --follow-up): "
                                    "no patient_id and timepoint columns")
    taken = []
    for _, visits in df.groupby("patient_id", sort=True):
        if len(taken) >= cases:
            break
        taken += [row for _, row in visits.sort_values("timepoint").iterrows()]

    def files(row) -> Study:
        path = row.get("path")
        return (data / path,) if isinstance(path, str) and path else (data / row["anterior"], data / row["posterior"])

    def study_date(row) -> str:
        return str(pydicom.dcmread(files(row)[0], stop_before_pixels=True, specific_tags=["StudyDate"]).StudyDate)

    taken.sort(key=lambda row: (study_date(row), study_name(files(row))))
    return [files(row) for row in taken], {study_name(files(row)) for row in taken if row["timepoint"] > 0}


def benchmark_node(cases: int = 400, associations: int = 4, run: str | Path | None = None, preset: str = "cpu-small",
                   kills: int = 0, rate: float = 0.0, data: str | Path | None = None, seed: int = 0,
                   threads: int | None = None, batch_size: int = 1, lesions: str | Path | None = None,
                   followup: bool = False, change_net: str | Path | None = None, join: str = "either",
                   judge: str | Path | None = None, progress: Callable[[str], None] | None = None) -> NodeBenchmark:
    """Send `cases` synthetic studies over `associations` to a node subprocess and time results at a PACS."""
    if cases < 1 or associations < 1 or kills < 0 or rate < 0:
        raise ConfigError("bench node", "cases and associations must be >= 1, kills and rate >= 0")
    if followup and lesions is None:
        raise ConfigError("bench node", "--followup needs --lesions RUN (the follow-up compares the lesions)")
    say = progress or (lambda message: None)
    for option, given in (("--change-net", change_net), ("--judge", judge)):
        if given is not None and not followup:
            raise ConfigError("bench node", f"{option} judges follow-up comparisons: it needs --followup")
    if followup:  # refused here, not after the studies are made
        from ..followup.joins import check_join
        from .followup import load_followup_models

        check_join(join)
        load_followup_models(change_net, judge, join, lambda message: say(f"warning: {message}"))
    work = Path(tempfile.mkdtemp(prefix="bonescan-bench-node-"))
    node = None
    try:
        if run is None:
            run = work / "run"
            weights = untrained_run(run, preset, seed)
        else:
            weights = f"trained, from {run}"
        if lesions is not None:
            weights += f"; lesion run {lesions}"
        if change_net is not None:
            weights += f"; change network {change_net} (join {join})"
        if judge is not None:
            weights += f"; new-lesion judge {judge}"
        later: set[str] = set()
        if followup:
            studies, later = _followup_files(Path(data) if data else work / "data", cases, seed, say)
            cases = len(studies)
        else:
            studies = _study_files(Path(data) if data else work / "data", cases, seed, say)
        import torch

        if threads:
            torch.set_num_threads(threads)
        threads = torch.get_num_threads()
        say("timing the network alone")
        model_s = model_seconds_per_study(Path(run))
        pacs = _Pacs()
        store = work / "store"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                           os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "bonescan", "node", "--run", str(run), "--store", str(store), "--port", "0",
                   "--forward", pacs.address, "--quiet", "--batch-size", str(batch_size)]
        if lesions is not None:
            command += ["--lesions", str(lesions)]
        if followup:
            command += ["--followup"]
        if change_net is not None:
            command += ["--change-net", str(change_net), "--join", join]
        if judge is not None:
            command += ["--judge", str(judge)]

        def start() -> tuple[subprocess.Popen, int]:
            (store / "node.json").unlink(missing_ok=True)
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                    stderr=open(work / "node.log", "a"))
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise ConfigError("bench node", f"the node exited: {(work / 'node.log').read_text()[-800:]}")
                live = store / "node.json"
                if live.is_file():
                    info = json.loads(live.read_text())
                    if info["pid"] == proc.pid:
                        return proc, info["port"]
                time.sleep(0.1)
            raise ConfigError("bench node", "the node did not start within 300 s")

        say("starting the node")
        node, port = start()
        port_box = {"port": port}
        starts: dict[str, float] = {}
        shares = [studies[a::associations] for a in range(associations)]
        cameras = [_Camera(a, share, port_box, starts, rate / associations, a / associations)
                   for a, share in enumerate(shares)]
        for camera in cameras:
            camera.start()
        say(f"sending {cases} studies over {associations} associations")

        def results_done() -> int:
            return sum(1 for classes in pacs.table().values() if SR in classes)

        for k in range(kills):
            target = (k + 1) * cases // (kills + 1)
            deadline = time.monotonic() + 1800
            while results_done() < target and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(node.pid, signal.SIGKILL)
            node.wait()
            say(f"kill -9 after {results_done()} studies; restarting")
            node, port_box["port"] = start()
        for camera in cameras:
            camera.join()
        deadline = time.monotonic() + 600
        while results_done() < cases and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # late duplicates, if any, arrive now
        table = pacs.table()
        uid_of = {}
        import pydicom

        for study in studies:
            uid_of[study_name(study)] = str(pydicom.dcmread(study[0], stop_before_pixels=True,
                                                            specific_tags=["StudyInstanceUID"]).StudyInstanceUID)
        latencies, followup_latencies, first_latencies, lost, duplicated = [], [], [], 0, 0
        for name, uid in uid_of.items():
            # with a lesion run: a Segmentation per view, and the numbered hotspots beside the heat map; a later
            # visit: its follow-up SR and the visits side by side (an SC) too
            expected = {SEG: 2, SC: 2} if lesions else {}
            if name in later:
                expected = {SEG: 2, SC: 3, SR: 2}
            classes = table.get(uid)
            if not classes or len(classes.get(SR, ())) < expected.get(SR, 1):
                lost += 1
                continue
            duplicated += any(len(sops) > expected.get(sop_class, 1) for sop_class, sops in classes.items())
            # when the last result it makes arrived: of each kind, the copy it makes last (or the last that came)
            latency = max(sorted(sops.values())[:expected.get(sop_class, 1)][-1]
                          for sop_class, sops in classes.items()) - starts[name]
            latencies.append(latency)
            (followup_latencies if name in later else first_latencies).append(latency)
        arrivals = [at for classes in table.values() for sops in classes.values() for at in sops.values()]
        seconds = (max(arrivals) - min(starts.values())) if arrivals else float("nan")
        resent = len(pacs.received) - sum(len(s) for c in table.values() for s in c.values())
        pacs.server.shutdown()
        segmentations = sum(len(classes.get(SEG, ())) for classes in table.values()) if lesions else None
        reports = sum(len(table.get(uid_of[name], {}).get(SR, ())) - 1 for name in later) if followup else None
        judged = (_studies_judged_by_change_network(StorePaths(store).results / FOLLOWUP_DIR)
                  if change_net is not None else None)
        return NodeBenchmark(cases, associations, len(latencies), lost, duplicated, resent, kills, seconds,
                             latencies, model_s, weights, threads, rate, batch_size, segmentations,
                             followup_latencies if followup else None, reports,
                             first_latencies if followup else None, judged)
    finally:
        if node is not None and node.poll() is None:
            node.terminate()
            node.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["NodeBenchmark", "benchmark_node"]
