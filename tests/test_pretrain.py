"""Pretraining without ImageNet: contrastive loss, a trunk file that fine-tuning loads, and the download gate."""

import json

import numpy as np
import pytest
import torch

from bonescan.cli import main
from bonescan.model import MultiViewNet, build_model
from bonescan.presets import preset_config
from bonescan.pretrain import PretrainConfig, contrastive_pretrain, nt_xent

from trainkit import train_tiny_run, write_cohort, write_manifest_csv


def test_nt_xent_is_low_for_matched_copies_and_high_for_shuffled_ones():
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    matched, top1 = nt_xent(z, z + 0.01 * torch.randn(8, 16), temperature=0.2)
    shuffled, top1_shuffled = nt_xent(z, z[torch.randperm(8)], temperature=0.2)
    assert top1 == 1.0 and top1_shuffled < 0.5
    assert matched < 0.5 < 2.0 < shuffled
    # With every embedding equal, the loss is log(2n - 1): each row picks its copy among 2n - 1 candidates.
    flat, _ = nt_xent(torch.ones(4, 3), torch.ones(4, 3), temperature=0.5)
    assert float(flat) == pytest.approx(np.log(7), rel=1e-5)


def test_contrastive_pretraining_learns_and_its_trunk_loads_for_fine_tuning(tmp_path, one_thread):
    table = write_cohort(tmp_path / "data", n_train=24, n_val=0).drop(columns=["label"])
    config = PretrainConfig(preset="tiny", epochs=4, batch_size=8, lr=3e-3, seed=1)
    result = contrastive_pretrain(table, tmp_path / "trunk.pt", config, cache_dir=tmp_path / "cache", progress=False)
    assert result.studies == 24 and len(result.losses) == 4
    assert result.losses[-1] < result.losses[0]
    record = json.loads((tmp_path / "trunk.pt.json").read_text())
    assert record["method"].startswith("contrastive") and record["trunk_width"] == 8
    model = build_model(preset_config("tiny").model, tmp_path / "trunk.pt")
    saved = torch.load(tmp_path / "trunk.pt", weights_only=True)
    assert torch.equal(model.trunk.conv1.weight, saved["conv1.weight"])
    assert not torch.equal(MultiViewNet(preset_config("tiny").model).trunk.conv1.weight, saved["conv1.weight"])


def test_pretrain_command_exports_a_run_trunk_and_refuses_mixed_inputs(tmp_path, capsys):
    run, manifest = train_tiny_run(tmp_path / "tiny", n_train=8, n_val=8, n_test=0)
    assert main(["pretrain", "--from-run", str(run), "--out", str(tmp_path / "sup.pt")]) == 0
    state = torch.load(tmp_path / "sup.pt", weights_only=True)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False)["model"]
    assert torch.equal(state["layer1.0.conv1.weight"], best["trunk.layer1.0.conv1.weight"])
    assert main(["pretrain", "--from-run", str(run), "--manifest", str(manifest), "--out", str(tmp_path / "x.pt")]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_imagenet_weights_are_downloaded_only_when_allowed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    calls = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: calls.append(url))
    manifest = write_manifest_csv(tmp_path, write_cohort(tmp_path / "d", n_train=4, n_val=4))
    args = ["train", "--manifest", str(manifest), "--out", str(tmp_path / "run"), "--preset", "tiny",
            "--backbone", "resnet18", "--pretrained", "imagenet", "--epochs", "1", "--quiet"]
    assert main(args) == 2
    assert "--allow-download" in capsys.readouterr().err and calls == []
    assert main(args + ["--allow-download"]) == 2  # the fake download wrote nothing, so loading still fails
    assert len(calls) == 1 and calls[0].endswith("resnet18-f37072fd.pth")
