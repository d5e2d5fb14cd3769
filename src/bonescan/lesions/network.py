"""The lesion network: per-pixel skeletal regions, hotspot foreground and metastasis for both views of a study.

Input: B x 2 x H x W in [0, 1] from `bonescan.preprocess` (anterior, posterior mirrored into the anterior's
left-right layout), plus two coordinate channels (row and column, -1..1) so that a pixel knows where in the body it
lies: ribs left and right, or thoracic and lumbar vertebrae, look alike and differ by position. Output: logits
B x 2 (views) x (N_LABELS + 2) x H x W: region classes (background + 20 regions), hotspot foreground (any hot
uptake), metastasis (the pixel belongs to a metastasis; a hotspot's malignancy is read from it).
One pass serves both views (the measured layout: 4 channels in, 2 x 23 out), so a lesion faint in one view borrows
evidence from the other, at half the cost of running the views as separate images.

Library choice, measured on the 2-core AMD EPYC (AVX2) while three other training jobs shared it (load average
9-10, so absolute figures are ~4x slower than idle; their ratios are what decided), training step and inference
per study at 512 x 128, fp32, batch 8, 46 output channels:

    MONAI UNet 16-32-64-128, res units 0, BatchNorm + ReLU    0.18 M params   train  519-578 ms   infer 181-186 ms
    MONAI UNet same, res units 1                              0.24 M          train  930 ms       infer 579 ms
    MONAI UNet 8-16-32-64, InstanceNorm + PReLU (default)     0.08 M          train  920 ms       infer 336 ms
    MONAI BasicUNet 8-8-16-32-64                              0.13 M          train  995 ms       infer 238 ms
    MONAI FlexibleUNet ResNet-10 encoder                      5.46 M          train 1312 ms       infer 585 ms
    torchvision LR-ASPP MobileNetV3-Large                     3.23 M          train 1125 ms       infer 345 ms

MONAI's plain UNet (strided convolutions down, transposed up, BatchNorm, ReLU) is the fastest by ~2x at the same
width and has no dependency beyond torch; instance norm costs more than the convolutions on this CPU. The default
here adds a fifth level (128 channels at 1/16 scale) for context across the body. segmentation_models_pytorch was
not measured: it pulls timm and huggingface_hub for what MONAI's UNet already does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from .regions import N_LABELS

HOTSPOT, MALIGNANCY = N_LABELS, N_LABELS + 1  # channel indices after the region classes
CHANNELS_PER_VIEW = N_LABELS + 2


def check_unet_channels(channels: Sequence[int], name: str) -> tuple[int, ...]:
    """U-Net channels per level, checked: MONAI's batch norm needs at least two levels of >= 2 channels. One rule for
    every U-Net of the project (the lesion network, the change network); `name` is what the error names."""
    values = tuple(int(c) for c in channels)
    if len(values) < 2 or min(values) < 2:
        raise ConfigError(name, f"needs at least two levels of >= 2 channels, e.g. 16,32,64,128,128; got "
                                f"{','.join(map(str, values))}")
    return values


@dataclass(frozen=True)
class LesionNetConfig:
    """Architecture of the lesion network: U-Net channels per level (each level halves the resolution)."""

    channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    residual_units: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_unet_channels(self.channels, "lesion network channels")
        if self.residual_units < 0 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("lesion network", "residual_units must be >= 0 and dropout in [0, 1)")

    @property
    def stride(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, data: dict) -> "LesionNetConfig":
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        if "channels" in data:
            data["channels"] = tuple(data["channels"])
        return cls(**data)


class LesionNet(nn.Module):
    """MONAI UNet over (anterior, posterior, row, column) -> region, hotspot and metastasis logits per view."""

    def __init__(self, config: LesionNetConfig | None = None):
        super().__init__()
        from monai.networks.nets import UNet

        self.config = config or LesionNetConfig()
        self.unet = UNet(spatial_dims=2, in_channels=4, out_channels=2 * CHANNELS_PER_VIEW,
                         channels=self.config.channels, strides=(2,) * (len(self.config.channels) - 1),
                         num_res_units=self.config.residual_units, norm="batch", act="relu",
                         dropout=self.config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 2:
            raise ValueError(f"expected B x 2 x H x W (anterior, mirrored posterior), got {tuple(x.shape)}")
        b, _, h, w = x.shape
        stride = self.config.stride
        if h % stride or w % stride:
            raise ValueError(f"input {h} x {w} must be a multiple of {stride} in both dimensions")
        rows = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
        cols = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
        out = self.unet(torch.cat([x, rows, cols], 1))
        return out.view(b, 2, CHANNELS_PER_VIEW, h, w)


def build_lesion_net(config: LesionNetConfig) -> LesionNet:
    """A freshly initialised lesion network (no pretrained weights: it trains from scratch in minutes)."""
    return LesionNet(config)
