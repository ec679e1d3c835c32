"""Hybrid loss of §2.7 (Eq. 1): SSIM against pytorch_msssim and a direct 2-D reference, the three terms
against hand formulas, empty-mask behaviour, gradients, autocast."""

import pytest
import torch
import torch.nn.functional as F

from crlearn.losses import (
    HybridLoss,
    bce_loss,
    deep_supervision_loss,
    hybrid_loss,
    iou_loss,
    loss_maps,
    ssim,
    ssim_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def msssim():
    """pytorch_msssim, the reference SSIM; only the tests that compare against it skip without it."""
    return pytest.importorskip("pytorch_msssim")


def _disc(h: int, w: int, cy: float, cx: float, r: float, dtype=torch.float64) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r**2).to(dtype)


def _interior_mean(ssim_map: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """Mean of our 'same'-padded map over the pixels where 'valid' filtering is defined, per sample."""
    k = window_size // 2
    return ssim_map[..., k:-k, k:-k].mean(dim=(1, 2, 3))


def _reference_ssim(msssim, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return msssim.ssim(x, y, data_range=1.0, win_size=11, win_sigma=1.5, size_average=False)


def _direct_ssim_map(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM map written straight from Wang et al. (2004): one 2-D Gaussian window, zero 'same' padding,
    one channel at a time (BASNet's ``pytorch_ssim``). No separable filtering, no stacking."""
    coords = torch.arange(window_size, dtype=torch.float64) - window_size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    window = torch.outer(g, g) / torch.outer(g, g).sum()
    window = window.to(x.dtype)[None, None]  # (1, 1, k, k)

    def blur(t):
        return torch.cat([F.conv2d(t[:, c : c + 1], window, padding=window_size // 2) for c in range(t.shape[1])], 1)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


# --------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_pytorch_msssim_on_random_images(msssim, channels):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, channels, 37, 45, generator=gen, dtype=torch.float64)
    y = (0.6 * x + 0.4 * torch.rand(2, channels, 37, 45, generator=gen, dtype=torch.float64)).clamp(0, 1)
    ours = _interior_mean(ssim(x, y, reduction="none"))
    torch.testing.assert_close(ours, _reference_ssim(msssim, x, y), atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [1, 2])
def test_ssim_matches_pytorch_msssim_on_structured_images(msssim, channels):
    target = torch.stack([_disc(48, 48, 20 + 3 * c, 24, 9 + c) for c in range(channels)])[None]  # (1, C, 48, 48)
    shifted = torch.roll(target, shifts=(2, -3), dims=(2, 3))
    soft = torch.nn.functional.avg_pool2d(shifted, 5, stride=1, padding=2)  # a blurred, misplaced prediction
    for pred in (shifted, soft, torch.zeros_like(target)):
        ours = _interior_mean(ssim(pred, target, reduction="none"))
        torch.testing.assert_close(ours, _reference_ssim(msssim, pred, target), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(2, 1, 23, 31), (1, 3, 16, 16), (1, 2, 8, 40)])
def test_ssim_map_equals_direct_2d_reference_including_the_zero_padded_border(shape):
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    y = (0.5 * x + 0.5 * torch.rand(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    torch.testing.assert_close(ssim(x, y, reduction="none"), _direct_ssim_map(x, y), atol=1e-10, rtol=1e-10)


def test_ssim_of_identical_images_is_one():
    x = torch.rand(2, 3, 20, 20)
    torch.testing.assert_close(ssim(x, x, reduction="none"), torch.ones_like(x), atol=1e-5, rtol=0)


def test_ssim_reductions_have_documented_shapes():
    x, y = torch.rand(2, 3, 16, 20), torch.rand(2, 3, 16, 20)
    ssim_map = ssim(x, y, reduction="none")
    assert ssim_map.shape == (2, 3, 16, 20)
    torch.testing.assert_close(ssim(x, y, reduction="per_channel"), ssim_map.mean(dim=(2, 3)))
    torch.testing.assert_close(ssim(x, y), ssim_map.mean())
    torch.testing.assert_close(ssim_loss(x, y), 1 - ssim_map.mean())


def test_ssim_refuses_bad_arguments():
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="odd"):
        ssim(x, x, window_size=10)
    with pytest.raises(ValueError, match="reduction"):
        ssim(x, x, reduction="sum")
    with pytest.raises(ValueError, match="same shape"):
        ssim(x, torch.rand(1, 1, 16, 17))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        ssim(x[0], x[0])


# --------------------------------------------------------------------------- IoU


def test_iou_loss_hand_computed():
    probs = torch.zeros(1, 1, 4, 4)
    target = torch.zeros(1, 1, 4, 4)
    probs[0, 0, 0, :3] = 1  # 3 pixels
    target[0, 0, 0, 1:4] = 1  # 3 pixels, 2 shared: I = 2, U = 4
    torch.testing.assert_close(iou_loss(probs, target), torch.tensor(1 - (2 + 1) / (4 + 1)))
    torch.testing.assert_close(iou_loss(probs, target, eps=1e-9), torch.tensor(0.5))


def test_iou_loss_is_zero_for_empty_mask_and_empty_prediction():
    empty = torch.zeros(1, 1, 8, 8)
    assert iou_loss(empty, empty).item() == 0.0


def test_iou_loss_finite_on_empty_mask_and_grows_with_false_positive_area():
    target = torch.zeros(1, 1, 8, 8)
    losses = []
    for area in (1, 3, 10):
        probs = torch.zeros(1, 1, 8, 8)
        probs.view(-1)[:area] = 1
        losses.append(iou_loss(probs, target).item())
        assert losses[-1] == pytest.approx(area / (area + 1))
    assert losses == sorted(losses)


def test_iou_loss_refuses_non_positive_eps():
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="eps"):
        iou_loss(x, x, eps=0.0)


# --------------------------------------------------------------------------- hybrid loss (Eq. 1)


def _cases():
    """(name, logits, target) for the edge cases every loss must survive."""
    gen = torch.Generator().manual_seed(1)
    shape = (2, 2, 24, 24)
    random_logits = torch.randn(shape, generator=gen)
    lesion = torch.zeros(shape)
    lesion[:, :, 8:14, 6:12] = 1
    return [
        ("empty mask", random_logits, torch.zeros(shape)),
        ("empty mask, confident empty prediction", torch.full(shape, -20.0), torch.zeros(shape)),
        ("full mask", random_logits, torch.ones(shape)),
        ("full mask, confident full prediction", torch.full(shape, 20.0), torch.ones(shape)),
        ("constant image", torch.zeros(shape), lesion),
        ("batch of one", random_logits[:1], lesion[:1]),
        ("perfect prediction", 30 * (2 * lesion - 1), lesion),
    ]


LOSSES = {
    "bce": lambda z, t: bce_loss(z, t),
    "ssim": lambda z, t: ssim_loss(torch.sigmoid(z), t),
    "iou": lambda z, t: iou_loss(torch.sigmoid(z), t),
    "hybrid": lambda z, t: hybrid_loss(z, t),
    "deep_supervision": lambda z, t: deep_supervision_loss((z, 0.5 * z), t),
}


@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_every_loss_finite_with_finite_gradients_on_edge_cases(loss_name):
    for case, logits, target in _cases():
        logits = logits.clone().requires_grad_(True)
        loss = LOSSES[loss_name](logits, target)
        loss.backward()
        assert loss.dim() == 0 and torch.isfinite(loss), f"{loss_name} on {case}: {loss}"
        assert torch.isfinite(logits.grad).all(), f"{loss_name} gradient on {case}"


def test_hybrid_loss_is_zero_for_perfect_prediction_and_known_for_the_inverted_one():
    *_, (_, perfect, target) = _cases()  # logits +-30 on a lesion mask
    assert hybrid_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    # Inverted: every pixel costs softplus(30) ~ 30 in BCE; IoU has I = 0, U = all H*W pixels.
    hw = target.shape[-2] * target.shape[-1]
    expected = 30.0 + (1 - ssim(1 - target, target).item()) + hw / (hw + 1)
    assert hybrid_loss(-perfect, target).item() == pytest.approx(expected, rel=1e-6)


def test_hybrid_loss_without_hybrid_is_plain_bce():
    logits, target = torch.randn(2, 2, 16, 16), (torch.rand(2, 2, 16, 16) > 0.7).float()
    torch.testing.assert_close(hybrid_loss(logits, target, hybrid=False), bce_loss(logits, target))


def test_hybrid_loss_equals_eq_1_written_out_per_sample_and_channel():
    gen = torch.Generator().manual_seed(6)
    logits = 3 * torch.randn(3, 2, 18, 14, generator=gen, dtype=torch.float64)
    target = (torch.rand(3, 2, 18, 14, generator=gen) > 0.7).double()
    p = 1 / (1 + torch.exp(-logits))
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean(dim=(2, 3))
    ssim_term = 1 - _direct_ssim_map(p, target).mean(dim=(2, 3))
    inter = (p * target).sum(dim=(2, 3))
    union = p.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) - inter
    iou_term = 1 - (inter + 1) / (union + 1)
    expected = bce + ssim_term + iou_term  # (B, C)
    torch.testing.assert_close(hybrid_loss(logits, target, reduction="none"), expected)
    torch.testing.assert_close(hybrid_loss(logits, target), expected.mean())
    torch.testing.assert_close(bce_loss(logits, target), bce.mean())
    torch.testing.assert_close(iou_loss(p, target, reduction="none"), iou_term)


def test_hybrid_loss_is_sum_of_three_terms_averaged_over_channels():
    logits, target = torch.randn(3, 2, 16, 16), (torch.rand(3, 2, 16, 16) > 0.7).float()
    probs = torch.sigmoid(logits)
    expected = bce_loss(logits, target) + ssim_loss(probs, target) + iou_loss(probs, target)
    torch.testing.assert_close(hybrid_loss(logits, target), expected)
    per_item = hybrid_loss(logits, target, reduction="none")
    assert per_item.shape == (3, 2)
    torch.testing.assert_close(per_item.mean(), expected)


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda z, t: ssim_loss(torch.sigmoid(z), t),
        lambda z, t: iou_loss(torch.sigmoid(z), t),
        lambda z, t: hybrid_loss(z, t),
    ],
    ids=["ssim_loss", "iou_loss", "hybrid_loss"],
)
def test_losses_pass_gradcheck_in_float64(loss_fn):
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 1, 12, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(1, 1, 12, 12, generator=gen) > 0.6).double()
    assert torch.autograd.gradcheck(lambda z: loss_fn(z, target), (logits,))


def test_hybrid_loss_under_bfloat16_autocast_is_finite_float32():
    logits = torch.randn(2, 2, 32, 32, requires_grad=True)
    target = (torch.rand(2, 2, 32, 32) > 0.8).float()
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(logits)  # bf16 activations, as from a network under autocast
        assert out.dtype == torch.bfloat16
        loss = hybrid_loss(out, target)
        ds_loss = deep_supervision_loss((out, out * 2), target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert ds_loss.dtype == torch.float32 and torch.isfinite(ds_loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_loss_maps_average_to_the_loss_terms():
    logits, target = torch.randn(2, 2, 20, 20), (torch.rand(2, 2, 20, 20) > 0.7).float()
    maps = loss_maps(logits, target)
    assert set(maps) == {"bce", "ssim", "iou"}
    assert all(m.shape == logits.shape and not m.requires_grad for m in maps.values())
    probs = torch.sigmoid(logits)
    torch.testing.assert_close(maps["bce"].mean(), bce_loss(logits, target))
    torch.testing.assert_close(maps["ssim"].mean(), ssim_loss(probs, target))
    torch.testing.assert_close(maps["iou"].mean(dim=(2, 3)), iou_loss(probs, target, reduction="none"))
    total = sum(m.mean(dim=(2, 3)) for m in maps.values())
    torch.testing.assert_close(total, hybrid_loss(logits, target, reduction="none"))


# --------------------------------------------------------------------------- deep supervision


def test_deep_supervision_sums_coarse_and_final():
    coarse, final = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    target = (torch.rand(2, 1, 16, 16) > 0.7).float()
    expected = hybrid_loss(coarse, target) + hybrid_loss(final, target)
    torch.testing.assert_close(deep_supervision_loss((coarse, final), target), expected)


def test_deep_supervision_counts_shared_output_once():
    coarse = torch.randn(2, 1, 16, 16)
    target = (torch.rand(2, 1, 16, 16) > 0.7).float()
    torch.testing.assert_close(deep_supervision_loss((coarse, coarse), target), hybrid_loss(coarse, target))


def test_deep_supervision_upsamples_a_smaller_coarse_output():
    coarse, final = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 16, 16)
    target = (torch.rand(1, 1, 16, 16) > 0.7).float()
    upsampled = F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
    expected = hybrid_loss(upsampled, target) + hybrid_loss(final, target)
    torch.testing.assert_close(deep_supervision_loss((coarse, final), target), expected)


def test_hybrid_loss_module_options():
    coarse, final = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    target = (torch.rand(2, 1, 16, 16) > 0.7).float()
    torch.testing.assert_close(HybridLoss()((coarse, final), target), deep_supervision_loss((coarse, final), target))
    torch.testing.assert_close(HybridLoss(deep_supervision=False)((coarse, final), target), hybrid_loss(final, target))
    torch.testing.assert_close(HybridLoss(hybrid=False)(final, target), bce_loss(final, target))
    assert "hybrid=True" in repr(HybridLoss())
    with pytest.raises(ValueError, match="eps"):
        HybridLoss(eps=-1.0)
    torch.testing.assert_close(HybridLoss()(coarse, target), hybrid_loss(coarse, target))  # a single tensor
    torch.testing.assert_close(HybridLoss(eps=5.0)(final, target), hybrid_loss(final, target, eps=5.0))
