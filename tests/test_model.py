"""CR-Net: coarse module, refinement module, config and the whole network (crlearn.nn.model)."""

import pytest
import torch
import torch.nn.functional as F

from crlearn.nn.coarse import CoarseModule
from crlearn.nn.model import VARIANTS, CRNet, CRNetConfig, CRNetOutput
from crlearn.nn.refine import RefineModule

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


@pytest.fixture(scope="module", params=list(VARIANTS))
def quick_net(request):
    torch.manual_seed(0)  # module-scoped, so not covered by the function-scoped "seeded"
    return CRNet(CRNetConfig.quick(variant=request.param))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("batch,height,width", [(1, 64, 64), (4, 64, 96), (2, 128, 128), (3, 256, 256)])
def test_output_shapes_for_every_variant(quick_net, mode, batch, height, width):
    quick_net.train(mode == "train")
    with torch.no_grad():
        out = quick_net(torch.randn(batch, 1, height, width))
    assert isinstance(out, CRNetOutput)
    assert out.coarse.shape == out.final.shape == (batch, 1, height, width)
    assert (out.final is out.coarse) == (quick_net.config.variant != "crnet")


def test_full_width_crnet_keeps_input_resolution():
    net = CRNet(CRNetConfig.full(num_classes=3)).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 64, 64))
    assert out.final.shape == out.coarse.shape == (1, 3, 64, 64)


def test_every_parameter_gets_a_finite_gradient(quick_net):
    quick_net.train().zero_grad(set_to_none=True)
    out = quick_net(torch.randn(2, 1, 64, 64))
    y = (torch.rand(2, 1, 64, 64) > 0.8).float()
    loss = F.binary_cross_entropy_with_logits(out.coarse, y) + F.binary_cross_entropy_with_logits(out.final, y)
    loss.backward()
    for name, p in quick_net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_model_trains_with_batch_of_one():
    net = CRNet(CRNetConfig.quick()).train()
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    steps_before = int(bn.num_batches_tracked)
    out = net(torch.randn(1, 1, 64, 64))
    assert out.final.shape == out.coarse.shape == (1, 1, 64, 64) and torch.isfinite(out.final).all()
    out.final.sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert int(bn.num_batches_tracked) == steps_before + 1  # BN really ran in training mode


def test_channels_last_input_gives_the_same_logits():
    net = CRNet(CRNetConfig.quick()).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ref = net(x)
        net = net.to(memory_format=torch.channels_last)
        out = net(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out.final, ref.final, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.coarse, ref.coarse, rtol=1e-4, atol=1e-4)


def test_coarse_head_before_upsampling_equals_head_after():
    coarse = CoarseModule(width=0.25, num_classes=3)
    d = torch.randn(2, coarse.head.in_channels, 16, 24)
    up = F.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False)
    head_first = F.interpolate(coarse.head(d), scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(head_first, coarse.head(up), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_aspp", [True, False])
def test_refine_module_returns_a_residual_of_the_input_shape(use_aspp):
    refine = RefineModule(num_classes=2, channels=8, use_aspp=use_aspp)
    assert refine(torch.randn(2, 2, 32, 48)).shape == (2, 2, 32, 48)


def test_crnet_adds_the_refine_residual_to_the_coarse_logits():
    net = CRNet(CRNetConfig.quick()).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 64, 64))
        torch.testing.assert_close(out.final, out.coarse + net.refine(out.coarse))


# Computed once from the code; a change here means the architecture changed.
PARAMETER_COUNTS = {
    # (width, num_classes): {variant: parameters}
    (1.0, 1): {"unet": 25_460_909, "unet_aspp": 26_576_621, "crnet": 27_161_198},
    (1.0, 3): {"unet": 25_461_039, "unet_aspp": 26_576_751, "crnet": 27_163_634},
    (0.25, 1): {"unet": 1_596_428, "unet_aspp": 1_666_460, "crnet": 1_668_917},
    (0.25, 3): {"unet": 1_596_462, "unet_aspp": 1_666_494, "crnet": 1_669_097},
}


def _refine_parameters(k: int, c: int) -> int:
    """The refinement module of §2.6 counted from its layers: conv k*k*c_in*c_out (+ c_out bias), BN 2c."""

    def conv_bn(c_in: int, c_out: int, size: int = 3) -> int:  # conv without bias, then BN
        return size * size * c_in * c_out + 2 * c_out

    aspp = conv_bn(c, c, 1) + 3 * conv_bn(c, c) + (c * c + c) + conv_bn(5 * c, c, 1)  # rates 3, 6, 9 + pooling
    conv_in, conv_out = 9 * k * c + c, 9 * c * k + k
    return conv_in + 4 * conv_bn(c, c) + aspp + 4 * conv_bn(2 * c, c) + conv_out


@pytest.mark.parametrize("width,num_classes", list(PARAMETER_COUNTS))
def test_refine_module_parameter_count_follows_the_architecture(width, num_classes):
    c = (CRNetConfig.full() if width == 1.0 else CRNetConfig.quick()).refine_channels
    with torch.device("meta"):
        refine = RefineModule(num_classes=num_classes, channels=c)
    expected = _refine_parameters(num_classes, c)
    assert sum(p.numel() for p in refine.parameters()) == expected
    pinned = PARAMETER_COUNTS[(width, num_classes)]
    assert pinned["crnet"] - pinned["unet_aspp"] == expected  # "+ refine" adds exactly this module


@pytest.mark.parametrize("width,num_classes", list(PARAMETER_COUNTS))
def test_parameter_counts_are_pinned(width, num_classes):
    make = CRNetConfig.full if width == 1.0 else CRNetConfig.quick
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        counts = {v: CRNet(make(variant=v, num_classes=num_classes)).num_parameters() for v in VARIANTS}
    assert counts == PARAMETER_COUNTS[(width, num_classes)]


@pytest.mark.parametrize("shape", [(1, 1, 64, 48), (1, 1, 48, 64), (1, 3, 64, 64), (1, 64, 64),
                                   (1, 1, 0, 32), (2, 1, 1, 64, 64)])
def test_forward_rejects_a_bad_input_shape(shape):
    net = CRNet(CRNetConfig.quick(variant="unet"))
    with pytest.raises(ValueError, match=r"got shape \(" + ", ".join(map(str, shape))):
        net(torch.randn(shape))


@pytest.mark.parametrize("overrides", [{"variant": "unet++"}, {"width": 0.0}, {"num_classes": 0},
                                       {"in_channels": 1.5}, {"aspp_channels": 0}, {"reduction": True}])
def test_config_rejects_invalid_values(overrides):
    with pytest.raises(ValueError):
        CRNetConfig(**overrides)


def test_config_defaults_are_the_paper_and_quick_is_small():
    full = CRNetConfig.full()
    assert full == CRNetConfig()
    assert (full.width, full.variant, full.aspp_channels, full.refine_channels) == (1.0, "crnet", 64, 64)
    quick = CRNetConfig.quick(num_classes=3)
    assert quick.width < 1 and quick.num_classes == 3


def test_config_round_trips_through_a_dict():
    cfg = CRNetConfig.quick(variant="unet_aspp", num_classes=2)
    assert CRNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        CRNetConfig.from_dict({**cfg.to_dict(), "depth": 3})


def test_variants_name_the_table_7_rows():
    assert VARIANTS == {"unet": "U-Net (SE-ResNet34)", "unet_aspp": "+ ASPP", "crnet": "+ refine"}
