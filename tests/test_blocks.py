"""Building blocks and the SE-ResNet-34 encoder (crlearn.nn.blocks, crlearn.nn.encoder)."""

import re

import pytest
import torch
from torch import nn
from torchvision.models import resnet34
from torchvision.models.resnet import BasicBlock
from torchvision.ops import SqueezeExcitation

from crlearn.nn.blocks import ASPP, ConvBNReLU, SEBasicBlock, SEBlock
from crlearn.nn.encoder import (
    STAGE_BLOCKS,
    EncoderClassifier,
    SEResNet34Encoder,
    scaled_widths,
)

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


# --------------------------------------------------------------------------- references


def _randomise_batchnorm(module: nn.Module) -> None:
    """Non-trivial affine parameters and running statistics, so that eval-mode BN is not the identity."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)


def _se_after_bn2(block: BasicBlock, channels: int, reduction: int = 16) -> BasicBlock:
    """torchvision's BasicBlock with a torchvision SqueezeExcitation on the residual branch, after bn2."""
    block.bn2 = nn.Sequential(block.bn2, SqueezeExcitation(channels, max(1, channels // reduction)))
    return block


def _torchvision_state(ours: dict) -> dict:
    """Our state dict under the names of torchvision's ResNet with ``_se_after_bn2`` blocks."""
    renames = [(r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."),
               (r"(^|\.)bn2\.", r"\1bn2.0."), (r"(^|\.)se\.", r"\1bn2.1.")]
    out = {}
    for key, value in ours.items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


# Parameter counts from the architecture (conv k*k*c_in*c_out without bias, BN 2c, SE two 1x1 convs with bias).
def _conv(k, c_in, c_out):
    return k * k * c_in * c_out


def _bn(c):
    return 2 * c


def _se(c, reduction=16):
    squeeze = max(1, c // reduction)
    return (c * squeeze + squeeze) + (squeeze * c + c)


def _se_basic_block(c_in, c_out, stride):
    n = _conv(3, c_in, c_out) + _bn(c_out) + _conv(3, c_out, c_out) + _bn(c_out) + _se(c_out)
    if stride != 1 or c_in != c_out:
        n += _conv(1, c_in, c_out) + _bn(c_out)  # projection shortcut
    return n


def _se_resnet34(in_channels, width):
    c0, *stages = scaled_widths(width)
    n, c_in = _conv(7, in_channels, c0) + _bn(c0), c0
    for blocks, c_out, stride in zip(STAGE_BLOCKS, stages, (1, 2, 2, 2)):
        n += _se_basic_block(c_in, c_out, stride) + (blocks - 1) * _se_basic_block(c_out, c_out, 1)
        c_in = c_out
    return n


def _aspp(c_in, c_out, rates, branch):
    n = _conv(1, c_in, branch) + _bn(branch)  # 1x1 branch
    n += len(rates) * (_conv(3, c_in, branch) + _bn(branch))  # atrous branches
    n += c_in * branch + branch  # image pooling: 1x1 conv with bias, no BN
    return n + _conv(1, (len(rates) + 2) * branch, c_out) + _bn(c_out)  # projection


def _num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (1, 1), (3, 6), (5, 2)])
def test_conv_bn_relu_keeps_spatial_size(kernel_size, dilation):
    block = ConvBNReLU(4, 8, kernel_size, dilation)
    assert block(torch.randn(2, 4, 16, 12)).shape == (2, 8, 16, 12)


@pytest.mark.parametrize("args", [(0, 8), (4, 8, 2), (4, 8, 3, 0), (4.0, 8)])
def test_conv_bn_relu_rejects_invalid_arguments(args):
    with pytest.raises(ValueError):
        ConvBNReLU(*args)


@pytest.mark.parametrize("channels,reduction", [(64, 16), (32, 4), (48, 16)])
def test_se_block_equals_torchvision_squeeze_excitation(channels, reduction):
    ours = SEBlock(channels, reduction)
    ref = SqueezeExcitation(channels, channels // reduction)
    ref.load_state_dict(ours.state_dict())  # same parameter names and shapes
    x = torch.randn(3, channels, 7, 5)
    torch.testing.assert_close(ours(x), ref(x))


def test_se_block_keeps_at_least_one_squeeze_channel():
    block = SEBlock(8, reduction=16)
    assert block.fc1.out_channels == 1
    assert block(torch.randn(2, 8, 4, 4)).shape == (2, 8, 4, 4)


def test_se_block_rejects_invalid_arguments():
    with pytest.raises(ValueError):
        SEBlock(0)
    with pytest.raises(ValueError):
        SEBlock(16, reduction=0)


@pytest.mark.parametrize("c_in,c_out,stride", [(16, 32, 2), (16, 16, 1), (16, 32, 1), (32, 32, 2)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_se_basic_block_equals_torchvision_basic_block_with_se(c_in, c_out, stride, mode):
    ours = SEBasicBlock(c_in, c_out, stride)
    _randomise_batchnorm(ours)
    projection = stride != 1 or c_in != c_out
    assert (ours.downsample is not None) == projection
    downsample = None
    if projection:
        downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
    ref = _se_after_bn2(BasicBlock(c_in, c_out, stride, downsample), c_out)
    ref.load_state_dict(_torchvision_state(ours.state_dict()))
    ours.train(mode == "train"), ref.train(mode == "train")
    x = torch.randn(2, c_in, 12, 10)
    out = ours(x)
    assert out.shape == (2, c_out, 12 // stride, 10 // stride)
    torch.testing.assert_close(out, ref(x))


@pytest.mark.parametrize("c_in,c_out,stride", [(16, 32, 2), (64, 64, 1), (8, 8, 2)])
def test_se_basic_block_parameter_count_follows_the_architecture(c_in, c_out, stride):
    assert _num_parameters(SEBasicBlock(c_in, c_out, stride)) == _se_basic_block(c_in, c_out, stride)


def test_se_basic_block_rejects_stride_three():
    with pytest.raises(ValueError, match="stride"):
        SEBasicBlock(16, 16, stride=3)


def test_aspp_trains_with_batch_of_one():
    aspp = ASPP(32, 16, branch_channels=8).train()
    out = aspp(torch.randn(1, 32, 4, 4))  # a BN after global pooling would raise here
    assert out.shape == (1, 16, 4, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in aspp.parameters())


@pytest.mark.parametrize("c_in,c_out,rates,branch", [(512, 64, (3, 6, 9), 64), (32, 16, (2,), 8)])
def test_aspp_parameter_count_follows_the_architecture(c_in, c_out, rates, branch):
    with torch.device("meta"):
        aspp = ASPP(c_in, c_out, rates=rates, branch_channels=branch)
    assert _num_parameters(aspp) == _aspp(c_in, c_out, rates, branch)


def test_aspp_concatenates_five_branches_of_paper_width():
    aspp = ASPP(512)
    assert len(aspp.branches) == 4  # 1x1 + rates 3, 6, 9; image pooling is separate
    assert [b[0].dilation[0] for b in aspp.branches[1:]] == [3, 6, 9]
    assert aspp.project[0].in_channels == 5 * 64
    assert isinstance(aspp.pool_conv, nn.Conv2d) and aspp.pool_conv.bias is not None  # no BN


def test_aspp_keeps_channels_last_layout_and_values():
    aspp = ASPP(32, 16, branch_channels=8).eval()
    x = torch.randn(2, 32, 8, 8)
    out = aspp(x.to(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, aspp(x))


@pytest.mark.parametrize("kwargs", [{"rates": ()}, {"rates": (3, 0)}, {"branch_channels": 0},
                                    {"out_channels": -1}])
def test_aspp_rejects_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        ASPP(32, **kwargs)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_encoder_features_equal_torchvision_resnet34_with_se_blocks(in_channels):
    ref = resnet34(weights=None)
    ref.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    for layer in (ref.layer1, ref.layer2, ref.layer3, ref.layer4):
        for block in layer:
            _se_after_bn2(block, block.bn2.num_features)
    ours = SEResNet34Encoder(in_channels)
    missing, unexpected = ref.load_state_dict(_torchvision_state(ours.state_dict()), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    x = torch.randn(2, in_channels, 64, 96)
    with torch.no_grad():  # training-mode BN (batch statistics): activations stay O(1) through 16 blocks
        f = ref.relu(ref.bn1(ref.conv1(x)))
        ref_feats = [f]
        f = ref.maxpool(f)
        for layer in (ref.layer1, ref.layer2, ref.layer3, ref.layer4):
            f = layer(f)
            ref_feats.append(f)
        feats = ours(x)
    assert ours.out_channels == (64, 64, 128, 256, 512)
    assert [len(getattr(ours, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    for got, want in zip(feats, ref_feats, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("in_channels,width", [(1, 1.0), (3, 1.0), (1, 0.25), (1, 0.125)])
def test_encoder_parameter_count_follows_the_architecture(in_channels, width):
    with torch.device("meta"):  # shapes only
        enc = SEResNet34Encoder(in_channels, width=width)
    assert _num_parameters(enc) == _se_resnet34(in_channels, width)


def test_encoder_without_se_has_torchvision_resnet34_parameter_count():
    with torch.device("meta"):
        enc, ref = SEResNet34Encoder(3), resnet34(weights=None)
    se = sum(_num_parameters(m) for m in enc.modules() if isinstance(m, SEBlock))
    assert se == sum(n * _se(c) for n, c in zip(STAGE_BLOCKS, (64, 128, 256, 512)))
    head = 512 * 1000 + 1000  # torchvision's fc layer, which the encoder has not
    assert _num_parameters(enc) - se == _num_parameters(ref) - head == 21_284_672


def test_encoder_width_scales_every_stage():
    enc = SEResNet34Encoder(width=0.25)
    assert enc.out_channels == (16, 16, 32, 64, 128)
    feats = enc(torch.randn(2, 1, 64, 64))
    assert [t.shape[1] for t in feats] == list(enc.out_channels)
    assert [t.shape[-1] for t in feats] == [32, 16, 8, 4, 2]


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"width": -1.0}, {"in_channels": 0}, {"reduction": 0}])
def test_encoder_rejects_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        SEResNet34Encoder(**kwargs)


def test_encoder_classifier_trains_only_its_head_when_frozen():
    clf = EncoderClassifier(SEResNet34Encoder(width=0.25), num_classes=2).train()
    bn = clf.encoder.stem[1]
    stats_before = bn.running_mean.clone()
    logits = clf(torch.randn(3, 1, 64, 64))
    assert logits.shape == (3, 2)
    logits.sum().backward()
    assert all(p.grad is None for p in clf.encoder.parameters())
    assert all(p.grad is not None for p in clf.head.parameters())
    assert not clf.encoder.training and clf.head.training
    torch.testing.assert_close(bn.running_mean, stats_before)  # frozen BN statistics too


def test_encoder_classifier_unfreezes_on_request():
    clf = EncoderClassifier(SEResNet34Encoder(width=0.25), freeze_encoder=False).train()
    assert clf.encoder.training
    clf(torch.randn(2, 1, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in clf.encoder.parameters())
    clf.freeze_encoder()
    assert not any(p.requires_grad for p in clf.encoder.parameters())
    assert not clf.encoder.training
