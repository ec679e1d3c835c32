"""Figures: lesion overlays (like the paper's Fig. 6), learning curves, the ablation bar chart, the lesion burden
(§3.4: predicted vs true, Bland-Altman), a slice browser.

Every function returns a matplotlib ``Figure`` (or an ipywidgets box) and prints nothing.
"""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from crlearn.checks import to_numpy
from crlearn.data.folder import MERGED_CLASS
from crlearn.report import DISCLAIMER, figure_png

# One colour per lesion class (RGB in [0, 1]), from Okabe & Ito's colour-blind-safe palette: no red/green pair.
CLASS_COLORS: dict[str, tuple[float, float, float]] = {
    "ggo": (0.94, 0.89, 0.26),  # yellow #F0E442
    "consolidation": (0.84, 0.37, 0.0),  # vermillion #D55E00
    "effusion": (0.0, 0.45, 0.70),  # blue #0072B2
    MERGED_CLASS: (0.90, 0.62, 0.0),  # orange #E69F00: the merged "infection" class
    "lung": (0.34, 0.71, 0.91),  # sky blue #56B4E9
}


def class_color(name: str, k: int = 0) -> tuple[float, float, float]:
    return CLASS_COLORS.get(name, matplotlib.colormaps["tab10"](k % 10)[:3])


def overlay(image: Any, mask: Any, class_names: Sequence[str], alpha: float = 0.45) -> np.ndarray:
    """Blend a grayscale slice ``(H, W)`` or ``(1, H, W)`` with a multi-label mask ``(K, H, W)`` -> RGB ``(H, W, 3)``."""
    img = to_numpy(image).astype(np.float32).squeeze()
    msk = to_numpy(mask).astype(bool)
    rgb = np.repeat(img[..., None], 3, axis=-1)
    for k, name in enumerate(class_names):
        m = msk[k]
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(class_color(name, k))
    return np.clip(rgb, 0, 1)


def legend_handles(class_names: Sequence[str]) -> list[Patch]:
    return [Patch(color=class_color(n, k), label=n) for k, n in enumerate(class_names)]


def plot_overlays(
    images: Any,
    targets: Any | None,
    preds: Any | None,
    class_names: Sequence[str],
    titles: Sequence[str] | None = None,
    max_rows: int = 4,
) -> Figure:
    """Rows of slices: the image, the ground truth and the prediction (each if given), coloured per class."""
    n = min(len(images), max_rows)
    cols = 1 + (targets is not None) + (preds is not None)
    fig, axes = plt.subplots(n, cols, figsize=(3.2 * cols, 3.2 * n), squeeze=False)
    for r in range(n):
        panels = [("image", to_numpy(images[r]).squeeze(), None)]
        if targets is not None:
            panels.append(("ground truth", images[r], targets[r]))
        if preds is not None:
            panels.append(("prediction", images[r], preds[r]))
        for c, (label, img, msk) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img if msk is None else overlay(img, msk, class_names), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{titles[r]}: {label}" if titles is not None and c == 0 else label, fontsize=9)
            ax.axis("off")
    fig.legend(handles=legend_handles(class_names), loc="lower center", ncol=len(class_names), frameon=False)
    fig.suptitle(DISCLAIMER, fontsize=8, y=0.995)
    fig.tight_layout(rect=(0, 0.04, 1, 0.98))
    return fig


def plot_history(history: dict[str, list[float]], title: str = "") -> Figure:
    """Training and validation loss, and validation Dice, per epoch."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ep = history["epoch"]
    ax1.plot(ep, history["train_loss"], label="train", color="#0072B2")
    ax1.plot(ep, history["val_loss"], label="validation", color="#D55E00", ls="--")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(ep, history["val_dice"], color="#009E73")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation Dice (pooled)")
    ax2.set_ylim(0, 1)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_ablation(rows: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """Bars of this run's Dice (mean ± std when folds were run) beside the paper's Table 7 numbers."""
    labels = [r["label"] for r in rows]
    x = np.arange(len(rows))
    ours = [r["dice"] for r in rows]
    err = [r.get("dice_std", 0.0) or 0.0 for r in rows]
    paper = [r["paper_dice"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    ax.bar(x - 0.2, paper, 0.4, label="paper (Table 7, their data)", color="0.75")
    ax.bar(x + 0.2, ours, 0.4, yerr=err, capsize=3, label="this run", color="tab:blue")
    for xi, v in zip(x, ours):
        ax.text(xi + 0.2, v + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("Dice (infection)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


LOSS_TERMS = {"BCE": "bce", "SSIM": "ssim", "IoU": "iou"}  # label: key of crlearn.losses.loss_maps


def plot_prediction_and_loss_term(image: Any, target: Any, logits: Any, term: str = "BCE", title: str = ""
                                  ) -> Figure:
    """One slice of one class: the ground truth, the prediction (probability >= 0.5) and the per-pixel map of one
    term of the hybrid loss (``"BCE"``, ``"SSIM"`` or ``"IoU"``; :func:`crlearn.losses.loss_maps`), whose mean is
    that term's loss on the slice. ``target`` and ``logits`` are ``(1, H, W)`` or ``(H, W)``."""
    from crlearn.losses import loss_maps

    logit = torch.as_tensor(to_numpy(logits), dtype=torch.float32).reshape(1, 1, *np.shape(to_numpy(logits))[-2:])
    truth = torch.as_tensor(to_numpy(target)).reshape(logit.shape).float()
    term_map = loss_maps(logit, truth)[LOSS_TERMS[term]][0, 0].numpy()
    pred = (torch.sigmoid(logit) >= 0.5)[0].numpy()
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.7))
    axes[0].imshow(overlay(image, truth[0].numpy(), [MERGED_CLASS]))
    axes[0].set_title("ground truth", fontsize=9)
    axes[1].imshow(overlay(image, pred, [MERGED_CLASS]))
    axes[1].set_title(f"prediction (p >= 0.5): {title}" if title else "prediction (p >= 0.5)", fontsize=9)
    shown = axes[2].imshow(term_map, cmap="magma")
    axes[2].set_title(f"{term} term per pixel: mean {term_map.mean():.3f}", fontsize=9)
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(DISCLAIMER, fontsize=8)
    fig.tight_layout()
    return fig


def plot_calibration(curves: dict[str, dict[str, Any]], sweep: dict[str, Any] | None = None,
                     chosen: float | None = None) -> Figure:
    """A reliability diagram (each curve: :func:`crlearn.calibration.reliability`, labelled with its ECE; the
    diagonal is perfect calibration) and, with ``sweep`` (:func:`crlearn.calibration.threshold_sweep`), Dice,
    precision and recall against the threshold, with the ``chosen`` one marked."""
    fig, axes = plt.subplots(1, 2 if sweep else 1, figsize=(10 if sweep else 5, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfectly calibrated")
    for label, r in curves.items():
        ax.plot(r["confidence"], r["frequency"], marker="o", ms=4, label=f"{label} (ECE {r['ece']:.4f})")
    ax.set(xlabel="mean predicted probability (bin)", ylabel="fraction of lesion pixels (bin)", xlim=(0, 1),
           ylim=(0, 1), title="reliability, pixels in 10 bins")
    ax.legend(fontsize=7, loc="upper left")
    if sweep:
        ax = axes[0, 1]
        for metric, style in (("dice", "-"), ("precision", "--"), ("recall", ":")):
            ax.plot(sweep["thresholds"], sweep[metric], ls=style, marker=".", label=metric)
        if chosen is not None:
            ax.axvline(chosen, color="0.4", lw=1, label=f"chosen: {chosen:.2f}")
        ax.set(xlabel="threshold", ylabel="pooled score", ylim=(0, 1), title="threshold sweep")
        ax.legend(fontsize=7)
    fig.suptitle(DISCLAIMER, fontsize=8)
    fig.tight_layout()
    return fig


# Okabe & Ito's colour-blind-safe palette: slices in blue, patient groups in vermillion.
BURDEN_STYLE = {"slices": dict(color="#0072B2", marker="o", s=16, alpha=0.6, label="slice"),
                "groups": dict(color="#D55E00", marker="s", s=48, label="patient group (pooled pixels)")}


def _burden_points(rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(r["pred_percent"], r["true_percent"]) for r in rows
             if r["pred_percent"] is not None and r["true_percent"] is not None]
    arr = np.asarray(pairs, dtype=float).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def plot_burden(result: dict[str, Any]) -> Figure:
    """Lesion burden (:func:`crlearn.tasks.burden.burden`): predicted vs true % with the identity line, and the
    Bland-Altman plot (difference vs mean, with the per-group bias and limits of agreement); slices as blue
    circles, patient groups as vermillion squares."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    top = 1.0
    for key in ("slices", "groups"):
        pred, true = _burden_points(result[key])
        top = max([top, *pred, *true])
        ax1.scatter(true, pred, **BURDEN_STYLE[key])
        ax2.scatter((pred + true) / 2, pred - true, **BURDEN_STYLE[key])
    lim = (-0.02 * top, 1.05 * top)
    ax1.plot(lim, lim, color="0.4", lw=1, ls="--", label="identity")
    ax1.set(xlabel="true lesion / lung (%)", ylabel="predicted lesion / lung (%)", xlim=lim, ylim=lim, aspect="equal")
    ax1.legend(fontsize=8, loc="upper left")
    ba = result["agreement"]["per_group"]["bland_altman"]
    for value, style, label in ((ba["bias"], "-", "bias"), (ba["lower"], ":", "bias - 1.96 sd"),
                                (ba["upper"], ":", "bias + 1.96 sd")):
        if value is not None:
            ax2.axhline(value, color=BURDEN_STYLE["groups"]["color"], ls=style, lw=1)
            ax2.annotate(f"{label}: {value:+.2f}", (1, value), xycoords=("axes fraction", "data"), ha="right",
                         va="bottom", fontsize=7)
    ax2.axhline(0, color="0.4", lw=0.8)
    ax2.set(xlabel="mean of predicted and true (%)", ylabel="predicted - true (percentage points)")
    ax2.set_title("Bland-Altman (lines: patient groups)", fontsize=9)
    mae = result["mae_percentage_points"]
    ax1.set_title(f"lung field: predicted {result['lung_source']}, true {result['true_lung_source']}; "
                  f"MAE per group {'n/a' if mae is None else f'{mae:.2f}'} pp", fontsize=9)
    fig.suptitle(DISCLAIMER, fontsize=8)
    fig.tight_layout()
    return fig


def figure_widget(draw: Any, controls: Sequence[Any]):
    """A box of ``controls`` above an image redrawn by ``draw() -> Figure`` whenever a control changes.

    The picture is an ``ipywidgets.Image`` (PNG bytes), not an ``Output`` capture, so notebooks that use it
    execute headless (nbconvert/nbval) with ``store_widget_state=False``.
    """
    import ipywidgets as widgets

    image = widgets.Image(format="png")

    def redraw(*_: Any) -> None:
        image.value = figure_png(draw())

    for c in controls:
        c.observe(redraw, "value")
    redraw()
    return widgets.VBox([widgets.HBox(list(controls)), image])


def slice_browser(dataset: Any, preds: Any | None = None):
    """An ipywidgets browser: a slider over slices and a toggle per class (ground truth, and prediction if given)."""
    import ipywidgets as widgets

    names = list(dataset.class_names)
    slider = widgets.IntSlider(0, 0, len(dataset.records) - 1, description="slice")
    toggles = [widgets.Checkbox(value=True, description=n, indent=False) for n in names]

    def draw() -> Figure:
        k = slider.value
        keep = torch.tensor([t.value for t in toggles])[:, None, None]
        target = dataset.one_hot(dataset.labels[k]).bool() & keep
        pred = None if preds is None else [torch.as_tensor(to_numpy(preds[k])).bool() & keep]
        return plot_overlays([dataset.images[k]], [target], pred, names, titles=[dataset.records[k].name])

    return figure_widget(draw, [slider, *toggles])


# ----------------------------------------------------------------------------- the slice classifier (§2.8)


def plot_classifier(metrics: dict[str, Any], class_names: Sequence[str], title: str = "") -> Figure:
    """The confusion matrix (counts, colour bar) and the ROC curve of :func:`crlearn.tasks.classifier.slice_metrics`."""
    cm = np.asarray(metrics["confusion_matrix"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    im = ax1.imshow(cm, cmap="Blues", vmin=0)
    for (i, j), v in np.ndenumerate(cm):
        ax1.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax1.set_xticks(range(len(class_names)), class_names)
    ax1.set_yticks(range(len(class_names)), class_names)
    ax1.set_xlabel("predicted")
    ax1.set_ylabel("true")
    ax1.set_title(f"confusion matrix, accuracy {metrics['accuracy']:.3f}", fontsize=9)
    fig.colorbar(im, ax=ax1, label="slices", fraction=0.046)
    roc = metrics.get("roc")
    if roc is not None:
        ax2.plot(roc["fpr"], roc["tpr"], color="#0072B2", label=f"ROC, AUC {metrics['auc']:.3f}")
    ax2.plot([0, 1], [0, 1], ls="--", color="0.6", label="chance")
    ax2.set_xlabel("false positive rate (1 - specificity)")
    ax2.set_ylabel("true positive rate (sensitivity)")
    ax2.set_aspect("equal")
    ax2.legend(fontsize=8, loc="lower right")
    ax2.set_title("ROC curve", fontsize=9)
    fig.suptitle(f"{title} {DISCLAIMER}".strip(), fontsize=8)
    fig.tight_layout()
    return fig


def plot_patient_rules(sweep: dict[str, Any]) -> Figure:
    """Sensitivity and specificity of each patient rule against the threshold (:func:`crlearn.tasks.classifier.
    patient_rule_sweep`); any slice in solid lines, mean probability dashed."""
    fig, ax = plt.subplots(figsize=(7.2, 3.4))
    colors = {"sensitivity": "#0072B2", "specificity": "#D55E00"}
    for rule, ls in (("any_slice", "-"), ("mean_probability", "--")):
        for what, c in colors.items():
            ax.plot(sweep["thresholds"], sweep[rule][what], ls=ls, color=c, label=f"{rule.replace('_', ' ')}: {what}")
    ax.set_xlabel("threshold on P(COVID-19)")
    ax.set_ylabel("fraction of pseudo-patients")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"patient rules on {sweep['n_groups']} held-out pseudo-patient groups", fontsize=9)
    fig.tight_layout()
    return fig


def plot_occlusion(images: Sequence[Any], maps: Sequence[Any], titles: Sequence[str]) -> Figure:
    """Each slice beside its occlusion map (:func:`crlearn.tasks.classifier.occlusion_map`), a diverging map centred on
    zero with its colour bar: orange = evidence for COVID-19, purple = against (colour-blind safe)."""
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(2.9 * n, 6.0), squeeze=False)
    lim = max(float(np.abs(to_numpy(m)).max()) for m in maps) or 1.0
    for c in range(n):
        axes[0, c].imshow(to_numpy(images[c]).squeeze(), cmap="gray", vmin=0, vmax=1)
        axes[0, c].set_title(titles[c], fontsize=8)
        im = axes[1, c].imshow(to_numpy(maps[c]), cmap="PuOr_r", vmin=-lim, vmax=lim)
        axes[1, c].set_title("drop in P(COVID-19) when hidden", fontsize=8)
        for ax in axes[:, c]:
            ax.axis("off")
    fig.colorbar(im, ax=list(axes[1]), fraction=0.03, label="P drop")
    fig.suptitle(DISCLAIMER, fontsize=8)
    return fig
