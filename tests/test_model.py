"""MultiViewNet: shapes, view handling, aggregation, the pyramid, and loading torchvision weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from bonescan.errors import ConfigError, RunError
from bonescan.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PYRAMID_GRIDS,
    ModelConfig,
    MultiViewNet,
    build_model,
    fold_rgb_conv,
    imagenet_weights_file,
)

TINY = dict(backbone="resnet10", trunk_width=8, hidden=8, dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> MultiViewNet:
    torch.manual_seed(0)
    return MultiViewNet(ModelConfig(**{**TINY, **overrides})).eval()


@pytest.mark.parametrize("aggregation", ["max", "mean", "concat"])
@pytest.mark.parametrize("pooling", ["pyramid", "gap"])
def test_variants_give_one_logit_per_case(aggregation, pooling):
    model = tiny(aggregation=aggregation, pooling=pooling)
    logits = model(torch.rand(3, 2, 64, 32))
    assert logits.shape == (3,)
    assert torch.isfinite(logits).all()


def test_pyramid_on_the_paper_input_size():
    # At 768 x 256 the final map is 24 x 8 (stride 32); the pyramid concatenates 1x1 + 3x1 + 6x2 cells.
    model = tiny()
    x = torch.rand(1, 2, 768, 256)
    maps = model.features(x)
    assert maps.shape == (1, 64, 24, 8)
    pooled = model.pool(maps)
    assert pooled.shape == (1, 64 * sum(r * c for r, c in PYRAMID_GRIDS))
    # The 3 x 1 grid is the max over each third of the body.
    thirds = [maps[:, :, i * 8 : (i + 1) * 8].amax(dim=(2, 3)) for i in range(3)]
    assert torch.allclose(pooled[:, 64 : 64 * 4], torch.stack(thirds, dim=2).flatten(1))


def test_one_trunk_call_equals_separate_views_and_max_aggregates():
    model = tiny()
    x = torch.rand(2, 2, 64, 32)
    with torch.no_grad():
        anterior = model.trunk(x[:, :1])
        posterior = model.trunk(x[:, 1:])
        assert torch.allclose(model.features(x), torch.maximum(anterior, posterior), atol=1e-5)
        assert torch.allclose(model.view_features(x)[:, 1], posterior, atol=1e-5)


def test_max_aggregation_is_symmetric_in_the_views_and_concat_is_not():
    x = torch.rand(2, 2, 64, 32)
    swapped = x.flip(1)
    with torch.no_grad():
        assert torch.allclose(tiny()(x), tiny()(swapped), atol=1e-5)
        assert not torch.allclose(tiny(aggregation="concat")(x), tiny(aggregation="concat")(swapped), atol=1e-5)


def test_single_view_models_ignore_the_other_view():
    x = torch.rand(2, 2, 64, 32)
    changed = x.clone()
    changed[:, 1] = torch.rand(2, 64, 32)
    with torch.no_grad():
        assert torch.allclose(tiny(views="anterior")(x), tiny(views="anterior")(changed))
        assert not torch.allclose(tiny(views="posterior")(x), tiny(views="posterior")(changed))


def test_channels_last_gives_the_same_output():
    model = tiny()
    x = torch.rand(2, 2, 64, 32)
    with torch.no_grad():
        plain = model(x)
        model = model.to(memory_format=torch.channels_last)
        assert torch.allclose(model(x), plain, atol=1e-5)


def test_group_norm_variant_does_not_depend_on_the_batch():
    model = tiny(norm="group").train()
    x = torch.rand(4, 2, 64, 32)
    with torch.no_grad():
        assert torch.allclose(model(x)[:2], model(x[:2]), atol=1e-5)


@pytest.mark.parametrize(
    "setting", [dict(backbone="resnet200"), dict(aggregation="sum"), dict(pooling="avg"), dict(views="lateral")]
)
def test_unknown_settings_are_refused(setting):
    with pytest.raises(ConfigError, match=str(list(setting.values())[0])):
        ModelConfig(**{**TINY, **setting})


def test_wrong_input_shape_is_refused():
    with pytest.raises(ConfigError, match="B x 2 x H x W"):
        tiny()(torch.rand(2, 3, 64, 32))


def _fake_imagenet_file(path, builder=torchvision.models.resnet18):
    torch.manual_seed(1)
    state = builder(weights=None).state_dict()
    torch.save(state, path)
    return state


def test_pretrained_file_loads_and_folds_conv1(tmp_path):
    state = _fake_imagenet_file(tmp_path / "r18.pth")
    model = build_model(ModelConfig(backbone="resnet18"), tmp_path / "r18.pth").eval()
    assert torch.equal(model.trunk.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.trunk.bn1.running_var, state["bn1.running_var"])
    # The folded grey convolution equals the RGB convolution of the grey image repeated and normalised with
    # ImageNet's mean and std, away from the zero-padded border.
    grey = torch.rand(1, 1, 40, 24)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rgb = F.conv2d((grey.repeat(1, 3, 1, 1) - mean) / std, state["conv1.weight"], stride=2, padding=3)
    folded = model.trunk.conv1(grey) + model.trunk.stem_offset.view(1, -1, 1, 1)
    assert torch.allclose(folded[..., 2:-2, 2:-2], rgb[..., 2:-2, 2:-2], atol=1e-4)
    assert not torch.allclose(folded[..., 0, :], rgb[..., 0, :], atol=1e-4)  # the border does differ


def test_fold_rgb_conv_of_equal_channels_is_their_scaled_sum():
    weight = torch.randn(4, 1, 3, 3).repeat(1, 3, 1, 1)
    grey, offset = fold_rgb_conv(weight)
    scale = sum(1 / s for s in IMAGENET_STD)
    assert torch.allclose(grey, weight[:, :1] * scale, atol=1e-5)
    shift = sum(m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    assert torch.allclose(offset.flatten(), -weight[:, 0].sum(dim=(1, 2)) * shift, atol=1e-4)


def test_pretrained_imagenet_uses_the_hub_cache_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = imagenet_weights_file("resnet18")
    assert expected.parent == tmp_path / "hub" / "checkpoints"
    with pytest.raises(RunError, match=str(expected).replace(".", r"\.")):
        build_model(ModelConfig(backbone="resnet18"), "imagenet")
    expected.parent.mkdir(parents=True)
    state = _fake_imagenet_file(expected)
    model = build_model(ModelConfig(backbone="resnet18"), "imagenet")
    assert torch.equal(model.trunk.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])


def test_weights_of_another_backbone_are_refused(tmp_path):
    _fake_imagenet_file(tmp_path / "r18.pth")
    with pytest.raises(RunError, match="do not fit"):
        build_model(ModelConfig(backbone="resnet34"), tmp_path / "r18.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(RunError, match="cannot read"):
        build_model(ModelConfig(backbone="resnet18"), tmp_path / "junk.pth")
    with pytest.raises(RunError, match="not found"):
        build_model(ModelConfig(backbone="resnet18"), tmp_path / "missing.pth")


@pytest.mark.parametrize("mode", ["max", "mean", "concat"])
def test_view_weights_split_each_aggregated_value_into_what_each_view_supplied(mode):
    from bonescan.model import ViewAggregation

    aggregate = ViewAggregation(mode)
    per_view = torch.rand(3, 2, 4, 5, 6).relu_()
    per_view[0, :, 0] = 0.0  # a channel where both views are silent
    per_view[1, 1, 1] = per_view[1, 0, 1]  # a channel where the views tie
    weights = aggregate.view_weights(per_view)
    fused = aggregate(per_view)
    assert weights.shape == (3, 2, *fused.shape[1:])
    assert torch.allclose(weights.sum(dim=1), torch.ones_like(fused))
    parts = weights * fused[:, None]  # each view's part of the aggregated map
    anterior, posterior = per_view[:, 0], per_view[:, 1]
    if mode == "max":
        won = anterior > posterior
        assert torch.equal(parts[:, 0][won], anterior[won]) and torch.all(parts[:, 1][won] == 0)
        tie = anterior == posterior
        assert torch.allclose(parts[:, 0][tie], anterior[tie] / 2)
    elif mode == "mean":
        assert torch.allclose(parts[:, 0], anterior / 2) and torch.allclose(parts[:, 1], posterior / 2)
    else:
        assert torch.equal(parts[:, 0, :4], anterior) and torch.all(parts[:, 0, 4:] == 0)
        assert torch.equal(parts[:, 1, 4:], posterior) and torch.all(parts[:, 1, :4] == 0)
