"""Inference: logits at the images' own size, test-time augmentation, and evaluation with crlearn.metrics.

Predictions are made at the model's input size and resized back, so metrics are computed at the data's own
resolution. Test-time augmentation (TTA, this project's choice, as in nnU-Net; the paper does not use it) averages
the logits of the paper's five training views (§2.3), each mapped back.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crlearn.training import perf
from crlearn.data.augment import AUGMENTATIONS, apply_view
from crlearn.data.folder import MERGED_CLASS
from crlearn.metrics import SegmentationMeter, confusion_counts
from crlearn.nn.model import mask_cut, mask_threshold
from crlearn.training.device import autocast, autocast_dtype, pick_device, to_device


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def prepare_model(model: nn.Module, device: str | torch.device | None = None
                  ) -> tuple[nn.Module, torch.device, torch.dtype | None]:
    """Put ``model`` on the device in channels_last layout and eval mode; returns it, the device and the autocast
    dtype (``None`` on CPU)."""
    device = pick_device(device)
    model = model.to(device=device, memory_format=torch.channels_last).eval()
    return model, device, autocast_dtype(device)


def model_batches(images: Tensor, size: int | None, device: torch.device, batch_size: int = 8) -> Iterator[Tensor]:
    """Batches of ``images (N, C, H, W)`` resized to ``(size, size)`` (bilinear, antialiased: as in training; ``None``
    keeps their size), each copied once to the device in channels_last layout: the input side of every inference
    loop."""
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        yield to_device(x if size is None else _resize(x, (size, size)), device)


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, size: int, device: str | torch.device | None = None,
                   batch_size: int = 8, tta: bool = True) -> Tensor:
    """Final logits ``(N, K, H, W)`` at the images' own size for images ``(N, 1, H, W)`` in [0, 1].

    Each image is resized to the model's ``size`` (bilinear, antialiased: as in training), the logits are resized
    back (bilinear). Runs under autocast on CUDA. With ``tta`` (on by default) the model sees the five training
    views of each image (identity, rot90/180/270, hflip), each prediction is mapped back and the logits averaged:
    five forward passes for a steadier mask.
    """
    model, device, dtype = prepare_model(model, device)
    views = AUGMENTATIONS if tta else ("identity",)
    h, w = images.shape[-2:]
    outs = []
    with perf.narrow_batchnorm(model, device):  # a CPU speed workaround; the model's modules are restored after
        for xs in model_batches(images, size, device, batch_size):  # the views are made on the device
            logits = 0.0
            for view in views:
                with autocast(device, dtype):
                    out = model(apply_view(xs, view).contiguous(memory_format=torch.channels_last)).final
                logits = logits + apply_view(out.float(), view, inverse=True)
            logits = logits / len(views)
            outs.append(F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).cpu())
    return torch.cat(outs)


def predict(model: nn.Module, images: Tensor, size: int, device: str | torch.device | None = None,
            tta: bool = True, threshold: float | Sequence[float] | None = None,
            batch_size: int = 8) -> tuple[Tensor, Tensor]:
    """Probabilities and boolean labels at the images' own size (``tta``, ``batch_size``: see predict_logits): a
    pixel is a class where its probability exceeds ``threshold`` (default: the model's, :func:`mask_threshold`)."""
    probs = torch.sigmoid(predict_logits(model, images, size, device, batch_size, tta))
    return probs, mask_cut(probs, mask_threshold(model) if threshold is None else threshold)


def evaluate(model: nn.Module, dataset: Any, size: int, device: str | torch.device | None = None,
             boundary_tolerance: int = 2, batch_size: int = 8, tta: bool = True) -> dict[str, Any]:
    """Per-class metrics at the dataset's own resolution (:class:`~crlearn.metrics.SegmentationMeter`).

    ``dataset`` is a :class:`~crlearn.data.folder.SegmentationDataset`, ideally at its original resolution
    (``size=None``). Returns pooled and per-slice Dice, IoU, pixel precision, pixel recall and boundary F1 for
    every class, plus the merged ``infection`` class (the union of all classes) when there are several classes and
    none of them is already called ``infection``.
    """
    names = list(dataset.class_names)
    merged = len(names) > 1 and MERGED_CLASS not in names
    meter = SegmentationMeter(names + ([MERGED_CLASS] if merged else []), boundary_tolerance=boundary_tolerance)
    for i in range(0, len(dataset.records), batch_size):
        target = dataset.one_hot(dataset.labels[i : i + batch_size]) > 0.5  # (B, K, H, W)
        _, pred = predict(model, dataset.images[i : i + batch_size], size, device, tta=tta)
        if merged:
            pred = torch.cat([pred, pred.any(1, keepdim=True)], 1)
            target = torch.cat([target, target.any(1, keepdim=True)], 1)
        meter.update(pred, target)
    return meter.compute()


def patient_counts(model: nn.Module, test_set: Any, size: int,
                   device: str | torch.device | None = None, tta: bool = True,
                   batch_size: int = 8) -> dict[str, np.ndarray]:
    """Pixel counts per patient group of a :class:`~crlearn.data.folder.SegmentationDataset` at the slices' own
    resolution: ``{group: (K, 3) [TP, FP, FN] per class}`` (the input of :mod:`crlearn.stats`'s patient bootstrap)."""
    out: dict[str, np.ndarray] = {}
    groups = test_set.groups
    for i in range(0, len(test_set.records), batch_size):
        target = test_set.one_hot(test_set.labels[i : i + batch_size]) > 0.5  # (B, K, H, W)
        _, pred = predict(model, test_set.images[i : i + batch_size], size, device, tta=tta)  # (B, K, H, W)
        c = confusion_counts(pred, target)
        per_slice = torch.stack([c["tp"], c["fp"], c["fn"]], dim=-1).numpy()  # (B, K, 3)
        for g, counts in zip(groups[i : i + batch_size], per_slice):
            out[g] = out.get(g, 0) + counts.astype(np.int64)
    return out
