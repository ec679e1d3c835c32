"""Segmentation metrics and the classifier's metrics (§3.2, Eq. 2-9; the classifier is that of §2.8).

Segmentation metrics are computed per class channel from pixel counts on binary
masks ``[B, C, H, W]`` (one channel per class, each a yes/no mask):

    Dice      = 2 TP / (2 TP + FP + FN)
    IoU       = TP / (TP + FP + FN)
    precision = TP / (TP + FP)
    recall    = TP / (TP + FN)

Two ways to summarise a set of slices:

- **pooled**: add TP, FP, FN over all slices, then take the ratios once. Large
  lesions weigh more. This project reports pooled numbers; the paper does not say how it
  averaged (the metrics notebook, section 4, shows when the two differ).
- **per slice**: take the ratios on each slice, then average. Every slice weighs
  the same, including slices without lesions.

Empty-case rule (one rule, used everywhere, pooled and per slice):

- if ground truth **and** prediction are both empty (TP = FP = FN = 0), the
  slice is perfect: Dice = IoU = precision = recall = 1;
- otherwise a ratio whose denominator is 0 is 0. E.g. empty ground truth with
  FP > 0: Dice = IoU = precision = 0 and recall = 0 (0/0 -> 0); lesion missed
  entirely (FN > 0, nothing predicted): precision = 0.

Boundary F1 (BF score; Csurka et al., "What is a good evaluation measure for
semantic segmentation?", BMVC 2013) applies the same rule to boundary pixels:
both boundaries empty -> P = R = F1 = 1; exactly one empty -> 0.

Classification metrics (COVID-19 vs. not, per slice or per patient) wrap scikit-learn.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from crlearn.checks import as_bool_mask, check_same_shape
from crlearn.report import markdown_table

__all__ = [
    "binarize",
    "confusion_counts",
    "ratios_from_counts",
    "segmentation_scores",
    "boundary",
    "boundary_counts",
    "boundary_f1",
    "hd95",
    "SegmentationMeter",
    "classification_metrics",
    "patient_level",
    "format_table",
]

SEG_METRICS = ("dice", "iou", "precision", "recall")


# --------------------------------------------------------------------------- inputs


def binarize(probs: Tensor, threshold: float = 0.5) -> Tensor:
    """Binary mask ``probs >= threshold`` as bool, ``[B, C, H, W]`` -> same shape.

    For logits, ``binarize(logits.sigmoid())`` equals ``binarize(logits, threshold=0.0)``.
    """
    return probs >= threshold


def _check_pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Check two ``[B, C, H, W]`` masks of one shape, each bool or {0, 1}; return both as bool."""
    check_same_shape(pred, target, "pred", "target")
    return as_bool_mask(pred, "pred"), as_bool_mask(target, "target")


# --------------------------------------------------------------------------- counts and ratios (Eq. 2-9)


def confusion_counts(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Pixel counts TP, FP, FN per slice and class, each ``[B, C]`` int64."""
    pred, target = _check_pair(pred, target)
    tp = (pred & target).sum(dim=(2, 3))
    fp = (pred & ~target).sum(dim=(2, 3))
    fn = (~pred & target).sum(dim=(2, 3))
    return {"tp": tp, "fp": fp, "fn": fn}


def _ratio(num: Tensor, den: Tensor, all_empty: Tensor) -> Tensor:
    """num / den with the module's empty-case rule: 1 where ``all_empty``, else 0 where den == 0."""
    num, den = num.double(), den.double()
    out = torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))
    return torch.where(all_empty, torch.ones_like(out), out)


def ratios_from_counts(tp: Tensor, fp: Tensor, fn: Tensor) -> dict[str, Tensor]:
    """Dice, IoU, precision, recall from counts of any shape (float64), with the empty-case rule."""
    tp, fp, fn = (torch.as_tensor(v) for v in (tp, fp, fn))
    empty = (tp + fp + fn) == 0
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, empty),
        "iou": _ratio(tp, tp + fp + fn, empty),
        "precision": _ratio(tp, tp + fp, empty),
        "recall": _ratio(tp, tp + fn, empty),
    }


def segmentation_scores(pred: Tensor, target: Tensor, pooled: bool = True) -> dict[str, Tensor]:
    """Dice, IoU, precision, recall per class, ``[C]`` each.

    Args:
        pred, target: ``[B, C, H, W]`` bool or {0, 1} masks.
        pooled: sum the counts over the batch first (True) or average per-slice ratios (False).
    """
    counts = confusion_counts(pred, target)
    if pooled:
        return ratios_from_counts(*(counts[k].sum(0) for k in ("tp", "fp", "fn")))
    return {k: v.mean(0) for k, v in ratios_from_counts(counts["tp"], counts["fp"], counts["fn"]).items()}


# --------------------------------------------------------------------------- boundary F1


def _shift_reduce(mask: Tensor, radius: int, op: str) -> Tensor:
    """OR (dilation) or AND (erosion) of ``mask`` with its shifts by up to ``radius`` pixels along
    H and then W, i.e. over a (2 radius + 1)^2 square. Pixels outside the image are ignored.

    Separable (one pass along H, one along W) and on bool tensors, with no float conversion.
    """
    out = mask
    for dim in (2, 3):
        src, out = out, out.clone()
        size = src.shape[dim]
        for s in range(1, min(radius, size - 1) + 1):
            fwd, bwd = out.narrow(dim, s, size - s), out.narrow(dim, 0, size - s)
            if op == "or":
                fwd |= src.narrow(dim, 0, size - s)
                bwd |= src.narrow(dim, s, size - s)
            else:
                fwd &= src.narrow(dim, 0, size - s)
                bwd &= src.narrow(dim, s, size - s)
    return out


def _erode(mask: Tensor) -> Tensor:
    """3x3 binary erosion (8-neighbourhood); outside the image counts as foreground, so
    the image border is not an object boundary."""
    return _shift_reduce(mask, 1, "and")


def _dilate(mask: Tensor, radius: int) -> Tensor:
    """Binary dilation by a (2 radius + 1)^2 square, i.e. within Chebyshev distance ``radius``."""
    return _shift_reduce(mask, radius, "or")


def boundary(mask: Tensor) -> Tensor:
    """Boundary pixels of a ``[B, C, H, W]`` mask: foreground pixels with a background
    8-neighbour (``mask & ~erode(mask)``), as bool."""
    check_same_shape(mask, mask, "mask", "mask")  # [B, C, H, W]
    mask = as_bool_mask(mask, "mask")
    return mask & ~_erode(mask)


def boundary_counts(pred: Tensor, target: Tensor, tolerance: int = 2) -> dict[str, Tensor]:
    """Boundary pixel counts per slice and class, each ``[B, C]`` int64.

    ``pred_matched`` counts predicted boundary pixels within ``tolerance`` pixels
    (Chebyshev distance) of a ground-truth boundary pixel, ``target_matched`` the
    reverse; ``pred_total`` and ``target_total`` count all boundary pixels.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    pred, target = _check_pair(pred, target)
    bp, bt = boundary(pred), boundary(target)
    return {
        "pred_matched": (bp & _dilate(bt, tolerance)).sum(dim=(2, 3)),
        "pred_total": bp.sum(dim=(2, 3)),
        "target_matched": (bt & _dilate(bp, tolerance)).sum(dim=(2, 3)),
        "target_total": bt.sum(dim=(2, 3)),
    }


def _bf_from_counts(c: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Boundary precision, recall, F1 from :func:`boundary_counts` (summed or not), empty rule applied."""
    empty = (c["pred_total"] + c["target_total"]) == 0
    p = _ratio(c["pred_matched"], c["pred_total"], empty)
    r = _ratio(c["target_matched"], c["target_total"], empty)
    f1 = torch.where(p + r > 0, 2 * p * r / (p + r).clamp_min(1e-12), torch.zeros_like(p))
    return {"precision": p, "recall": r, "f1": f1}


def boundary_f1(pred: Tensor, target: Tensor, tolerance: int = 2, pooled: bool = True) -> Tensor:
    """Boundary F1 (BF score) per class, ``[C]`` float64.

    A predicted boundary pixel is correct if a ground-truth boundary pixel lies
    within ``tolerance`` pixels (square neighbourhood), and vice versa for recall.
    Both boundaries empty -> 1; exactly one empty -> 0.

    Args:
        pred, target: ``[B, C, H, W]`` bool or {0, 1} masks.
        tolerance: matching distance in pixels. Default 2.
        pooled: sum matched/total counts over the batch first (True) or average per-slice F1 (False).
    """
    counts = boundary_counts(pred, target, tolerance)
    if pooled:
        return _bf_from_counts({k: v.sum(0) for k, v in counts.items()})["f1"]
    return _bf_from_counts(counts)["f1"].mean(0)


def hd95(pred: Tensor, target: Tensor) -> Tensor:
    """95th-percentile symmetric Hausdorff distance between boundaries, in pixels, ``[B, C]``.

    ``max(p95 of pred->target distances, p95 of target->pred distances)`` over
    boundary pixels (Euclidean, via ``torch.cdist``), as MONAI's
    ``compute_hausdorff_distance(percentile=95)``. Both masks empty -> 0; exactly
    one empty -> ``inf``. Loops over slices; meant for evaluation, not training.
    """
    pred, target = _check_pair(pred, target)
    bp, bt = boundary(pred), boundary(target)
    out = torch.zeros(pred.shape[:2], dtype=torch.float64)
    for b in range(pred.shape[0]):
        for c in range(pred.shape[1]):
            p = bp[b, c].nonzero().double()
            t = bt[b, c].nonzero().double()
            if len(p) == 0 and len(t) == 0:
                continue
            if len(p) == 0 or len(t) == 0:
                out[b, c] = float("inf")
                continue
            d = torch.cdist(p, t)
            out[b, c] = torch.maximum(
                torch.quantile(d.min(dim=1).values, 0.95), torch.quantile(d.min(dim=0).values, 0.95)
            )
    return out


# --------------------------------------------------------------------------- running meter


class SegmentationMeter:
    """Accumulates segmentation metrics over an evaluation set (§3.2, Eq. 2-9, Table 4).

    Keeps per-slice counts (a few int64 per slice and class), so ``compute`` gives
    both pooled and per-slice-mean metrics. See the module docstring for the
    empty-case rule.

    Args:
        class_names: one name per channel of the masks, e.g. ``["ggo", "consolidation"]``.
        boundary_tolerance: matching distance of boundary F1, in pixels. Default 2.

    Example::

        meter = SegmentationMeter(["ggo", "consolidation"])
        for x, y in loader:
            meter.update(binarize(model(x).final.sigmoid()), y)
        print(format_table(meter.compute()))
    """

    def __init__(self, class_names: Sequence[str], boundary_tolerance: int = 2) -> None:
        if isinstance(class_names, str) or len(class_names) == 0:
            raise ValueError(f"class_names must be a non-empty list of names, got {class_names!r}")
        if boundary_tolerance < 0:
            raise ValueError(f"boundary_tolerance must be >= 0 pixels, got {boundary_tolerance}")
        self.class_names = list(class_names)
        self.boundary_tolerance = boundary_tolerance
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._counts: list[dict[str, Tensor]] = []

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch. ``pred``, ``target``: ``[B, C, H, W]`` bool or {0, 1}, C = len(class_names)."""
        if pred.dim() != 4 or pred.shape[1] != len(self.class_names):
            raise ValueError(
                f"pred must be [B, {len(self.class_names)}, H, W] for classes {self.class_names}, "
                f"got shape {tuple(pred.shape)}"
            )
        counts = confusion_counts(pred, target)
        counts.update(boundary_counts(pred, target, self.boundary_tolerance))
        self._counts.append({k: v.cpu() for k, v in counts.items()})

    @property
    def n_slices(self) -> int:
        return sum(int(c["tp"].shape[0]) for c in self._counts)

    def compute(self) -> dict:
        """``{"pooled": {cls: {metric: float}}, "per_slice": {...}, "n_slices": N}``.

        Metrics: dice, iou, precision, recall, boundary_f1. Per-slice values are
        means over all slices, empty ones (scored 1 when nothing is predicted) included.
        """
        if not self._counts:
            raise ValueError("SegmentationMeter.compute() called before any update()")
        counts = {k: torch.cat([c[k] for c in self._counts]) for k in self._counts[0]}  # each (N, C)

        pooled_counts = {k: v.sum(0) for k, v in counts.items()}  # each (C,)
        pooled = ratios_from_counts(pooled_counts["tp"], pooled_counts["fp"], pooled_counts["fn"])
        pooled["boundary_f1"] = _bf_from_counts(pooled_counts)["f1"]

        per_slice = ratios_from_counts(counts["tp"], counts["fp"], counts["fn"])
        per_slice["boundary_f1"] = _bf_from_counts(counts)["f1"]
        per_slice = {k: v.mean(0) for k, v in per_slice.items()}

        def by_class(scores: dict[str, Tensor]) -> dict[str, dict[str, float]]:
            return {name: {k: float(v[i]) for k, v in scores.items()} for i, name in enumerate(self.class_names)}

        return {"pooled": by_class(pooled), "per_slice": by_class(per_slice), "n_slices": self.n_slices}


# --------------------------------------------------------------------------- classification (§2.8)


def classification_metrics(y_true: Iterable[int], y_pred: Iterable[int]) -> dict:
    """Binary classification scores, positive label 1 (COVID-19), via scikit-learn.

    Returns ``{"accuracy", "precision", "recall", "f1", "specificity", "confusion_matrix", "n"}``;
    the confusion matrix is ``[[TN, FP], [FN, TP]]`` (rows: truth, columns: prediction).
    Undefined ratios (no positive predictions, no positive cases) are 0 (``zero_division=0``).
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    y_true, y_pred = np.asarray(list(y_true)).astype(int), np.asarray(list(y_pred)).astype(int)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"y_true and y_pred must be 1-D and of equal, non-zero length, got {y_true.shape}, {y_pred.shape}")
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=[0, 1], pos_label=1, average="binary", zero_division=0
    )
    cm = confusion_matrix(y_true, y_pred, labels=[0, 1])
    tn, fp = int(cm[0, 0]), int(cm[0, 1])
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "specificity": tn / (tn + fp) if tn + fp > 0 else 0.0,
        "confusion_matrix": cm.tolist(),
        "n": len(y_true),
    }


def patient_level(slice_preds: Iterable[int], groups: Iterable[Hashable]) -> dict[Hashable, int]:
    """Patient label from slice labels: positive (1) if any slice of the patient is positive.

    Args:
        slice_preds: 0/1 label per slice (predicted or true).
        groups: patient id per slice, same length.

    Returns:
        ``{patient_id: 0 or 1}`` in order of first appearance.
    """
    slice_preds, groups = list(slice_preds), list(groups)
    if len(slice_preds) != len(groups):
        raise ValueError(f"slice_preds and groups must have the same length, got {len(slice_preds)} and {len(groups)}")
    out: dict[Hashable, int] = {}
    for label, group in zip(slice_preds, groups):
        out[group] = max(out.get(group, 0), int(bool(label)))
    return out


# --------------------------------------------------------------------------- reporting

_HEADERS = {"dice": "Dice", "iou": "IoU", "precision": "Precision", "recall": "Recall", "boundary_f1": "BF",
            "f1": "F1", "accuracy": "Accuracy", "specificity": "Specificity"}


def format_table(
    metrics: Mapping,
    columns: Sequence[str] = ("dice", "iou", "precision", "recall", "boundary_f1"),
    summary: str = "pooled",
    percent: bool = True,
    digits: int = 2,
) -> str:
    """Markdown table laid out like the paper's Table 4: one row per class, one column per metric.

    Args:
        metrics: output of :meth:`SegmentationMeter.compute` (``summary`` picks
            ``"pooled"`` or ``"per_slice"``), or directly ``{row_name: {metric: value}}``.
        columns: metric keys to show, in order; missing ones print as "-".
        summary: which part of a ``compute()`` result to show.
        percent: show values x 100 (the paper reports percentages).
        digits: decimals.
    """
    rows = metrics[summary] if summary in metrics and isinstance(metrics[summary], Mapping) else metrics
    scale = 100.0 if percent else 1.0
    header = ["Class"] + [_HEADERS.get(c, c) + (" (%)" if percent else "") for c in columns]
    body = [
        [name] + [f"{scale * float(scores[c]):.{digits}f}" if c in scores else "-" for c in columns]
        for name, scores in rows.items()
        if isinstance(scores, Mapping)  # skips e.g. "n_slices"
    ]
    return markdown_table(header, body)
