"""Helpers the notebooks 00-03 use (crlearn.blocks receptive-field functions)."""

import pytest
import torch
from torch import nn

from crlearn.blocks import ASPP, ConvBNReLU, effective_receptive_field, receptive_field


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
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3, padding=rate, dilation=rate)
    erf = effective_receptive_field(conv, torch.randn(1, 2, 31, 31))
    assert erf.shape == (31, 31)
    rows, cols = torch.nonzero(erf, as_tuple=True)
    assert len(rows) == 9
    assert int(rows.max() - rows.min()) + 1 == receptive_field(3, rate)
    assert int(cols.max() - cols.min()) + 1 == receptive_field(3, rate)


def test_effective_receptive_field_restores_training_mode_and_leaves_input_alone():
    torch.manual_seed(0)
    block = ConvBNReLU(1, 4).train()
    x = torch.randn(1, 1, 9, 9)
    before = x.clone()
    erf = effective_receptive_field(block, x)
    assert block.training
    assert torch.equal(x, before) and not x.requires_grad
    assert int((erf > 0).sum()) <= 9  # eval-mode BN: no mixing across pixels


def test_effective_receptive_field_of_aspp_is_global_through_image_pooling():
    torch.manual_seed(0)
    erf = effective_receptive_field(ASPP(8, 32, branch_channels=8), torch.randn(1, 8, 15, 15))
    assert bool((erf > 0).all())


def test_effective_receptive_field_rejects_a_batch():
    with pytest.raises(ValueError, match=r"\(1, C, H, W\)"):
        effective_receptive_field(nn.Identity(), torch.randn(2, 1, 4, 4))
