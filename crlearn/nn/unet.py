"""The original U-Net, the first baseline of Table 4 (Huang et al. 2022, §3.3).

Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015,
arXiv:1505.04597. Read top to bottom: the double convolution, the contracting path (encoder), one step of the
expanding path (:class:`UpBlock`), the network.

    from crlearn.nn.unet import UNet
    net = UNet(base_width=16)                  # the quick profile's width (64 x 0.25)
    out = net(torch.randn(2, 1, 128, 128))     # CRNetOutput(coarse, final); here final is coarse, logits

Where this differs from the 2015 paper, and why:

- **Batch norm** after every convolution (conv-BN-ReLU, as in CR-Net's decoders): the 2015 paper predates batch
  norm's routine use in U-Nets; modern re-implementations add it (so does SMP's decoder), and it lets all three
  Table 4 rows train with one recipe.
- **"Same" padding**: the output has the input's size (the paper's valid convolutions shrink a 572 px tile to
  388 px and need overlap-tiling); no cropping of the skips.
- **Bilinear up-sampling without parameters** in place of the paper's 2x2 "up-convolution" that halves the channels:
  the first convolution of each decoder stage then reads ``C_i + C_{i+1} = 3 C_i`` channels instead of ``2 C_i``.
  Three reasons: CR-Net's coarse decoder up-samples bilinearly too (§2.5), so Table 4's rows differ in their
  encoders and skip pathways rather than in the up-sampling; bilinear up-sampling has no checkerboard artefacts
  (Odena et al., Distill 2016); and this decoder step is exactly U-Net++'s node with ``j = 1``
  (:class:`crlearn.nn.unetpp.NestedNode` is an :class:`UpBlock`), so U-Net is the special case of U-Net++ that Zhou
  et al. describe. The parameter count barely moves: per stage ``27 C_i^2`` weights instead of ``26 C_i^2``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crlearn.checks import check_positive_int
from crlearn.nn.blocks import ConvBNReLU
from crlearn.nn.encoder import init_weights
from crlearn.nn.model import CRNetOutput


def unet_widths(base_width: int = 64, depth: int = 4) -> tuple[int, ...]:
    """Channels per level, ``C_i = base_width * 2**i`` for ``i = 0..depth``: (64, 128, 256, 512, 1024) in the paper."""
    check_positive_int("base_width", base_width)
    check_positive_int("depth", depth)
    return tuple(base_width * 2**i for i in range(depth + 1))


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-BN-ReLU units: the unit of every U-Net level (Ronneberger et al. 2015, Fig. 1, blue arrows).

    (B, in_ch, H, W) -> (B, out_ch, H, W). Args: in_ch, out_ch.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(ConvBNReLU(in_ch, out_ch), ConvBNReLU(out_ch, out_ch))


class UNetEncoder(nn.Module):
    """The contracting path: a double convolution per level, 2x2 max pooling (stride 2) between levels.

    Args:
        in_channels: image channels.
        widths: channels per level, ``unet_widths(base_width, depth)``.

    ``forward`` returns every level's feature, ``X^{i,0}`` in U-Net++'s notation, shallow first.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        chans = (in_channels, *widths)
        self.levels = nn.ModuleList([DoubleConv(chans[i], chans[i + 1]) for i in range(len(widths))])
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (B, C_in, H, W) -> [(B, C_i, H/2^i, W/2^i) for i = 0..depth]."""
        feats = []
        for i, level in enumerate(self.levels):
            x = level(self.pool(x) if i else x)  # (B, C_i, H/2^i, W/2^i)
            feats.append(x)
        return feats


class UpBlock(nn.Module):
    """One step of the expanding path: up-sample the level below, concatenate, double convolution.

    ``DoubleConv(cat[skip, Up(below)])`` with ``Up`` bilinear x2 (no parameters; module docstring says why).

    Args:
        skip_channels: channels of the same-level input (the skip connection; U-Net++ concatenates several here).
        below_channels: channels of the feature from the level below, ``C_{i+1}``.
        out_channels: channels out, ``C_i``.
    """

    def __init__(self, skip_channels: int, below_channels: int, out_channels: int):
        super().__init__()
        for name, value in (("skip_channels", skip_channels), ("below_channels", below_channels)):
            check_positive_int(name, value)
        self.conv = DoubleConv(skip_channels + below_channels, out_channels)

    def forward(self, skip: Tensor, below: Tensor) -> Tensor:
        """skip: (B, C_skip, H, W), below: (B, C_below, H/2, W/2) -> (B, out_channels, H, W)."""
        up = F.interpolate(below, size=skip.shape[-2:], mode="bilinear", align_corners=False)  # (B, C_below, H, W)
        return self.conv(torch.cat([skip, up], dim=1))  # (B, C_skip + C_below, H, W) -> (B, C_out, H, W)


def init_output_bias(head: nn.Conv2d, prior: float) -> None:
    """Set a logit head's bias to ``logit(prior)``: the untrained network predicts ``prior`` everywhere.

    The same start as CR-Net's (:meth:`crlearn.nn.model.CRNet._init_outputs`; Lin et al., focal loss, §4.1), so
    that Table 4's rows differ in their architecture and not in how their training starts.
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must lie in (0, 1), got {prior!r}")
    with torch.no_grad():
        nn.init.constant_(head.bias, math.log(prior / (1.0 - prior)))


class UNet(nn.Module):
    """The original U-Net (Ronneberger et al. 2015, arXiv:1505.04597, Fig. 1), a baseline of Huang et al. 2022,
    Table 4.

    Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015.
    A plain encoder (double conv-BN-ReLU per level, max pooling; no residual, no SE), a symmetric decoder of
    :class:`UpBlock` steps with skip concatenation, and a 1x1 convolution to one logit per class. Differences
    from the paper (batch norm, same padding, bilinear up-sampling): see the module docstring.

    Args:
        in_channels: image channels (1 for CT).
        num_classes: logit channels, one per lesion class.
        base_width: channels of the first level (64 in the paper; the quick profile uses 16).
        depth: number of 2x2 max-poolings (4 in the paper); H and W must be divisible by ``2**depth``.
        prior: lesion probability the untrained network predicts (output-bias init, :func:`init_output_bias`).

    ``forward`` returns ``CRNetOutput(logits, logits)`` (the same tensor twice, so the training engine and the loss,
    which read CR-Net's output, count it once).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 1, base_width: int = 64, depth: int = 4,
                 prior: float = 0.05):
        super().__init__()
        check_positive_int("num_classes", num_classes)
        self.config: dict[str, Any] = {"in_channels": in_channels, "num_classes": num_classes,
                                       "base_width": base_width, "depth": depth, "prior": prior}
        self.widths = unet_widths(base_width, depth)
        self.encoder = UNetEncoder(in_channels, self.widths)
        self.decoder = nn.ModuleList([UpBlock(self.widths[i], self.widths[i + 1], self.widths[i])
                                      for i in range(depth)])  # decoder[i] ends at level i
        self.head = nn.Conv2d(self.widths[0], num_classes, 1)
        init_weights(self)
        init_output_bias(self.head, prior)

    def forward(self, x: Tensor) -> CRNetOutput:
        """x: (B, in_channels, H, W), H and W divisible by 2**depth -> CRNetOutput of logits (B, K, H, W)."""
        check_input(x, self.config["in_channels"], self.config["depth"], type(self).__name__)
        feats = self.encoder(x)  # [(B, C_i, H/2^i, W/2^i) for i = 0..depth]
        y = feats[-1]  # (B, C_depth, H/2^depth, W/2^depth): the bottom of the "U"
        for i in reversed(range(len(self.decoder))):
            y = self.decoder[i](feats[i], y)  # (B, C_i, H/2^i, W/2^i)
        logits = self.head(y)  # (B, K, H, W)
        return CRNetOutput(logits, logits)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def check_input(x: Tensor, in_channels: int, depth: int, name: str) -> None:
    """``ValueError`` unless x is (B, in_channels, H, W) with H and W positive multiples of ``2**depth``."""
    m = 2**depth
    if x.dim() != 4 or x.shape[1] != in_channels or any(s < m or s % m for s in x.shape[2:]):
        raise ValueError(f"{name} expects a (B, {in_channels}, H, W) tensor with H and W divisible by {m} "
                         f"(it down-samples {depth} times), got shape {tuple(x.shape)}")
