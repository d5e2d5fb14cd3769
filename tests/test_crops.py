"""Region crops as input: the crop rule instead of the whole-body rule, region runs, predict and evaluate on crops."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bonescan.cli import main
from bonescan.cohort import load_manifest, split_manifest, write_manifest
from bonescan.errors import ConfigError, ManifestError, NotABoneScanError
from bonescan.imports import import_bs80k
from bonescan.io import read_study
from bonescan.preprocess import PreprocessConfig, preprocess_study
from bonescan.presets import preset_config
from bonescan.crops import apply_region, region_preprocess
from bonescan.synth.bs80k import write_bs80k_tree

pytestmark = pytest.mark.usefixtures("one_thread")


def _crop(path, rows, cols, value=40):
    rng = np.random.default_rng(rows * cols)
    Image.fromarray(rng.poisson(value, size=(rows, cols)).astype(np.uint8)).save(path)
    return path


def test_crops_need_a_declared_region(tmp_path):
    ant, post = _crop(tmp_path / "a.png", 165, 65), _crop(tmp_path / "p.png", 163, 66)
    with pytest.raises(NotABoneScanError, match="cannot be a whole-body scan"):
        read_study([ant, post])
    study = read_study([ant, post], region="chestR")  # views of a crop pair may differ in shape
    config = region_preprocess(PreprocessConfig(), "chestR")
    assert (config.height, config.width, config.region) == (160, 64, "chestR")
    assert preprocess_study(study, config).shape == (2, 160, 64)
    with pytest.raises(NotABoneScanError, match="cannot be a chestR crop"):
        read_study([_crop(tmp_path / "tiny.png", 8, 8), post], region="chestR")
    with pytest.raises(ConfigError, match="unknown region 'chest'.*chestL"):
        region_preprocess(PreprocessConfig(), "chest")


def test_region_comes_from_the_manifest_and_mixing_is_refused():
    table = pd.DataFrame({"case_id": ["a", "b"], "region": ["kneeL", "kneeL"]})
    config, rows = apply_region(preset_config("tiny"), table, None)
    assert config.preprocess.region == "kneeL" and (config.preprocess.height, config.preprocess.width) == (96, 64)
    config, _ = apply_region(preset_config("tiny"), table, None, height=48, width=32)
    assert (config.preprocess.height, config.preprocess.width) == (48, 32)
    with pytest.raises(ManifestError, match="several regions"):
        apply_region(preset_config("tiny"), pd.DataFrame({"case_id": ["a", "b"], "region": ["kneeL", "head"]}), None)
    with pytest.raises(ManifestError, match="no rows of region 'head'"):
        apply_region(preset_config("tiny"), table, "head")
    assert apply_region(preset_config("tiny"), table.drop(columns="region"), None)[0] == preset_config("tiny")


def test_train_predict_evaluate_on_crop_pairs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BONESCAN_CACHE_DIR", str(tmp_path / "cache"))
    write_bs80k_tree(tmp_path / "tree", cases=24, seed=11, regions=["chestR"])
    imported = import_bs80k(tmp_path / "tree", tmp_path / "import", workers=1)
    table = split_manifest(load_manifest(imported.manifests["chestR"]), (0.5, 0.25, 0.25), seed=0)
    manifest = write_manifest(table, tmp_path / "import" / "regions" / "chestR_split.csv")
    run = tmp_path / "run"
    code = main(["train", "--manifest", str(manifest), "--out", str(run), "--preset", "tiny", "--epochs", "1",
                 "--precision", "fp32", "--quiet"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((run / "config.json").read_text())
    assert record["preprocess"]["region"] == "chestR" and record["preprocess"]["height"] == 160

    assert main(["predict", "--run", str(run), "--manifest", str(manifest), "--split", "test",
                 "--out", str(tmp_path / "preds.csv"), "--heatmaps", str(tmp_path / "maps"),
                 "--workers", "0"]) == 0, capsys.readouterr().err
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert (preds["status"] == "ok").all() and preds["probability"].between(0, 1).all()
    assert all((tmp_path / "maps" / f"{case}.png").is_file() for case in preds["case_id"])
    assert len(preds) == (table["split"] == "test").sum()

    assert main(["evaluate", "--run", str(run), "--manifest", str(manifest), "--split", "test",
                 "--out", str(tmp_path / "eval")]) == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert '"group": "chestR"' in json.dumps(metrics)
    assert main(["inspect", "--region", "chestR", str(tmp_path / "tree" / "chestRANT" / "1.jpg")]) == 0


def test_heat_maps_follow_each_crops_own_shape():
    import torch

    from bonescan.heatmap import grad_cam
    from bonescan.model import build_model

    torch.manual_seed(0)
    model = build_model(preset_config("tiny").model, None)
    maps = grad_cam(model, torch.rand(1, 2, 160, 64), [((165, 65), (163, 66))])
    assert maps[0].anterior.shape == (165, 65) and maps[0].posterior.shape == (163, 66)
