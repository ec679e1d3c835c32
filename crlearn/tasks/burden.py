"""Lesion burden per patient: the lesion-area / lung-area ratio of a model against the ground truth (§3.4).

Huang et al. 2022, §3.4 grade how severe a patient's COVID-19 is by the proportion of the lung that lesions
occupy. :func:`burden` segments every slice of a data folder and compares the model's ratio with the true one:

- **per slice**: ``|infection ∩ lung| / |lung|``, predicted (the model's lesions inside its lung field) and true;
- **per patient group**: the same ratio from the pixels **summed over the group's slices** (a pooled ratio, not
  the mean of the slice ratios: a slice with a large lung weighs more, as it does in the patient);
- **agreement** in percentage points (pp): mean absolute error, Pearson's r and the Bland-Altman summary (bias =
  mean(predicted - true), limits of agreement bias ± 1.96 sd; Bland & Altman, Lancet 327(8476):307-310, 1986).

Where the lung field comes from, and the result says which:

- predicted (``lung_source``): the model's ``lung`` channel if it has one (``"model"``), else the classical
  image-only field of :mod:`crlearn.tasks.lung_field` united with the predicted lesions (``"classical"``);
- true (``true_lung_source``): the folder's lung masks where its labels declare ``lung`` and ``infection``
  (``"masks"``, e.g. ``data_sample/covid19_ct_lung_infection``), else the classical field united with the TRUE
  lesions, the union of the lesion classes (``"classical"``, e.g. MedSeg, which has no lung masks). A classical
  "true" ratio is an estimate, not ground truth: read :mod:`crlearn.tasks.lung_field`'s limitations.

The slices of a folder are a sample of each scan, not the whole volume: a group's ratio describes those slices.
For teaching, not a diagnosis.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from crlearn.data.folder import (
    GROUP_COLUMNS,
    MERGED_CLASS,
    DataError,
    normalize_intensity,
    read_index,
)
from crlearn.inference import predict
from crlearn.report import DISCLAIMER, markdown_table
from crlearn.tasks.lung_field import include_lesions, lung_mask_steps

__all__ = [
    "LUNG_CLASS",
    "burden_channels",
    "slice_areas",
    "group_areas",
    "percent",
    "pearson",
    "bland_altman",
    "agreement",
    "burden_from_areas",
    "true_masks",
    "burden",
    "burden_markdown",
    "burden_summary",
]

LUNG_CLASS = "lung"  # the class name of a lung field, in labels.json and in a model's class names
CLASSICAL_NOTE = "classical image-only lung field (no lung masks in this folder)"


# ----------------------------------------------------------------------------- which channels


def burden_channels(class_names: Sequence[str], lung: str = "auto") -> tuple[int, int | None]:
    """The model's ``(infection channel, lung channel or None)`` from its class names.

    The model needs an ``infection`` channel (a declared class, or the single merged class of Table 7).
    ``lung``: ``"auto"`` uses a ``lung`` channel where there is one, ``"model"`` requires it, ``"classical"``
    ignores it (``None``: the classical image-only field is used). ``ValueError`` otherwise.
    """
    names = list(class_names)
    if lung not in ("auto", "model", "classical"):
        raise ValueError(f"lung must be 'auto', 'model' or 'classical', got {lung!r}")
    if MERGED_CLASS not in names:
        raise ValueError(f"its classes {names} have no '{MERGED_CLASS}' channel: the lesion burden needs one")
    has_lung = LUNG_CLASS in names
    if lung == "model" and not has_lung:
        raise ValueError(f"lung='model', but its classes {names} have no '{LUNG_CLASS}' channel")
    return names.index(MERGED_CLASS), names.index(LUNG_CLASS) if has_lung and lung != "classical" else None


# ----------------------------------------------------------------------------- pure aggregation


def slice_areas(infection: Any, lung: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per slice ``(|infection ∩ lung|, |lung|)`` in pixels (int64 ``(N,)`` each) of bool masks ``(N, H, W)``."""
    inf, lung_m = np.asarray(infection, dtype=bool), np.asarray(lung, dtype=bool)
    if inf.shape != lung_m.shape or inf.ndim != 3:
        raise ValueError(f"infection and lung must be (N, H, W) of one shape, got {inf.shape} and {lung_m.shape}")
    return (inf & lung_m).sum((1, 2)).astype(np.int64), lung_m.sum((1, 2)).astype(np.int64)


def group_areas(lesion_px: Sequence[int], lung_px: Sequence[int], groups: Sequence[str]) -> dict[str, np.ndarray]:
    """Pixels summed per group: ``{group: array([n_slices, lesion_px, lung_px])}``, groups in first-seen order."""
    if not len(lesion_px) == len(lung_px) == len(groups):
        raise ValueError(f"{len(lesion_px)} lesion, {len(lung_px)} lung and {len(groups)} group entries differ")
    out: dict[str, np.ndarray] = {}
    for les, lung, g in zip(lesion_px, lung_px, groups):
        out.setdefault(str(g), np.zeros(3, np.int64))
        out[str(g)] += (1, int(les), int(lung))
    return out


def percent(lesion_px: Any, lung_px: Any) -> np.ndarray:
    """``100 * lesion / lung`` as float64; NaN where the lung field is empty (no ratio)."""
    les, lung = np.asarray(lesion_px, np.float64), np.asarray(lung_px, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lung > 0, 100.0 * les / np.where(lung > 0, lung, 1.0), np.nan)


def _finite_pairs(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred, np.float64).ravel(), np.asarray(true, np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"predicted and true values differ in number: {p.size} and {t.size}")
    keep = np.isfinite(p) & np.isfinite(t)
    return p[keep], t[keep]


def pearson(x: Any, y: Any) -> float | None:
    """Pearson's correlation of the finite pairs; ``None`` with fewer than 3 pairs or a constant side."""
    a, b = _finite_pairs(x, y)
    if len(a) < 3:
        return None
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((da * da).sum()) * float((db * db).sum()))
    return float((da * db).sum() / denom) if denom > 0 else None


def bland_altman(pred: Any, true: Any) -> dict[str, float | None]:
    """Bland-Altman summary of the finite pairs: ``bias`` = mean(pred - true), ``sd`` of the differences
    (n - 1), limits of agreement ``lower``/``upper`` = bias ∓ 1.96 sd (``None`` where undefined)."""
    p, t = _finite_pairs(pred, true)
    diff = p - t
    bias = float(diff.mean()) if len(diff) else None
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else None
    lower = upper = None
    if bias is not None and sd is not None:
        lower, upper = bias - 1.96 * sd, bias + 1.96 * sd
    return {"bias": bias, "sd": sd, "lower": lower, "upper": upper}


def agreement(pred: Any, true: Any) -> dict[str, Any]:
    """Agreement of predicted and true values (percentages): ``n`` finite pairs, ``mae_percentage_points``,
    ``pearson_r`` and ``bland_altman`` (all in percentage points; ``None`` where undefined)."""
    p, t = _finite_pairs(pred, true)
    mae = float(np.abs(p - t).mean()) if len(p) else None
    return {"n": int(len(p)), "mae_percentage_points": mae, "pearson_r": pearson(p, t),
            "bland_altman": bland_altman(p, t)}


def _num(x: float) -> float | None:
    """A JSON-safe number: NaN becomes ``None``."""
    return None if x is None or not math.isfinite(x) else float(x)


def _rows(keys: dict[str, Any], pred: np.ndarray, true: np.ndarray) -> list[dict[str, Any]]:
    """Result rows from per-entry pixel counts ``(lesion_px, lung_px)`` predicted and true."""
    p_pct, t_pct = percent(*pred), percent(*true)
    rows = []
    for i, (key, extra) in enumerate(keys.items()):
        rows.append({**extra, "true_lesion_px": int(true[0][i]), "true_lung_px": int(true[1][i]),
                     "pred_lesion_px": int(pred[0][i]), "pred_lung_px": int(pred[1][i]),
                     "true_percent": _num(t_pct[i]), "pred_percent": _num(p_pct[i]),
                     "error_pp": _num(p_pct[i] - t_pct[i])})
    return rows


def burden_from_areas(names: Sequence[str], groups: Sequence[str], pred: tuple[Any, Any],
                      true: tuple[Any, Any]) -> dict[str, Any]:
    """The ratios and their agreement from pixel counts per slice: ``pred`` and ``true`` are each
    ``(lesion-in-lung px, lung px)`` of ``(N,)`` (:func:`slice_areas`).

    Returns ``mae_percentage_points`` (per group), ``mae_percentage_points_per_slice``, ``agreement``
    (``per_group``, ``per_slice``: :func:`agreement`), ``groups`` and ``slices`` rows (pixels, ``true_percent``,
    ``pred_percent``, ``error_pp`` = predicted - true; ``None`` where a lung field is empty).
    """
    gp, gt = group_areas(*pred, groups), group_areas(*true, groups)
    g_keys = {g: {"group": g, "n_slices": int(v[0])} for g, v in gp.items()}
    g_pred = np.array([gp[g][1:] for g in g_keys]).T.reshape(2, -1)
    g_true = np.array([gt[g][1:] for g in g_keys]).T.reshape(2, -1)
    s_keys = {i: {"name": str(n), "group": str(g)} for i, (n, g) in enumerate(zip(names, groups))}
    s_pred, s_true = np.asarray(pred, np.int64).reshape(2, -1), np.asarray(true, np.int64).reshape(2, -1)
    per_group = agreement(percent(*g_pred), percent(*g_true))
    per_slice = agreement(percent(*s_pred), percent(*s_true))
    return {"mae_percentage_points": per_group["mae_percentage_points"],
            "mae_percentage_points_per_slice": per_slice["mae_percentage_points"],
            "n_slices": len(s_keys), "n_groups": len(g_keys),
            "agreement": {"per_group": per_group, "per_slice": per_slice},
            "groups": _rows(g_keys, g_pred, g_true), "slices": _rows(s_keys, s_pred, s_true)}


# ----------------------------------------------------------------------------- masks of a data set


def true_masks(dataset: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The folder's true ``(infection, lung or None)`` bool ``(N, H, W)`` from its label maps and labels.

    Lung masks exist where the labels declare both ``lung`` and ``infection``; otherwise the true infection is
    the union of the lesion classes (every class but ``lung``) and the lung field is left to the caller.
    """
    values = dataset.label_values
    labels = dataset.labels

    def covering(vals: Sequence[int]) -> torch.Tensor:
        return torch.isin(labels, torch.tensor(sorted(set(vals)), dtype=labels.dtype))

    if LUNG_CLASS in values and MERGED_CLASS in values:
        return covering(values[MERGED_CLASS]), covering(values[LUNG_CLASS])
    lesions = [v for name, vals in values.items() if name != LUNG_CLASS for v in vals]
    if not lesions:
        raise ValueError(f"{dataset.root}: its labels {list(values)} declare no lesion class")
    return covering(lesions), None


def _classical_fields(images: torch.Tensor) -> np.ndarray:
    """The image-only lung field of every slice, bool ``(N, H, W)`` (:func:`crlearn.tasks.lung_field.lung_mask_steps`)."""
    return np.stack([lung_mask_steps(img).lung for img in images]) if len(images) else np.zeros((0, 1, 1), bool)


def _with_lesions(fields: np.ndarray, lesions: Any) -> np.ndarray:
    """Each classical field united with its slice's lesions (an empty field stays empty: no ratio, as in
    :func:`crlearn.tasks.lung_field.burden_table`)."""
    les = np.asarray(lesions, dtype=bool)
    return np.stack([include_lesions(f, m) if f.any() else f for f, m in zip(fields, les)]) if len(les) else fields


def _predict_masks(model: nn.Module, images: torch.Tensor, size: int, device: Any, tta: bool,
                   normalize: str) -> torch.Tensor:
    """Boolean predictions ``(N, K, H, W)`` at the images' own size; the model sees normalised images."""
    return predict(model, normalize_intensity(images, normalize), size, device, tta=tta)[1]


def burden(model: nn.Module, dataset: Any, size: int, device: str | torch.device | None = None, tta: bool = True,
           lung: str = "auto", class_names: Sequence[str] | None = None, normalize: str = "none") -> dict[str, Any]:
    """Predicted and true lesion/lung ratios of every slice and patient group of a data set, and their agreement.

    Args:
        model: a CR-Net whose output channels are ``class_names`` (the checkpoint's ``class_names``).
        dataset: a :class:`~crlearn.data.folder.SegmentationDataset`, best at its own resolution (``size=None``), with
            its original (not normalised) images; any classes (the truth is read from its labels).
        size: the model's input size (the checkpoint's ``train_config["size"]``).
        tta: five-view test-time augmentation (:func:`crlearn.inference.predict_logits`).
        lung: ``"auto"``, ``"model"`` or ``"classical"`` (:func:`burden_channels`).
        class_names: the model's classes; default ``dataset.class_names``.
        normalize: the checkpoint's intensity normalisation, applied to what the model sees only.

    Returns :func:`burden_from_areas`'s dict plus ``lung_source``, ``true_lung_source``, ``class_names``,
    ``tta``, ``size`` and ``note`` (the disclaimer).
    """
    names = list(dataset.class_names if class_names is None else class_names)
    k_inf, k_lung = burden_channels(names, lung)
    if read_index(dataset.root) is None:
        raise DataError(f"{dataset.root / 'index.csv'}: no patient group column ({', '.join(GROUP_COLUMNS)}); "
                        "a burden per patient needs to know which slices belong to whom")
    pred = _predict_masks(model, dataset.images, size, device, tta, normalize)
    if pred.shape[1] != len(names):
        raise ValueError(f"the model has {pred.shape[1]} output channels but {len(names)} class names {names}")
    true_inf, true_lung = true_masks(dataset)
    true_source = "masks" if true_lung is not None else "classical"
    pred_inf = pred[:, k_inf].numpy()
    fields = _classical_fields(dataset.images) if k_lung is None or true_lung is None else None
    pred_lung = pred[:, k_lung].numpy() if k_lung is not None else _with_lesions(fields, pred_inf)
    true_lung = true_lung.numpy() if true_lung is not None else _with_lesions(fields, true_inf.numpy())
    result = burden_from_areas([r.name for r in dataset.records], dataset.groups,
                               slice_areas(pred_inf, pred_lung), slice_areas(true_inf.numpy(), true_lung))
    return {"lung_source": "model" if k_lung is not None else "classical",
            "true_lung_source": true_source,
            "class_names": names, "tta": tta, "size": size, "normalize": normalize, **result, "note": DISCLAIMER}


# ----------------------------------------------------------------------------- text


def _fmt(x: float | None, sign: bool = False) -> str:
    return "n/a" if x is None else (f"{x:+.2f}" if sign else f"{x:.2f}")


def burden_markdown(result: dict[str, Any]) -> str:
    """Per patient group: slices, true %, predicted %, error (predicted - true) in percentage points."""
    rows = [(g["group"], g["n_slices"], _fmt(g["true_percent"]), _fmt(g["pred_percent"]),
             _fmt(g["error_pp"], sign=True)) for g in result["groups"]]
    return markdown_table(["group", "slices", "true %", "predicted %", "error (pp)"], rows)


def _agreement_line(what: str, a: dict[str, Any]) -> str:
    ba = a["bland_altman"]
    r = "n/a" if a["pearson_r"] is None else f"{a['pearson_r']:.3f}"
    lo, hi = _fmt(ba["lower"], sign=True), _fmt(ba["upper"], sign=True)
    return (f"{what} (n={a['n']}): MAE {_fmt(a['mae_percentage_points'])} pp, Pearson r {r}, "
            f"bias {_fmt(ba['bias'], sign=True)} pp, limits of agreement {lo} to {hi} pp")


def burden_summary(result: dict[str, Any]) -> str:
    """A few lines: agreement per patient group and per slice, and which lung fields were used."""
    pred_src = ("the model's 'lung' channel" if result["lung_source"] == "model" else
                "classical image-only lung field united with the predicted lesions (the model has no lung channel)")
    true_src = ("the folder's lung masks" if result["true_lung_source"] == "masks"
                else f"{CLASSICAL_NOTE}, united with the true lesions")
    return "\n".join([_agreement_line("per patient group", result["agreement"]["per_group"]),
                      _agreement_line("per slice", result["agreement"]["per_slice"]),
                      f"predicted lung field: {pred_src}", f"true lung field: {true_src}"])
