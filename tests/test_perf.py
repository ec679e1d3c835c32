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
    x = torch.randn(4, channels, 16, 16).contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with perf.narrow_batchnorm(ours, torch.device("cpu")) as n:
        assert n == (1 if channels < 16 else 0)
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


def test_narrow_batchnorm_swaps_only_narrow_batchnorms_on_cpu_and_restores_the_callers_modules():
    model = CRNet(CRNetConfig(num_classes=1, **TINY))
    keys = list(model.state_dict())
    classes = [type(m) for m in model.modules()]
    narrow = sum(isinstance(m, nn.BatchNorm2d) and m.num_features < 16 for m in model.modules())
    assert narrow > 0
    with perf.narrow_batchnorm(model, torch.device("meta")) as n:
        assert n == 0  # other devices: untouched
    with perf.narrow_batchnorm(model, torch.device("cpu")) as n:
        assert n == narrow
        assert sum(type(m) is perf.NarrowBatchNorm2d for m in model.modules()) == narrow
        assert list(model.state_dict()) == keys
    assert [type(m) for m in model.modules()] == classes  # the caller's modules, as they were


def test_fit_and_predict_leave_the_callers_modules_and_generators_as_they_were(small_data):
    from crlearn.data.folder import SegmentationDataset
    from crlearn.inference import predict_logits
    from crlearn.training.config import TrainConfig
    from crlearn.training.engine import fit

    ds = SegmentationDataset(small_data, merge=True)
    model = CRNet(CRNetConfig(num_classes=1, **TINY))
    classes = [type(m) for m in model.modules()]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    fit(model, ds.subset([0, 1], size=64), ds.subset([2], size=64), TrainConfig(size=64, epochs=1), ["infection"],
        progress=False)
    predict_logits(model, ds.images[:1], 64, "cpu", tta=False)
    assert [type(m) for m in model.modules()] == classes
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.backends.cudnn.benchmark is False


def test_keep_freed_memory_on_glibc_and_a_no_op_elsewhere(monkeypatch):
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert perf.keep_freed_memory() is glibc
    assert perf.keep_freed_memory() is glibc  # calling it again is harmless
    monkeypatch.setattr(sys, "platform", "darwin")
    assert perf.keep_freed_memory() is False


def test_fit_threads_to_cpus_caps_torch_at_the_cpu_quota_unless_the_user_chose(monkeypatch):
    import joblib

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)  # record; the process keeps its threads
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)  # a 16-core host ...
    monkeypatch.setattr(joblib, "cpu_count", lambda: 2)  # ... and a 2-CPU quota
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert perf.fit_threads_to_cpus() == 2 and calls == [2]
    monkeypatch.setenv("OMP_NUM_THREADS", "8")  # the user's choice wins
    assert perf.fit_threads_to_cpus() is None and calls == [2]
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(joblib, "cpu_count", lambda: 32)  # no quota below the thread count: nothing changes
    assert perf.fit_threads_to_cpus() is None and calls == [2]


def test_the_crlearn_command_fits_its_threads_to_the_cpus_and_says_so(monkeypatch, capsys, tmp_path):
    from crlearn.cli.main import main

    monkeypatch.setattr(perf, "fit_threads_to_cpus", lambda: 2)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt")]) == 2  # any command: a quick failure
    err = capsys.readouterr().err
    assert "crlearn: 2 CPU threads" in err and "missing.pt" in err


@pytest.mark.parametrize("shape", [(2, 5, 32, 32), (1, 3, 24, 40), (1, 2, 7, 9)])
def test_banded_blur_equals_the_depthwise_convolutions_values_and_gradients(shape):
    from crlearn.losses import _gaussian_1d, _gaussian_filter_conv
    from crlearn.training.perf import gaussian_blur_banded

    x = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    g = _gaussian_1d(11, 1.5, torch.float64, x.device)
    w = torch.rand(shape, dtype=torch.float64)
    banded, conv = gaussian_blur_banded(x, g), _gaussian_filter_conv(x, g)
    torch.testing.assert_close(banded, conv)
    (grad_banded,) = torch.autograd.grad((banded * w).sum(), x)
    (grad_conv,) = torch.autograd.grad((conv * w).sum(), x)
    torch.testing.assert_close(grad_banded, grad_conv)


def test_banded_blur_on_a_channels_last_stack_and_the_loss_uses_it_inside_the_cpu_context_only():
    from crlearn import losses
    from crlearn.training import perf

    x = torch.rand(2, 5, 16, 16).contiguous(memory_format=torch.channels_last)
    g = losses._gaussian_1d(11, 1.5, x.dtype, x.device)
    torch.testing.assert_close(perf.gaussian_blur_banded(x, g), losses._gaussian_filter_conv(x, g))
    calls = []

    def recording_blur(stack, k):
        calls.append(stack.shape)
        return stack

    a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    plain = losses.ssim(a, b)
    assert calls == []  # outside the context: the teaching convolutions
    with losses.ssim_blur(recording_blur):
        losses.ssim(a, b)
    assert calls == [(1, 5, 16, 16)]
    torch.testing.assert_close(losses.ssim(a, b), plain)  # restored on leaving
    with perf.cpu_ssim_blur(torch.device("cpu")):
        torch.testing.assert_close(losses.ssim(a, b), plain)  # the banded blur: the same SSIM
        assert losses._BLUR.get() is perf.gaussian_blur_banded
    assert losses._BLUR.get() is None
    with perf.cpu_ssim_blur(torch.device("meta")):
        assert losses._BLUR.get() is None  # not CPU: nothing changes
