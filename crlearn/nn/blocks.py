"""Building blocks of CR-Net: conv-BN-ReLU, squeeze-and-excitation, SE basic block, ASPP.

Huang et al., "A coarse-refine segmentation network for COVID-19 CT images",
IET Image Processing 16(2), 2022, doi:10.1049/ipr2.12278.

Every block here is small, has no hidden state, and refuses bad arguments with a
``ValueError`` at construction. All of them accept ``torch.channels_last`` inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crlearn.checks import check_positive_int


def _memory_format(x: Tensor) -> torch.memory_format:
    """channels_last if x is laid out that way (and not also plain contiguous), else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class ConvBNReLU(nn.Sequential):
    """3x3 (or k x k) convolution, batch norm, ReLU: the unit every decoder in the paper stacks.

    The convolution has no bias (the BN shift replaces it) and "same" padding, so the
    spatial size is kept: (B, in_ch, H, W) -> (B, out_ch, H, W).

    Args:
        in_ch: input channels.
        out_ch: output channels.
        kernel_size: odd kernel size (3 in the paper's decoders, 1 for projections).
        dilation: atrous rate (1 = ordinary convolution; ASPP uses 3, 6, 9).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, dilation: int = 1):
        for name, value in (("in_ch", in_ch), ("out_ch", out_ch),
                            ("kernel_size", kernel_size), ("dilation", dilation)):
            check_positive_int(name, value)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the size, got {kernel_size}")
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class SEBlock(nn.Module):
    """Squeeze-and-excitation channel attention (Huang et al. 2022, §2.5).

    Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018, arXiv:1709.01507.
    Global average pooling "squeezes" each channel to one number, two 1x1 convolutions
    (a bottleneck of ``channels // reduction``) and a sigmoid turn those into one weight
    per channel in (0, 1), and the input is rescaled by them. Same layout and parameter
    names (``fc1``, ``fc2``) as ``torchvision.ops.SqueezeExcitation(channels,
    channels // reduction)``, so weights can be copied across.

    Args:
        channels: input (= output) channels.
        reduction: bottleneck ratio r (16 in the SE paper and here). The bottleneck
            keeps at least one channel, so narrow networks still work.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        check_positive_int("channels", channels)
        check_positive_int("reduction", reduction)
        squeeze = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        s = F.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1)
        s = self.fc2(self.relu(self.fc1(s)))  # (B, C, 1, 1)
        return x * torch.sigmoid(s)  # broadcast over H, W


class SEBasicBlock(nn.Module):
    """ResNet basic block with squeeze-and-excitation (Huang et al. 2022, §2.5).

    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, plus the SE
    block of Hu et al. (CVPR 2018) applied to the residual branch before the addition.
    conv3x3(stride)-BN-ReLU, conv3x3-BN, SE, + shortcut, ReLU. The shortcut is a 1x1
    conv + BN when the stride or the channel count changes, else the identity.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: 1 or 2 (2 halves H and W).
        reduction: SE bottleneck ratio.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, reduction: int = 16):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.se = SEBlock(out_channels, reduction)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, H, W) -> (B, C_out, H/stride, W/stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, C_out, H/s, W/s)
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + identity)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling, the bridge of both modules (Huang et al. 2022, §2.5, Fig. 2).

    Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation"
    (DeepLabv3), arXiv:1706.05587. Five parallel branches look at the same feature map
    with different fields of view: a 1x1 conv, three 3x3 atrous convs (rates 3, 6, 9 in
    the paper) and image pooling (global context). Their outputs (``branch_channels``
    each, 64 in the paper) are concatenated once and projected by a 1x1 conv-BN-ReLU.

    The image-pooling branch is global average pool -> 1x1 conv (with bias) -> ReLU,
    with *no* BatchNorm. After global pooling each channel holds one value per image, so
    a training-mode BatchNorm there would normalise over the batch only: with batch size
    1 it raises ("Expected more than 1 value per channel"), and with small batches its
    statistics are noise. (torchvision's DeepLabv3 ASPP has that BN and fails on batch 1.)

    Args:
        in_channels: channels of the input feature map.
        out_channels: channels after the projection.
        rates: atrous rates of the 3x3 branches.
        branch_channels: filters per branch (the paper's 64).
    """

    def __init__(self, in_channels: int, out_channels: int = 64,
                 rates: tuple[int, ...] = (3, 6, 9), branch_channels: int = 64):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("branch_channels", branch_channels)
        rates = tuple(rates)
        if not rates:
            raise ValueError("rates must name at least one atrous rate, got ()")
        for r in rates:
            check_positive_int("each atrous rate", r)
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_channels, branch_channels, kernel_size=1)]
            + [ConvBNReLU(in_channels, branch_channels, 3, dilation=r) for r in rates]
        )
        self.pool_conv = nn.Conv2d(in_channels, branch_channels, 1)  # bias, no BN: see above
        self.relu = nn.ReLU(inplace=True)
        n_branches = len(rates) + 2
        self.project = ConvBNReLU(n_branches * branch_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, H, W) -> (B, out_channels, H, W)."""
        h, w = x.shape[-2:]
        pooled = self.relu(self.pool_conv(F.adaptive_avg_pool2d(x, 1)))  # (B, Cb, 1, 1)
        # Broadcast the per-image vector to every pixel (upsampling a 1x1 map is a copy), in
        # x's memory layout so that torch.cat keeps a channels_last input channels_last.
        pooled = pooled.expand(-1, -1, h, w).contiguous(memory_format=_memory_format(x))  # (B, Cb, H, W)
        feats = [branch(x) for branch in self.branches] + [pooled]  # each (B, Cb, H, W)
        return self.project(torch.cat(feats, dim=1))  # (B, (len(rates)+2)*Cb, H, W) -> (B, C_out, H, W)


# ----------------------------------------------------------------------------- receptive fields (notebook 02)


def receptive_field(kernel_size: int, dilation: int = 1) -> int:
    """Side of the square a k x k convolution at a given atrous rate covers: ``dilation * (k - 1) + 1``.

    A 3x3 kernel at rate r covers ``2r + 1`` pixels (Huang et al. 2022, §2.5: rates 3, 6, 9 -> 7, 13, 19).
    """
    check_positive_int("kernel_size", kernel_size)
    check_positive_int("dilation", dilation)
    return dilation * (kernel_size - 1) + 1


def effective_receptive_field(fn, x: Tensor) -> Tensor:
    """How much each input pixel moves the centre output pixel: ``|d sum_c y[0, c, h//2, w//2] / d x|``.

    Luo, Li, Urtasun, Zemel, "Understanding the Effective Receptive Field in Deep Convolutional Neural
    Networks", NeurIPS 2016, arXiv:1701.04128. One backward pass through ``fn``; the gradient's absolute
    value is summed over input channels.

    Args:
        fn: a module or function mapping ``(1, C, H, W)`` to ``(1, C', h, w)``. A module is run in eval mode
            (batch norm in training mode would mix all pixels through its statistics) and its mode restored.
        x: one input ``(1, C, H, W)``; it is not modified.

    Returns:
        ``(H, W)`` float tensor, zero outside the receptive field of the centre output pixel.
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one input of shape (1, C, H, W), got {tuple(x.shape)}")
    was_training = fn.training if isinstance(fn, nn.Module) else None
    if was_training:
        fn.eval()
    try:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            y = fn(x)
            if y.dim() != 4:
                raise ValueError(f"fn must return a (1, C, h, w) tensor, got shape {tuple(y.shape)}")
            h, w = y.shape[-2:]
            (grad,) = torch.autograd.grad(y[0, :, h // 2, w // 2].sum(), x)
    finally:
        if was_training:
            fn.train()
    return grad[0].abs().sum(0)  # (H, W)
