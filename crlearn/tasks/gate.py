"""Gated segmentation: a slice classifier flags COVID-19 slices, and only those are segmented.

Huang et al., "A coarse-refine segmentation network for COVID-19 CT images", IET Image Processing 16(2), 2022,
doi:10.1049/ipr2.12278 (§2.8): the encoder of the segmentation network, with global average pooling and a linear
layer (:class:`~crlearn.nn.encoder.EncoderClassifier`), tells slices with lesions from slices without; the pipeline
segments the slices it calls positive. A negative slice is never shown to the segmenter, so its probabilities are
all zero ("not segmented"), and a lesion slice the classifier misses loses its whole mask.

    from crlearn.tasks.gate import gated_predict
    out = gated_predict(segmenter, classifier, images, size=128)   # images (N, 1, H, W) in [0, 1]
    out.probs[~out.positive].abs().sum() == 0                       # skipped slices: zeros

The classifier sees each slice once, at its own input size, without test-time augmentation; the positives then go
through :func:`crlearn.inference.predict_logits` (with TTA if asked), exactly as ungated inference would.
:func:`crlearn.bench.bench_gate` measures what the gate saves in time and costs in Dice.

:func:`predict_files` is ``crlearn predict``'s library side: PNG files in, masks (gated or not) out, each model
reading a slice the way it was trained to (the segmenter with its checkpoint's normalisation, the classifier as
:class:`~crlearn.data.slices.ClassificationDataset` reads its slices).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from crlearn.data.slices import classifier_input
from crlearn.tasks.classifier import THRESHOLD, predict_proba
from crlearn.data.folder import normalize_intensity, read_image
from crlearn.inference import predict, predict_logits
from crlearn.nn.model import mask_cut, mask_threshold

__all__ = ["FilePrediction", "GatedPrediction", "area_rows", "covid_probability", "gated_predict", "predict_files"]


@dataclass(frozen=True)
class GatedPrediction:
    """What :func:`gated_predict` returns; every tensor is on the CPU."""

    p_covid: Tensor  # (N,) float32: the classifier's probability of class 1 (COVID-19 lesion on the slice)
    positive: Tensor  # (N,) bool: p_covid >= threshold, the slices that were segmented
    probs: Tensor  # (N, K, H, W) lesion probabilities at the input size; all zero on negative slices
    masks: Tensor  # (N, K, H, W) bool: probs > the segmenter's mask threshold, as crlearn.inference.predict

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


def covid_probability(classifier: nn.Module, images: Tensor, size: int | None,
                      device: str | torch.device | None = None, batch_size: int = 8) -> Tensor:
    """P(COVID-19) per slice, ``(N,)`` float32 on the CPU (:func:`crlearn.tasks.classifier.predict_proba`), each slice
    resized to the classifier's ``size`` as the segmenter's input is (``None``: already at it); one view, no
    test-time augmentation."""
    return torch.from_numpy(predict_proba(classifier, images, device, batch_size, size)).float()


def gated_predict(segmenter: nn.Module, classifier: nn.Module, images: Tensor, size: int,
                  device: str | torch.device | None = None, tta: bool = True, threshold: float = 0.5,
                  classifier_size: int | None = None, batch_size: int = 8,
                  classifier_images: Tensor | None = None) -> GatedPrediction:
    """Classify every slice, segment only those the classifier calls COVID-19 (Huang et al. 2022, §2.8).

    Args:
        segmenter: a :class:`~crlearn.nn.model.CRNet` (anything whose output has ``.final`` logits and whose
            ``config.num_classes`` says K).
        classifier: slice classifier returning logits ``(B, C)``, class 1 = COVID-19, e.g. an
            :class:`~crlearn.nn.encoder.EncoderClassifier` on the segmenter's encoder.
        images: ``(N, 1, H, W)`` slices in [0, 1], at any resolution.
        size: the segmenter's input size (pixels, divisible by 32).
        device: e.g. ``"cuda"``; default CUDA if available, else CPU.
        tta: five-view test-time augmentation for the segmenter (:func:`~crlearn.inference.predict_logits`).
        threshold: a slice is segmented when ``p_covid >= threshold``; 0 segments every slice (the result then
            equals :func:`~crlearn.inference.predict`), anything above 1 none.
        classifier_size: the classifier's input size; default ``size`` (with ``classifier_images``: their own).
        batch_size: slices per forward pass, for both models.
        classifier_images: the same ``N`` slices as the classifier was trained to read them (e.g. by
            :func:`crlearn.data.slices.classifier_input`: its own normalisation and fit); default ``images``.

    Returns:
        A :class:`GatedPrediction`: probabilities and masks at the images' own size, zero where not segmented.
    """
    check_images(images)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
        raise ValueError(f"threshold must be a number (0: segment every slice, > 1: none), got {threshold!r}")
    if classifier_images is None:
        classifier_images, classifier_size = images, size if classifier_size is None else classifier_size
    elif len(classifier_images) != len(images):
        raise ValueError(f"classifier_images must hold the same {len(images)} slices as images, "
                         f"got {len(classifier_images)}")
    p_covid = covid_probability(classifier, classifier_images, classifier_size, device, batch_size)  # (N,)
    positive = p_covid >= threshold  # (N,)
    n, _, h, w = images.shape
    probs = torch.zeros(n, segmenter.config.num_classes, h, w)  # (N, K, H, W): negatives stay "not segmented"
    if positive.any():
        probs[positive] = torch.sigmoid(predict_logits(segmenter, images[positive], size, device, batch_size, tta))
    return GatedPrediction(p_covid, positive, probs, mask_cut(probs, mask_threshold(segmenter)))


# ----------------------------------------------------------------------------- files: crlearn predict


@dataclass(frozen=True)
class FilePrediction:
    """One image file's prediction (:func:`predict_files`); tensors on the CPU."""

    path: str  # as given
    image: Tensor  # (1, 1, H, W): the slice as read, before any normalisation (what an overlay shows)
    masks: Tensor  # (1, K, H, W) bool at the file's own size; all False when not segmented
    p_covid: float | None  # the classifier's P(COVID-19); None when no classifier gated the file
    segmented: bool  # False: the classifier called the slice negative and the segmenter never saw it

    @property
    def title(self) -> str:
        """The file's stem, with the classifier's call when there was one."""
        if self.p_covid is None:
            return Path(self.path).stem
        return f"{Path(self.path).stem}, {'' if self.segmented else 'not '}segmented (P(COVID)={self.p_covid:.2f})"


def predict_files(paths: Sequence[str | Path], segmenter: nn.Module, size: int, normalize: str = "none",
                  classifier: nn.Module | None = None, classifier_ckpt: Mapping[str, Any] | None = None,
                  threshold: float = THRESHOLD, device: str | torch.device | None = None,
                  tta: bool = True) -> list[FilePrediction]:
    """Masks for grayscale PNG slices, one file at a time, each at its own size; gated when a classifier is given.

    Args:
        paths: PNG files (8- or 16-bit grayscale, any size).
        segmenter: a CR-Net; ``size`` and ``normalize`` are those it was trained with (its checkpoint's
            ``train_config``): each slice is normalised so, then :func:`crlearn.inference.predict` (no classifier)
            or :func:`gated_predict` runs.
        classifier: a slice classifier (:func:`crlearn.tasks.classifier.load_classifier`); ``None``: every slice is
            segmented and ``p_covid`` is ``None``.
        classifier_ckpt: the classifier's checkpoint; its ``size``, ``fit`` and ``normalize`` say how it reads a
            slice (:func:`crlearn.data.slices.classifier_input`, as in training).
        threshold: a slice is segmented when ``p_covid >= threshold``.
        device, tta: as for :func:`gated_predict`.
    """
    if classifier is not None and classifier_ckpt is None:
        raise ValueError("a classifier needs its checkpoint (size, fit, normalize) to read slices as in training")
    out = []
    for path in paths:
        image = torch.from_numpy(read_image(path))[None, None]  # (1, 1, H, W)
        seg_in = normalize_intensity(image, normalize)
        if classifier is None:
            _, masks = predict(segmenter, seg_in, size, device, tta=tta)
            out.append(FilePrediction(str(path), image, masks, None, True))
            continue
        cls_in = classifier_input(image[0], classifier_ckpt["size"], classifier_ckpt.get("fit", "pad"),
                                  classifier_ckpt.get("normalize", "none"))[None]  # (1, 1, S, S)
        gated = gated_predict(segmenter, classifier, seg_in, size, device, tta, threshold, classifier_images=cls_in)
        out.append(FilePrediction(str(path), image, gated.masks, float(gated.p_covid[0]), bool(gated.positive[0])))
    return out


def area_rows(predictions: Sequence[FilePrediction], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """``areas.csv``: one row per file and class with ``image``, ``class``, ``pixels`` and ``fraction`` (of the
    slice's pixels); when a classifier gated the files, also ``p_covid`` (4 decimals) and ``segmented`` (a skipped
    slice: 0 pixels). Without one those two columns are absent, so the file is as it was before gating existed."""
    rows = []
    for pred in predictions:
        h, w = pred.masks.shape[-2:]
        for k, name in enumerate(class_names):
            px = int(pred.masks[0, k].sum())
            row = {"image": pred.path, "class": name, "pixels": px, "fraction": px / (h * w)}
            if pred.p_covid is not None:
                row.update(p_covid=round(pred.p_covid, 4), segmented=pred.segmented)
            rows.append(row)
    return rows
