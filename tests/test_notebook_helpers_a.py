"""Helpers the notebooks 00-03 use (crlearn.nn.blocks receptive-field functions)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crlearn.nn.blocks import ASPP, ConvBNReLU, effective_receptive_field, receptive_field

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


@pytest.mark.parametrize("kernel_size,dilation,expected", [(3, 1, 3), (3, 3, 7), (3, 6, 13), (3, 9, 19),
                                                           (1, 5, 1), (7, 1, 7)])
def test_receptive_field_of_dilated_kernel(kernel_size, dilation, expected):
    assert receptive_field(kernel_size, dilation) == expected


@pytest.mark.parametrize("args", [(0, 1), (3, 0), (3.0, 1)])
def test_receptive_field_rejects_invalid_arguments(args):
    with pytest.raises(ValueError):
        receptive_field(*args)


@pytest.mark.parametrize("rate", [1, 3, 6, 9])
def test_effective_receptive_field_of_atrous_conv_is_its_nine_taps(rate):
    conv = nn.Conv2d(2, 4, 3, padding=rate, dilation=rate)
    erf = effective_receptive_field(conv, torch.randn(1, 2, 31, 31))
    assert erf.shape == (31, 31)
    rows, cols = torch.nonzero(erf, as_tuple=True)
    assert len(rows) == 9
    assert int(rows.max() - rows.min()) + 1 == receptive_field(3, rate)
    assert int(cols.max() - cols.min()) + 1 == receptive_field(3, rate)


def test_effective_receptive_field_restores_training_mode_and_leaves_input_alone():
    block = ConvBNReLU(1, 4).train()
    x = torch.randn(1, 1, 9, 9)
    before = x.clone()
    effective_receptive_field(block, x)
    assert block.training
    assert torch.equal(x, before) and not x.requires_grad


def test_effective_receptive_field_of_conv_bn_relu_equals_the_chain_rule_by_hand():
    block = ConvBNReLU(1, 6).train()
    conv, bn = block[0], block[1]
    with torch.no_grad():  # eval-mode BN as a per-channel affine map y = scale * z + shift, not the identity
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.3, 0.3)
        bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 1, 9, 9)
    erf = effective_receptive_field(block, x)

    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (6,)
        pre = F.conv2d(x, conv.weight, padding=1)[0, :, 4, 4] * scale + bn.bias - bn.running_mean * scale
        active = (pre > 0).to(x.dtype)  # ReLU passes the gradient only where its input is positive
        # d sum_c y[c, 4, 4] / d x[4 + i - 1, 4 + j - 1] = sum_c active_c * scale_c * w[c, 0, i, j]
        expected = torch.zeros(9, 9)
        expected[3:6, 3:6] = torch.einsum("c,cij->ij", active * scale, conv.weight[:, 0]).abs()
    assert 0 < int(active.sum()) < 6  # the case mixes open and closed ReLUs
    torch.testing.assert_close(erf, expected)


def test_effective_receptive_field_of_aspp_is_global_through_image_pooling():
    erf = effective_receptive_field(ASPP(8, 32, branch_channels=8), torch.randn(1, 8, 15, 15))
    assert bool((erf > 0).all())


def test_effective_receptive_field_rejects_a_batch():
    with pytest.raises(ValueError, match=r"\(1, C, H, W\)"):
        effective_receptive_field(nn.Identity(), torch.randn(2, 1, 4, 4))
