"""The coarse module: a U-Net with an SE-ResNet-34 encoder and an ASPP bridge.

Huang et al., "A coarse-refine segmentation network for COVID-19 CT images",
IET Image Processing 16(2), 2022, doi:10.1049/ipr2.12278 (§2.5, Figs. 1-2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crlearn.checks import check_positive_int
from crlearn.nn.blocks import ASPP, ConvBNReLU
from crlearn.nn.encoder import SEResNet34Encoder, init_weights


def upsample_like(x: Tensor, ref: Tensor) -> Tensor:
    """Bilinear up-sampling of x to ref's height and width."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class DecoderStage(nn.Module):
    """One U-Net decoder stage (Huang et al. 2022, §2.5): up-sample, concatenate the skip,
    then 3 x (conv3x3-BN-ReLU).

    Args:
        in_channels: channels of the deeper feature coming up.
        skip_channels: channels of the encoder feature at the target resolution.
        out_channels: channels of the stage output.
        num_convs: conv-BN-ReLU units after the concatenation (3 in the paper).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, num_convs: int = 3):
        super().__init__()
        check_positive_int("num_convs", num_convs)
        convs = [ConvBNReLU(in_channels + skip_channels, out_channels)]
        convs += [ConvBNReLU(out_channels, out_channels) for _ in range(num_convs - 1)]
        self.convs = nn.Sequential(*convs)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """x: (B, C_in, h, w), skip: (B, C_skip, 2h, 2w) -> (B, C_out, 2h, 2w)."""
        x = torch.cat([upsample_like(x, skip), skip], dim=1)  # (B, C_in + C_skip, 2h, 2w)
        return self.convs(x)


class CoarseModule(nn.Module):
    """Coarse segmentation network (Huang et al. 2022, §2.5, Fig. 1).

    Huang et al., "A coarse-refine segmentation network for COVID-19 CT images",
    IET Image Processing 2022, doi:10.1049/ipr2.12278.
    SE-ResNet-34 encoder (§2.5) -> ASPP bridge at H/32 (§2.5, Fig. 2) -> four decoder
    stages that mirror the encoder (channels c3, c2, c1, c0 at H/16 ... H/2, each
    skipping to the encoder feature of the same size) -> 1x1 head and a final bilinear
    up-sampling to the input size.

    The ASPP projects back to the encoder's last width, so the decoder is identical with
    and without it; with ``use_aspp=False`` the bridge is the identity, i.e. a plain
    U-Net (SE-ResNet-34), the first row of Table 7.

    The head runs *before* the last up-sampling (on ``num_classes`` instead of c0
    channels): a 1x1 conv and bilinear interpolation are both linear and the
    interpolation weights sum to one, so the order does not change the result, only
    the cost.

    Args:
        in_channels: image channels.
        num_classes: output logit channels, one per lesion class.
        width: encoder/decoder channel multiplier.
        use_aspp: ASPP bridge (True) or none (False).
        aspp_channels: filters per ASPP branch (64 in the paper).
        reduction: SE bottleneck ratio of the encoder.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 1, width: float = 1.0,
                 use_aspp: bool = True, aspp_channels: int = 64, reduction: int = 16):
        super().__init__()
        check_positive_int("num_classes", num_classes)
        self.encoder = SEResNet34Encoder(in_channels, width, reduction)
        c0, c1, c2, c3, c4 = self.encoder.out_channels
        self.bridge = ASPP(c4, c4, branch_channels=aspp_channels) if use_aspp else nn.Identity()
        self.decoder4 = DecoderStage(c4, c3, c3)
        self.decoder3 = DecoderStage(c3, c2, c2)
        self.decoder2 = DecoderStage(c2, c1, c1)
        self.decoder1 = DecoderStage(c1, c0, c0)
        self.head = nn.Conv2d(c0, num_classes, 1)
        for m in (self.bridge, self.decoder4, self.decoder3, self.decoder2, self.decoder1):
            init_weights(m)  # the encoder initialises itself

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, H, W) with H, W divisible by 32 -> logits (B, num_classes, H, W)."""
        f0, f1, f2, f3, f4 = self.encoder(x)  # H/2, H/4, H/8, H/16, H/32
        d = self.bridge(f4)  # (B, c4, H/32, W/32)
        d = self.decoder4(d, f3)  # (B, c3, H/16, W/16)
        d = self.decoder3(d, f2)  # (B, c2, H/8, W/8)
        d = self.decoder2(d, f1)  # (B, c1, H/4, W/4)
        d = self.decoder1(d, f0)  # (B, c0, H/2, W/2)
        return upsample_like(self.head(d), x)  # (B, num_classes, H/2, W/2) -> (B, num_classes, H, W)
