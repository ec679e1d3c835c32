"""Building blocks and the SE-ResNet-34 encoder (crlearn.blocks, crlearn.encoder)."""

import pytest
import torch
from torch import nn
from torchvision.models import resnet34
from torchvision.ops import SqueezeExcitation

from crlearn.blocks import ASPP, BatchNorm2d, ConvBNReLU, SEBasicBlock, SEBlock
from crlearn.encoder import EncoderClassifier, SEResNet34Encoder


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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


def test_se_basic_block_downsamples_with_a_projection_shortcut():
    block = SEBasicBlock(16, 32, stride=2)
    assert isinstance(block.downsample, nn.Sequential)
    assert block(torch.randn(2, 16, 16, 16)).shape == (2, 32, 8, 8)


def test_se_basic_block_keeps_identity_shortcut_when_shape_is_unchanged():
    block = SEBasicBlock(16, 16)
    assert block.downsample is None
    assert block(torch.randn(2, 16, 8, 8)).shape == (2, 16, 8, 8)


def test_se_basic_block_rejects_stride_three():
    with pytest.raises(ValueError, match="stride"):
        SEBasicBlock(16, 16, stride=3)


def test_aspp_trains_with_batch_of_one():
    aspp = ASPP(32, 16, branch_channels=8).train()
    out = aspp(torch.randn(1, 32, 4, 4))  # a BN after global pooling would raise here
    assert out.shape == (1, 16, 4, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in aspp.parameters())


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
def test_encoder_feature_shapes_equal_torchvision_resnet34(in_channels):
    ref = resnet34(weights=None).eval()
    ref.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    ours = SEResNet34Encoder(in_channels).eval()
    x = torch.randn(1, in_channels, 64, 96)
    with torch.no_grad():
        f = ref.relu(ref.bn1(ref.conv1(x)))
        ref_feats = [f]
        f = ref.maxpool(f)
        for layer in (ref.layer1, ref.layer2, ref.layer3, ref.layer4):
            f = layer(f)
            ref_feats.append(f)
        feats = ours(x)
    assert [t.shape for t in feats] == [t.shape for t in ref_feats]
    assert ours.out_channels == (64, 64, 128, 256, 512)
    n_blocks = [len(getattr(ours, f"layer{i}")) for i in range(1, 5)]
    assert n_blocks == [len(getattr(ref, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]


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


@pytest.mark.parametrize("channels", [4, 32])
def test_batchnorm_matches_torch_in_both_layouts(channels):
    torch.manual_seed(0)
    ours, ref = BatchNorm2d(channels), nn.BatchNorm2d(channels)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5), ours.bias.uniform_(-1, 1)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, channels, 8, 8).contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    assert ya.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(ya, yb, atol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g), yb.backward(g)
    assert torch.allclose(xa.grad, xb.grad, atol=1e-5)
    assert torch.allclose(ours.weight.grad, ref.weight.grad, atol=1e-4)
    assert torch.allclose(ours.running_var, ref.running_var, atol=1e-6)
