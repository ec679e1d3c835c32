"""A whole CT scan through a segmentation model: lung and lesions as a label volume, and the burden in mL (§3.4).

Huang et al. 2022 (§3.4, Table 5) estimate a patient's severity from the share of the lung the lesions occupy,
per patient. On a real scan (a :class:`~crlearn.data.volumes.Volume` in Hounsfield units) that share is a ratio of
volumes. :func:`segment_scan` runs every axial slice through a CR-Net the way it was trained to read slices:

1. **window** the HU to [0, 1] with the training data's window (:func:`crlearn.data.windowing.checkpoint_window`
   says which, and why), then the checkpoint's intensity normalisation;
2. **predict** in batches as :func:`crlearn.inference.predict` does (each slice resized to the model's input size and
   the masks back to the scan's, five-view TTA as everywhere else), a progress bar per slice;
3. **lung and lesion**: the model's ``lung`` channel where it has one; otherwise (and on slices a gate skipped)
   the classical image-only lung field of :mod:`crlearn.tasks.lung_field` united with the lesions, as
   :mod:`crlearn.tasks.burden` does. Lesion voxels count only inside the lung. Label volume: 0 outside the lung,
   1 lung without lesion, 2 lesion (the lung set's convention, :data:`SCAN_LABELS`).

With a slice classifier (§2.8; :func:`crlearn.tasks.gate.gated_predict`), only the slices it calls COVID-19 are
segmented, and the scan is called COVID-19 by the paper's patient rule: if any slice is
(:func:`crlearn.metrics.patient_level`).

:func:`scan_report` turns the label volume into millilitres (voxels x the voxel's volume): lesion, lung, their ratio
overall and per third of the lung's height (lower, middle, upper: the slices from the lowest to the highest that
hold lung, split in three), and the slices with most lesion; :func:`plot_scan_montage` shows them.

Limits: one model, slice by slice (no 3-D context); the classical field was made for display-windowed pictures
(read :mod:`crlearn.tasks.lung_field`); thirds of the height are not lobes. For teaching, not a diagnosis.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from crlearn.data.folder import normalize_intensity
from crlearn.data.slices import classifier_input
from crlearn.data.volumes import Volume
from crlearn.data.windowing import window
from crlearn.inference import predict
from crlearn.metrics import patient_level
from crlearn.report import DISCLAIMER
from crlearn.tasks.burden import burden_channels, percent
from crlearn.tasks.classifier import THRESHOLD
from crlearn.tasks.gate import gated_predict
from crlearn.tasks.lung_field import include_lesions, lung_mask_steps

__all__ = [
    "SCAN_LABELS",
    "THIRDS",
    "ScanPrediction",
    "plot_scan_montage",
    "scan_report",
    "scan_summary",
    "segment_scan",
]

LUNG, LESION = 1, 2  # label values of the output volume
SCAN_LABELS = {"background": 0, "lung": [LUNG, LESION], "infection": LESION}  # its labels.json
THIRDS = ("lower", "middle", "upper")  # of the lung's height, feet to head
MONTAGE_SLICES = 6  # slices with most lesion shown in the montage
CLASSICAL_NOTE = "the classical image-only lung field (crlearn.tasks.lung_field) united with the predicted lesions"


@dataclass(frozen=True)
class ScanPrediction:
    """What :func:`segment_scan` returns (numpy, on the CPU)."""

    labels: np.ndarray  # (S, H, W) uint8: 0 outside the lung, 1 lung without lesion, 2 lesion
    lung_source: str  # "model", "classical" or "model+classical" (classical on the slices a gate skipped)
    segmented: np.ndarray  # (S,) bool: the segmenter saw the slice
    p_covid: np.ndarray | None  # (S,) float: the classifier's P(COVID-19) per slice; None without a gate
    seconds: float  # wall time of the whole prediction


def _classical_lung(image: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """The image-only field of one windowed slice united with its lesions (an empty field stays empty)."""
    field = lung_mask_steps(image).lung
    return include_lesions(field, lesion) if field.any() else field


def _chunk_labels(images: torch.Tensor, masks: torch.Tensor, segmented: torch.Tensor, k_inf: int,
                  k_lung: int | None) -> np.ndarray:
    """Label slices ``(B, H, W)`` uint8 from windowed images ``(B, 1, H, W)`` and the model's masks."""
    out = np.zeros((len(images), *images.shape[-2:]), np.uint8)
    for i in range(len(images)):
        lesion = masks[i, k_inf].numpy()
        if k_lung is not None and bool(segmented[i]):
            lung = masks[i, k_lung].numpy()
        else:
            lung = _classical_lung(images[i, 0].numpy(), lesion)
        out[i][lung] = LUNG
        out[i][lung & lesion] = LESION
    return out


def _gate_inputs(images: torch.Tensor, ckpt: Mapping[str, Any]) -> torch.Tensor:
    """The slices as the classifier was trained to read them (:func:`crlearn.data.slices.classifier_input`)."""
    return torch.stack([classifier_input(x, ckpt["size"], ckpt.get("fit", "pad"), ckpt.get("normalize", "none"))
                        for x in images])


def _predict_chunk(model: nn.Module, images: torch.Tensor, size: int, normalize: str, device: Any, tta: bool,
                   batch_size: int, gate: tuple[nn.Module, Mapping[str, Any], float] | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(masks (B, K, H, W), segmented (B,), p_covid (B,) or None)`` of windowed slices ``(B, 1, H, W)``."""
    seg_in = normalize_intensity(images, normalize)
    if gate is None:
        masks = predict(model, seg_in, size, device, tta, batch_size=batch_size)[1]
        return masks, torch.ones(len(images), dtype=torch.bool), None
    classifier, ckpt, threshold = gate
    out = gated_predict(model, classifier, seg_in, size, device, tta, threshold, batch_size=batch_size,
                        classifier_images=_gate_inputs(images, ckpt))
    return out.masks, out.positive, out.p_covid


def segment_scan(model: nn.Module, volume: Volume, size: int, class_names: Sequence[str], level: float,
                 width: float, normalize: str = "none", device: str | torch.device | None = None, tta: bool = True,
                 batch_size: int = 8, progress: bool = True, classifier: nn.Module | None = None,
                 classifier_ckpt: Mapping[str, Any] | None = None, threshold: float = THRESHOLD) -> ScanPrediction:
    """Every axial slice of ``volume`` through ``model``: a label volume of lung and lesion (module docstring).

    Args:
        model: a CR-Net whose outputs are ``class_names``, with an ``infection`` channel (a ``lung`` one is used
            when present: :func:`crlearn.tasks.burden.burden_channels`).
        volume: the scan in HU (:func:`crlearn.data.volumes.read_volume`).
        size: the model's input size (its checkpoint's ``train_config["size"]``).
        level, width: the window in HU the model's training slices were made with.
        normalize: the checkpoint's intensity normalisation, after windowing.
        tta: five-view test-time augmentation (:func:`crlearn.inference.predict_logits`).
        batch_size: slices per forward pass; slices are windowed ``4 * batch_size`` at a time.
        progress: a tqdm progress bar over the slices.
        classifier, classifier_ckpt, threshold: the optional gate (§2.8): only slices with P(COVID) >=
            ``threshold`` are segmented (:func:`crlearn.tasks.gate.gated_predict`).
    """
    k_inf, k_lung = burden_channels(class_names)
    if classifier is not None and classifier_ckpt is None:
        raise ValueError("a classifier needs its checkpoint (size, fit, normalize) to read slices as in training")
    gate = None if classifier is None else (classifier, classifier_ckpt, threshold)
    start, n, step = time.perf_counter(), len(volume.hu), 4 * batch_size
    labels = np.zeros(volume.hu.shape, np.uint8)
    segmented, p_covid = np.ones(n, bool), np.zeros(n, np.float32)
    with tqdm(total=n, desc="slices", unit="slice", disable=not progress, leave=False) as bar:
        for i in range(0, n, step):
            images = torch.from_numpy(window(volume.hu[i:i + step], level, width))[:, None]  # (B, 1, H, W)
            masks, seg, p = _predict_chunk(model, images, size, normalize, device, tta, batch_size, gate)
            labels[i:i + step] = _chunk_labels(images, masks, seg, k_inf, k_lung)
            segmented[i:i + step] = seg.numpy()
            if p is not None:
                p_covid[i:i + step] = p.numpy()
            bar.update(len(images))
    source = "classical" if k_lung is None else ("model" if segmented.all() else "model+classical")
    return ScanPrediction(labels, source, segmented, None if gate is None else p_covid,
                          time.perf_counter() - start)


# ----------------------------------------------------------------------------- the report


def _ml(voxels: Any, voxel_ml: float) -> float:
    return round(float(voxels) * voxel_ml, 3)


def _part(lesion_vox: np.ndarray, lung_vox: np.ndarray, slices: np.ndarray, voxel_ml: float) -> dict[str, Any]:
    """Lesion and lung mL and their ratio (%) over the given slice indices."""
    les, lung = int(lesion_vox[slices].sum()), int(lung_vox[slices].sum())
    ratio = percent(les, lung)
    return {"slices": [int(slices[0]), int(slices[-1])] if len(slices) else None,
            "lesion_ml": _ml(les, voxel_ml), "lung_ml": _ml(lung, voxel_ml),
            "ratio_percent": None if np.isnan(ratio) else round(float(ratio), 3)}


def _thirds(lesion_vox: np.ndarray, lung_vox: np.ndarray, voxel_ml: float) -> dict[str, Any]:
    """The lung's slices (lowest to highest holding lung) split in three: lower, middle, upper."""
    with_lung = np.flatnonzero(lung_vox)
    if len(with_lung) < 3:
        return {name: None for name in THIRDS}
    span = np.arange(with_lung[0], with_lung[-1] + 1)
    return {name: _part(lesion_vox, lung_vox, part, voxel_ml)
            for name, part in zip(THIRDS, np.array_split(span, 3))}


def scan_report(volume: Volume, prediction: ScanPrediction | np.ndarray, **context: Any) -> dict[str, Any]:
    """The burden of a label volume (0 outside the lung, 1 lung, 2 lesion) in mL: ``lesion_ml``, ``lung_ml``,
    ``ratio_percent`` (lesion / lung, %), ``thirds`` (the same per third of the lung's height), ``top_slices``
    (most lesion first), per-slice ``lesion_ml_per_slice`` and ``lung_ml_per_slice``, the scan's geometry, the
    gate's call when there was one, and ``context`` (window, checkpoint, ...) as given."""
    labels = prediction.labels if isinstance(prediction, ScanPrediction) else np.asarray(prediction)
    if labels.shape != volume.hu.shape:
        raise ValueError(f"labels of shape {labels.shape} do not fit the scan {volume.hu.shape}")
    v = volume.voxel_ml
    lesion_vox = (labels == LESION).sum((1, 2))
    lung_vox = (labels >= LUNG).sum((1, 2))
    top = [int(k) for k in np.argsort(-lesion_vox, kind="stable")[:MONTAGE_SLICES] if lesion_vox[k] > 0]
    report = {"source": volume.source, "shape": list(labels.shape), "spacing_mm": list(volume.spacing),
              "voxel_ml": v, **_part(lesion_vox, lung_vox, np.arange(len(labels)), v),
              "thirds": _thirds(lesion_vox, lung_vox, v), "top_slices": top,
              "lesion_ml_per_slice": [_ml(x, v) for x in lesion_vox], "lung_ml_per_slice": [_ml(x, v) for x in lung_vox]}
    report.pop("slices")
    if isinstance(prediction, ScanPrediction):
        report.update(lung_source=prediction.lung_source, lung_note=_lung_note(prediction),
                      seconds=round(prediction.seconds, 3),
                      slices_per_second=round(len(labels) / max(prediction.seconds, 1e-9), 3),
                      n_segmented=int(prediction.segmented.sum()))
        if prediction.p_covid is not None:
            report.update(_gate_report(prediction, context.get("threshold", THRESHOLD)))
    return {**report, **context, "note": DISCLAIMER}


def _lung_note(prediction: ScanPrediction) -> str:
    """Where the lung field came from, in words (the report says it whenever the classical field was used)."""
    if prediction.lung_source == "model":
        return "the model's 'lung' channel"
    if prediction.lung_source == "classical":
        return f"{CLASSICAL_NOTE}: the model has no 'lung' channel"
    n = int((~prediction.segmented).sum())
    return f"the model's 'lung' channel; on the {n} slices the gate did not segment, {CLASSICAL_NOTE}"


def _gate_report(prediction: ScanPrediction, threshold: float) -> dict[str, Any]:
    """The gate's per-slice probabilities and the scan's call by the any-slice rule (§2.8)."""
    call = patient_level((prediction.p_covid >= threshold).astype(int).tolist(), ["scan"] * len(prediction.p_covid))
    return {"gate": {"threshold": threshold, "rule": "any slice with P(COVID) >= threshold",
                     "scan_positive": bool(call["scan"]), "max_p_covid": round(float(prediction.p_covid.max()), 4),
                     "p_covid_per_slice": [round(float(p), 4) for p in prediction.p_covid]}}


def _fmt_part(name: str, part: Mapping[str, Any] | None) -> str:
    if part is None:
        return f"  {name}: no lung"
    ratio = "n/a" if part["ratio_percent"] is None else f"{part['ratio_percent']:.2f} %"
    return f"  {name:6s} lesion {part['lesion_ml']:8.1f} mL of {part['lung_ml']:8.1f} mL lung ({ratio})"


def scan_summary(report: Mapping[str, Any]) -> str:
    """A few lines for the terminal: geometry, volumes, ratio overall and per third, and where the lung came from."""
    s, (z, y, x) = report["shape"], report["spacing_mm"]
    lines = [f"{report['source']}: {s[0]} slices of {s[1]} x {s[2]}, voxel {z:g} x {y:g} x {x:g} mm (z, y, x)",
             _fmt_part("whole", report), *(_fmt_part(t, report["thirds"][t]) for t in THIRDS)]
    if "window_note" in report:
        lines.append(f"window: {report['window_note']}")
    if "lung_note" in report:
        lines.append(f"lung field: {report['lung_note']}")
    if "gate" in report:
        g = report["gate"]
        lines.append(f"gate: {report['n_segmented']} of {s[0]} slices segmented; scan called "
                     f"{'COVID-19' if g['scan_positive'] else 'not COVID-19'} (max P(COVID) {g['max_p_covid']:.2f}, "
                     f"any slice >= {g['threshold']:g})")
    return "\n".join(lines)


def plot_scan_montage(volume: Volume, labels: np.ndarray, report: Mapping[str, Any], level: float, width: float) -> Any:
    """The slices with most lesion (``report["top_slices"]``), windowed, lung and lesion overlaid; a figure."""
    import matplotlib.pyplot as plt

    from crlearn.viz import legend_handles, overlay

    top = list(report["top_slices"]) or [len(labels) // 2]
    cols = min(3, len(top))
    rows = -(-len(top) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, k in zip(axes.ravel(), top):
        masks = np.stack([labels[k] >= LUNG, labels[k] == LESION])
        ax.imshow(overlay(window(volume.hu[k], level, width), masks, ["lung", "infection"]))
        ax.set_title(f"slice {k} (z {k * volume.spacing[0]:.0f} mm): lesion "
                     f"{report['lesion_ml_per_slice'][k]:.2f} mL", fontsize=8)
    fig.legend(handles=legend_handles(["lung", "infection"]), loc="lower center", ncol=2, frameon=False)
    fig.suptitle(f"{report['source']}: lesion {report['lesion_ml']:.1f} mL, "
                 f"{report['ratio_percent'] or 0:.1f} % of the lung. {DISCLAIMER}", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    return fig
