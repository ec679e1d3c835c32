"""Gated segmentation: a slice classifier flags COVID-19 slices, and only those are segmented.

Huang et al., "A coarse-refine segmentation network for COVID-19 CT images", IET Image Processing 16(2), 2022,
doi:10.1049/ipr2.12278 (§2.8): the encoder of the segmentation network, with global average pooling and a linear
layer (:class:`~crlearn.encoder.EncoderClassifier`), tells slices with lesions from slices without; the pipeline
segments the slices it calls positive. A negative slice is never shown to the segmenter, so its probabilities are
all zero ("not segmented"), and a lesion slice the classifier misses loses its whole mask.

    from crlearn.gate import gated_predict
    out = gated_predict(segmenter, classifier, images, size=128)   # images (N, 1, H, W) in [0, 1]
    out.probs[~out.positive].abs().sum() == 0                       # skipped slices: zeros

The classifier sees each slice once, at its own input size, without test-time augmentation; the positives then go
through :func:`crlearn.inference.predict_logits` (with TTA if asked), exactly as ungated inference would.
:func:`crlearn.bench.bench_gate` measures what the gate saves in time and costs in Dice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .classifier import predict_proba
from .inference import predict_logits

__all__ = ["GatedPrediction", "covid_probability", "gated_predict"]


@dataclass(frozen=True)
class GatedPrediction:
    """What :func:`gated_predict` returns; every tensor is on the CPU."""

    p_covid: Tensor  # (N,) float32: the classifier's probability of class 1 (COVID-19 lesion on the slice)
    positive: Tensor  # (N,) bool: p_covid >= threshold, the slices that were segmented
    probs: Tensor  # (N, K, H, W) lesion probabilities at the input size; all zero on negative slices
    masks: Tensor  # (N, K, H, W) bool: probs > 0.5, as crlearn.inference.predict labels them

    @property
    def n_segmented(self) -> int:
        return int(self.positive.sum())

    @property
    def n_skipped(self) -> int:
        return len(self.positive) - self.n_segmented


def check_images(images: Tensor) -> None:
    """Refuse anything but a non-empty float stack ``(N, 1, H, W)``."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 1 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty (N, 1, H, W) tensor of CT slices, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")


def covid_probability(classifier: nn.Module, images: Tensor, size: int, device: str | torch.device | None = None,
                      batch_size: int = 8) -> Tensor:
    """P(COVID-19) per slice, ``(N,)`` float32 on the CPU (:func:`crlearn.classifier.predict_proba`), each slice
    resized to the classifier's ``size`` as the segmenter's input is; one view, no test-time augmentation."""
    return torch.from_numpy(predict_proba(classifier, images, device, batch_size, size)).float()


def gated_predict(segmenter: nn.Module, classifier: nn.Module, images: Tensor, size: int,
                  device: str | torch.device | None = None, tta: bool = True, threshold: float = 0.5,
                  classifier_size: int | None = None, batch_size: int = 8) -> GatedPrediction:
    """Classify every slice, segment only those the classifier calls COVID-19 (Huang et al. 2022, §2.8).

    Args:
        segmenter: a :class:`~crlearn.model.CRNet` (anything whose output has ``.final`` logits and whose
            ``config.num_classes`` says K).
        classifier: slice classifier returning logits ``(B, C)``, class 1 = COVID-19, e.g. an
            :class:`~crlearn.encoder.EncoderClassifier` on the segmenter's encoder.
        images: ``(N, 1, H, W)`` slices in [0, 1], at any resolution.
        size: the segmenter's input size (pixels, divisible by 32).
        device: e.g. ``"cuda"``; default CUDA if available, else CPU.
        tta: five-view test-time augmentation for the segmenter (:func:`~crlearn.inference.predict_logits`).
        threshold: a slice is segmented when ``p_covid >= threshold``; 0 segments every slice (the result then
            equals :func:`~crlearn.inference.predict`), anything above 1 none.
        classifier_size: the classifier's input size; default ``size``.
        batch_size: slices per forward pass, for both models.

    Returns:
        A :class:`GatedPrediction`: probabilities and masks at the images' own size, zero where not segmented.
    """
    check_images(images)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
        raise ValueError(f"threshold must be a number (0: segment every slice, > 1: none), got {threshold!r}")
    classifier_size = size if classifier_size is None else classifier_size
    p_covid = covid_probability(classifier, images, classifier_size, device, batch_size)  # (N,)
    positive = p_covid >= threshold  # (N,)
    n, _, h, w = images.shape
    probs = torch.zeros(n, segmenter.config.num_classes, h, w)  # (N, K, H, W): negatives stay "not segmented"
    if positive.any():
        probs[positive] = torch.sigmoid(predict_logits(segmenter, images[positive], size, device, batch_size, tta))
    return GatedPrediction(p_covid, positive, probs, probs > 0.5)
