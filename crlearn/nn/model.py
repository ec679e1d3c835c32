"""CR-Net: the coarse module, optionally followed by the refinement module.

Huang et al., "A coarse-refine segmentation network for COVID-19 CT images",
IET Image Processing 16(2), 2022, doi:10.1049/ipr2.12278 (§2.5-2.6, Figs. 1-3, Table 7).

    from crlearn.nn.model import CRNet, CRNetConfig
    net = CRNet(CRNetConfig.quick())           # tiny, trains on a CPU
    out = net(torch.randn(2, 1, 128, 128))     # CRNetOutput(coarse, final), logits
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from crlearn.checks import check_positive_int
from crlearn.nn.coarse import CoarseModule
from crlearn.nn.encoder import scaled_widths
from crlearn.nn.refine import RefineModule

# Table 7 ablation rows built by this module (the "+ hybrid loss" row is a training switch).
VARIANTS = {
    "unet": "U-Net (SE-ResNet34)",  # coarse module without ASPP
    "unet_aspp": "+ ASPP",  # coarse module with the ASPP bridge
    "crnet": "+ refine",  # coarse module with ASPP, then the refinement module
}


@dataclass
class CRNetConfig:
    """Hyper-parameters of CR-Net; the defaults are the paper's full model."""

    in_channels: int = 1  # image channels (1 for CT)
    num_classes: int = 1  # logit channels, one per lesion class (1: lesion vs background)
    width: float = 1.0  # channel multiplier of the SE-ResNet-34 encoder and its decoder
    variant: str = "crnet"  # "unet", "unet_aspp" or "crnet": a row of Table 7, see VARIANTS
    aspp_channels: int = 64  # filters per ASPP branch in the coarse module's bridge
    refine_channels: int = 64  # filters of every conv in the refinement module
    reduction: int = 16  # SE bottleneck ratio in the encoder
    prior: float = 0.05  # lesion probability the untrained network predicts everywhere (output-bias init)
    mask_threshold: float | tuple[float, ...] = 0.5  # a pixel is called a class where its probability exceeds
    # this: one cut, or one per channel (the usual 0.5; the quick profile's lesion cut is chosen by patient-level CV:
    # results/cv_threshold/); read by crlearn.inference.predict through mask_cut()

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {self.variant!r}")
        for name in ("in_channels", "num_classes", "aspp_channels", "refine_channels", "reduction"):
            check_positive_int(name, getattr(self, name))
        scaled_widths(self.width)  # raises ValueError unless width > 0
        if isinstance(self.mask_threshold, (list, tuple)):  # one per channel (a checkpoint gives a list back)
            self.mask_threshold = tuple(self.mask_threshold)
            if len(self.mask_threshold) != self.num_classes:
                raise ValueError(f"mask_threshold: {len(self.mask_threshold)} cuts for {self.num_classes} channels")
        cuts = self.mask_threshold if isinstance(self.mask_threshold, tuple) else (self.mask_threshold,)
        for name, value in [("prior", self.prior), *(("mask_threshold", t) for t in cuts)]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {value!r}")

    @classmethod
    def quick(cls, **overrides: Any) -> "CRNetConfig":
        """A tiny CR-Net (~1.7 M parameters) that trains in minutes on a CPU at 128 px.

        Its refinement module has 4 filters per conv (the paper's 64): chosen against 8 by patient-level
        cross-validation, the same accuracy for a cheaper training step (results/cv_refine_width/).
        """
        return cls(**{"width": 0.25, "aspp_channels": 16, "refine_channels": 4, **overrides})

    @classmethod
    def full(cls, **overrides: Any) -> "CRNetConfig":
        """The paper's CR-Net (~27 M parameters)."""
        return cls(**overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CRNetConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown CRNetConfig fields: {sorted(unknown)}")
        return cls(**d)


class CRNetOutput(NamedTuple):
    coarse: Tensor  # (B, num_classes, H, W) logits of the coarse module
    final: Tensor  # (B, num_classes, H, W) refined logits; `final is coarse` without refinement


def mask_threshold(model: nn.Module) -> float | tuple[float, ...]:
    """The probability above which a pixel is called a class, one or one per channel: the model's
    ``config.mask_threshold`` (a CR-Net or a fold ensemble, whose checkpoint keeps it), 0.5 for a model without one
    (e.g. a segmentation_models_pytorch net)."""
    config = getattr(getattr(model, "_orig_mod", model), "config", None)
    return getattr(config, "mask_threshold", 0.5)


def mask_cut(probs: Tensor, threshold: float | tuple[float, ...]) -> Tensor:
    """Boolean masks of probabilities ``(N, K, H, W)``: ``probs > threshold``, a tuple cutting channel k at its k-th
    value."""
    if isinstance(threshold, (list, tuple)):
        return probs > torch.tensor(threshold, dtype=probs.dtype, device=probs.device).view(1, -1, 1, 1)
    return probs > threshold


class CRNet(nn.Module):
    """Coarse-refine segmentation network (Huang et al. 2022, Fig. 1).

    Huang et al., "A coarse-refine segmentation network for COVID-19 CT images",
    IET Image Processing 2022, doi:10.1049/ipr2.12278.
    The coarse module (SE-ResNet-34 U-Net with an ASPP bridge, §2.5) predicts
    logits; the refinement module (§2.6, Fig. 3, after BASNet's RRM) reads them and
    predicts a residual, and ``final = coarse + residual``. Both logit maps are
    returned so that the training loss can supervise each (deep supervision).

    Args:
        config: a ``CRNetConfig``; ``config.variant`` picks the Table 7 row.
    """

    def __init__(self, config: CRNetConfig):
        super().__init__()
        self.config = config
        self.coarse = CoarseModule(config.in_channels, config.num_classes, config.width,
                                   use_aspp=config.variant != "unet",
                                   aspp_channels=config.aspp_channels, reduction=config.reduction)
        self.refine = None
        if config.variant == "crnet":
            self.refine = RefineModule(config.num_classes, config.refine_channels, use_aspp=True)
        self._init_outputs()

    @torch.no_grad()
    def _init_outputs(self) -> None:
        """Start training from a sensible prediction (training-speed choices; the paper does not say).

        - The coarse head's bias is ``logit(prior)``: lesions are rare, and starting at p = 0.5 everywhere makes the
          first steps spend themselves on unlearning "lesion everywhere" (Lin et al., "Focal loss for dense
          object detection", ICCV 2017, §4.1 "Initialization").
        - The refinement's last convolution starts at a tenth of its He scale, so that ``final`` starts close to
          ``coarse`` and the residual grows as it learns.
        """
        nn.init.constant_(self.coarse.head.bias, math.log(self.config.prior / (1.0 - self.config.prior)))
        if self.refine is not None:
            self.refine.conv_out.weight.mul_(0.1)

    def forward(self, x: Tensor) -> CRNetOutput:
        """x: (B, in_channels, H, W), H and W divisible by 32 -> CRNetOutput of logits."""
        self._check_input(x)
        coarse = self.coarse(x)  # (B, K, H, W)
        if self.refine is None:
            return CRNetOutput(coarse, coarse)
        return CRNetOutput(coarse, coarse + self.refine(coarse))  # (B, K, H, W)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _check_input(self, x: Tensor) -> None:
        c = self.config.in_channels
        if x.dim() != 4 or x.shape[1] != c or any(s < 32 or s % 32 for s in x.shape[2:]):
            raise ValueError(
                f"CRNet expects a (B, {c}, H, W) tensor with H and W divisible by 32 "
                f"(the encoder down-samples 5 times), got shape {tuple(x.shape)}"
            )


# Table 4's baselines (Huang et al. 2022, §3.3), built by build_model from the same CRNetConfig as CR-Net.
BASELINES = {
    "plain_unet": "U-Net",  # Ronneberger et al. 2015: crlearn.nn.unet.UNet
    "unetpp": "U-Net++",  # Zhou et al. 2018: crlearn.nn.unetpp.UNetPlusPlus
}


def build_model(name: str, config: CRNetConfig, **options: Any) -> nn.Module:
    """A Table 7 row of CR-Net (a key of :data:`VARIANTS`) or a Table 4 baseline (a key of :data:`BASELINES`).

    Every model reads ``config``'s ``in_channels``, ``num_classes`` and ``prior``; a baseline's first level has
    the width of CR-Net's stem, ``round(64 * config.width)`` channels (64 at full width, 16 in the quick profile),
    and doubles it at each of its 4 levels. ``options`` go to the baseline's constructor (e.g.
    ``deep_supervision=True`` for U-Net++). Every model returns an output with ``.final`` logits that the training
    engine and :func:`crlearn.losses.deep_supervision_loss` take as they take CR-Net's.
    """
    if name in VARIANTS:
        if options:
            raise ValueError(f"CR-Net's variants take no options, got {sorted(options)}")
        return CRNet(dataclasses.replace(config, variant=name))
    if name not in BASELINES:
        raise ValueError(f"model must be one of {sorted(VARIANTS) + sorted(BASELINES)}, got {name!r}")
    from crlearn.nn.unet import UNet  # imported here: both modules import CRNetOutput from this one
    from crlearn.nn.unetpp import UNetPlusPlus

    cls = UNet if name == "plain_unet" else UNetPlusPlus
    return cls(config.in_channels, config.num_classes, base_width=scaled_widths(config.width)[0],
               prior=config.prior, **options)
