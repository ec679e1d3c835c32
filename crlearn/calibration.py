"""Calibration and failure cases: are a segmentation network's probabilities honest, where does it fail?

The paper thresholds its outputs at 0.5 and reports Dice pooled over slices (§3.2); it says nothing about
calibration. Three of this project's choices move the probabilities: the output-bias **prior** (the untrained
network predicts ``prior`` everywhere, :class:`crlearn.nn.model.CRNetConfig`), the weight **EMA** and **TTA** (the
mean of five views' probabilities). This module measures what they do, pixel by pixel, on one class channel:

- :func:`reliability`: the reliability diagram's bins (mean predicted probability against the observed lesion
  frequency) and the expected calibration error (ECE), the pixel-weighted mean gap between the two;
- :func:`threshold_sweep`: pooled Dice, precision and recall at each threshold (choose it on validation slices,
  then report the test slices at that threshold, never at the test's own best);
- :func:`slice_scores`, :func:`dice_by_lesion_size` and :func:`worst_slices`: per-slice Dice, how it depends on the
  lesion's area, and the slices to look at first.

Inputs are ``(N, 1, H, W)`` or ``(N, H, W)`` tensors: probabilities in [0, 1] and boolean (or {0, 1}) targets.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from crlearn.metrics import confusion_counts, ratios_from_counts

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))  # 0.05, 0.10, ..., 0.95


def _flat(probs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    p, t = torch.as_tensor(probs).double().flatten(), torch.as_tensor(target).bool().flatten()
    if p.shape != t.shape:
        raise ValueError(f"probs and target must hold as many pixels, got {tuple(probs.shape)} and "
                         f"{tuple(target.shape)}")
    if p.numel() and (p.min() < 0 or p.max() > 1):
        raise ValueError("probs must lie in [0, 1] (apply the sigmoid to logits first)")
    return p, t


def reliability(probs: Tensor, target: Tensor, bins: int = 10) -> dict[str, Any]:
    """Pixels binned by predicted probability into ``bins`` equal-width bins of [0, 1].

    Returns ``{"edges", "confidence": mean probability per bin, "frequency": fraction of lesion pixels per bin,
    "count": pixels per bin, "ece": sum over bins of count/total x |frequency - confidence|}``; empty bins have
    ``nan`` confidence and frequency and weigh nothing (``sklearn.calibration.calibration_curve`` returns the same
    two curves without the empty bins).
    """
    p, t = _flat(probs, target)
    idx = torch.clamp((p * bins).long(), max=bins - 1)  # bin i holds [i/bins, (i+1)/bins); 1.0 in the last
    count = torch.bincount(idx, minlength=bins).double()
    conf_sum = torch.bincount(idx, weights=p, minlength=bins)
    pos_sum = torch.bincount(idx, weights=t.double(), minlength=bins)
    nonempty = count > 0
    confidence = torch.where(nonempty, conf_sum / count.clamp_min(1), torch.full_like(count, float("nan")))
    frequency = torch.where(nonempty, pos_sum / count.clamp_min(1), torch.full_like(count, float("nan")))
    gaps = (frequency - confidence).abs()[nonempty]
    ece = float((count[nonempty] / count.sum() * gaps).sum()) if nonempty.any() else float("nan")
    return {"edges": np.linspace(0.0, 1.0, bins + 1).tolist(), "confidence": confidence.tolist(),
            "frequency": frequency.tolist(), "count": count.long().tolist(), "ece": ece}


def threshold_sweep(probs: Tensor, target: Tensor, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """Pooled Dice, precision and recall (counts summed over all slices) of ``probs >= t`` for each threshold ``t``,
    and the threshold with the highest Dice (the first such, scanning upwards): ``{"thresholds", "dice",
    "precision", "recall", "best_threshold", "best_dice"}``."""
    p, t = _flat(probs, target)
    rows = {"dice": [], "precision": [], "recall": []}
    for th in thresholds:
        pred = p >= th
        tp, fp, fn = (pred & t).sum(), (pred & ~t).sum(), (~pred & t).sum()
        r = ratios_from_counts(tp, fp, fn)
        for k in rows:
            rows[k].append(float(r[k]))
    best = int(np.argmax(rows["dice"]))
    return {"thresholds": [float(x) for x in thresholds], **rows, "best_threshold": float(thresholds[best]),
            "best_dice": rows["dice"][best]}


def _masks(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    pred, target = torch.as_tensor(pred).bool(), torch.as_tensor(target).bool()
    if pred.dim() == 3:
        pred, target = pred[:, None], target[:, None]
    if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 1:
        raise ValueError(f"pred and target must be (N, 1, H, W) or (N, H, W) of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    return pred, target


def slice_scores(pred: Tensor, target: Tensor) -> dict[str, np.ndarray]:
    """Per slice: ``dice`` (``nan`` where neither mask has a pixel: nothing to score), ``area`` (the target's
    lesion pixels as a fraction of the slice) and ``tp``, ``fp``, ``fn`` counts, each an ``(N,)`` array."""
    pred, target = _masks(pred, target)
    c = {k: v[:, 0].double() for k, v in confusion_counts(pred, target).items()}
    den = 2 * c["tp"] + c["fp"] + c["fn"]
    dice = torch.where(den > 0, 2 * c["tp"] / den.clamp_min(1), torch.full_like(den, float("nan")))
    area = target.flatten(1).double().mean(1)
    return {"dice": dice.numpy(), "area": area.numpy(), **{k: v.numpy() for k, v in c.items()}}


def dice_by_lesion_size(pred: Tensor, target: Tensor, edges: Sequence[float] = (0.0, 0.01, 0.05, 1.0)
                        ) -> list[dict[str, Any]]:
    """Slices with a lesion grouped by its area (fraction of the slice, bins ``[edges[i], edges[i + 1])``, the last
    closed): per bin the number of slices, their mean per-slice Dice and the Dice pooled over them."""
    s = slice_scores(pred, target)
    out = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        inside = (s["area"] > 0) & (s["area"] >= lo) & ((s["area"] <= hi) if last else (s["area"] < hi))
        tp, fp, fn = (s[k][inside].sum() for k in ("tp", "fp", "fn"))
        pooled = 2 * tp / (2 * tp + fp + fn) if inside.any() and (2 * tp + fp + fn) > 0 else float("nan")
        out.append({"low": float(lo), "high": float(hi), "slices": int(inside.sum()),
                    "mean_dice": float(np.mean(s["dice"][inside])) if inside.any() else float("nan"),
                    "pooled_dice": float(pooled)})
    return out


def worst_slices(pred: Tensor, target: Tensor, k: int = 3) -> list[int]:
    """Indices of the ``k`` slices with the lowest Dice among those where there is something to score (a lesion
    in the target or in the prediction), lowest first; ties by index."""
    dice = slice_scores(pred, target)["dice"]
    scored = np.flatnonzero(~np.isnan(dice))
    return [int(i) for i in scored[np.argsort(dice[scored], kind="stable")][:k]]
