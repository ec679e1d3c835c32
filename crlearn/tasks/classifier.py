"""The segmentation encoder as a COVID-19 slice classifier (Huang et al. 2022, §2.8, §3.5, Table 6): the model,
its predictions, its metrics at slice and patient level, and its checkpoint.

The classifier is :class:`~crlearn.nn.encoder.EncoderClassifier`: the SE-ResNet-34 encoder of a trained CR-Net,
global average pooling and one linear layer with two outputs (non-COVID, COVID). Three ways to get its encoder,
the rows of Table 6:

- ``frozen`` (the paper's): the trained segmentation encoder, frozen; only the linear head learns.
- ``finetune``: the trained segmentation encoder, trained further with the head.
- ``scratch``: a fresh encoder of the same width, trained from random weights with the head.

Patients (pseudo-patient groups) are called by two rules (:func:`patient_metrics`): the paper's any-slice rule,
whose slice threshold is chosen for a stated specificity on groups outside the test part
(:func:`threshold_for_specificity`, kept in the checkpoint: :func:`checkpoint_threshold`; at 0.5 the rule calls
most healthy patients positive, since one of their many slices is enough), and the mean probability at 0.5.

Training is in :mod:`crlearn.tasks.classifier_run` (the frozen head as a logistic regression:
:mod:`crlearn.tasks.logistic_head`, written into the linear layer by :func:`head_from_logistic`); group
cross-validation of the whole recipe in :mod:`crlearn.tasks.classifier_cv`.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from crlearn import __version__
from crlearn.data.errors import DataError
from crlearn.data.slices import group_labels
from crlearn.inference import model_batches, prepare_model
from crlearn.metrics import classification_metrics, patient_level
from crlearn.nn.encoder import EncoderClassifier, SEResNet34Encoder
from crlearn.nn.model import CRNet, CRNetConfig
from crlearn.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_torch_save,
    cpu_state,
    load_checkpoint,
)
from crlearn.training.device import autocast

CLASSIFIER_FORMAT = "crlearn-classifier-v1"  # distinct from segmentation checkpoints (crlearn-checkpoint-v1)
MODES = ("frozen", "finetune", "scratch")  # Table 6's rows (module docstring)
THRESHOLD = 0.5  # P(covid) at or above which a slice (or, by mean probability, a patient) is called COVID-19
SPECIFICITY = 0.90  # the any-slice rule's slice threshold is chosen for this specificity on validation groups


# ----------------------------------------------------------------------------- building the classifier


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    return mode


def classifier_from_segmenter(segmenter: CRNet, mode: str = "frozen") -> EncoderClassifier:
    """A classifier on a copy of a trained CR-Net's encoder: ``frozen`` (no gradient reaches the encoder and its
    BatchNorm statistics stay fixed) or ``finetune`` (trainable)."""
    if check_mode(mode) == "scratch":
        raise ValueError("mode 'scratch' takes no trained encoder: use scratch_classifier()")
    encoder = copy.deepcopy(getattr(segmenter, "_orig_mod", segmenter).coarse.encoder).cpu()
    return EncoderClassifier(encoder, num_classes=2, freeze_encoder=mode == "frozen")


def classifier_from_checkpoint(seg_ckpt_path: str | Path, mode: str = "frozen") -> EncoderClassifier:
    """A classifier on the encoder of a segmentation checkpoint (``best.pt`` of ``crlearn train``); see
    :func:`classifier_from_segmenter`. A file that is not a segmentation checkpoint: :class:`CheckpointError`."""
    segmenter, _ = load_checkpoint(seg_ckpt_path)
    return classifier_from_segmenter(segmenter, mode)


def scratch_classifier(model_config: CRNetConfig) -> EncoderClassifier:
    """A fresh, trainable encoder of the same width as the CR-Net of ``model_config`` (e.g. a profile's), with the
    head: Table 6's comparison without segmentation pre-training."""
    encoder = SEResNet34Encoder(model_config.in_channels, model_config.width, model_config.reduction)
    return EncoderClassifier(encoder, num_classes=2, freeze_encoder=False)


def build_classifier(encoder_config: dict[str, Any], mode: str) -> EncoderClassifier:
    """An untrained classifier of a given encoder config (``SEResNet34Encoder.config``), frozen or not as ``mode``
    trained it: what :func:`load_classifier` fills with a checkpoint's weights."""
    encoder = SEResNet34Encoder(**encoder_config)
    return EncoderClassifier(encoder, num_classes=2, freeze_encoder=check_mode(mode) == "frozen")


# ----------------------------------------------------------------------------- predictions


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, device: str | torch.device | None = None,
                   batch_size: int = 64, size: int | None = None) -> Tensor:
    """Logits ``(N, C)`` (float32, on the CPU) of slices ``(N, 1, H, W)``, resized to ``size`` x ``size`` as
    :func:`crlearn.inference.predict_logits` resizes (``None``: already at the model's input size). A model whose
    logits are not ``(B, C)`` with ``C >= 2`` (class 1 = COVID-19) is a ``ValueError``."""
    model, device, dtype = prepare_model(model, device)
    outs = []
    for xs in model_batches(images, size, device, batch_size):
        with autocast(device, dtype):
            logits = model(xs)
        if logits.dim() != 2 or logits.shape[1] < 2:
            raise ValueError(f"the classifier must return logits (B, C) with C >= 2 (class 1 = COVID-19), "
                             f"got shape {tuple(logits.shape)}")
        outs.append(logits.float().cpu())
    return torch.cat(outs) if outs else torch.empty(0, 2)


def predict_proba(model: nn.Module, images: Tensor, device: str | torch.device | None = None,
                  batch_size: int = 64, size: int | None = None) -> np.ndarray:
    """P(COVID-19) per slice, ``(N,)`` float64: the softmax of the logits (:func:`predict_logits`), class 1."""
    return torch.softmax(predict_logits(model, images, device, batch_size, size).double(), dim=1)[:, 1].numpy()


@torch.no_grad()
def occlusion_map(model: nn.Module, image: Tensor, patch: int = 16, stride: int = 8, fill: float = 0.0,
                  device: str | torch.device | None = None, batch_size: int = 64) -> Tensor:
    """Where the classifier looks (occlusion sensitivity, Zeiler & Fergus 2014; hand-written here because it is
    the lesson, Captum's ``Occlusion`` does the same): P(COVID-19) of ``image`` ``(1, S, S)`` minus P(COVID-19)
    with a ``patch`` x ``patch`` square set to ``fill``, averaged over every position of the square (step
    ``stride``, the last row and column of positions flush with the border) that covers the pixel: ``(S, S)``
    float32. Positive where hiding the pixel lowers P(COVID-19) (evidence for COVID-19), negative where it raises it.
    """
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 1:
        raise ValueError(f"image must be one slice (1, S, S), got {getattr(image, 'shape', type(image).__name__)}")
    _, h, w = image.shape
    if not 0 < patch <= min(h, w) or stride < 1:
        raise ValueError(f"patch must lie in 1..{min(h, w)} and stride be >= 1, got patch {patch}, stride {stride}")
    corners = [(t, left) for t in sorted({*range(0, h - patch + 1, stride), h - patch})
               for left in sorted({*range(0, w - patch + 1, stride), w - patch})]
    views = image.float().repeat(len(corners), 1, 1, 1)  # (P, 1, S, S): one occluded copy per position
    for k, (t, left) in enumerate(corners):
        views[k, :, t:t + patch, left:left + patch] = fill
    drop = predict_proba(model, image[None].float(), device)[0] - predict_proba(model, views, device, batch_size)
    total, count = torch.zeros(h, w, dtype=torch.float64), torch.zeros(h, w, dtype=torch.float64)
    for (t, left), d in zip(corners, drop.tolist()):
        total[t:t + patch, left:left + patch] += d
        count[t:t + patch, left:left + patch] += 1
    return (total / count).float()


# ----------------------------------------------------------------------------- metrics (§3.2, Eq. 6-9)


def slice_metrics(y_true: Sequence[int], probs: Sequence[float], threshold: float = THRESHOLD) -> dict[str, Any]:
    """Accuracy, precision, recall (sensitivity), F1, specificity and the confusion matrix at ``threshold``
    (:func:`crlearn.metrics.classification_metrics`), plus the ROC curve and its area (scikit-learn). With one
    class only the AUC is undefined: ``None``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y_true, probs = np.asarray(y_true).astype(int), np.asarray(probs, dtype=np.float64)
    out = classification_metrics(y_true, (probs >= threshold).astype(int))
    out["sensitivity"] = out["recall"]
    if len(set(y_true.tolist())) < 2:
        return {**out, "auc": None, "roc": None}
    fpr, tpr, thresholds = roc_curve(y_true, probs)
    roc = {"fpr": fpr.tolist(), "tpr": tpr.tolist(),  # JSON has no infinity: sklearn's first threshold is inf
           "thresholds": [float(t) if np.isfinite(t) else None for t in thresholds]}
    return {**out, "auc": float(roc_auc_score(y_true, probs)), "roc": roc}


def _rule_scores(truth: dict[Hashable, int], called: dict[Hashable, int]) -> dict[str, Any]:
    groups = list(truth)
    m = classification_metrics([truth[g] for g in groups], [called[g] for g in groups])
    return {"accuracy": m["accuracy"], "sensitivity": m["recall"], "specificity": m["specificity"],
            "confusion_matrix": m["confusion_matrix"], "n_groups": len(groups)}


def patient_metrics(y_true: Sequence[int], probs: Sequence[float], groups: Sequence[Hashable],
                    threshold: float = THRESHOLD, source: str | Path = "data",
                    mean_threshold: float | None = None) -> dict[str, dict[str, Any]]:
    """Patient-level decisions from slice probabilities, two rules, scored against the groups' labels:

    - ``any_slice`` (the paper's): a patient is COVID-19 if any of its slices is (P >= ``threshold``);
      :func:`crlearn.metrics.patient_level`.
    - ``mean_probability``: a patient is COVID-19 if the mean P over its slices is >= ``mean_threshold``
      (default ``threshold``); one false positive slice among many does not decide it.

    Each: accuracy, sensitivity, specificity, confusion matrix, ``n_groups``. A group's true label is its slices'
    label; a group with both labels is a :class:`DataError` naming ``source``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if not len(probs) == len(y_true) == len(groups):
        raise ValueError(f"y_true, probs and groups must have one length, got {len(y_true)}, {len(probs)}, "
                         f"{len(groups)}")
    truth = group_labels(y_true, groups, source)
    any_slice = patient_level((probs >= threshold).astype(int).tolist(), groups)
    sums: dict[Hashable, list[float]] = {}
    for p, g in zip(probs.tolist(), groups):
        sums.setdefault(g, []).append(p)
    mean_t = threshold if mean_threshold is None else mean_threshold
    mean_prob = {g: int(float(np.mean(v)) >= mean_t) for g, v in sums.items()}
    return {"any_slice": _rule_scores(truth, any_slice), "mean_probability": _rule_scores(truth, mean_prob)}


def patient_rule_sweep(y_true: Sequence[int], probs: Sequence[float], groups: Sequence[Hashable],
                       thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """Sensitivity and specificity of both patient rules (:func:`patient_metrics`) at each threshold:
    ``{"thresholds": [...], "any_slice": {"sensitivity": [...], "specificity": [...], "accuracy": [...]},
    "mean_probability": {...}, "n_groups": G}``; thresholds default to 0.05, 0.10, ..., 0.95."""
    ts = [round(0.05 * k, 2) for k in range(1, 20)] if thresholds is None else [float(t) for t in thresholds]
    out: dict[str, Any] = {"thresholds": ts}
    for t in ts:
        pm = patient_metrics(y_true, probs, groups, t)
        for rule, scores in pm.items():
            for what in ("sensitivity", "specificity", "accuracy"):
                out.setdefault(rule, {}).setdefault(what, []).append(scores[what])
            out["n_groups"] = scores["n_groups"]
    return out


def group_maxima(probs: Sequence[float], groups: Sequence[Hashable]) -> dict[Hashable, float]:
    """The largest slice probability of each group: the any-slice rule calls a group positive iff it is >= t."""
    out: dict[Hashable, float] = {}
    for p, g in zip(np.asarray(probs, dtype=np.float64).tolist(), groups):
        out[g] = max(out.get(g, -np.inf), p)
    return out


def threshold_for_specificity(y_true: Sequence[int], probs: Sequence[float], groups: Sequence[Hashable],
                              specificity: float = SPECIFICITY, source: str | Path = "data") -> dict[str, Any]:
    """The any-slice rule's slice threshold chosen for a stated patient specificity on groups the model did not
    train on (validation groups; never the test part).

    The rule calls a group COVID-19 when its largest slice probability reaches the threshold, so with the ``n``
    negative groups' maxima sorted, ``m_1 <= ... <= m_n``, and ``k = ceil(specificity * n)``, any threshold in
    ``(m_k, m_(k+1)]`` leaves exactly ``k`` negatives below it; the midpoint of that gap is taken (``m_(n+1) = 1``).
    Ties at ``m_k`` push the threshold above the tie (the specificity is then higher than asked). Returns
    ``{"threshold", "specificity" (reached on these groups), "sensitivity", "target", "n_negative_groups",
    "n_positive_groups"}``; no negative group is a :class:`DataError` naming ``source``.
    """
    if not 0 < specificity <= 1:
        raise ValueError(f"specificity must lie in (0, 1], got {specificity}")
    truth, maxima = group_labels(y_true, groups, source), group_maxima(probs, groups)
    negatives = sorted(maxima[g] for g, t in truth.items() if t == 0)
    if not negatives:
        raise DataError(f"{source}: no non-COVID group to choose a threshold for specificity {specificity} on")
    k = int(np.ceil(specificity * len(negatives) - 1e-9))
    lower = negatives[k - 1]
    upper = min((m for m in negatives if m > lower), default=1.0)
    t = (lower + upper) / 2 if upper > lower else float(np.nextafter(lower, np.inf))
    scores = _rule_scores(truth, {g: int(m >= t) for g, m in maxima.items()})
    return {"threshold": float(t), "specificity": scores["specificity"], "sensitivity": scores["sensitivity"],
            "target": specificity, "n_negative_groups": len(negatives),
            "n_positive_groups": len(truth) - len(negatives)}


def evaluate_classifier(model: nn.Module, dataset: Any, device: str | torch.device | None = None,
                        batch_size: int = 64, threshold: float = THRESHOLD,
                        patient_threshold: float | None = None) -> dict[str, Any]:
    """Slice- and patient-level metrics of a classifier on a :class:`~crlearn.data.slices.ClassificationDataset`
    (its un-augmented slices): ``{"slice": slice_metrics, "patient": patient_metrics, "n_slices", "threshold",
    "patient_threshold"}``. Slices and the mean-probability rule are decided at ``threshold``, the any-slice rule
    at ``patient_threshold`` (default ``threshold``; a checkpoint's chosen one: :func:`checkpoint_threshold`)."""
    if len(dataset.names) == 0:
        raise DataError(f"{dataset.root}: no slices to evaluate")
    probs = predict_proba(model, dataset.images, device, batch_size)
    y_true = dataset.targets.tolist()
    any_t = threshold if patient_threshold is None else float(patient_threshold)
    return {"slice": slice_metrics(y_true, probs, threshold),
            "patient": patient_metrics(y_true, probs, dataset.groups, any_t, dataset.root / "index.csv",
                                       mean_threshold=threshold),
            "n_slices": len(y_true), "threshold": threshold, "patient_threshold": any_t}


# ----------------------------------------------------------------------------- a scikit-learn head as the linear layer


@torch.no_grad()
def head_from_logistic(head: nn.Linear, pipeline: Any) -> nn.Linear:
    """Write a fitted scikit-learn ``make_pipeline(StandardScaler(), LogisticRegression[CV](...))`` on pooled
    features into the two-logit linear head, so the classifier stays one torch module.

    The pipeline's P(COVID) is ``sigmoid(w . (f - mu) / s + b)``; with ``w' = w / s`` and ``b' = b - w' . mu`` it is
    ``sigmoid(w' . f + b')``, which is the softmax of the logits ``(0, w' . f + b')``. So row 0 of the head is
    zero and row 1 holds ``w'``, ``b'``: the same probabilities (to float32 rounding). Returns ``head``.
    """
    scaler, logistic = pipeline[0], pipeline[-1]
    if head.out_features != 2 or logistic.coef_.shape != (1, head.in_features):
        raise ValueError(f"need a binary logistic fit on {head.in_features} features for a two-logit head, got "
                         f"coefficients of shape {logistic.coef_.shape} for {head.out_features} outputs")
    mean = np.zeros(head.in_features) if scaler.mean_ is None else np.asarray(scaler.mean_, dtype=np.float64)
    scale = np.ones(head.in_features) if scaler.scale_ is None else np.asarray(scaler.scale_, dtype=np.float64)
    w = np.asarray(logistic.coef_[0], dtype=np.float64) / scale
    b = float(logistic.intercept_[0]) - float(w @ mean)
    head.weight.zero_()
    head.bias.zero_()
    head.weight[1].copy_(torch.from_numpy(w))
    head.bias[1] = b
    return head


# ----------------------------------------------------------------------------- checkpoints


def save_classifier(path: str | Path, model: EncoderClassifier, mode: str, **meta: Any) -> None:
    """Weights, encoder config and mode, plus ``meta`` (size, fit, normalize, class names, seed, split groups, the
    segmentation checkpoint...), written atomically with the format tag :data:`CLASSIFIER_FORMAT`."""
    ckpt = {"format": CLASSIFIER_FORMAT, "crlearn_version": __version__, "encoder_config": dict(model.encoder.config),
            "num_classes": model.head.out_features, "mode": check_mode(mode), **meta, "state_dict": cpu_state(model)}
    atomic_torch_save(ckpt, path)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[EncoderClassifier, dict[str, Any]]:
    """Rebuild a classifier from its checkpoint (``torch.load(weights_only=True)``): ``(model in eval mode,
    checkpoint)``. Anything else (a segmentation checkpoint, another file) is a :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip or unsupported-type errors all mean "not one of ours"
        raise CheckpointError(f"{path}: not a crlearn classifier checkpoint ({type(exc).__name__}: {exc})") from None
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt == CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: a segmentation checkpoint (crlearn train), not a classifier checkpoint "
                              f"(crlearn classify train); a classifier is built on its encoder by crlearn classify train --encoder")
    if fmt != CLASSIFIER_FORMAT:
        raise CheckpointError(f"{path}: not a crlearn classifier checkpoint (no '{CLASSIFIER_FORMAT}' format tag)")
    model = build_classifier(ckpt["encoder_config"], ckpt["mode"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt


def checkpoint_threshold(ckpt: dict[str, Any]) -> float:
    """The slice threshold a classifier checkpoint recommends: the one its run chose for the any-slice rule on
    validation groups (``threshold``), else :data:`THRESHOLD` (checkpoints from before the choice existed)."""
    t = ckpt.get("threshold")
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else THRESHOLD
