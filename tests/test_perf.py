"""The CPU speed workarounds in crlearn.training.perf: same numbers as plain PyTorch, only the route differs."""

import platform
import sys

import pytest
import torch
from conftest import TINY
from torch import nn

from crlearn.training import perf
from crlearn.nn.model import CRNet, CRNetConfig

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


@pytest.mark.parametrize("channels", [4, 8, 32])
def test_narrow_batchnorm_matches_nn_batchnorm_forward_backward_and_statistics(channels):
    ref = nn.BatchNorm2d(channels)
    ours = nn.BatchNorm2d(channels)
    ours.load_state_dict(ref.state_dict())
    assert perf.apply_to_model(ours, torch.device("cpu")) == (1 if channels < 16 else 0)
    x = torch.randn(4, channels, 16, 16).contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(xa), ours(xb)
    assert yb.is_contiguous(memory_format=torch.channels_last)  # the layout the next layer expects
    torch.testing.assert_close(yb, ya)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)


def test_apply_to_model_changes_only_narrow_batchnorms_on_cpu_and_keeps_the_state_dict():
    model = CRNet(CRNetConfig(num_classes=1, **TINY))
    keys = list(model.state_dict())
    narrow = sum(isinstance(m, nn.BatchNorm2d) and m.num_features < 16 for m in model.modules())
    assert narrow > 0
    assert perf.apply_to_model(model, torch.device("meta")) == 0  # other devices: untouched
    assert perf.apply_to_model(model, torch.device("cpu")) == narrow
    assert sum(type(m) is perf.NarrowBatchNorm2d for m in model.modules()) == narrow
    assert list(model.state_dict()) == keys
    assert perf.apply_to_model(model, torch.device("cpu")) == 0  # applying twice changes nothing more


def test_keep_freed_memory_on_glibc_and_a_no_op_elsewhere(monkeypatch):
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert perf.keep_freed_memory() is glibc
    assert perf.keep_freed_memory() is glibc  # calling it again is harmless
    monkeypatch.setattr(sys, "platform", "darwin")
    assert perf.keep_freed_memory() is False
