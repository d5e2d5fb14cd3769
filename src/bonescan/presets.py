"""Training settings as one dataclass, and the named presets (`paper`, `cpu-small`, `tiny`, and the lesion task's
`cpu-small-lesion`, `tiny-lesion`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from .errors import ConfigError
from .lesions.network import LesionNetConfig
from .model import ModelConfig
from .preprocess import PreprocessConfig


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentations that suit scintigraphy; geometric ones move both views together.

    gain: multiply counts by U(1 - gain, 1 + gain) (injected dose / acquisition time vary).
    poisson_probability / poisson_peak: with this probability, resample the image as Poisson counts with the
        brightest pixel at U(peak range) counts, i.e. a scan of lower count statistics (real scans: max 38-252).
    shift: translate by up to this fraction of height / width; scale: zoom by U(1 - scale, 1 + scale).
    flip_probability: mirror both views left-right (left/right lesions are equally likely).
    """

    enabled: bool = True
    gain: float = 0.15
    poisson_probability: float = 0.5
    poisson_peak: tuple[float, float] = (40.0, 250.0)
    shift: float = 0.04
    scale: float = 0.06
    flip_probability: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AugmentConfig":
        data = {k: v for k, v in data.items() if k in {f.name for f in fields(cls)}}
        if "poisson_peak" in data:
            data["poisson_peak"] = tuple(data["poisson_peak"])
        return cls(**data)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; stored in RUN/config.json and in every checkpoint."""

    preset: str = "paper"
    task: Literal["classify", "lesion"] = "classify"  # study label, or skeletal regions + hotspots
    model: ModelConfig = field(default_factory=ModelConfig)
    lesion: LesionNetConfig = field(default_factory=LesionNetConfig)  # the network of the lesion task
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pretrained: str | None = None  # None, "imagenet", or a state-dict path
    batch_size: int = 32  # global: split across processes under torchrun
    eval_batch_size: int = 32
    epochs: int = 30
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    class_weighting: bool = False  # BCE pos_weight = negatives / positives of the training split
    patience: int = 8  # early stopping: epochs without a better validation AUC
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # BatchNorm statistics recomputed over this many training studies before each validation (0 = keep the
    # running averages); see `bonescan.norm_stats`.
    bn_recalibration_cases: int = 256
    # Bit-reproducible runs: on CPUs with AMX, keep oneDNN on its deterministic AVX512-BF16 kernels (see
    # `bonescan.device.cap_onednn_for_exact_runs`); no effect elsewhere. False trades that for AMX speed.
    exact: bool = True
    device: str = "auto"
    workers: int = 0  # DataLoader worker processes

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError("--optimizer", f"unknown optimizer {self.optimizer!r}; use adamw or sgd")
        if self.task not in ("classify", "lesion"):
            raise ConfigError("--task", f"unknown task {self.task!r}; use classify or lesion")
        stride = self.lesion.stride
        if self.task == "lesion" and (self.preprocess.height % stride or self.preprocess.width % stride):
            raise ConfigError("--height/--width", f"the lesion network needs an input size that is a multiple of "
                                                  f"{stride}, got {self.preprocess.height} x {self.preprocess.width}")
        for name in ("batch_size", "eval_batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}", f"must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.patience < 1 or self.warmup_epochs < 0 or self.bn_recalibration_cases < 0:
            raise ConfigError("training settings",
                              "lr must be > 0, patience >= 1, warmup_epochs >= 0 and bn_recalibration_cases >= 0")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["augment"]["poisson_peak"] = list(self.augment.poisson_peak)
        data["lesion"] = self.lesion.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        # Runs stored before these settings existed trained without them: resuming one must not change it.
        data = {"bn_recalibration_cases": 0, "exact": False, **data}
        flat = {k: v for k, v in data.items() if k in known and k not in ("model", "preprocess", "augment", "lesion")}
        preprocess_keys = {f.name for f in fields(PreprocessConfig)}
        return cls(
            model=ModelConfig.from_dict(data.get("model", {})),
            preprocess=PreprocessConfig(**{k: v for k, v in data.get("preprocess", {}).items() if k in preprocess_keys}),
            augment=AugmentConfig.from_dict(data.get("augment", {})),
            lesion=LesionNetConfig.from_dict(data.get("lesion", {})),
            **flat,
        )


PRESETS: dict[str, TrainConfig] = {
    # The paper: ImageNet ResNet-50 at 768 x 256, max aggregation, 3-scale pooling.
    "paper": TrainConfig(
        preset="paper",
        model=ModelConfig(backbone="resnet50", hidden=256, dropout=0.5),
        preprocess=PreprocessConfig(height=768, width=256),
        batch_size=32,
        epochs=30,
        lr=1e-4,
        warmup_epochs=1.0,
        patience=8,
    ),
    # Learns the synthetic `easy` cohort on a 2-core CPU in a few minutes. No ImageNet weights offline, so it
    # trains from scratch: a half-width ResNet-18 (a quarter of the FLOPs), a higher learning rate, few epochs.
    "cpu-small": TrainConfig(
        preset="cpu-small",
        model=ModelConfig(backbone="resnet18", trunk_width=32, hidden=128, dropout=0.3),
        preprocess=PreprocessConfig(height=384, width=128),
        batch_size=16,
        eval_batch_size=32,
        epochs=6,
        lr=1e-3,  # 2e-3 learns as fast but its validation AUC swings (BatchNorm statistics) from epoch to epoch
        weight_decay=1e-4,
        warmup_epochs=0.5,
        patience=4,
    ),
    # For tests: a one-block-per-stage, 8-channel ResNet at 64 x 32.
    "tiny": TrainConfig(
        preset="tiny",
        model=ModelConfig(backbone="resnet10", trunk_width=8, hidden=16, dropout=0.1),
        preprocess=PreprocessConfig(height=64, width=32),
        augment=AugmentConfig(),
        batch_size=8,
        eval_batch_size=16,
        epochs=3,
        lr=3e-3,
        warmup_epochs=0.0,
        patience=5,
    ),
    # Skeletal regions + hotspots (`bonescan.lesions`): a 0.45 M-parameter MONAI U-Net at 512 x 128, half the
    # stored size in both directions, so a lesion a few pixels wide stays visible; counts normalisation keeps the
    # faint bone visible beside a hot bladder.
    "cpu-small-lesion": TrainConfig(
        preset="cpu-small-lesion",
        task="lesion",
        preprocess=PreprocessConfig(height=512, width=128, normalization="counts"),
        augment=AugmentConfig(poisson_probability=0.3, shift=0.03, scale=0.0),
        batch_size=8,
        eval_batch_size=16,
        epochs=12,  # still improving at 12 (metastasis sensitivity most); measured in the README
        lr=3e-3,
        weight_decay=1e-4,
        warmup_epochs=0.3,
        patience=4,
        bn_recalibration_cases=64,
    ),
    # For tests: a three-level, 4-channel U-Net at 64 x 32.
    "tiny-lesion": TrainConfig(
        preset="tiny-lesion",
        task="lesion",
        lesion=LesionNetConfig(channels=(4, 8, 16)),
        preprocess=PreprocessConfig(height=64, width=32, normalization="counts"),
        batch_size=4,
        eval_batch_size=8,
        epochs=2,
        lr=3e-3,
        warmup_epochs=0.0,
        patience=5,
        bn_recalibration_cases=8,
    ),
}


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """A preset with top-level or nested overrides (`model={...}`, `preprocess={...}`, `augment={...}`, `lesion=`)."""
    if name not in PRESETS:
        raise ConfigError("--preset", f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[name]
    nested = {}
    for key in ("model", "preprocess", "augment", "lesion"):
        if key in overrides:
            changes = {k: v for k, v in overrides.pop(key).items() if v is not None}
            nested[key] = replace(getattr(base, key), **changes)
    flat = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(flat) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ConfigError("settings", f"unknown training setting(s): {', '.join(sorted(unknown))}")
    return replace(base, **flat, **nested)
