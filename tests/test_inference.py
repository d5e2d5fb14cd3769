"""Loading a trained run and scoring arrays or a manifest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bonescan.errors import ConfigError, RunError
from bonescan.inference import load_run, predict_arrays, predict_manifest
from bonescan.presets import preset_config
from bonescan.train import train
from trainkit import write_cohort


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inference")
    manifest = write_cohort(folder / "data", n_train=24, n_val=8, n_test=8)
    torch.set_num_threads(1)
    result = train(manifest, folder / "run", preset_config("tiny"), cache_dir=folder / "cache", progress=False)
    return folder, manifest, result


def test_load_run_restores_the_best_epoch(trained):
    folder, _, result = trained
    loaded = load_run(folder / "run")
    assert loaded.epoch == result.best_epoch
    assert loaded.val_auc == pytest.approx(result.best_val_auc)
    assert loaded.preprocess_cfg.height == 64 and not loaded.model.training
    assert load_run(folder / "run", checkpoint="last").epoch == result.epochs_run


def test_predict_manifest_scores_the_test_split_and_matches_predict_arrays(trained):
    folder, manifest, _ = trained
    table = predict_manifest(folder / "run", manifest, split="test", cache_dir=folder / "cache")
    test_rows = manifest[manifest["split"] == "test"]
    assert list(table["case_id"]) == list(test_rows["case_id"])
    assert table["probability"].between(0, 1).all()
    # Bright-spot studies score higher than plain ones.
    positives = table.loc[table["label"] == 1, "probability"]
    negatives = table.loc[table["label"] == 0, "probability"]
    assert positives.min() > negatives.max()

    from bonescan.data import build_cache

    loaded = load_run(folder / "run")
    cache = build_cache(test_rows.reset_index(drop=True), loaded.preprocess_cfg, folder / "cache")
    direct = predict_arrays(loaded, np.asarray(cache.arrays, dtype=np.float32), batch_size=3)
    np.testing.assert_allclose(direct, table["probability"], rtol=1e-5)


def test_predict_arrays_refuses_the_wrong_input_size(trained):
    folder, _, _ = trained
    with pytest.raises(ConfigError, match="2 x 64 x 32"):
        predict_arrays(load_run(folder / "run"), np.zeros((1, 2, 128, 64), np.float32))


def test_unreadable_studies_are_listed_not_scored(trained, tmp_path):
    folder, manifest, _ = trained
    broken = manifest[manifest["split"] == "test"].copy()
    broken.loc[broken.index[0], "anterior"] = str(tmp_path / "missing.npy")
    table = predict_manifest(folder / "run", broken, cache_dir=tmp_path / "cache")
    assert len(table) == len(broken) - 1
    assert [f["case_id"] for f in table.attrs["failures"]] == [broken.iloc[0]["case_id"]]


def test_missing_corrupt_and_incompatible_checkpoints_are_clear_errors(trained, tmp_path):
    folder, _, _ = trained
    with pytest.raises(RunError, match="run folder not found"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(RunError, match="checkpoint not found"):
        load_run(tmp_path)
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"truncated")
    with pytest.raises(RunError, match="cannot read the checkpoint"):
        load_run(tmp_path)
    payload = torch.load(folder / "run" / "checkpoints" / "best.pt", weights_only=False)
    payload["config"]["model"]["trunk_width"] = 16  # weights no longer fit the network
    torch.save(payload, tmp_path / "checkpoints" / "best.pt")
    with pytest.raises(RunError, match="do not fit"):
        load_run(tmp_path)
    torch.save({"something": 1}, tmp_path / "checkpoints" / "best.pt")
    with pytest.raises(RunError, match="not a bonescan checkpoint"):
        load_run(tmp_path)
