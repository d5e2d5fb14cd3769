"""Training with the tiny preset: the RUN folder, exact resume, refusals, options and the CLI."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from bonescan.cli import main
from bonescan.errors import ConfigError, ManifestError, RunError
from bonescan.presets import preset_config
from bonescan.train import load_checkpoint, train
from trainkit import write_cohort, write_manifest_csv


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    manifest = write_cohort(folder / "data", n_train=24, n_val=12)
    return folder, manifest


@pytest.fixture(scope="module")
def straight_run(cohort):
    # fp32: bit-identical repeats in-process on every CPU kind. bf16 exactness needs the oneDNN setting to be in
    # place before a process's first convolution, so it is checked in fresh processes (test_train_kill.py).
    folder, manifest = cohort
    torch.set_num_threads(1)
    result = train(manifest, folder / "straight", preset_config("tiny", precision="fp32"), cache_dir=folder / "cache",
                   progress=False)
    return folder / "straight", result


def _metrics(run_dir) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=["seconds"])


def test_tiny_run_writes_its_folder_and_learns_the_spots(straight_run, cohort):
    run_dir, result = straight_run
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3]
    assert metrics["val_auc"].between(0, 1).all()
    assert result.best_val_auc == metrics["val_auc"].max() >= 0.9
    assert metrics["lr"].iloc[0] > metrics["lr"].iloc[-1]  # cosine decay
    record = json.loads((run_dir / "config.json").read_text())
    assert record["seed"] == 0 and record["settings"]["preset"] == "tiny"
    assert len(record["manifest"]["sha256"]) == 64
    assert record["manifest"]["train_cases"] == 24 and record["manifest"]["val_cases"] == 12
    assert {"torch", "torchvision", "numpy"} <= set(record["versions"])
    assert record["precision"] == "fp32" and record["exact"] is True
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["preprocess"]["height"] == 64
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] == result.best_epoch and best["config"]["model"]["backbone"] == "resnet10"
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 3


def test_fp32_resume_ends_exactly_like_the_uninterrupted_run(straight_run, cohort):
    folder, manifest = cohort
    run_dir, _ = straight_run
    sliced = folder / "sliced"
    first = train(manifest, sliced, preset_config("tiny", precision="fp32"), cache_dir=folder / "cache",
                  progress=False, stop_after_epochs=2)
    assert first.epochs_run == 2
    # The resumed call takes the run's stored settings, whatever config it is given.
    train(manifest, sliced, preset_config("paper"), resume=True, cache_dir=folder / "cache", progress=False)
    pd.testing.assert_frame_equal(_metrics(sliced), _metrics(run_dir))
    for name in ("last.pt", "best.pt"):
        resumed = load_checkpoint(sliced / "checkpoints" / name)["model"]
        reference = load_checkpoint(run_dir / "checkpoints" / name)["model"]
        assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_a_folder_holding_a_run_is_refused_unless_resume_or_force(straight_run, cohort, tmp_path):
    folder, manifest = cohort
    run_dir, _ = straight_run
    with pytest.raises(RunError, match="already holds a training run"):
        train(manifest, run_dir, preset_config("tiny"), cache_dir=folder / "cache", progress=False)
    with pytest.raises(RunError, match="nothing to resume"):
        train(manifest, tmp_path / "empty", preset_config("tiny"), resume=True, progress=False)
    other = manifest.copy()
    other.loc[0, "label"] = 1 - other.loc[0, "label"]
    with pytest.raises(RunError, match="manifest differs"):
        train(other, run_dir, preset_config("tiny"), resume=True, cache_dir=folder / "cache", progress=False)

    copy = tmp_path / "run"
    (copy / "checkpoints").mkdir(parents=True)
    (copy / "checkpoints" / "last.pt").write_bytes(b"old")
    (copy / "notes.txt").write_text("kept")
    result = train(manifest, copy, preset_config("tiny", epochs=1), force=True, cache_dir=folder / "cache",
                   progress=False)
    assert result.epochs_run == 1 and load_checkpoint(copy / "checkpoints" / "last.pt")["epoch"] == 1
    assert (copy / "notes.txt").read_text() == "kept"


def test_corrupt_last_checkpoint_is_a_clear_error(tmp_path, cohort):
    folder, manifest = cohort
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(RunError, match="cannot read the checkpoint"):
        train(manifest, tmp_path, preset_config("tiny"), resume=True, progress=False)


def test_bad_manifests_are_refused(cohort, tmp_path):
    _, manifest = cohort
    no_val = manifest.assign(split="train")
    with pytest.raises(ManifestError, match="no rows with split = 'val'"):
        train(no_val, tmp_path / "a", preset_config("tiny"), progress=False)
    one_class = manifest.copy()
    one_class.loc[one_class["split"] == "val", "label"] = 0
    with pytest.raises(ManifestError, match="AUC is undefined"):
        train(one_class, tmp_path / "b", preset_config("tiny"), progress=False)
    with pytest.raises(ManifestError, match="split"):
        train(manifest.drop(columns=["split"]), tmp_path / "c", preset_config("tiny"), progress=False)
    assert not (tmp_path / "a").exists()


def test_unknown_preset_and_settings_are_refused():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        preset_config("huge")
    with pytest.raises(ConfigError, match="unknown backbone"):
        preset_config("tiny", model={"backbone": "vgg16"})
    with pytest.raises(ConfigError, match="optimizer"):
        preset_config("tiny", optimizer="rmsprop")


def test_cli_trains_with_sgd_class_weighting_and_bf16(cohort, tmp_path, capsys):
    folder, manifest = cohort
    unbalanced = manifest[~((manifest["split"] == "train") & (manifest["label"] == 1) & (manifest.index % 4 == 1))]
    csv = write_manifest_csv(tmp_path, unbalanced)
    code = main(["train", "--manifest", str(csv), "--out", str(tmp_path / "run"), "--preset", "tiny",
                 "--epochs", "1", "--optimizer", "sgd", "--class-weighting", "--precision", "bf16", "--no-exact",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert code == 0
    assert "best validation AUC" in capsys.readouterr().out
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    train_labels = unbalanced.loc[unbalanced["split"] == "train", "label"]
    assert record["pos_weight"] == pytest.approx((train_labels == 0).sum() / (train_labels == 1).sum())
    assert record["settings"]["optimizer"] == "sgd"
    assert record["precision"] == "bf16" and record["channels_last"] is True and record["exact"] is False
    assert main(["train", "--manifest", str(csv), "--out", str(tmp_path / "run2"), "--preset", "huge"]) == 2
    assert main(["train", "--manifest", str(csv), "--out", str(tmp_path / "run"), "--preset", "tiny"]) == 2
    assert "already holds a training run" in capsys.readouterr().err


def test_settings_added_later_keep_their_old_behaviour_when_an_old_run_resumes():
    from bonescan.presets import TrainConfig

    current = preset_config("tiny")
    assert current.bn_recalibration_cases == 256 and current.exact is True
    assert TrainConfig.from_dict(current.to_dict()) == current
    stored_before = {k: v for k, v in current.to_dict().items() if k not in ("bn_recalibration_cases", "exact")}
    old = TrainConfig.from_dict(stored_before)
    assert old.bn_recalibration_cases == 0 and old.exact is False
    with pytest.raises(ConfigError, match="bn_recalibration_cases"):
        preset_config("tiny", bn_recalibration_cases=-1)
