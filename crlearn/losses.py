"""Hybrid segmentation loss with deep supervision (§2.7, Eq. 1).

Huang et al. train both the coarse and the refined output with the hybrid loss of
BASNet (Qin et al., "BASNet: Boundary-Aware Salient Object Detection", CVPR 2019,
https://openaccess.thecvf.com/content_CVPR_2019/html/Qin_BASNet_Boundary-Aware_Salient_Object_Detection_CVPR_2019_paper.html):

    L = L_bce + L_ssim + L_iou                                   (Eq. 1)

Each term looks at a different scale:

- BCE is per pixel: every pixel counts the same.
- SSIM is per patch (11x11 Gaussian window): it weighs pixels near boundaries,
  where the local structure of prediction and ground truth differ.
- IoU is per image: it weighs the foreground as a whole, whatever its size.

Conventions used throughout:

- Inputs are ``[B, C, H, W]``: one channel per class (e.g. ground-glass opacity,
  consolidation), each a binary (sigmoid) problem. ``target`` holds {0, 1}.
- Every term is computed per sample and class channel and then averaged over
  samples and channels, so each class weighs the same whatever its area.
- Autocast-safe: the sigmoid, SSIM, IoU and all reductions run in float32
  (float64 inputs stay float64, for ``gradcheck``), and the returned loss is
  float32 even under ``torch.autocast(..., dtype=torch.bfloat16)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from crlearn.checks import check_same_shape

__all__ = [
    "bce_loss",
    "ssim",
    "ssim_loss",
    "iou_loss",
    "hybrid_loss",
    "loss_maps",
    "deep_supervision_loss",
    "HybridLoss",
    "ssim_blur",
]

_SSIM_REDUCTIONS = ("mean", "per_channel", "none")
_LOSS_REDUCTIONS = ("mean", "none")


# --------------------------------------------------------------------------- helpers


def _compute_dtype(t: Tensor) -> torch.dtype:
    """float16/bfloat16 -> float32; float32/float64 unchanged."""
    return torch.promote_types(t.dtype, torch.float32)


def _no_autocast(t: Tensor):
    """A context that turns autocast off on ``t``'s device (conv2d would otherwise run in bf16/fp16)."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def _gaussian_1d(window_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised 1-D Gaussian of length ``window_size`` centred on the middle tap, made on ``device`` (a copy from
    the host would wait for the GPU at every call, and a CUDA graph cannot record one)."""
    coords = torch.arange(window_size, dtype=torch.float64, device=device) - window_size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype)


def _gaussian_filter(stack: Tensor, window_size: int, sigma: float) -> Tensor:
    """Depthwise separable Gaussian blur with zero 'same' padding.

    A 2-D Gaussian is the outer product of two 1-D ones, so blurring rows and then
    columns (two depthwise convs, ``groups`` = number of channels) equals one 2-D
    convolution at 2k instead of k^2 multiply-adds per pixel. Zero padding of
    ``window_size // 2`` on each side keeps H x W, as in BASNet's ``pytorch_ssim``.
    Inside :func:`ssim_blur` another implementation of the same blur runs instead.
    """
    g = _gaussian_1d(window_size, sigma, stack.dtype, stack.device)
    return (_BLUR.get() or _gaussian_filter_conv)(stack, g)


_BLUR: ContextVar[Callable[[Tensor, Tensor], Tensor] | None] = ContextVar("crlearn_ssim_blur", default=None)


@contextmanager
def ssim_blur(blur: Callable[[Tensor, Tensor], Tensor] | None) -> Iterator[None]:
    """Inside the block the SSIM term blurs with ``blur(stack, g)`` (``stack`` ``[B, N, H, W]``, ``g`` the 1-D
    Gaussian) instead of the two depthwise convolutions; ``None`` means the convolutions. The choice holds for the
    current thread (a ``ContextVar``) and is restored on leaving. The training engine plugs in a faster CPU blur
    here (:func:`crlearn.training.perf.cpu_ssim_blur`); the loss itself never imports it."""
    token = _BLUR.set(blur)
    try:
        yield
    finally:
        _BLUR.reset(token)


def _gaussian_filter_conv(stack: Tensor, g: Tensor) -> Tensor:
    """The blur of :func:`_gaussian_filter` as two depthwise 1-D convolutions (rows, then columns)."""
    n, k = stack.shape[1], g.numel()  # channels to blur independently, taps
    stack = F.conv2d(stack, g.view(1, 1, 1, -1).expand(n, 1, 1, k), padding=(0, k // 2), groups=n)
    return F.conv2d(stack, g.view(1, 1, -1, 1).expand(n, 1, k, 1), padding=(k // 2, 0), groups=n)


# --------------------------------------------------------------------------- the three terms


def bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on logits, averaged over all pixels, channels and samples (Eq. 1, L_bce).

    Uses ``F.binary_cross_entropy_with_logits`` (log-sum-exp form), which is
    numerically stable and which autocast always runs in float32.

    Args:
        logits: ``[B, C, H, W]`` raw network outputs.
        target: ``[B, C, H, W]`` binary masks (any dtype).
    """
    check_same_shape(logits, target, "logits", "target")
    dtype = _compute_dtype(logits)
    with _no_autocast(logits):
        return F.binary_cross_entropy_with_logits(logits.to(dtype), target.to(dtype))


def ssim(
    x: Tensor,
    y: Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    C1: float = 0.01**2,
    C2: float = 0.03**2,
    reduction: str = "mean",
) -> Tensor:
    """Structural similarity of two image batches with values in [0, 1] (Wang et al., 2004).

    For each pixel, with local Gaussian-weighted means mu, variances sigma^2 and covariance sigma_xy:

        SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))

    Each channel is filtered on its own (depthwise). The five maps x, y, x*x, y*y,
    x*y are stacked and blurred together in one pair of 1-D convolutions.

    Padding: zero 'same' padding (``window_size // 2``), as in BASNet's ``pytorch_ssim``,
    so the map is H x W. ``pytorch_msssim`` instead uses 'valid' filtering (no padding);
    the two agree on the interior of the map, i.e. after cropping ``window_size // 2``
    pixels from each side.

    Args:
        x, y: ``[B, C, H, W]`` images in [0, 1] (C1, C2 assume a data range of 1).
        window_size: side of the Gaussian window, odd. Default 11.
        sigma: standard deviation of the Gaussian window. Default 1.5.
        C1, C2: stabilising constants, (0.01 * 1)^2 and (0.03 * 1)^2 by default.
        reduction: ``"mean"`` -> scalar; ``"per_channel"`` -> ``[B, C]`` mean over H, W;
            ``"none"`` -> the SSIM map ``[B, C, H, W]`` (for heat maps).

    Returns:
        SSIM in float32 (float64 for float64 inputs), shaped by ``reduction``.
    """
    check_same_shape(x, y, "x", "y")
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd integer, got {window_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if reduction not in _SSIM_REDUCTIONS:
        raise ValueError(f"reduction must be one of {_SSIM_REDUCTIONS}, got {reduction!r}")

    dtype = torch.promote_types(_compute_dtype(x), _compute_dtype(y))
    with _no_autocast(x):
        x, y = x.to(dtype), y.to(dtype)
        c = x.shape[1]
        stats = _gaussian_filter(torch.cat([x, y, x * x, y * y, x * y], dim=1), window_size, sigma)  # (B, 5C, H, W)
        mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(c, dim=1)  # each (B, C, H, W)
        mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
        var_x, var_y, cov_xy = e_xx - mu_xx, e_yy - mu_yy, e_xy - mu_xy
        ssim_map = ((2 * mu_xy + C1) * (2 * cov_xy + C2)) / ((mu_xx + mu_yy + C1) * (var_x + var_y + C2))

        if reduction == "none":
            return ssim_map
        if reduction == "per_channel":
            return ssim_map.mean(dim=(2, 3))  # (B, C)
        return ssim_map.mean()


def ssim_loss(probs: Tensor, target: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """``1 - ssim(probs, target)`` averaged over samples, channels and pixels (Eq. 1, L_ssim).

    Takes probabilities (after the sigmoid), not logits: SSIM compares images in [0, 1].

    Args:
        probs: ``[B, C, H, W]`` predicted probabilities.
        target: ``[B, C, H, W]`` binary masks.
    """
    return 1 - ssim(probs, target, window_size=window_size, sigma=sigma)


def _iou_terms(probs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Soft intersection and union per sample and channel, each ``[B, C]``."""
    inter = (probs * target).sum(dim=(2, 3))
    union = probs.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) - inter
    return inter, union


def iou_loss(probs: Tensor, target: Tensor, eps: float = 1.0, reduction: str = "mean") -> Tensor:
    """``1 - soft IoU`` per sample and channel (Eq. 1, L_iou), with additive smoothing.

    With soft intersection I = sum(p * t) and union U = sum(p) + sum(t) - I over the pixels:

        L_iou = 1 - (I + eps) / (U + eps) = (U - I) / (U + eps)

    BASNet uses eps = 0, which is 0/0 when the ground truth is empty and the
    prediction is all zero, the common case on CT slices without lesions. With
    eps = 1 (one pixel's worth):

    - empty ground truth, empty prediction: loss 0;
    - empty ground truth, predicted area A: loss A / (A + 1), growing towards 1;
    - on a lesion of many pixels eps barely changes the value.

    Args:
        probs: ``[B, C, H, W]`` predicted probabilities.
        target: ``[B, C, H, W]`` binary masks.
        eps: smoothing in pixels, > 0. Default 1.
        reduction: ``"mean"`` -> scalar; ``"none"`` -> ``[B, C]``.
    """
    check_same_shape(probs, target, "probs", "target")
    if eps <= 0:
        raise ValueError(f"eps must be positive so an empty mask gives a finite loss, got {eps}")
    if reduction not in _LOSS_REDUCTIONS:
        raise ValueError(f"reduction must be one of {_LOSS_REDUCTIONS}, got {reduction!r}")
    dtype = _compute_dtype(probs)
    with _no_autocast(probs):
        inter, union = _iou_terms(probs.to(dtype), target.to(dtype))
        loss = 1 - (inter + eps) / (union + eps)  # (B, C)
        return loss if reduction == "none" else loss.mean()


# --------------------------------------------------------------------------- Eq. 1 and deep supervision


def hybrid_loss(
    logits: Tensor,
    target: Tensor,
    hybrid: bool = True,
    reduction: str = "mean",
    eps: float = 1.0,
) -> Tensor:
    """BCE + SSIM + IoU on one output (Eq. 1); ``hybrid=False`` gives plain BCE.

    Each term is computed per sample and class channel and averaged over channels
    (and samples), so the loss of a C-class output is the mean of C binary losses.
    ``hybrid=False`` is the "without hybrid loss" ablation of the paper.

    Args:
        logits: ``[B, C, H, W]`` raw outputs (the sigmoid is applied here, in float32).
        target: ``[B, C, H, W]`` binary masks.
        hybrid: if False, return only the BCE term.
        reduction: ``"mean"`` -> scalar; ``"none"`` -> ``[B, C]`` loss per sample and class.
        eps: IoU smoothing, see :func:`iou_loss`.

    Returns:
        float32 loss (float64 for float64 logits), also under autocast.
    """
    check_same_shape(logits, target, "logits", "target")
    if reduction not in _LOSS_REDUCTIONS:
        raise ValueError(f"reduction must be one of {_LOSS_REDUCTIONS}, got {reduction!r}")
    dtype = _compute_dtype(logits)
    with _no_autocast(logits):
        logits, target = logits.to(dtype), target.to(dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(2, 3))  # (B, C)
        loss = bce
        if hybrid:
            probs = torch.sigmoid(logits)
            loss = loss + (1 - ssim(probs, target, reduction="per_channel"))
            loss = loss + iou_loss(probs, target, eps=eps, reduction="none")
        return loss if reduction == "none" else loss.mean()


def loss_maps(logits: Tensor, target: Tensor, eps: float = 1.0) -> dict[str, Tensor]:
    """Per-pixel maps of the three terms of Eq. 1, for heat maps (notebook 05).

    Every map is ``[B, C, H, W]`` and its mean over H x W equals that term of
    :func:`hybrid_loss` with ``reduction="none"``:

    - ``"bce"``: binary cross-entropy of each pixel;
    - ``"ssim"``: ``1 - SSIM map`` (large where local structure differs, i.e. near boundaries);
    - ``"iou"``: ``H * W * (p + t - 2 p t) / (U + eps)``, each pixel's share of
      ``L_iou = (U - I) / (U + eps)``: the soft "disagreement" p + t - 2pt scaled by
      the image's union, so errors on a small lesion weigh more than on a large one.

    Returned maps are detached from the graph.
    """
    check_same_shape(logits, target, "logits", "target")
    dtype = _compute_dtype(logits)
    with torch.no_grad(), _no_autocast(logits):
        logits, target = logits.to(dtype), target.to(dtype)
        probs = torch.sigmoid(logits)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        ssim_map = 1 - ssim(probs, target, reduction="none")
        _, union = _iou_terms(probs, target)  # (B, C)
        h, w = probs.shape[-2:]
        disagreement = probs + target - 2 * probs * target
        iou_map = disagreement * (h * w) / (union + eps)[:, :, None, None]
    return {"bce": bce, "ssim": ssim_map, "iou": iou_map}


def _as_outputs(outputs: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """A tuple of logits with repeated objects (``final is coarse``) counted once."""
    if isinstance(outputs, Tensor):
        return [outputs]
    unique: list[Tensor] = []
    for out in outputs:
        if not isinstance(out, Tensor):
            raise ValueError(f"outputs must be tensors of logits, got {type(out).__name__}")
        if not any(out is seen for seen in unique):
            unique.append(out)
    if not unique:
        raise ValueError("outputs is empty: expected (coarse, final) logits")
    return unique


def deep_supervision_loss(
    outputs: Tensor | Sequence[Tensor],
    target: Tensor,
    hybrid: bool = True,
    eps: float = 1.0,
) -> Tensor:
    """Sum of :func:`hybrid_loss` over the coarse and final outputs (§2.7, deep supervision).

    Args:
        outputs: ``(coarse, final)`` logits (tuple or NamedTuple), each ``[B, C, h, w]``.
            For variants without refinement ``final`` may be the same object as
            ``coarse``; it is then counted once. A single tensor is also accepted.
            An output smaller than ``target`` is upsampled bilinearly to the
            target's H x W before the loss.
        target: ``[B, C, H, W]`` binary masks.
        hybrid: if False, every output gets plain BCE.
    """
    total = None
    for logits in _as_outputs(outputs):
        if logits.dim() == 4 and logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        loss = hybrid_loss(logits, target, hybrid=hybrid, eps=eps)
        total = loss if total is None else total + loss
    return total


class HybridLoss(nn.Module):
    """Training criterion of §2.7: Eq. 1 on each output, summed over outputs.

    Args:
        hybrid: BCE + SSIM + IoU if True (paper), plain BCE if False (ablation).
        deep_supervision: if True, sum the loss over all outputs ``(coarse, final)``;
            if False, use only the last one (the final, refined output).
        eps: IoU smoothing, see :func:`iou_loss`.

    Example::

        criterion = HybridLoss()
        loss = criterion(model(x), masks)  # model returns (coarse, final) logits
    """

    def __init__(self, hybrid: bool = True, deep_supervision: bool = True, eps: float = 1.0) -> None:
        super().__init__()
        if eps <= 0 or not math.isfinite(eps):
            raise ValueError(f"eps must be a positive finite number, got {eps}")
        self.hybrid = hybrid
        self.deep_supervision = deep_supervision
        self.eps = eps

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        """``outputs``: logits ``[B, C, H, W]`` or a tuple ``(coarse, final)`` of them."""
        if not self.deep_supervision and not isinstance(outputs, Tensor):
            outputs = outputs[-1]
        return deep_supervision_loss(outputs, target, hybrid=self.hybrid, eps=self.eps)

    def extra_repr(self) -> str:
        return f"hybrid={self.hybrid}, deep_supervision={self.deep_supervision}, eps={self.eps}"
