"""Table 4's baselines: the original U-Net (crlearn.nn.unet) and U-Net++ (crlearn.nn.unetpp), and build_model."""

import pytest
import torch
from torch.utils.data import TensorDataset

from crlearn.losses import deep_supervision_loss
from crlearn.nn.model import BASELINES, CRNet, CRNetConfig, CRNetOutput, build_model
from crlearn.nn.unet import DoubleConv, UNet, UpBlock, unet_widths
from crlearn.nn.unetpp import DeepSupervisionOutput, NestedNode, UNetPlusPlus, node_name

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")

SMALL = dict(base_width=4, depth=3)  # 8x8 px at the bottom of a 64 px input; unit tests stay well under a second


def _double_conv_count(c_in: int, c_out: int) -> int:
    """Two 3x3 convolutions without bias, each followed by a BatchNorm (weight and bias per channel)."""
    return 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out


def _encoder_count(c_in: int, widths: tuple[int, ...]) -> int:
    chans = (c_in, *widths)
    return sum(_double_conv_count(chans[i], chans[i + 1]) for i in range(len(widths)))


def _unet_count(c_in: int, k: int, base: int, depth: int) -> int:
    """Closed form: encoder, a double conv of C_i + C_{i+1} -> C_i channels per decoder level, a 1x1 head."""
    c = [base * 2**i for i in range(depth + 1)]
    decoder = sum(_double_conv_count(c[i] + c[i + 1], c[i]) for i in range(depth))
    return _encoder_count(c_in, tuple(c)) + decoder + c[0] * k + k


def _unetpp_count(c_in: int, k: int, base: int, depth: int, deep_supervision: bool) -> int:
    """Closed form: encoder, node X^{i,j} (i + j <= depth, j >= 1) a double conv of j C_i + C_{i+1} -> C_i, heads."""
    c = [base * 2**i for i in range(depth + 1)]
    nodes = sum(_double_conv_count(j * c[i] + c[i + 1], c[i]) for j in range(1, depth + 1) for i in range(depth - j + 1))
    heads = (depth if deep_supervision else 1) * (c[0] * k + k)
    return _encoder_count(c_in, tuple(c)) + nodes + heads


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("batch,height,width", [(2, 32, 32), (3, 64, 48), (2, 16, 80)])
@pytest.mark.parametrize("make", [lambda: UNet(num_classes=3, **SMALL),
                                  lambda: UNetPlusPlus(num_classes=3, **SMALL),
                                  lambda: UNetPlusPlus(num_classes=3, deep_supervision=True, **SMALL)],
                         ids=["unet", "unetpp", "unetpp_ds"])
def test_output_shapes_for_several_sizes(make, mode, batch, height, width):
    net = make().train(mode == "train")
    with torch.no_grad():
        out = net(torch.randn(batch, 1, height, width))
    assert out.final.shape == (batch, 3, height, width)
    assert all(o.shape == (batch, 3, height, width) for o in out)


@pytest.mark.parametrize("make", [lambda: UNet(**SMALL), lambda: UNetPlusPlus(**SMALL),
                                  lambda: UNetPlusPlus(deep_supervision=True, **SMALL)],
                         ids=["unet", "unetpp", "unetpp_ds"])
def test_every_parameter_gets_a_nonzero_finite_gradient(make):
    net = make().train()
    loss = deep_supervision_loss(net(torch.randn(2, 1, 32, 32)), (torch.rand(2, 1, 32, 32) > 0.7).float())
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or not p.grad.abs().sum() > 0]
    assert not missing, missing


@pytest.mark.parametrize("base,depth,k", [(4, 3, 1), (16, 4, 3), (8, 2, 2)])
def test_parameter_counts_match_the_closed_form(base, depth, k):
    assert UNet(num_classes=k, base_width=base, depth=depth).num_parameters() == _unet_count(1, k, base, depth)
    for ds in (False, True):
        net = UNetPlusPlus(num_classes=k, base_width=base, depth=depth, deep_supervision=ds)
        assert net.num_parameters() == _unetpp_count(1, k, base, depth, ds)


def test_paper_width_unet_has_the_expected_count():
    """The paper's widths (base 64, depth 4), one input and one output channel: 31.38 M parameters."""
    assert UNet().num_parameters() == _unet_count(1, 1, 64, 4) == 31_383_681


@pytest.fixture(scope="module")
def smp_decoders():
    """SMP's U-Net and U-Net++ decoder modules (importing SMP takes a few seconds, once)."""
    unet = pytest.importorskip("segmentation_models_pytorch.decoders.unet.decoder")
    return unet, pytest.importorskip("segmentation_models_pytorch.decoders.unetplusplus.decoder")


@pytest.mark.parametrize("base", [4, 16])
def test_decoders_match_smp_parameter_counts(smp_decoders, base):
    """SMP's U-Net and U-Net++ decoders (bilinear/nearest up-sampling, conv-BN-ReLU x2 per node) built on our
    encoder's channels: same node inputs and outputs, so the same parameter count. SMP's whole models sit on a
    ResNet encoder and add a sixth decoder block at full resolution: not comparable as wholes."""
    smp_unet, smp_pp = smp_decoders
    c = unet_widths(base, 4)
    encoder_channels = (1, *c)  # SMP drops the first entry (its full-resolution "feature", the input)
    ours_unet = UNet(base_width=base)
    ours_pp = UNetPlusPlus(base_width=base)
    count = lambda m: sum(p.numel() for p in m.parameters())
    theirs_unet = smp_unet.UnetDecoder(encoder_channels, c[-2::-1], n_blocks=4)
    assert count(ours_unet.decoder) == count(theirs_unet)
    theirs_pp = smp_pp.UnetPlusPlusDecoder(encoder_channels, (*c[-2::-1], 0), n_blocks=5)  # 0: no sixth block
    assert count(ours_pp.nodes) == count(theirs_pp)
    assert len(ours_pp.nodes) == len([b for b in theirs_pp.blocks.values() if not b.is_empty]) == 10


@pytest.mark.parametrize("j", [1, 2, 3, 4])
def test_nested_node_reads_j_times_its_level_plus_the_level_below(j):
    node = NestedNode(j, level_channels=8, below_channels=16)
    assert node.in_channels == NestedNode.input_channels(j, 8, 16) == j * 8 + 16
    assert node.conv[0][0].in_channels == j * 8 + 16 and node.conv[1][0].out_channels == 8
    out = node([torch.randn(2, 8, 12, 12) for _ in range(j)], torch.randn(2, 16, 6, 6))
    assert out.shape == (2, 8, 12, 12)
    with pytest.raises(ValueError, match=f"j={j}"):
        node([torch.randn(2, 8, 12, 12)] * (j + 1), torch.randn(2, 16, 6, 6))


def test_nested_node_of_column_one_is_unets_decoder_step():
    step, node = UpBlock(8, 16, 8), NestedNode(1, 8, 16)
    node.load_state_dict(step.state_dict())  # same modules, same names
    step.eval(), node.eval()
    skip, below = torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(node([skip], below), step(skip, below))


def test_unetpp_grid_has_a_node_per_cell_of_the_triangle():
    net = UNetPlusPlus(**SMALL)
    assert sorted(net.nodes) == sorted(node_name(i, j) for j in range(1, 4) for i in range(4 - j))
    grid = net.eval().decode(torch.randn(1, 1, 32, 32))
    assert [len(row) for row in grid] == [4, 3, 2, 1]
    assert [tuple(row[-1].shape[1:]) for row in grid] == [(4, 32, 32), (8, 16, 16), (16, 8, 8), (32, 4, 4)]


def test_deep_supervision_on_and_off():
    x = torch.randn(2, 1, 32, 32)
    plain = UNetPlusPlus(**SMALL).eval()
    out = plain(x)
    assert isinstance(out, CRNetOutput) and out.final is out.coarse and len(plain.heads) == 1
    ds = UNetPlusPlus(deep_supervision=True, **SMALL).eval()
    out = ds(x)
    assert isinstance(out, DeepSupervisionOutput) and len(out) == len(ds.heads) == 3
    torch.testing.assert_close(out.final, torch.stack(list(out)).mean(0))
    last = UNetPlusPlus(deep_supervision=True, final="last", **SMALL).eval()
    last.load_state_dict(ds.state_dict())
    torch.testing.assert_close(last(x).final, out[-1])
    y = (torch.rand(2, 1, 32, 32) > 0.7).float()
    summed = sum(deep_supervision_loss(h, y) for h in out)  # the loss sums over the heads
    torch.testing.assert_close(deep_supervision_loss(out, y), summed)


@pytest.mark.parametrize("make", [lambda: UNet(**SMALL), lambda: UNetPlusPlus(deep_supervision=True, **SMALL)],
                         ids=["unet", "unetpp_ds"])
def test_batch_of_one_in_eval_mode(make):
    net = make()
    with torch.no_grad():
        net(torch.randn(4, 1, 32, 32))  # BN running statistics move off their initial values
    net.eval()
    with torch.no_grad():
        a = net(torch.randn(1, 1, 32, 32)).final
    assert a.shape == (1, 1, 32, 32) and torch.isfinite(a).all()


def test_untrained_baselines_predict_the_prior():
    for net in (UNet(prior=0.05, **SMALL), UNetPlusPlus(prior=0.05, deep_supervision=True, **SMALL)):
        heads = [net.head] if isinstance(net, UNet) else list(net.heads)
        assert all(torch.allclose(torch.sigmoid(h.bias), torch.tensor(0.05)) for h in heads)


@pytest.mark.parametrize("bad", [dict(base_width=0), dict(depth=0), dict(num_classes=0), dict(prior=1.0)])
def test_bad_arguments_are_refused(bad):
    for cls in (UNet, UNetPlusPlus):
        with pytest.raises(ValueError):
            cls(**{**SMALL, **bad})
    with pytest.raises(ValueError, match="final"):
        UNetPlusPlus(final="median")


def test_input_not_divisible_by_two_to_the_depth_is_refused():
    with pytest.raises(ValueError, match="divisible by 8"):
        UNet(**SMALL)(torch.randn(1, 1, 36, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        UNetPlusPlus(**SMALL)(torch.randn(1, 3, 32, 32))


def test_build_model_gives_the_quick_width_to_every_model():
    cfg = CRNetConfig.quick(num_classes=3)
    assert build_model("plain_unet", cfg).widths == (16, 32, 64, 128, 256)
    pp = build_model("unetpp", cfg, deep_supervision=True)
    assert pp.widths[0] == 16 and pp.config["deep_supervision"] and pp.config["num_classes"] == 3
    assert isinstance(build_model("crnet", cfg), CRNet)
    assert build_model("unet", cfg).config.variant == "unet"  # Table 7's SE-ResNet U-Net, not the 2015 one
    assert build_model("plain_unet", CRNetConfig.full()).widths[0] == 64
    assert set(BASELINES) == {"plain_unet", "unetpp"}
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("segnet", cfg)


def test_baselines_train_through_the_engine():
    from crlearn.training.config import TrainConfig
    from crlearn.training.engine import fit

    x = torch.rand(4, 1, 32, 32)
    y = (x > 0.6).float()
    cfg = TrainConfig(size=32, epochs=2, batch_size=2, lr=1e-2, augment=False)
    for net in (UNet(**SMALL), UNetPlusPlus(deep_supervision=True, **SMALL)):
        hist = fit(net, TensorDataset(x, y), TensorDataset(x, y), cfg, ["lesion"], device="cpu", progress=False)
        assert len(hist["epoch"]) == 2 and all(torch.isfinite(torch.tensor(hist["val_loss"])))


def test_double_conv_keeps_the_size():
    assert DoubleConv(3, 5)(torch.randn(1, 3, 9, 7)).shape == (1, 5, 9, 7)
