"""The two-view network of Zhao et al. 2020: a shared ResNet trunk, max over views, 3-scale pooling, two FC layers.

Input: B x 2 x H x W floats in [0, 1] from `bonescan.preprocess` (channel 0 anterior, channel 1 posterior mirrored
so both views share the patient's left-right layout). Output: B logits (metastasis vs none).

Both views go through the trunk as one batch of 2B grey images, which is faster than two calls (one set of
kernel launches, larger GEMMs). The trunk's final maps of the two views are combined element-wise (max by default,
as in the paper), pooled at three scales, concatenated and classified.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck

from .errors import ConfigError, RunError

Aggregation = Literal["max", "mean", "concat"]
Pooling = Literal["pyramid", "gap"]
Views = Literal["both", "anterior", "posterior"]
Norm = Literal["batch", "group"]

# name -> (block, blocks per stage, torchvision builder, torchvision weights enum name)
BACKBONES: dict[str, tuple[type[nn.Module], list[int], str | None, str | None]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], "resnet18", "ResNet18_Weights"),
    "resnet34": (BasicBlock, [3, 4, 6, 3], "resnet34", "ResNet34_Weights"),
    "resnet50": (Bottleneck, [3, 4, 6, 3], "resnet50", "ResNet50_Weights"),
    "resnet101": (Bottleneck, [3, 4, 23, 3], "resnet101", "ResNet101_Weights"),
    # One block per stage; with a reduced width it makes a network small enough for tests.
    "resnet10": (BasicBlock, [1, 1, 1, 1], None, None),
}

# Spatial-pyramid grids (rows x columns) of the adaptive max pools. At the paper's 768 x 256 input a ResNet's
# final map is 24 x 8 cells (stride 32), so the three pools have kernels of 24x8, 8x8 and 4x4 cells:
#   (1, 1): the whole body -- is there a hot spot anywhere;
#   (3, 1): thirds of the body (head/chest, abdomen/pelvis, legs), square 8 x 8-cell (256 x 256 px) windows;
#   (6, 2): 4 x 4-cell (128 x 128 px, about 40 x 30 cm) windows, so a lesion's rough position is kept.
# Hot spots vary in size (a rib focus vs a diffusely involved spine), hence several scales. Max pooling keeps a
# small intense focus that averaging would dilute. The grids stay valid for any input size (adaptive pooling).
PYRAMID_GRIDS: tuple[tuple[int, int], ...] = ((1, 1), (3, 1), (6, 2))

# ImageNet normalisation of torchvision's RGB weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture settings; every variant the ablations need is a value here."""

    backbone: str = "resnet50"
    aggregation: Aggregation = "max"
    pooling: Pooling = "pyramid"
    views: Views = "both"
    hidden: int = 256
    dropout: float = 0.5
    # Channels of the first stage (64 in torchvision's ResNets); smaller values make a narrower, faster network
    # that cannot take ImageNet weights.
    trunk_width: int = 64
    # "batch" (torchvision's BatchNorm, needed for ImageNet weights) or "group" (GroupNorm: no dependence on the
    # batch, so results do not change with the number of processes or the per-process batch size).
    norm: Norm = "batch"

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError("backbone", f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        checks = {
            "aggregation": ("max", "mean", "concat"),
            "pooling": ("pyramid", "gap"),
            "views": ("both", "anterior", "posterior"),
            "norm": ("batch", "group"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if self.hidden < 1 or self.trunk_width < 4:
            raise ConfigError("model", f"hidden ({self.hidden}) must be >= 1 and trunk_width ({self.trunk_width}) >= 4")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"dropout {self.dropout} must lie in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class ResNetTrunk(nn.Module):
    """A torchvision-style ResNet without global pooling and FC, taking one grey channel.

    Parameter names match torchvision's (conv1, bn1, layer1..layer4), so its ImageNet state dicts load directly
    once conv1 is folded to one input channel (see `load_imagenet_state_dict`).
    `stem_offset` is a per-filter constant added after conv1; it stays zero unless ImageNet weights are loaded.
    It is kept 1-D: a 1 x C x 1 x 1 buffer takes channels_last strides from `model.to(memory_format=...)`, and
    DistributedDataParallel's coalesced buffer broadcast cannot write into such a tensor (it crashed every
    bf16 / channels_last run under torchrun).
    """

    def __init__(self, block: type[nn.Module], layers: list[int], width: int = 64, norm: Norm = "batch"):
        super().__init__()
        self.inplanes = width
        self.norm_layer = nn.BatchNorm2d if norm == "batch" else _group_norm
        self.conv1 = nn.Conv2d(1, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self.norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.out_channels = width * 8 * block.expansion
        self.register_buffer("stem_offset", torch.zeros(width))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the buffer became 1-D hold it as 1 x C x 1 x 1.
        key = prefix + "stem_offset"
        if key in state_dict and state_dict[key].dim() == 4:
            state_dict[key] = state_dict[key].flatten()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                self.norm_layer(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, norm_layer=self.norm_layer)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, norm_layer=self.norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x) + self.stem_offset.to(x.dtype).view(1, -1, 1, 1)
        x = self.maxpool(self.relu(self.bn1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)


class ViewAggregation(nn.Module):
    """Combines the per-view trunk maps (B x V x C x h x w) into the one map the pooling layers see.

    A module (without parameters) so that heat maps can hook the aggregated map; `view_weights` says how much
    of each aggregated value came from each view.
    """

    def __init__(self, mode: Aggregation):
        super().__init__()
        self.mode = mode

    def forward(self, per_view: torch.Tensor) -> torch.Tensor:
        if per_view.shape[1] == 1:
            return per_view[:, 0]
        if self.mode == "max":
            return per_view.amax(dim=1)
        if self.mode == "mean":
            return per_view.mean(dim=1)
        return per_view.flatten(1, 2)  # concat along channels

    def view_weights(self, per_view: torch.Tensor) -> torch.Tensor:
        """B x V x C' x h x w weights, summing to 1 over V, that split each aggregated value among the views.

        max: the view that supplied the value (ties split evenly), since only it affects the output there;
        mean: each view in proportion to its (non-negative) activation; concat: each channel block to its view.
        """
        batch, n_views = per_view.shape[:2]
        if n_views == 1:
            return torch.ones_like(per_view)
        if self.mode == "concat":
            blocks = torch.eye(n_views, dtype=per_view.dtype, device=per_view.device)
            weights = blocks[None, :, :, None, None, None].expand(batch, n_views, n_views, *per_view.shape[2:])
            return weights.flatten(2, 3)
        if self.mode == "max":
            winners = (per_view == per_view.amax(dim=1, keepdim=True)).to(per_view.dtype)
            return winners / winners.sum(dim=1, keepdim=True)
        total = per_view.sum(dim=1, keepdim=True)
        even = torch.full_like(per_view, 1.0 / n_views)
        return torch.where(total > 0, per_view / total.clamp_min(torch.finfo(per_view.dtype).tiny), even)


class MultiViewNet(nn.Module):
    """Shared trunk over the views -> aggregation -> pooling -> FC -> ReLU -> dropout -> FC -> one logit."""

    def __init__(self, config: ModelConfig | None = None, **overrides):
        super().__init__()
        config = config or ModelConfig()
        if overrides:
            config = ModelConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        block, layers, _, _ = BACKBONES[config.backbone]
        self.trunk = ResNetTrunk(block, layers, config.trunk_width, config.norm)
        self.aggregate = ViewAggregation(config.aggregation)
        channels = self.trunk.out_channels * (2 if config.aggregation == "concat" and config.views == "both" else 1)
        cells = sum(r * c for r, c in PYRAMID_GRIDS) if config.pooling == "pyramid" else 1
        self.head = nn.Sequential(
            nn.Linear(channels * cells, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, 1),
        )

    def view_features(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk maps per view: B x V x C x h x w (V = 2 for both views, else 1)."""
        self._check_input(x)
        if self.config.views == "anterior":
            x = x[:, :1]
        elif self.config.views == "posterior":
            x = x[:, 1:]
        batch, n_views, height, width = x.shape
        # One trunk call for all views: B x V x H x W -> (B*V) x 1 x H x W, case-major order.
        # A one-channel image has the same memory layout in NCHW and NHWC; with channels_last weights the
        # convolutions produce channels_last maps from here on.
        grey = x.reshape(batch * n_views, 1, height, width)
        maps = self.trunk(grey)
        return maps.reshape(batch, n_views, *maps.shape[1:])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Aggregated final feature map B x C x h x w (the map the pooling layers see; for heat maps)."""
        return self.aggregate(self.view_features(x))

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """Pooled feature vector B x F of an aggregated map."""
        if self.config.pooling == "gap":
            return maps.mean(dim=(2, 3))
        return torch.cat([F.adaptive_max_pool2d(maps, grid).flatten(1) for grid in PYRAMID_GRIDS], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x))).squeeze(1)

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 2:
            raise ConfigError("model input", f"expected B x 2 x H x W (anterior, posterior), got {tuple(x.shape)}")


def build_model(config: ModelConfig, pretrained: str | Path | None = None) -> MultiViewNet:
    """Build the network; `pretrained` is None, "imagenet" (torch hub cache) or a torchvision state-dict file."""
    model = MultiViewNet(config)
    if pretrained:
        state = load_torchvision_weights(config.backbone, pretrained)
        load_imagenet_state_dict(model.trunk, state, source=str(pretrained))
    return model


def imagenet_weights_file(backbone: str) -> Path:
    """Where torchvision's ImageNet weights for `backbone` live in the local torch hub cache."""
    _, _, _, enum_name = BACKBONES[backbone]
    if enum_name is None:
        raise ConfigError("pretrained", f"backbone {backbone!r} has no ImageNet weights")
    weights = getattr(torchvision.models, enum_name).IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def download_imagenet_weights(backbone: str) -> Path:
    """Fetch torchvision's ImageNet weights for `backbone` into the hub cache (only behind --allow-download)."""
    path = imagenet_weights_file(backbone)
    if not path.is_file():
        _, _, _, enum_name = BACKBONES[backbone]
        url = getattr(torchvision.models, enum_name).IMAGENET1K_V1.url
        try:
            torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True)
        except Exception as error:  # URLError, HTTPError, hash mismatch: all mean "not downloaded"
            raise RunError("--allow-download", f"could not download {url} to {path} ({error})") from error
    return path


def load_torchvision_weights(backbone: str, pretrained: str | Path) -> dict[str, torch.Tensor]:
    """Read a torchvision state dict from a file, or from the hub cache for "imagenet"; never downloads."""
    if str(pretrained) == "imagenet":
        path = imagenet_weights_file(backbone)
        if not path.is_file():
            _, _, _, enum_name = BACKBONES[backbone]
            url = getattr(torchvision.models, enum_name).IMAGENET1K_V1.url
            raise RunError(
                "--pretrained imagenet",
                f"ImageNet weights for {backbone} are not in the local torch hub cache; nothing is downloaded. "
                f"Put the file {path.name} (from {url}) at {path}, pass --pretrained PATH to a state-dict file, "
                "or add --allow-download to let torchvision download it",
            )
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise RunError(path, "pretrained weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a corrupt file
        raise RunError(path, f"cannot read pretrained weights as a torch state dict ({error})") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise RunError(path, "not a torchvision ResNet state dict (no conv1.weight)")
    return state


def fold_rgb_conv(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an RGB first convolution with ImageNet normalisation into one acting on a grey image in [0, 1].

    A grey image g repeated to RGB and normalised per channel gives conv output
        sum_c W_c * (g - mean_c) / std_c  =  (sum_c W_c / std_c) * g  -  sum_c (mean_c / std_c) * sum(W_c).
    So the grey convolution weight is sum_c W_c / std_c and the second term is a per-filter constant (the
    returned offset, shape F). The result equals the RGB computation exactly away from the image
    border; in the 3-pixel zero-padding margin it differs (RGB pads the normalised image, we pad g), which only
    touches the background at the edge of a bone scan.
    """
    std = torch.tensor(IMAGENET_STD, dtype=weight.dtype).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=weight.dtype).view(1, 3, 1, 1)
    grey_weight = (weight / std).sum(dim=1, keepdim=True)
    offset = -((mean / std) * weight).sum(dim=(1, 2, 3))
    return grey_weight, offset


def load_imagenet_state_dict(trunk: ResNetTrunk, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy a torchvision ResNet state dict into the trunk, folding conv1 to one grey channel."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if state["conv1.weight"].shape[1] == 3:
        state["conv1.weight"], state["stem_offset"] = fold_rgb_conv(state["conv1.weight"].float())
    own = trunk.state_dict()
    missing = sorted(set(own) - set(state) - {"stem_offset"})
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
            if keys
        )
        raise RunError(source, f"weights do not fit this backbone ({detail})")
    trunk.load_state_dict(state, strict=False)
