"""U-Net++, the second baseline of Table 4 (Huang et al. 2022, §3.3).

Zhou, Rahman Siddiquee, Tajbakhsh, Liang, "UNet++: A Nested U-Net Architecture for Medical Image Segmentation",
DLMIA 2018 (MICCAI workshop), arXiv:1807.10165. Read top to bottom: one node of the nested decoder
(:class:`NestedNode`), the output with deep supervision, the network.

U-Net joins encoder level i to decoder level i by one skip. U-Net++ fills the gap with a grid of nodes
``X^{i,j}`` (level i, column j; column 0 is the encoder), each a double convolution of everything to its left on
the same level and the up-sampled node below-left (Zhou et al., Eq. 1):

    X^{i,j} = H( [X^{i,0}, ..., X^{i,j-1}, Up(X^{i+1,j-1})] )        for j >= 1, i + j <= depth

so node ``X^{i,j}`` reads ``j * C_i + C_{i+1}`` channels and writes ``C_i``. The last column's top node
``X^{0,depth}`` is where a U-Net's decoder would end; the top row ``X^{0,1} ... X^{0,depth}`` are full-resolution
features that deep supervision turns into one logit map each.

    from crlearn.nn.unetpp import UNetPlusPlus, NestedNode
    net = UNetPlusPlus(base_width=16, deep_supervision=True)
    out = net(torch.randn(2, 1, 128, 128))   # out.final: (2, 1, 128, 128); iterating out gives the 4 heads

Same choices as :mod:`crlearn.nn.unet` (batch norm, same padding, bilinear ``Up`` without parameters). Zhou et al.'s
released Keras code up-samples with a 2x2 transposed convolution to ``C_i`` channels, so their node reads
``(j + 1) C_i``; with bilinear up-sampling (as the widely used PyTorch re-implementations and SMP's
``UnetPlusPlus`` do) it reads ``j C_i + C_{i+1}``, and a node with ``j = 1`` is U-Net's decoder step.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from crlearn.checks import check_positive_int
from crlearn.nn.encoder import init_weights
from crlearn.nn.model import CRNetOutput
from crlearn.nn.unet import UNetEncoder, UpBlock, check_input, init_output_bias, unet_widths


class NestedNode(UpBlock):
    """One node ``X^{i,j}`` of U-Net++'s nested decoder (Zhou et al. 2018, Eq. 1, Fig. 1).

    ``H(cat[X^{i,0}, ..., X^{i,j-1}, Up(X^{i+1,j-1})])``: the ``j`` same-level features and the up-sampled
    feature from the level below, concatenated in that order, then a double conv-BN-ReLU (:class:`UpBlock` with
    ``j * C_i`` skip channels). With ``j = 1`` this is U-Net's decoder step.

    Args:
        j: the node's column, 1..depth: how many same-level features it reads.
        level_channels: ``C_i``, channels of each same-level input and of the output.
        below_channels: ``C_{i+1}``, channels of the node below-left.
    """

    def __init__(self, j: int, level_channels: int, below_channels: int):
        check_positive_int("j", j)
        check_positive_int("level_channels", level_channels)
        super().__init__(j * level_channels, below_channels, level_channels)
        self.j = j
        self.in_channels = self.input_channels(j, level_channels, below_channels)

    @staticmethod
    def input_channels(j: int, level_channels: int, below_channels: int) -> int:
        """Channels the node's first convolution reads: ``j * C_i + C_{i+1}``."""
        return j * level_channels + below_channels

    def forward(self, same_level: Sequence[Tensor], below: Tensor) -> Tensor:  # type: ignore[override]
        """same_level: j tensors (B, C_i, H, W); below: (B, C_{i+1}, H/2, W/2) -> (B, C_i, H, W)."""
        if len(same_level) != self.j:
            raise ValueError(f"node of column j={self.j} reads {self.j} same-level features, got {len(same_level)}")
        skips = torch.cat(list(same_level), dim=1)  # (B, j * C_i, H, W)
        return super().forward(skips, below)  # (B, j * C_i + C_{i+1}, H, W) -> (B, C_i, H, W)


class DeepSupervisionOutput(tuple):
    """U-Net++'s output with deep supervision: a tuple of the heads' logits, ``X^{0,1} ... X^{0,depth}`` each
    through its own 1x1 convolution (each (B, K, H, W)), and ``.final``, the logits that are evaluated.

    Iterating gives the heads, so :func:`crlearn.losses.deep_supervision_loss` (what the engine calls on every
    model's output) sums the loss over all of them, as Zhou et al. train it; ``.final`` is what
    :func:`crlearn.training.engine.validate` and :func:`crlearn.inference.predict_logits` read, as they read
    CR-Net's ``CRNetOutput.final``.
    """

    final: Tensor

    def __new__(cls, heads: Sequence[Tensor], final: Tensor) -> "DeepSupervisionOutput":
        out = super().__new__(cls, heads)
        out.final = final
        return out


FINAL_MODES = ("mean", "last")


class UNetPlusPlus(nn.Module):
    """U-Net++ (Zhou et al. 2018, arXiv:1807.10165, Fig. 1), a baseline of Huang et al. 2022, Table 4.

    Zhou, Rahman Siddiquee, Tajbakhsh, Liang, "UNet++: A Nested U-Net Architecture for Medical Image
    Segmentation", DLMIA 2018. The encoder is U-Net's (:class:`crlearn.nn.unet.UNetEncoder`, same widths); the
    decoder is the grid of :class:`NestedNode` ``X^{i,j}``, built column by column.

    Args:
        in_channels: image channels (1 for CT).
        num_classes: logit channels, one per lesion class.
        base_width: channels of the first level, ``C_i = base_width * 2**i`` (64 as in U-Net; quick profile 16).
        depth: number of down-samplings (4 in both papers); H and W must be divisible by ``2**depth``.
        deep_supervision: one 1x1 head on each top-row node ``X^{0,j}``, all trained (Zhou et al. §2, "deep
            supervision"); without it one head on ``X^{0,depth}``.
        final: with deep supervision, what ``.final`` is: ``"mean"`` of the heads' logits (Zhou et al.'s
            "accurate mode", which averages the heads' outputs; here their logits) or the ``"last"`` head's.
        prior: lesion probability the untrained network predicts (output-bias init of every head).

    ``forward`` returns ``CRNetOutput(logits, logits)`` without deep supervision, a :class:`DeepSupervisionOutput`
    with it: both have ``.final``, and both go straight into the training engine.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 1, base_width: int = 64, depth: int = 4,
                 deep_supervision: bool = False, final: str = "mean", prior: float = 0.05):
        super().__init__()
        check_positive_int("num_classes", num_classes)
        if final not in FINAL_MODES:
            raise ValueError(f"final must be one of {FINAL_MODES}, got {final!r}")
        self.config: dict[str, Any] = {"in_channels": in_channels, "num_classes": num_classes,
                                       "base_width": base_width, "depth": depth,
                                       "deep_supervision": deep_supervision, "final": final, "prior": prior}
        w = self.widths = unet_widths(base_width, depth)
        self.encoder = UNetEncoder(in_channels, w)
        self.nodes = nn.ModuleDict({node_name(i, j): NestedNode(j, w[i], w[i + 1])
                                    for j in range(1, depth + 1) for i in range(depth - j + 1)})
        self.heads = nn.ModuleList([nn.Conv2d(w[0], num_classes, 1) for _ in range(depth if deep_supervision else 1)])
        init_weights(self)
        for head in self.heads:
            init_output_bias(head, prior)

    def decode(self, x: Tensor) -> list[list[Tensor]]:
        """The whole grid: ``grid[i][j]`` is ``X^{i,j}``, (B, C_i, H/2^i, W/2^i); row i has ``depth - i + 1`` nodes."""
        depth = self.config["depth"]
        grid = [[f] for f in self.encoder(x)]  # column 0: the encoder, X^{i,0}: (B, C_i, H/2^i, W/2^i)
        for j in range(1, depth + 1):
            for i in range(depth - j + 1):  # X^{i+1,j-1} was made in the column before
                grid[i].append(self.nodes[node_name(i, j)](grid[i][:j], grid[i + 1][j - 1]))  # (B, C_i, ...)
        return grid

    def forward(self, x: Tensor) -> CRNetOutput | DeepSupervisionOutput:
        """x: (B, in_channels, H, W), H and W divisible by 2**depth -> logits (B, K, H, W) in ``.final``."""
        check_input(x, self.config["in_channels"], self.config["depth"], type(self).__name__)
        top = self.decode(x)[0]  # [X^{0,0}, X^{0,1}, ..., X^{0,depth}], each (B, C_0, H, W)
        if not self.config["deep_supervision"]:
            logits = self.heads[0](top[-1])  # (B, K, H, W)
            return CRNetOutput(logits, logits)
        heads = [head(feat) for head, feat in zip(self.heads, top[1:])]  # depth x (B, K, H, W)
        final = torch.stack(heads).mean(0) if self.config["final"] == "mean" else heads[-1]  # (B, K, H, W)
        return DeepSupervisionOutput(heads, final)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def node_name(i: int, j: int) -> str:
    """The key of node ``X^{i,j}`` in :attr:`UNetPlusPlus.nodes`: ``"x_{i}_{j}"``."""
    return f"x_{i}_{j}"
