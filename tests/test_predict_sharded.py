"""`bonescan predict` under torchrun: each study on exactly one rank, one merged output equal to a one-process run."""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

import bonescan
from bonescan.cli.ranks import leave_unless_rank_0
from bonescan.io import StudySource
from bonescan.predict import OperatingPoint, PredictionReport, StudyOutcome
from bonescan.predict_sharded import ShardError, join_predict_job, merge_outcomes, shard_sources


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7, 16])
@pytest.mark.parametrize("n_studies", [0, 1, 2, 5, 6, 23])
def test_every_study_goes_to_exactly_one_rank(n_studies, world_size):
    shares = [shard_sources(n_studies, world_size, rank) for rank in range(world_size)]
    assigned = sorted(index for share in shares for index in share)
    assert assigned == list(range(n_studies))  # no gaps, no duplicates, also with more ranks than studies
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced
    assert shares == [shard_sources(n_studies, world_size, rank) for rank in range(world_size)]  # deterministic


def test_a_rank_outside_the_job_is_refused():
    with pytest.raises(ShardError, match="rank 2"):
        shard_sources(5, 2, 2)


def _outcomes(n: int, failed: set[int]) -> list[StudyOutcome]:
    return [StudyOutcome(f"s{i}", f"/in/s{i}.dcm", "failed", error="UnreadableInputError: not DICOM")
            if i in failed else
            StudyOutcome(f"s{i}", f"/in/s{i}.dcm", "ok", probability=i / n, decision="no metastasis")
            for i in range(n)]


def test_merge_restores_the_study_order_and_lists_each_failure_once():
    studies = _outcomes(11, failed={3, 8})
    parts = []
    for rank in range(3):
        indices = shard_sources(len(studies), 3, rank)
        parts.append((indices, [studies[i] for i in indices]))
    random.Random(0).shuffle(parts)  # ranks finish in any order
    merged = merge_outcomes(parts, len(studies))
    assert merged == studies
    report = PredictionReport("run", OperatingPoint("0.5", 0.5), "cpu", merged, 1.0)
    assert [s.study_id for s in report.failures] == ["s3", "s8"]


def test_merge_refuses_a_missing_or_doubled_study():
    studies = _outcomes(4, failed=set())
    with pytest.raises(ShardError, match="1 of 4 studies have no result"):
        merge_outcomes([([0, 1, 2], studies[:3])], 4)
    with pytest.raises(ShardError, match="predicted twice"):
        merge_outcomes([([0, 1, 2, 3], studies), ([2], [studies[2]])], 4)


# --- the job protocol, with 2-3 real gloo processes and a stand-in for predict_studies (no network) ------------

def _fake_predict(studies: list[StudySource], failing_rank: int | None, shard=None, progress=None, workers=None):
    """Like predict_studies on a manifest: lists the studies through `shard`; a study named *bad* fails."""
    sources, case_ids = shard(lambda: (studies, [f"case-{s.id}" for s in studies]))
    if int(os.environ["RANK"]) == failing_rank:
        raise RuntimeError("out of memory (simulated)")
    outcomes = [StudyOutcome(s.id, s.source, "failed", error="UnreadableInputError: bad", case_id=case_id)
                if "bad" in s.id else
                StudyOutcome(s.id, s.source, "ok", probability=0.25, decision="no metastasis", case_id=case_id)
                for s, case_id in zip(sources, case_ids)]
    return PredictionReport("run", OperatingPoint("0.5", 0.5), "cpu fp32", outcomes, 0.0)


def _rank_main(rank: int, world: int, port: int, out: str, studies, failing_rank, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    job = join_predict_job(out, device="cpu")
    try:
        report = job.sharded(_fake_predict)(studies, failing_rank)
        results.put((rank, "ok", None if report is None else [s.case_id for s in report.studies]))
    except ShardError as error:
        results.put((rank, "ShardError", str(error)))


def _run_job(world: int, out: Path, studies, failing_rank=None) -> dict:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_rank_main, args=(world, port, str(out), studies, failing_rank, results), nprocs=world,
                       start_method="spawn")
    found = {}
    while not results.empty():
        rank, kind, value = results.get()
        found[rank] = (kind, value)
    return found


def test_only_the_other_ranks_leave_at_once_with_status_0(monkeypatch):
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    leave_unless_rank_0(0)
    assert exits == []  # rank 0 goes on to write the output and exit with the job's status
    leave_unless_rank_0(1)
    assert exits == [0]


@pytest.mark.slow  # starts 5 processes (about 15 s on 2 cores)
def test_job_merges_shares_on_rank_0_and_fails_clearly_when_a_rank_fails(tmp_path):
    studies = [StudySource(f"s{i}" + ("bad" if i == 4 else ""), (tmp_path / f"s{i}.dcm",)) for i in range(7)]
    out = tmp_path / "out" / "preds.csv"

    found = _run_job(3, out, studies)
    assert found[0] == ("ok", [f"case-{s.id}" for s in studies])  # rank 0: every study once, in the listed order
    assert found[1] == ("ok", ["case-s1", "case-s4bad"]) and found[2] == ("ok", ["case-s2", "case-s5"])  # shares
    assert list(out.parent.iterdir()) == []  # partial files removed after the merge

    found = _run_job(2, out, studies, failing_rank=1)
    kind, message = found[0]
    assert kind == "ShardError" and "rank 1 of 2 failed: RuntimeError: out of memory (simulated)" in message
    assert found[1] == ("ok", None)  # the failed rank hands its error to rank 0 and leaves quietly
    assert list(out.parent.iterdir()) == []


# --- end to end: torchrun with 2 CPU processes vs one process ---------------------------------------------------

@pytest.mark.slow  # trains a tiny run, then one torchrun job of 2 processes (about 40 s on 2 cores)
def test_torchrun_predict_matches_one_process(tmp_path, capsys):
    from bonescan.cli import main
    from bonescan.cohort import load_manifest
    from bonescan.presets import preset_config
    from bonescan.train import train
    from trainkit import write_cohort, write_manifest_csv

    manifest = write_cohort(tmp_path / "data", n_train=16, n_val=8)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_manifest(write_manifest_csv(tmp_path, manifest)), tmp_path / "run", preset_config("tiny", epochs=1),
              cache_dir=tmp_path / "cache", progress=False)
    finally:
        torch.set_num_threads(previous)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for row in manifest.head(5).itertuples():
        for view in (row.anterior, row.posterior):
            (inputs / Path(view).name).write_bytes(Path(view).read_bytes())
    (inputs / "notes.dcm").write_text("not a DICOM file")  # sorts last: study 5, owned by rank 1

    def options(folder: Path) -> list[str]:
        return ["predict", "--run", str(tmp_path / "run"), str(inputs), "--out", str(folder / "preds.csv"),
                "--heatmaps", str(folder / "maps"), "--precision", "fp32", "--compile", "off", "--device", "cpu",
                "--batch-size", "2", "--workers", "0"]

    # The child processes must run this very bonescan (a worktree may shadow an installed one).
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(bonescan.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    # `--` ends torchrun's options: without it torchrun takes `--run` for an abbreviation of its `--run-path`.
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bonescan", "--",
         *options(tmp_path / "sharded")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    # Rank 0 exits 2 (a study failed), as one process does; torchrun then exits 1 and names that exit code.
    assert completed.returncode == 1, completed.stderr[-3000:]
    assert re.search(r"exitcode\s*:\s*2", completed.stderr), completed.stderr[-3000:]
    assert completed.stdout.count("wrote 6 studies (1 failed)") == 1  # only rank 0 reports
    assert completed.stderr.count("bonescan: failed: ") == 1 and "notes.dcm" in completed.stderr
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == ["maps", "preds.csv"]  # no partial files

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(options(tmp_path / "single")) == 2
    finally:
        torch.set_num_threads(previous)
    capsys.readouterr()

    sharded = pd.read_csv(tmp_path / "sharded" / "preds.csv", dtype=str, keep_default_na=False)
    single = pd.read_csv(tmp_path / "single" / "preds.csv", dtype=str, keep_default_na=False)
    assert list(sharded.columns) == list(single.columns)
    assert list(sharded["study_id"]) == list(single["study_id"])  # same rows, same order
    assert (sharded["status"] == "failed").sum() == 1
    for column in single.columns.drop(["probability", "heatmap"]):
        assert list(sharded[column]) == list(single[column]), column
    # Each rank batches other studies together than one process does, and oneDNN may block a batch of another
    # composition differently, so fp32 probabilities may differ in the last bits; the decisions may not.
    ok = single["status"] == "ok"
    np.testing.assert_allclose(sharded.loc[ok, "probability"].astype(float), single.loc[ok, "probability"].astype(float),
                               rtol=1e-5, atol=1e-6)
    for written, expected in zip(sharded.loc[ok, "heatmap"], single.loc[ok, "heatmap"]):
        assert Path(written).is_file() and Path(written).name == Path(expected).name
        assert Path(written).parent == (tmp_path / "sharded" / "maps").resolve()
