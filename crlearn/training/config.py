"""Configuration of a training run: the paper's hyper-parameters, the two profiles, and the device.

Huang et al. 2022, §3.1: Adam (lr 3e-4), batch 8, up to 200 epochs, early stopping on the validation loss.

Two sizes, one code path:

- ``quick``: a tiny CR-Net at 128 px that trains in a few minutes on a 2-core laptop CPU (CI uses it);
- ``full``: the paper's CR-Net at 512 px with the paper's hyper-parameters, for a CUDA GPU.

``resolve_profile("auto")`` picks ``full`` when CUDA is available and ``quick`` otherwise; the environment
variable ``CRLEARN_PROFILE`` and an explicit argument override it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from crlearn.data.folder import NORMALIZATIONS
from crlearn.nn.model import CRNetConfig

PROFILE_ENV = "CRLEARN_PROFILE"
FAST_MODES = ("off", "eager", "graph", "compile")  # TrainConfig.fast; crlearn.training.fastpath explains each


@dataclass
class TrainConfig:
    """How to train; the defaults are the paper's (§3.1)."""

    size: int = 512  # side of the square input, pixels (divisible by 32)
    epochs: int = 200  # maximum number of epochs
    batch_size: int = 8  # slices per step
    lr: float = 3e-4  # Adam learning rate
    weight_decay: float = 0.0  # Adam weight decay
    schedule: str = "constant"  # "constant" (paper) or "onecycle" (warm-up then cosine decay, for short runs)
    patience: int = 20  # early stopping: epochs without a better validation loss (the paper gives no number)
    hybrid: bool = True  # BCE + SSIM + IoU (True) or BCE alone (the ablation's rows without the hybrid loss)
    augment: bool = True  # the paper's x5 augmentation (identity, rot90/180/270, hflip)
    seed: int = 0  # seeds weights, batch order and the split
    max_minutes: float | None = None  # stop after this much training time (breaks exact repeatability)
    ema: float | None = None  # decay of an exponential moving average of weights and BN statistics (None: off)
    amp: bool = True  # autocast on CUDA (bf16 where supported, else fp16 + gradient scaler)
    cpu_amp: bool = False  # also bf16 autocast of the training step on a CPU with bf16 instructions (this project's)
    normalize: str = "none"  # per-slice intensity normalisation of the data (crlearn.data.folder.normalize_intensity)
    fast: str = "off"  # the training step's route (crlearn.training.fastpath): "off" (the teaching loop), "eager", "graph" or
    # "compile"; the last two only on CUDA (elsewhere they run as "eager"). Same batches and steps, only faster.
    intensity_augment: bool = False  # random brightness, contrast, gamma, noise (crlearn.data.augment; this project's)
    scale_augment: bool = False  # random zoom and shift of image and mask (crlearn.data.augment; this project's)
    crop: int = 0  # train on random crop x crop windows of the size-px slices (0: whole slices; this project's)

    def __post_init__(self) -> None:
        if self.size < 32 or self.size % 32:
            raise ValueError(f"size must be a multiple of 32, got {self.size}")
        if self.schedule not in ("constant", "onecycle"):
            raise ValueError(f"schedule must be 'constant' or 'onecycle', got {self.schedule!r}")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"ema must be a decay in (0, 1) or None, got {self.ema}")
        if self.fast not in FAST_MODES:
            raise ValueError(f"fast must be one of {list(FAST_MODES)}, got {self.fast!r}")
        if self.crop and (self.crop % 32 or not 32 <= self.crop <= self.size):
            raise ValueError(f"crop must be 0 or a multiple of 32 no larger than size {self.size}, got {self.crop}")
        if (self.intensity_augment or self.scale_augment or self.crop) and self.fast != "off":
            raise ValueError("intensity_augment, scale_augment and crop draw anew every epoch: they need fast='off' "
                             "(the fast route reads every sample once)")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {list(NORMALIZATIONS)}, got {self.normalize!r}")


@dataclass
class Profile:
    """A named pair of model and training settings."""

    name: str
    model: dict[str, Any]  # CRNetConfig overrides
    train: dict[str, Any]  # TrainConfig overrides
    merge: bool = False  # default task: one merged "infection" class (True) or one channel per lesion class
    class_thresholds: dict[str, float] = field(default_factory=dict)  # a class's own mask cut (e.g. the lung field)

    def model_config(self, class_names: Sequence[str] | None = None, **overrides: Any) -> CRNetConfig:
        """The CRNetConfig; with ``class_names`` (one per channel) a class of ``class_thresholds`` keeps its own mask
        cut and the others take ``mask_threshold``: a tuple, one cut per channel."""
        config = {**self.model, **overrides}
        own = set(class_names or ()) & set(self.class_thresholds)
        if own and "mask_threshold" not in overrides:
            cut = config.get("mask_threshold", 0.5)
            config["mask_threshold"] = tuple(self.class_thresholds.get(c, cut) for c in class_names)
        return CRNetConfig(**config)

    def train_config(self, **overrides: Any) -> TrainConfig:
        return TrainConfig(**{**self.train, **overrides})


PROFILES: dict[str, Profile] = {
    # Chosen for a 2-core CPU by patient-level cross-validation on both segmentation sets (README, "Quick
    # profile"; epochs, bf16 and scale jitter: results/cv_bf16/README.md; the mask threshold 0.15, read by
    # crlearn.inference.predict: results/cv_threshold/README.md). The tiny model learns the merged infection
    # mask (the Table 7 task) far better than three lesion classes in a few minutes, so that is its default task.
    # No time cap: a cap would make results depend on machine load (use max_minutes for that).
    "quick": Profile(
        "quick",
        model=CRNetConfig.quick().to_dict() | {"num_classes": 1, "mask_threshold": 0.15},  # results/cv_threshold/
        train=dict(size=128, epochs=15, batch_size=8, lr=6e-3, schedule="onecycle", patience=100, ema=0.98,
                   cpu_amp=True, scale_augment=True),
        merge=True,
        class_thresholds={"lung": 0.5},  # the lung field is no lesion: its CV curve is flat from 0.3 to 0.55
    ),
    # The paper: width 1.0, 512 px, Adam 3e-4, batch 8, up to 200 epochs, early stopping. The teaching loop
    # (fast="off"): the faster routes of crlearn.training.fastpath become the default only when a GPU run measures
    # them faster with the same history (results/README.md, "Speed").
    "full": Profile("full", model=dict(), train=dict(size=512, epochs=200, batch_size=8, lr=3e-4, patience=20)),
}


def resolve_profile(profile: str | None = None) -> str:
    """``quick`` or ``full``: an explicit name wins, then ``$CRLEARN_PROFILE``, then auto (full iff CUDA)."""
    name = profile if profile not in (None, "auto") else os.environ.get(PROFILE_ENV, "auto").strip().lower() or "auto"
    if name == "auto":
        name = "full" if torch.cuda.is_available() else "quick"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; expected 'auto' or one of {sorted(PROFILES)}")
    return name
