"""The refinement module: a small residual encoder-decoder that corrects the coarse logits.

Huang et al., "A coarse-refine segmentation network for COVID-19 CT images",
IET Image Processing 16(2), 2022, doi:10.1049/ipr2.12278 (§2.6, Fig. 3).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crlearn.checks import check_positive_int
from crlearn.nn.blocks import ASPP, ConvBNReLU
from crlearn.nn.coarse import upsample_like
from crlearn.nn.encoder import init_weights


class RefineModule(nn.Module):
    """Residual refinement module (Huang et al. 2022, §2.6, Fig. 3).

    After the residual refinement module (RRM) of BASNet: Qin et al., "BASNet:
    Boundary-Aware Salient Object Detection", CVPR 2019. Input: the coarse logits.
    Output: a residual of the same shape, which the caller adds to the coarse logits,
    so the module only has to learn a correction (mostly near lesion boundaries).

    An input 3x3 conv lifts the ``num_classes`` maps to ``channels``; four encoder
    stages (conv3x3-BN-ReLU, then 2x2 max pool) go down to H/16; an ASPP bridge
    (a plain conv3x3-BN-ReLU with ``use_aspp=False``, as in BASNet); four decoder stages
    (bilinear up-sampling, concatenation with the encoder stage of the same size,
    conv3x3-BN-ReLU) come back to H; a 3x3 conv gives the residual. Every conv has
    ``channels`` (64) filters.

    Args:
        num_classes: channels of the coarse logits (and of the residual).
        channels: filters of every conv (64 in the paper).
        use_aspp: ASPP bridge (the paper) or a single conv (BASNet).
    """

    def __init__(self, num_classes: int = 1, channels: int = 64, use_aspp: bool = True):
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("channels", channels)
        c = channels
        self.conv_in = nn.Conv2d(num_classes, c, 3, padding=1)
        self.enc = nn.ModuleList(ConvBNReLU(c, c) for _ in range(4))
        self.pool = nn.MaxPool2d(2, 2)
        self.bridge = ASPP(c, c, branch_channels=c) if use_aspp else ConvBNReLU(c, c)
        self.dec = nn.ModuleList(ConvBNReLU(2 * c, c) for _ in range(4))
        self.conv_out = nn.Conv2d(c, num_classes, 3, padding=1)
        init_weights(self)

    def forward(self, coarse: Tensor) -> Tensor:
        """coarse logits (B, K, H, W), H and W divisible by 16 -> residual (B, K, H, W)."""
        x = self.conv_in(coarse)  # (B, C, H, W)
        skips = []
        for enc in self.enc:  # 4 stages: H -> H/16
            x = enc(x)  # (B, C, h, w)
            skips.append(x)
            x = self.pool(x)  # (B, C, h/2, w/2)
        x = self.bridge(x)  # (B, C, H/16, W/16)
        for dec, skip in zip(self.dec, reversed(skips)):  # 4 stages: H/16 -> H
            x = dec(torch.cat([upsample_like(x, skip), skip], dim=1))  # (B, 2C, h, w) -> (B, C, h, w)
        return self.conv_out(x)  # (B, K, H, W)
