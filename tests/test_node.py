"""The DICOM node in this process: C-ECHO, studies in and results out, refusals at the door, bad data, allow-list,
a destination that is down, logs without patient names, status, TLS and dcmtk peers."""

from __future__ import annotations

import io
import json
import logging
import random
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import CT_IMAGE_STORAGE, SECONDARY_CAPTURE, nm_dataset, save
from nodekit import (
    NM, PATIENT_NAME, Destination, make_lesion_run, make_run, scu, send, split_views, study, wait_for,
)
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLossless

from bonescan.cli import main
from bonescan.node import Node, NodeConfig, NodeQueue, node_status
from bonescan.node.config import Destination as Dest
from bonescan.node.intake import (
    CANNOT_UNDERSTAND, DOES_NOT_MATCH_SOP_CLASS, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED, SUCCESS, Intake,
    accepted_sop_classes,
)

pytestmark = pytest.mark.usefixtures("one_thread")
ECHOSCU, STORESCU, OPENSSL = (shutil.which(name) for name in ("echoscu", "storescu", "openssl"))
SR = "1.2.840.10008.5.1.4.1.1.88.33"
SC = "1.2.840.10008.5.1.4.1.1.7"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("node_run") / "run")


@pytest.fixture(scope="module")
def pacs():
    destination = Destination().start()
    yield destination
    destination.stop()


@pytest.fixture(scope="module")
def node(run, pacs, tmp_path_factory):
    """A node forwarding to `pacs`, allowing CAMERA, ECHOSCU and STORESCU, reading lone views after 1.5 s."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the prediction thread of a tiny network: one core, and the other for the tests
    store = tmp_path_factory.mktemp("node") / "store"
    config = NodeConfig(run=run, store=store, port=0, forward=Dest.parse(pacs.address), allow=("CAMERA", "STORESCU",
                        "ECHOSCU"), complete_after=1.5, retry_base=0.2, retry_max=0.5, poll=0.05)
    node = Node(config)
    node.start()
    yield node
    node.stop()
    torch.set_num_threads(threads)


def states(node: Node) -> dict[str, str]:
    return dict(node.queue.query("SELECT study_uid, state FROM studies"))


def settled(node: Node, uids) -> bool:
    now = states(node)
    return all(now.get(uid) in ("done", "failed") for uid in uids)


def results_at(pacs: Destination, study_uid: str) -> dict[str, set[str]]:
    return pacs.by_study().get(study_uid, {})


def _numeric(sr, meaning: str) -> float:
    """The numeric value of the first SR content item whose concept name is `meaning`."""
    stack = list(sr.ContentSequence)
    while stack:
        item = stack.pop(0)
        names = item.get("ConceptNameCodeSequence") or []
        if names and names[0].CodeMeaning == meaning and "MeasuredValueSequence" in item:
            return float(item.MeasuredValueSequence[0].NumericValue)
        stack += list(item.get("ContentSequence") or [])
    raise AssertionError(f"no {meaning!r} in the SR")


def echo(port: int, ae_title: str = "CAMERA") -> int | None:
    assoc = scu(ae_title).associate("127.0.0.1", port, ae_title="BONESCAN")
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status)


def test_studies_in_results_out(node, pacs, caplog):
    caplog.set_level(logging.INFO, logger="bonescan.node")
    port = node.address[1]
    assert echo(port) == SUCCESS
    two_frame = [study(k) for k in range(3)]
    pair = study(10)
    assert send(port, two_frame) == [SUCCESS] * 3
    assert send(port, split_views(pair)) == [SUCCESS] * 2  # two single-view files of one study
    uids = [ds.StudyInstanceUID for ds in two_frame] + [pair.StudyInstanceUID]
    wait_for(lambda: all(len(results_at(pacs, uid)) == 2 for uid in uids), 60, what="results at the PACS")

    for uid in uids:
        got = results_at(pacs, uid)
        assert len(got[SR]) == 1 and len(got[SC]) == 1  # one SR and one SC per study
    # The SR that was sent holds the probability and decision the node recorded, in the source study.
    [(probability, decision, threshold)] = node.queue.query(
        "SELECT probability, decision, threshold FROM studies WHERE study_uid = ?", (uids[0],))
    [sr_path] = [Path(p) for (p,) in node.queue.query(
        "SELECT path FROM outbox WHERE study_uid = ? AND kind = 'sr'", (uids[0],))]
    sr = pydicom.dcmread(sr_path)
    assert sr.StudyInstanceUID == uids[0] and sr.SOPInstanceUID in results_at(pacs, uids[0])[SR]
    assert _numeric(sr, "Probability") == pytest.approx(probability, abs=1e-6)
    assert ("Present" if decision == "metastasis" else "Absent") in str(sr.ContentSequence)
    assert decision == ("metastasis" if probability >= threshold else "no metastasis")
    # Sending a study again is answered with success and makes no second result.
    assert send(port, two_frame[:1]) == [SUCCESS]
    time.sleep(0.5)
    assert len(results_at(pacs, uids[0])[SR]) == 1
    # Logs name studies by UID, never the patient.
    assert uids[0] in caplog.text and PATIENT_NAME not in caplog.text and "Doe" not in caplog.text


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the bad values sent on purpose
def test_refusals_at_the_door_keep_the_node_serving(node):
    port = node.address[1]
    ct_like = study(20, modality="CT")
    thyroid = study(21, rows=256, cols=256)
    three_frames = nm_dataset(np.stack([study(22).pixel_array[0]] * 3), view_codes=None)
    short = study(23)
    short.PixelData = short.PixelData[: len(short.PixelData) // 2]
    bad_uid = study(24)
    bad_uid.StudyInstanceUID = "../../etc"
    statuses = send(port, [ct_like, thyroid, three_frames, short, bad_uid])
    assert statuses == [DOES_NOT_MATCH_SOP_CLASS, DOES_NOT_MATCH_SOP_CLASS, DOES_NOT_MATCH_SOP_CLASS,
                        CANNOT_UNDERSTAND, CANNOT_UNDERSTAND]
    held = {uid for (uid,) in node.queue.query("SELECT study_uid FROM studies")}
    assert not held & {ds.StudyInstanceUID for ds in (ct_like, thyroid, three_frames, short)}
    assert not (node.paths.root / "etc").exists()

    # SOP classes the node does not serve are refused at negotiation: CT, and Secondary Capture unless configured.
    ae = scu()
    ae.add_requested_context(CT_IMAGE_STORAGE)
    ae.add_requested_context(SECONDARY_CAPTURE)
    assoc = ae.associate("127.0.0.1", port, ae_title="BONESCAN")
    accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
    assoc.release()
    assert NM in accepted and str(CT_IMAGE_STORAGE) not in accepted and str(SECONDARY_CAPTURE) not in accepted
    assert echo(port) == SUCCESS


def test_corrupt_pixel_data_and_a_lone_view_are_recorded_failed_with_the_reason(node, pacs):
    port = node.address[1]
    corrupt = study(30)
    corrupt.file_meta.TransferSyntaxUID = JPEGLossless
    corrupt.PixelData = encapsulate([b"\xff\xd8 not a jpeg stream " * 20, b"\xff\xd8 nor this " * 20])
    corrupt["PixelData"].VR = "OB"
    ae = scu()
    ae.add_requested_context(NM, [JPEGLossless])
    assoc = ae.associate("127.0.0.1", port, ae_title="BONESCAN")
    assert int(assoc.send_c_store(corrupt).Status) == SUCCESS  # its header is fine: the reading decides
    assoc.release()
    lone = split_views(study(31))
    assert send(port, lone[:1]) == [SUCCESS]
    uids = [corrupt.StudyInstanceUID, lone[0].StudyInstanceUID]
    wait_for(lambda: settled(node, uids), 30, what="both studies to be read")
    errors = dict(node.queue.query("SELECT study_uid, error FROM studies WHERE state = 'failed'"))
    assert "cannot be decoded" in errors[uids[0]]
    assert "only: anterior" in errors[uids[1]] and "after its last instance" in errors[uids[1]]
    assert not results_at(pacs, uids[0]) and not results_at(pacs, uids[1])
    status = node_status(node.paths.root)
    assert {e["study_uid"] for e in status["recent_errors"]} >= set(uids)
    # The missing view arrives late: the study is read again and its results go out.
    assert send(port, lone[1:]) == [SUCCESS]
    wait_for(lambda: len(results_at(pacs, uids[1])) == 2, 30, what="the completed study's results")


def _corrupt(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    kind = rng.randrange(4)
    if kind == 0:  # flip bytes anywhere
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:  # flip bytes in the header
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(128, 1200)] = rng.randrange(256)
    elif kind == 2:  # cut short
        del data[rng.randrange(132, len(data)):]
    else:  # a slice of junk inserted
        at = rng.randrange(132, len(data))
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the bad values sent on purpose
def test_randomly_corrupted_instances_never_crash_the_intake(tmp_path):
    queue = NodeQueue(tmp_path / "q.sqlite")
    intake = Intake(queue, tmp_path / "incoming", accepted_sop_classes(False))
    buffer = io.BytesIO()
    study(40).save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        verdict = intake.accept(_corrupt(raw, rng), "FUZZ")
        assert verdict.status in (SUCCESS, CANNOT_UNDERSTAND, DOES_NOT_MATCH_SOP_CLASS, SOP_CLASS_NOT_SUPPORTED)
        seen.add(verdict.status)
    assert SUCCESS in seen and CANNOT_UNDERSTAND in seen  # both kinds of outcome were exercised
    assert intake.accept(raw, "FUZZ").ok  # still takes a good instance (or knows it already)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the bad values sent on purpose
def test_corrupted_copies_over_the_network_are_answered_and_every_accepted_one_is_settled(node):
    port = node.address[1]
    rng = np.random.default_rng(1)
    sent = []
    for k in range(16):
        ds = study(50 + k)
        kind = k % 4
        if kind == 0:
            pixels = bytearray(ds.PixelData)
            for at in rng.integers(0, len(pixels), 200):
                pixels[at] = int(rng.integers(0, 256))
            ds.PixelData = bytes(pixels)
        elif kind == 1:
            ds.Rows = int(rng.choice([0, 1, 255, 300, 4096]))
        elif kind == 2:
            for keyword in rng.choice(["DetectorVector", "PixelSpacing", "Modality", "NumberOfFrames"], 2):
                if keyword in ds:
                    delattr(ds, keyword)
        else:
            ds.PixelData = np.zeros(len(ds.PixelData) // 2, np.uint16).tobytes()  # all-zero counts
        sent.append(ds)
    statuses = send(port, sent)
    assert all(s is not None for s in statuses) and SUCCESS in statuses
    accepted = [ds.StudyInstanceUID for ds, s in zip(sent, statuses) if s == SUCCESS]
    wait_for(lambda: settled(node, accepted), 60, what="every accepted study to be read or failed")
    assert echo(port) == SUCCESS


def test_calling_ae_titles_outside_the_allow_list_are_rejected(node):
    assoc = scu("INTRUDER").associate("127.0.0.1", node.address[1], ae_title="BONESCAN")
    assert assoc.is_rejected
    assoc = scu("CAMERA").associate("127.0.0.1", node.address[1], ae_title="SOMEONE")  # wrong called AE title
    assert assoc.is_rejected


def test_results_wait_while_the_destination_is_down_and_arrive_when_it_is_back(node, pacs):
    port = pacs.port
    pacs.stop()
    ds = study(60)
    assert send(node.address[1], [ds]) == [SUCCESS]
    uid = ds.StudyInstanceUID
    wait_for(lambda: node.queue.query("SELECT 1 FROM outbox WHERE study_uid = ? AND attempts >= 2", (uid,)), 30,
             what="failed send attempts")
    status = node_status(node.paths.root)
    assert status["results"]["pending"] >= 1 and "no association" in status["sending"]["last_error"]
    pacs.port = port
    pacs.start()
    wait_for(lambda: len(results_at(pacs, uid)) == 2, 30, what="results after the destination came back")


def test_status_command_prints_the_queue(node, capsys):
    assert main(["node", "status", "--store", str(node.paths.root)]) == 0
    out = capsys.readouterr().out
    assert "running" in out and "studies:" in out and "done" in out and "latency" in out
    assert main(["node", "status", "--store", str(node.paths.root / "nothing")]) == 2


def test_a_second_node_on_the_same_store_is_refused(node, run, capsys):
    code = main(["node", "--run", str(run), "--store", str(node.paths.root), "--port", "0"])
    assert code == 2 and "another node is running" in capsys.readouterr().err
    assert main(["node", "--run", str(run), "--store", str(node.paths.root), "--forward", "PACS@nowhere"]) == 2


@pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed (makes the throwaway certificate)")
def test_tls_associations_in_and_out(run, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(cert), str(key))
    pacs = Destination(tls=server).start()  # the PACS speaks TLS only
    node = Node(NodeConfig(run=run, store=tmp_path / "store", port=0, tls_cert=cert, tls_key=key,
                           forward=Dest.parse(pacs.address), forward_tls_ca=cert, poll=0.05))
    port = node.start()[1]
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ds = study(70)
        assert send(port, [ds], tls_args=(client, "localhost")) == [SUCCESS]
        wait_for(lambda: len(results_at(pacs, ds.StudyInstanceUID)) == 2, 30, what="results of the TLS study")
        plain = scu().associate("127.0.0.1", port, ae_title="BONESCAN")  # no TLS: no association
        assert not plain.is_established
    finally:
        node.stop()
        pacs.stop()


@pytest.mark.skipif(ECHOSCU is None or STORESCU is None, reason="dcmtk (echoscu, storescu) not installed; "
                                                                "apt-get install dcmtk")
def test_dcmtk_echoscu_and_storescu(node, pacs, tmp_path):
    port = str(node.address[1])
    echo_ok = subprocess.run([ECHOSCU, "-aet", "ECHOSCU", "-aec", "BONESCAN", "127.0.0.1", port],
                             capture_output=True, text=True, timeout=30)
    assert echo_ok.returncode == 0, echo_ok.stderr
    refused = subprocess.run([ECHOSCU, "-aet", "INTRUDER", "-aec", "BONESCAN", "127.0.0.1", port],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "Rejected" in refused.stdout + refused.stderr
    files = [save(study(80 + k), tmp_path / f"s{k}.dcm") for k in range(3)]
    stored = subprocess.run([STORESCU, "-aet", "STORESCU", "-aec", "BONESCAN", "127.0.0.1", port,
                             *map(str, files)], capture_output=True, text=True, timeout=60)
    assert stored.returncode == 0, stored.stderr
    uids = [pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in files]
    wait_for(lambda: all(len(results_at(pacs, uid)) == 2 for uid in uids), 60, what="results of dcmtk's studies")


def test_secondary_capture_is_accepted_only_when_configured_and_only_as_nm(tmp_path):
    def encoded(ds) -> bytes:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    nm_export = study(90, sop_class=SECONDARY_CAPTURE)
    other = study(91, sop_class=SECONDARY_CAPTURE, modality="OT")
    strict = Intake(NodeQueue(tmp_path / "a.sqlite"), tmp_path / "a", accepted_sop_classes(False))
    assert strict.accept(encoded(nm_export)).status == SOP_CLASS_NOT_SUPPORTED
    lenient = Intake(NodeQueue(tmp_path / "b.sqlite"), tmp_path / "b", accepted_sop_classes(True))
    assert lenient.accept(encoded(nm_export)).ok
    assert lenient.accept(encoded(other)).status == DOES_NOT_MATCH_SOP_CLASS


def test_an_instance_that_would_eat_the_reserve_is_refused_as_out_of_resources_and_taken_when_there_is_room(
        tmp_path, monkeypatch):
    from collections import namedtuple

    import bonescan.node.intake as intake_module
    from bonescan.errors import ConfigError

    buffer = io.BytesIO()
    study(96).save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    usage = namedtuple("usage", "total used free")
    free = {"bytes": 500_000_000 + len(raw) - 1}  # the instance would leave one byte under the reserve
    monkeypatch.setattr(intake_module.shutil, "disk_usage", lambda path: usage(10 ** 12, 0, free["bytes"]))
    queue = NodeQueue(tmp_path / "q.sqlite")
    intake = Intake(queue, tmp_path / "incoming", accepted_sop_classes(False), reserve_bytes=500_000_000)
    verdict = intake.accept(raw, "CAM")
    assert (verdict.status, verdict.reason) == (OUT_OF_RESOURCES, "store's disk nearly full; send again later")
    assert not queue.has_instance(verdict.sop_uid) and not (tmp_path / "incoming").exists()
    free["bytes"] += 1  # the sender's next try finds room
    assert intake.accept(raw, "CAM").ok and queue.has_instance(verdict.sop_uid)
    with pytest.raises(ConfigError, match="--reserve-mb"):
        NodeConfig(run=tmp_path, store=tmp_path / "store", reserve_mb=-1)


def test_instance_files_written_before_a_crash_are_queued_at_start_up(tmp_path):
    """A kill between the rename and the queue commit leaves a file without a row: start-up queues it."""
    incoming = tmp_path / "incoming"
    ds = study(95)
    folder = incoming / ds.StudyInstanceUID
    folder.mkdir(parents=True)
    kept = save(ds, folder / f"{ds.SOPInstanceUID}.dcm")
    half = folder / f".{kept.name}.abc.tmp"  # a write cut short
    half.write_bytes(kept.read_bytes()[:500])
    damaged = incoming / "1.2.3" / "1.2.3.4.dcm"
    damaged.parent.mkdir()
    damaged.write_bytes(b"not DICOM")
    queue = NodeQueue(tmp_path / "q.sqlite")
    intake = Intake(queue, incoming, accepted_sop_classes(False))
    assert intake.recover_files() == 1
    assert queue.has_instance(ds.SOPInstanceUID) and not half.exists()
    assert not damaged.exists() and (damaged.parent / ".1.2.3.4.dcm.rejected").exists()
    assert intake.recover_files() == 0  # idempotent
    [work] = queue.claim_ready(30, 8)
    assert work.study_uid == ds.StudyInstanceUID


def test_the_warm_up_study_leaves_nothing_behind_and_clears_what_a_kill_left(run, tmp_path, monkeypatch):
    import tempfile

    from bonescan.node.worker import Predictor

    system_temp = tmp_path / "system-temp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    results = tmp_path / "results"
    (results / ".warm-up").mkdir(parents=True)
    (results / ".warm-up" / "warmup.dcm").write_bytes(b"left by a node killed while warming up")
    predictor = Predictor(run, results)
    assert predictor.warm_up() > 0
    assert list(results.iterdir()) == [] and list(system_temp.iterdir()) == []


def test_a_warm_up_on_a_full_disk_blames_the_disk_not_the_run(run, tmp_path, monkeypatch):
    import errno
    from types import SimpleNamespace

    import bonescan.dicom_out as dicom_out
    from bonescan.errors import OutputError
    from bonescan.node.worker import Predictor

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    predictor = Predictor(run, tmp_path / "results")
    monkeypatch.setattr(dicom_out, "build_structured_report", lambda *a, **k: SimpleNamespace(save_as=disk_full))
    with pytest.raises(OutputError, match=r"warm-up study's results cannot be written: writing results: .*_report_sr"
                                          r"\.dcm: cannot be written: No space left on device$"):
        predictor.warm_up()


def test_a_node_with_a_lesion_run_sends_the_bsi_in_the_sr_and_a_segmentation_per_view(run, pacs, tmp_path):
    from bonescan.errors import ConfigError

    with pytest.raises(ConfigError, match="--lesions"):
        NodeConfig(run=run, store=tmp_path / "nowhere", lesions=tmp_path / "no-such-run")
    lesions = make_lesion_run(tmp_path / "lesion-run")
    store = tmp_path / "store"
    node = Node(NodeConfig(run=run, store=store, port=0, forward=Dest.parse(pacs.address), lesions=lesions,
                           poll=0.05))
    port = node.start()[1]
    try:
        sent = [study(90), study(91)]
        assert send(port, sent) == [SUCCESS, SUCCESS]
        uids = [ds.StudyInstanceUID for ds in sent]
        wait_for(lambda: all(sum(map(len, results_at(pacs, uid).values())) == 5 for uid in uids), 60,
                 what="two SCs, the SR and two SEGs")
        for ds in sent:
            got = results_at(pacs, ds.StudyInstanceUID)
            assert len(got[SR]) == 1 and len(got[SEG]) == 2  # one Segmentation per view
            assert len(got[SC]) == 2  # the heat map, and the numbered hotspots for viewers without SEG
            [(sr_path,)] = node.queue.query("SELECT path FROM outbox WHERE study_uid = ? AND kind = 'sr'",
                                            (ds.StudyInstanceUID,))
            record = json.loads(next((store / "results" / "lesions").glob(f"*{ds.StudyInstanceUID}*.json"))
                                .read_text())
            assert _numeric(pydicom.dcmread(sr_path), "Bone Scan Index") == pytest.approx(record["bsi"], abs=1e-3)
            for seg_path in (p for (p,) in node.queue.query("SELECT path FROM outbox WHERE study_uid = ? AND "
                                                            "kind = 'seg'", (ds.StudyInstanceUID,))):
                seg = pydicom.dcmread(seg_path)
                assert seg.SOPInstanceUID in got[SEG] and seg.StudyInstanceUID == ds.StudyInstanceUID
        assert json.loads((store / "node.json").read_text())["lesions"] == str(lesions)
        assert node.worker.predictor.lesion_step.outputs.rows == []  # a node keeps no table that grows
        assert not (store / "results" / "hotspots.csv").exists()
        assert not (store / "results" / ".warm-up").exists()
    finally:
        node.stop()


def test_a_node_with_followup_compares_a_patients_new_study_with_the_prior_and_sends_the_followup_sr(
        run, pacs, tmp_path):
    import json

    from bonescan.errors import ConfigError

    with pytest.raises(ConfigError, match="--followup"):
        NodeConfig(run=run, store=tmp_path / "nowhere", followup=True)
    with pytest.raises(ConfigError, match="--judge.*needs --followup"):
        NodeConfig(run=run, store=tmp_path / "nowhere", lesions=run, judge=tmp_path / "judge.skops")
    with pytest.raises(ConfigError, match="--judge.*no such file"):
        NodeConfig(run=run, store=tmp_path / "nowhere", lesions=run, followup=True, judge=tmp_path / "judge.skops")
    store = tmp_path / "store"
    node = Node(NodeConfig(run=run, store=store, port=0, forward=Dest.parse(pacs.address),
                           lesions=make_lesion_run(tmp_path / "lesion-run"), followup=True, poll=0.05))
    port = node.start()[1]
    try:
        first = study(100, text={"PatientID": "FU-1", "StudyDate": "20260105"})
        other = study(101, text={"PatientID": "FU-2", "StudyDate": "20260301"})
        undated = study(103, text={"PatientID": "FU-1", "StudyDate": ""})
        assert send(port, [first, other, undated]) == [SUCCESS] * 3
        earlier = [ds.StudyInstanceUID for ds in (first, other, undated)]
        wait_for(lambda: all(SR in results_at(pacs, uid) for uid in earlier), 60, what="the first studies' SRs")
        later = study(102, text={"PatientID": "FU-1", "StudyDate": "20260402"})
        assert send(port, [later]) == [SUCCESS]
        uid = later.StudyInstanceUID
        wait_for(lambda: len(results_at(pacs, uid).get(SR, ())) == 2, 90, what="the report and the follow-up SR")
        # Only the later study of a patient with an earlier dated one is compared; its visits side by side come too.
        assert [len(results_at(pacs, u)[SR]) for u in earlier] == [1, 1, 1]
        wait_for(lambda: len(results_at(pacs, uid).get(SC, ())) == 3, 30, what="heat map, hotspots and follow-up SCs")
        [(capture_path,)] = node.queue.query("SELECT path FROM outbox WHERE study_uid = ? AND kind = 'followup-sc'",
                                             (uid,))
        capture = pydicom.dcmread(capture_path)
        assert capture.SeriesNumber == 9906 and capture.StudyInstanceUID == uid
        [(path,)] = node.queue.query("SELECT path FROM outbox WHERE study_uid = ? AND kind = 'followup'", (uid,))
        followup_sr = pydicom.dcmread(path)
        assert followup_sr.StudyInstanceUID == uid and followup_sr.SOPInstanceUID in results_at(pacs, uid)[SR]
        referenced = {item.StudyInstanceUID for seq in ("CurrentRequestedProcedureEvidenceSequence",
                                                        "PertinentOtherEvidenceSequence")
                      for item in followup_sr.get(seq, [])}
        assert referenced == {first.StudyInstanceUID, uid}
        evidence = {item.ReferencedSOPInstanceUID for series in followup_sr.CurrentRequestedProcedureEvidenceSequence
                    for s in series.ReferencedSeriesSequence for item in s.ReferencedSOPSequence}
        assert capture.SOPInstanceUID in evidence and followup_sr.SeriesNumber == 9905
        dciodvfy = shutil.which("dciodvfy")
        if dciodvfy:  # these studies carry no birth date or sex: the SR holds them empty (Type 2)
            check = subprocess.run([dciodvfy, "-new", path], capture_output=True, text=True, timeout=60)
            assert [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")] == []
        record = json.loads((Path(path).parent / "followup.json").read_text())
        assert [v["study_uid"] for v in record["visits"]] == [first.StudyInstanceUID, uid]
        assert record["verdict"]["status"] == "no progression"  # this network finds no hotspots
        # A prior that arrives after the later study (fetched from PACS once it came in): compared with its own
        # prior at once, and the later study is compared again with it, its follow-up SR sent too.
        between = study(104, text={"PatientID": "FU-1", "StudyDate": "20260301"})
        assert send(port, [between]) == [SUCCESS]
        wait_for(lambda: len(results_at(pacs, uid).get(SR, ())) == 3, 90, what="the later study's second follow-up")
        wait_for(lambda: len(results_at(pacs, between.StudyInstanceUID).get(SR, ())) == 2, 30,
                 what="the report and follow-up SR of the study in between")
        compared = sorted(json.loads(p.read_text())["visits"][0]["study_uid"]
                          for p in (store / "results" / "followup").glob(f"{uid}/*/followup.json"))
        assert compared == sorted([first.StudyInstanceUID, between.StudyInstanceUID])
        assert node.queue.stale_comparisons() == []
    finally:
        node.stop()


def test_the_predictor_keeps_each_studys_lesions_for_its_followup_comparison(run, tmp_path):
    from bonescan.node.queue import Instance, StudyWork
    from bonescan.node.worker import Predictor

    predictor = Predictor(run, tmp_path / "results", lesions=make_lesion_run(tmp_path / "lesion-run"))
    works = [StudyWork(ds.StudyInstanceUID, (Instance(f"{k}", save(ds, tmp_path / f"{k}.dcm"), 2),), False)
             for k, ds in enumerate([study(120), study(121)])]
    outcomes = predictor.predict(works)
    assert [o.status for o in outcomes] == ["ok", "ok"]
    assert set(predictor.lesions) == {w.study_uid for w in works}
    # each study's own lesions, those its files were written from (this network marks no hotspots: its regions)
    written = [np.load(Path(outcome.lesions).with_suffix(".npz"))["regions"] for outcome in outcomes]
    assert not np.array_equal(*written)
    for work, regions in zip(works, written):
        assert np.array_equal(predictor.lesions[work.study_uid].regions, regions)
    predictor.predict(works[:1])
    assert set(predictor.lesions) == {works[0].study_uid}  # the last batch's only


def test_a_prior_sent_as_two_view_files_in_either_order_is_read_by_its_views(tmp_path):
    from bonescan.followup import load_visit
    from bonescan.node.followup import patient_study, visit_source

    anterior, posterior = (save(ds, tmp_path / f"{name}.dcm")
                           for ds, name in zip(split_views(study(110)), ("ant", "post")))
    prior = patient_study([posterior, anterior])  # the posterior arrived first
    assert prior is not None and (prior.patient_id, prior.study_date) == ("P001", "20190315")
    visit = load_visit(visit_source(prior), "baseline")
    assert np.array_equal(visit.study.anterior, pydicom.dcmread(anterior).pixel_array)
    assert np.array_equal(visit.study.posterior, pydicom.dcmread(posterior).pixel_array)
    undated = study(111, text={"StudyDate": ""})
    assert patient_study([save(undated, tmp_path / "undated.dcm")]) is None  # nothing to order it by


def test_a_node_with_keep_days_removes_studies_once_read_and_sent(run, pacs, tmp_path, capsys):
    store = tmp_path / "store"
    # a tenth of a second: a study goes at the first pass after its results reached the destination
    node = Node(NodeConfig(run=run, store=store, port=0, forward=Dest.parse(pacs.address), poll=0.05,
                           keep_days=0.1 / 86400, retention_interval=0.2))
    port = node.start()[1]
    try:
        sent = [study(95), study(96)]
        assert send(port, sent) == [SUCCESS, SUCCESS]
        uids = [ds.StudyInstanceUID for ds in sent]
        wait_for(lambda: all(states(node).get(uid) == "removed" for uid in uids), 60, what="both studies removed")
        for uid in uids:
            assert len(results_at(pacs, uid)[SR]) == 1  # sent before it was removed
        assert [p for p in store.rglob("*.dcm")] == []
        assert node.queue.query("SELECT COUNT(*) FROM instances") == [(0,)]
        assert node_status(store)["studies"]["removed"] == 2
        assert main(["node", "status", "--store", str(store)]) == 0
        assert f"removing studies {0.1 / 86400:g} days after they were read" in capsys.readouterr().out
        # sent again after its removal: read again
        assert send(port, sent[:1]) == [SUCCESS]
        wait_for(lambda: len(results_at(pacs, uids[0])[SR]) == 2, 60, what="the study read again")
        assert json.loads((store / "node.json").read_text())["keep_days"] == pytest.approx(0.1 / 86400)
    finally:
        node.stop()
