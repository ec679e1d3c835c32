"""The SE-ResNet-34 encoder of the coarse module, and the same encoder used as a classifier.

Huang et al., "A coarse-refine segmentation network for COVID-19 CT images",
IET Image Processing 16(2), 2022, doi:10.1049/ipr2.12278 (§2.5 encoder, §2.8 classifier).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crlearn.checks import check_positive_int
from crlearn.nn.blocks import SEBasicBlock

STAGE_BLOCKS = (3, 4, 6, 3)  # basic blocks per stage in ResNet-34
STAGE_WIDTHS = (64, 128, 256, 512)  # channels per stage at width 1.0
STAGE_STRIDES = (1, 2, 2, 2)  # first-block stride of each stage


def scaled_widths(width: float) -> tuple[int, ...]:
    """Stage channel counts at a width multiplier: (stem, layer1, layer2, layer3, layer4)."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"width must be a positive number, got {width!r}")
    widths = tuple(max(1, round(c * width)) for c in STAGE_WIDTHS)
    return (widths[0],) + widths


class SEResNet34Encoder(nn.Module):
    """SE-ResNet-34 feature extractor (Huang et al. 2022, §2.5, Fig. 1 left half).

    A ResNet-34 (He et al., CVPR 2016) whose basic blocks carry squeeze-and-excitation
    (Hu et al., CVPR 2018). Stem: 7x7 stride-2 conv, BN, ReLU; then 3x3 stride-2 max
    pool and four stages of [3, 4, 6, 3] SE basic blocks with 64, 128, 256, 512
    channels (times ``width``) and strides 1, 2, 2, 2 -- the same shapes as
    ``torchvision.models.resnet34`` without its pooling/FC head.

    ``forward`` returns the five features a U-Net decoder skips to, shallow first;
    ``out_channels`` lists their channel counts.

    Args:
        in_channels: image channels (1 for CT).
        width: channel multiplier (1.0 = the paper; 0.25 trains quickly on a CPU).
        reduction: SE bottleneck ratio.
    """

    def __init__(self, in_channels: int = 1, width: float = 1.0, reduction: int = 16):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        self.config = {"in_channels": in_channels, "width": width, "reduction": reduction}  # rebuilds this encoder
        self.out_channels: tuple[int, ...] = scaled_widths(width)
        c0 = self.out_channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c0, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(c0),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, c_in = [], c0
        for n, c_out, stride in zip(STAGE_BLOCKS, self.out_channels[1:], STAGE_STRIDES):
            blocks = [SEBasicBlock(c_in, c_out, stride, reduction)]
            blocks += [SEBasicBlock(c_out, c_out, 1, reduction) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        init_weights(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (B, C_in, H, W) -> [stem, layer1, layer2, layer3, layer4] features."""
        f0 = self.stem(x)  # (B, c0, H/2, W/2)
        f1 = self.layer1(self.maxpool(f0))  # (B, c1, H/4, W/4)
        f2 = self.layer2(f1)  # (B, c2, H/8, W/8)
        f3 = self.layer3(f2)  # (B, c3, H/16, W/16)
        f4 = self.layer4(f3)  # (B, c4, H/32, W/32)
        return [f0, f1, f2, f3, f4]


class EncoderClassifier(nn.Module):
    """The encoder as a lesion / no-lesion slice classifier (Huang et al. 2022, §2.8).

    Global average pooling of the encoder's last feature and one linear layer. With
    ``freeze_encoder=True`` (the paper's setting) only the linear layer trains: the
    encoder's parameters get ``requires_grad=False`` and its BatchNorm layers stay in
    eval mode, so ``model.train()`` does not change their running statistics either.

    Args:
        encoder: an ``SEResNet34Encoder`` (typically taken from a trained segmenter).
        num_classes: classifier outputs (2: COVID lesion present or not).
        freeze_encoder: train only the head.
    """

    def __init__(self, encoder: SEResNet34Encoder, num_classes: int = 2, freeze_encoder: bool = True):
        super().__init__()
        check_positive_int("num_classes", num_classes)
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_channels[-1], num_classes)
        self.encoder_frozen = False
        self.freeze_encoder(freeze_encoder)

    def freeze_encoder(self, frozen: bool = True) -> "EncoderClassifier":
        """Freeze (or with ``frozen=False`` unfreeze) the encoder; returns self."""
        self.encoder_frozen = bool(frozen)
        self.encoder.requires_grad_(not self.encoder_frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "EncoderClassifier":
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()  # frozen means frozen BN statistics too
        return self

    def features(self, x: Tensor) -> Tensor:
        """x: (B, C_in, H, W) -> the globally average-pooled last encoder feature (B, c4): what the head reads."""
        f = self.encoder(x)[-1]  # (B, c4, H/32, W/32)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(f, 1), 1)  # (B, c4)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, H, W) -> logits (B, num_classes)."""
        return self.head(self.features(x))  # (B, num_classes)


def init_weights(module: nn.Module) -> None:
    """He (fan-out) init for convolutions, BN at identity: torchvision's ResNet recipe."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
