"""`bonescan bench node` end to end on a few tiny studies with one kill -9: it counts every study, prints figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nodekit import make_lesion_run

from bonescan.cli import main
from bonescan.followup.change_net import ChangeNet, save_change_model

pytestmark = pytest.mark.slow  # two node start-ups and synthetic studies: about 25 s on 2 shared cores


def test_bench_node_prints_throughput_latency_and_counts(tmp_path, capsys):
    code = main(["bench", "node", "--cases", "8", "--associations", "2", "--preset", "tiny", "--kills", "1",
                 "--threads", "1", "--data", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert code == 0
    assert "results at the destination: 8 studies, lost 0, duplicated 0" in out
    assert "studies/min" in out and "median" in out and "p95" in out and "1 kill -9" in out


def test_bench_node_with_a_lesion_run_counts_a_study_done_with_its_segmentations(tmp_path, capsys):
    lesions = make_lesion_run(tmp_path / "lesion-run")
    code = main(["bench", "node", "--cases", "4", "--associations", "2", "--preset", "tiny", "--threads", "1",
                 "--lesions", str(lesions), "--data", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert code == 0
    assert "results at the destination: 4 studies, lost 0, duplicated 0" in out and "lesion run" in out
    assert "; 8 Segmentations" in out  # one per view of each study


def test_bench_node_with_followup_sends_visits_in_date_order_and_times_later_visits_to_their_followup_sr(
        tmp_path, capsys):
    import pandas as pd

    lesions = make_lesion_run(tmp_path / "lesion-run")
    assert main(["bench", "node", "--cases", "4", "--preset", "tiny", "--followup"]) == 2  # needs --lesions
    code = main(["bench", "node", "--cases", "5", "--associations", "1", "--preset", "tiny", "--threads", "1",
                 "--lesions", str(lesions), "--followup", "--data", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert code == 0
    manifest = pd.read_csv(tmp_path / "data" / "manifest.csv")
    patients = []  # whole patients, in order, until 5 studies
    for patient, visits in manifest.groupby("patient_id", sort=True):
        if sum(len(v) for v in patients) < 5:
            patients.append(visits)
    taken = pd.concat(patients)
    later = int((taken["timepoint"] > 0).sum())
    assert f"results at the destination: {len(taken)} studies, lost 0, duplicated 0" in out
    assert f"follow-up: {later} follow-up SRs for {later} later visits" in out


def test_bench_node_with_followup_sends_a_study_of_one_file_per_view_whole(tmp_path, capsys):
    """A camera that writes one file per view (Philips profile): both files of a visit go to the node, which reads
    the study once both views are in, and the visit counts once, with its follow-up SR."""
    import pandas as pd

    from bonescan.synth.followup import generate_followup_cohort

    generate_followup_cohort(tmp_path / "data", 2, seed=3, site="philips-brightview")
    manifest = pd.read_csv(tmp_path / "data" / "manifest.csv")
    assert manifest["path"].isna().all() and manifest["anterior"].notna().all()  # two files per visit
    lesions = make_lesion_run(tmp_path / "lesion-run")
    change_net = save_change_model(tmp_path / "change.pt", ChangeNet((4, 8, 16)), 0.5, 1)  # the node's second judge
    judge = judge_beside(change_net, tmp_path / "judge.skops")  # in the rules' place, weighing the network's maps
    code = main(["bench", "node", "--cases", "2", "--associations", "1", "--preset", "tiny", "--threads", "1",
                 "--lesions", str(lesions), "--followup", "--data", str(tmp_path / "data"),
                 "--change-net", str(change_net), "--judge", str(judge)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"change network {change_net} (join either); new-lesion judge {judge}" in out
    first = manifest[manifest["patient_id"] == sorted(manifest["patient_id"])[0]]
    later = int((first["timepoint"] > 0).sum())
    assert f"results at the destination: {len(first)} studies, lost 0, duplicated 0" in out
    assert f"follow-up: {later} follow-up SRs for {later} later visits" in out
    assert f"change network: judged {later} of {later} later visits" in out  # the node ran it, not only the rules


def judge_beside(change_net: Path, path: Path) -> Path:
    """A learned new-lesion judge fitted beside `change_net` on random candidates of 10 patients."""
    from bonescan.followup.new_judge import (CHANGE_FEATURES, FEATURES, Candidates, fit_new_lesion_judge,
                                             save_new_lesion_judge)

    names = FEATURES + CHANGE_FEATURES
    features = np.random.default_rng(0).random((60, len(names)))
    candidates = Candidates(features, features[:, -1] > 0.5, np.arange(60) // 6, np.array([2, 0] * 5), [],
                            np.zeros((10, 2), int), names)
    return save_new_lesion_judge(fit_new_lesion_judge(candidates, 0.9, {"change_network": str(change_net)}), path)


def test_bench_node_refuses_a_change_network_without_followup_or_not_a_change_network(tmp_path, capsys):
    not_a_network = tmp_path / "notes.pt"
    not_a_network.write_text("not a network")
    lesions = str(tmp_path / "lesion-run")  # never reached: the change network is checked first
    assert main(["bench", "node", "--cases", "2", "--preset", "tiny", "--change-net", str(not_a_network)]) == 2
    assert "it needs --followup" in capsys.readouterr().err
    assert main(["bench", "node", "--cases", "2", "--preset", "tiny", "--lesions", lesions, "--followup",
                 "--change-net", str(not_a_network), "--data", str(tmp_path / "data")]) == 2
    assert "not a change-network file" in capsys.readouterr().err
    change_net = save_change_model(tmp_path / "change.pt", ChangeNet((4, 8, 16)), 0.5, 1)
    assert main(["bench", "node", "--cases", "2", "--preset", "tiny", "--lesions", lesions, "--followup",
                 "--change-net", str(change_net), "--join", "both", "--data", str(tmp_path / "data")]) == 2
    assert "unknown join 'both'" in capsys.readouterr().err
    judge = judge_beside(change_net, tmp_path / "judge.skops")
    assert main(["bench", "node", "--cases", "2", "--preset", "tiny", "--judge", str(judge)]) == 2
    assert "--judge judges follow-up comparisons: it needs --followup" in capsys.readouterr().err
    assert main(["bench", "node", "--cases", "2", "--preset", "tiny", "--lesions", lesions, "--followup",
                 "--judge", str(judge), "--data", str(tmp_path / "data")]) == 2
    assert "this judge weighs what the change network sees" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
