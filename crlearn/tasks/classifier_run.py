"""Training the slice classifier (Huang et al. 2022, §2.8, Table 6): the library function ``crlearn classify`` and
the notebooks call.

:func:`run_classify` does it all in two stages. Stage 1 (frozen and finetune modes, unless a segmentation
checkpoint is given): train CR-Net with the profile on every bundled segmentation set together, MedSeg and the
lung set, on their shared ``infection`` class (:func:`train_segmenter`). Stage 2: split the labelled slices by
patient group (70/10/20, both classes in every part, or fold k of K group folds), put the encoder under a linear
head and fit it (:func:`fit_stage2`):

- frozen mode, ``head="logistic"`` (default): a standardised, L2-penalised logistic regression on the cached pooled
  features of the train and validation groups, its penalty chosen by inner group folds
  (:mod:`crlearn.tasks.logistic_head`), folded into the torch head;
- otherwise (``head="torch"``, finetune, scratch): :func:`fit_classifier` (Adam, cross-entropy on two logits,
  early stopping on the validation loss).

The any-slice rule's slice threshold is chosen for a stated specificity on groups outside the test part, kept in
``best.pt``; then the validation and test parts are evaluated at slice and patient level, and ``best.pt`` and
``metrics.json`` are written. Every mode gets the same split and seed. Cross-validation of the whole recipe:
:mod:`crlearn.tasks.classifier_cv`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from crlearn.data.augment import AUGMENTATIONS
from crlearn.data.folder import NORMALIZATIONS
from crlearn.data.slices import (
    CLASS_NAMES,
    FITS,
    LABELS,
    ClassificationDataset,
    classification_folds,
    classification_split,
    default_classification_dir,
)
from crlearn.nn.encoder import EncoderClassifier
from crlearn.report import DISCLAIMER, hardware
from crlearn.tasks.classifier import (
    SPECIFICITY,
    check_mode,
    checkpoint_threshold,
    classifier_from_checkpoint,
    classifier_from_segmenter,
    evaluate_classifier,
    head_from_logistic,
    load_classifier,
    predict_proba,
    save_classifier,
    scratch_classifier,
    threshold_for_specificity,
)
from crlearn.tasks.logistic_head import VIEW_USES, fit_logistic
from crlearn.training.checkpoint import atomic_write_json, fresh_path
from crlearn.training.config import PROFILES, resolve_profile
from crlearn.training.device import autocast, autocast_dtype, pick_device, to_device
from crlearn.training.engine import FitState, make_loader, seeded

CLASSIFY_FILES = ("best.pt", "metrics.json")
HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy", "seconds")
# Adam's learning rate per mode (this project's choice; the paper gives 3e-4 for everything): a lone linear head
# on fixed features takes large steps safely, a pre-trained encoder is fine-tuned gently, a fresh one in between.
MODE_LR = {"frozen": 3e-3, "finetune": 3e-4, "scratch": 1e-3}
HEADS = ("logistic", "torch")  # how a frozen encoder's head is fitted (ClassifyConfig.head)


@dataclass
class ClassifyConfig:
    """How to train the classifier (stage 2); a profile and the command line override the defaults."""

    size: int = 128  # side of the square input, pixels
    fit: str = "pad"  # "pad" (aspect kept, zero borders) or "stretch" (crlearn.data.slices)
    normalize: str = "none"  # per-slice intensity normalisation (crlearn.data.folder.normalize_intensity)
    epochs: int = 40  # maximum number of epochs, the same for every mode
    batch_size: int = 32  # slices per step
    lr: float = 3e-3  # Adam learning rate (run_classify sets the mode's, MODE_LR, unless overridden)
    weight_decay: float = 0.0  # Adam weight decay
    patience: int = 10  # early stopping: epochs without a better validation loss
    augment: bool = True  # the paper's x5 augmentation of the training slices
    seed: int = 0  # seeds the split, the head (and a scratch encoder) and the batch order
    max_minutes: float | None = None  # stop after this much training time (breaks exact repeatability)
    amp: bool = True  # autocast on CUDA
    head: str = "logistic"  # frozen mode: "logistic" (scikit-learn on cached features) or "torch" (Adam, as above)
    views: str = "augment"  # the logistic head: how the x5 views enter its fit (crlearn.tasks.logistic_head)
    specificity: float = SPECIFICITY  # the any-slice rule's threshold is chosen for this on validation groups

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {self.size}")
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {list(FITS)}, got {self.fit!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {list(NORMALIZATIONS)}, got {self.normalize!r}")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {self.head!r}")
        if self.views not in VIEW_USES:
            raise ValueError(f"views must be one of {list(VIEW_USES)}, got {self.views!r}")
        if not 0 < self.specificity <= 1:
            raise ValueError(f"specificity must lie in (0, 1], got {self.specificity}")


# The frozen head: logistic (scikit-learn) with the x5 views as augmentation rows, chosen by 5-fold pseudo-patient
# CV over augment / mean / identity (results/classifier_cv/head_choices.md); the any-slice threshold's target
# specificity 0.9 was fixed before that CV (0.8 and 0.95 were measured beside it, for the record).
# For the torch head (head="torch", finetune, scratch), chosen earlier on one validation split (frozen mode, quick
# profile): pad beat stretch and standardisation, lr 3e-3
# beat 1e-3 and was steadier than 1e-2; the validation loss still falls slowly after 30 epochs, so the cap is 40,
# which keeps the scratch mode (full forward and backward passes every epoch) within minutes on a CPU.
# Per profile: quick is the sample's own resolution (longer side 128 px); full doubles it, nearer the scale the
# 512 px segmenter saw lungs at. Both cost seconds to a minute in frozen mode (features are cached).
CLASSIFY_PROFILES: dict[str, dict[str, Any]] = {"quick": {"size": 128}, "full": {"size": 256}}


def classify_config(profile: str, mode: str, **overrides: Any) -> ClassifyConfig:
    """The profile's :class:`ClassifyConfig` with the mode's learning rate (:data:`MODE_LR`) and ``overrides``."""
    return ClassifyConfig(**{"lr": MODE_LR[check_mode(mode)], **CLASSIFY_PROFILES[profile], **overrides})


# ----------------------------------------------------------------------------- the fit loop


@torch.no_grad()
def encode_features(model: EncoderClassifier, dataset: Dataset, device: torch.device,
                    batch_size: int = 64) -> TensorDataset:
    """The pooled encoder feature of every item of ``dataset`` (each augmented view), with its target:
    ``TensorDataset((N, c4) float32, (N,) long)`` on the CPU."""
    model.to(device=device, memory_format=torch.channels_last).eval()
    feats, targets = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        with autocast(device, autocast_dtype(device)):
            feats.append(model.features(to_device(x, device)).float().cpu())  # (B, c4)
        targets.append(y)
    return TensorDataset(torch.cat(feats), torch.cat(targets))


def _train_epoch(net: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, scaler: Any, device: torch.device,
                 dtype: torch.dtype | None, desc: str, progress: bool) -> float:
    """One pass: forward, cross-entropy, backward, step; returns the mean training loss."""
    net.train()
    total, n = 0.0, 0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress):
        x, y = to_device(x, device), y.to(device)
        with autocast(device, dtype):
            loss = nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        total += float(loss.detach()) * len(x)
        n += len(x)
    return total / max(n, 1)


@torch.no_grad()
def _validate(net: nn.Module, loader: DataLoader, device: torch.device, dtype: torch.dtype | None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (threshold 0.5, i.e. the larger logit) over a loader."""
    net.eval()
    total, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = to_device(x, device), y.to(device)
        with autocast(device, dtype):
            logits = net(x).float()
        total += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    return total / max(n, 1), correct / max(n, 1)


def fit_classifier(model: EncoderClassifier, train_set: Dataset, val_set: Dataset, cfg: ClassifyConfig,
                   device: str | torch.device | None = None, progress: bool = False) -> dict[str, list[float]]:
    """Train with Adam and cross-entropy on the two logits, early stopping on the validation loss; at the end
    ``model`` holds the weights of the best epoch. Returns the history (``stopped``: the epoch it ended early).

    With a frozen encoder only the head learns, and the encoder (in eval mode: fixed BatchNorm statistics, no
    dropout) maps each training view to the same pooled feature every epoch. So the features of every (augmented)
    slice are computed once and the head is trained on them: the same maths as the full forward pass, with one
    encoder pass per view instead of one per view and epoch.
    """
    device = pick_device(device)
    with seeded(cfg.seed, device):  # the caller's generators are restored afterwards
        return _fit_classifier_seeded(model, train_set, val_set, cfg, device, progress)


def _fit_classifier_seeded(model: EncoderClassifier, train_set: Dataset, val_set: Dataset, cfg: ClassifyConfig,
                           device: torch.device, progress: bool) -> dict[str, list[float]]:
    """:func:`fit_classifier`'s work, inside its seeded block."""
    model.to(device=device, memory_format=torch.channels_last)
    if model.encoder_frozen:
        net, dtype = model.head, None  # cached features: the head alone, in float32
        train_set, val_set = (encode_features(model, d, device) for d in (train_set, val_set))
    else:
        net, dtype = model, autocast_dtype(device, cfg.amp)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    train_loader = make_loader(train_set, cfg.batch_size, True, device, cfg.seed)
    val_loader = make_loader(val_set, 64, False, device)
    state, t0 = FitState(history={k: [] for k in HISTORY_KEYS}), time.perf_counter()
    for epoch in tqdm(range(cfg.epochs), desc="epochs", disable=not progress):
        train_loader.generator.manual_seed(cfg.seed * 100_003 + epoch)  # batch order depends on (seed, epoch) only
        t_epoch = time.perf_counter()
        train_loss = _train_epoch(net, train_loader, opt, scaler, device, dtype, f"epoch {epoch + 1}", progress)
        val_loss, val_acc = _validate(net, val_loader, device, dtype)
        for key, value in zip(HISTORY_KEYS, (epoch + 1, train_loss, val_loss, val_acc, time.perf_counter() - t_epoch)):
            state.history[key].append(value)
        state.observe(val_loss, net)
        out_of_time = cfg.max_minutes is not None and time.perf_counter() - t0 > 60 * cfg.max_minutes
        if state.bad_epochs >= cfg.patience or out_of_time:
            state.history["stopped"] = [epoch + 1]
            break
    if state.best_state is not None:  # None only if every validation loss was NaN
        net.load_state_dict(state.best_state)
    model.train(False)
    return state.history


# ----------------------------------------------------------------------------- the run


@dataclass
class ClassifyResult:
    """What :func:`run_classify` returns: the trained classifier, its history, metrics and where it was written."""

    model: EncoderClassifier
    history: dict[str, list[float]]
    metrics: dict[str, Any]  # the content of metrics.json: val and test metrics, split, mode, profile...
    dataset: ClassificationDataset  # every slice of the data folder, at the input size
    out: Path | None  # the run folder (None: nothing written)

    @property
    def test(self) -> dict[str, Any]:
        return self.metrics["test"]


def stage1_data(both_sets: bool = False) -> list[Path]:
    """Stage 1's folders: the bundled MedSeg set; ``both_sets`` adds the lung set (trained together on their shared
    ``infection`` class, :func:`crlearn.training.run.run` with several folders).

    MedSeg alone is the default, chosen by five-fold pseudo-patient cross-validation of the whole classifier recipe
    (``results/classifier_cv/head_choices_encoders.md``): both sets measured no better (slice AUC 0.830 vs 0.849,
    any-slice patient accuracy 0.833 vs 0.792, intervals overlapping, with the profile's earlier 17-epoch recipe)
    and take about twice as long, which would break the 240-s budget of ``crlearn classify train`` on a 2-core CPU."""
    from crlearn.data.paths import DEFAULT_DATA, LUNG_DATA, bundled

    return [bundled(DEFAULT_DATA), bundled(LUNG_DATA)] if both_sets else [bundled(DEFAULT_DATA)]


def train_segmenter(profile: str, seed: int = 0, out: Path | None = None, force: bool = False,
                    device: str | torch.device | None = None, progress: bool = False,
                    log: Callable[[str], Any] | None = None, **seg_overrides: Any) -> Any:
    """Stage 1: CR-Net trained with ``profile`` on :func:`stage1_data` (``classes=["infection"]``), written to
    ``out`` (``best.pt``) when given; ``seg_overrides`` replace ``data``, ``classes`` or
    :class:`~crlearn.training.config.TrainConfig` fields. Returns the :class:`~crlearn.training.run.TrainResult`.
    None of these slices is in the classifier's data (another source), so one stage 1 serves every classifier fold."""
    from crlearn.training.run import run

    kwargs = {"data": stage1_data(), "classes": ["infection"], **seg_overrides}
    return run(profile=profile, seed=seed, out=out, force=force, device=device, progress=progress,
               log=(lambda line: log(f"stage 1, segmenter: {line}")) if log else None, **kwargs)


def _classifier(mode: str, encoder: str | Path | None, profile: str, seed: int, out: Path | None, force: bool,
                device: torch.device, progress: bool, log: Callable[[str], Any] | None,
                seg_overrides: dict[str, Any] | None) -> tuple[EncoderClassifier, str | None]:
    """The untrained classifier of a mode and where its encoder came from (stage 1 trains a segmenter if needed)."""
    if mode == "scratch":
        if encoder is not None:
            raise ValueError("mode 'scratch' trains a fresh encoder: give no encoder checkpoint")
        with seeded(seed, torch.device("cpu")):  # the initial weights; the caller's generator restored after
            return scratch_classifier(PROFILES[profile].model_config()), None
    if encoder is not None:
        with seeded(seed, torch.device("cpu")):  # the head's initial weights
            return classifier_from_checkpoint(encoder, mode), str(encoder)
    seg_out = out / "segmenter" if out is not None else None
    result = train_segmenter(profile, seed, seg_out, force, device, progress, log, **(seg_overrides or {}))
    with seeded(seed, torch.device("cpu")):
        return classifier_from_segmenter(result.model, mode), str(seg_out / "best.pt") if seg_out else None


def fit_logistic_classifier(model: EncoderClassifier, dataset: ClassificationDataset, cfg: ClassifyConfig,
                            device: str | torch.device | None = None) -> dict[str, Any]:
    """Fit a frozen classifier's head as a logistic regression (:func:`crlearn.tasks.logistic_head.fit_logistic`)
    on the pooled features of every slice of ``dataset`` (the train and validation groups, un-augmented: the x5
    views are made here as ``cfg.views`` says), then fold it into ``model.head``
    (:func:`crlearn.tasks.classifier.head_from_logistic`). Returns the fit's ``info`` with ``seconds``."""
    if not model.encoder_frozen:
        raise ValueError("the logistic head is for a frozen encoder (mode 'frozen')")
    device, t0 = pick_device(device), time.perf_counter()
    n, n_views = len(dataset.names), 1 if cfg.views == "identity" else len(AUGMENTATIONS)
    feats = encode_features(model, dataset.subset(range(n), augment=n_views > 1), device).tensors[0]  # (N*V, C)
    views = feats.view(n, n_views, -1).double().numpy()  # item j * V + v is view v of slice j
    pipe, info = fit_logistic(views, dataset.targets.numpy(), dataset.groups, cfg.views, cfg.seed, cfg.specificity)
    head_from_logistic(model.head, pipe)
    model.train(False)
    return {**info, "seconds": time.perf_counter() - t0}


def validation_threshold(model: EncoderClassifier, val_set: ClassificationDataset, cfg: ClassifyConfig,
                         device: str | torch.device | None = None) -> dict[str, Any]:
    """The any-slice rule's slice threshold for ``cfg.specificity`` on the validation groups' predictions."""
    probs = predict_proba(model, val_set.images, device)
    return threshold_for_specificity(val_set.targets.tolist(), probs, val_set.groups, cfg.specificity,
                                     val_set.root / "index.csv")


def fit_stage2(model: EncoderClassifier, full: ClassificationDataset, split: dict[str, list[int]],
               cfg: ClassifyConfig, device: torch.device, progress: bool = False) -> dict[str, Any]:
    """Stage 2 on a split: the logistic head on the train and validation groups (frozen mode, ``cfg.head ==
    "logistic"``; threshold from the inner out-of-fold probabilities), else :func:`fit_classifier` on the train
    groups with early stopping on the validation groups (threshold from their predictions). Never reads the test
    part. Returns ``{"head", "history", "logistic", "threshold", "seconds"}``."""
    t0 = time.perf_counter()
    if model.encoder_frozen and cfg.head == "logistic":
        info = fit_logistic_classifier(model, full.subset(sorted(split["train"] + split["val"])), cfg, device)
        threshold = {**info.pop("threshold"), "chosen_on": "out-of-fold probabilities of the train and validation "
                                                           "groups (inner group folds)"}
        return {"head": "logistic", "history": {k: [] for k in HISTORY_KEYS}, "logistic": info,
                "threshold": threshold, "seconds": time.perf_counter() - t0}
    history = fit_classifier(model, full.subset(split["train"], augment=cfg.augment), full.subset(split["val"]), cfg,
                             device, progress)
    threshold = {**validation_threshold(model, full.subset(split["val"]), cfg, device),
                 "chosen_on": "the validation groups"}
    return {"head": "torch", "history": history, "logistic": None, "threshold": threshold,
            "seconds": time.perf_counter() - t0}


def run_classify(data: str | Path | None = None, encoder: str | Path | None = None, mode: str = "frozen",
                 profile: str | None = None, out: str | Path | None = None, force: bool = False, seed: int = 0,
                 device: str | torch.device | None = None, progress: bool = False,
                 log: Callable[[str], Any] | None = print, seg_overrides: dict[str, Any] | None = None,
                 fold: int | None = None, n_folds: int = 5, **overrides: Any) -> ClassifyResult:
    """Train and evaluate the slice classifier of §2.8; returns a :class:`ClassifyResult`.

    Args:
        data: the labelled folder (default: the bundled ``data_sample/sarscov2_ct``).
        encoder: a segmentation checkpoint (``best.pt`` of ``crlearn train``) whose encoder to use; ``None`` trains
            one first on every bundled segmentation set with the same profile and seed (stage 1,
            :func:`train_segmenter`), written to ``out/segmenter``.
        mode: ``frozen`` (the paper's: only the head learns), ``finetune`` or ``scratch`` (Table 6).
        profile: ``quick``, ``full`` or ``auto``/``None`` (:func:`crlearn.training.config.resolve_profile`).
        out: the run folder for ``best.pt`` and ``metrics.json``; ``None`` writes nothing. An existing
            non-empty folder needs ``force``.
        seed: seeds the split, stage 1, the head and the batch order.
        log: called with one line per stage (``None``: silent).
        seg_overrides: stage 1's ``data``, ``classes`` and :class:`~crlearn.training.config.TrainConfig` overrides.
        fold: use fold ``fold`` (0-based) of ``n_folds`` group folds (:func:`crlearn.data.slices.
            classification_folds`, same seed) instead of the 70/10/20 split; every fold's test groups differ.
        overrides: :class:`ClassifyConfig` fields (``head``, ``views``, ``specificity``, ``epochs``, ``size``...).

    The any-slice rule's threshold is chosen on groups outside the test part (:func:`fit_stage2`), kept in
    ``best.pt`` (``threshold``) and used for the val and test metrics' ``any_slice`` rule.
    """
    name = resolve_profile(profile)
    cfg = classify_config(name, mode, seed=seed, **overrides)
    device = pick_device(device)
    out = fresh_path(out, explicit=True, force=force, is_dir=True) if out is not None else None
    full = ClassificationDataset(data if data is not None else default_classification_dir(), size=cfg.size,
                                 fit=cfg.fit, normalize=cfg.normalize)
    split = classification_split(full, seed=seed) if fold is None else fold_split(full, fold, n_folds, seed)
    model, source = _classifier(mode, encoder, name, seed, out, force, device, progress, log, seg_overrides)
    if log:
        log(f"stage 2, classifier ({mode}{', ' + cfg.head + ' head' if mode == 'frozen' else ''}): profile {name} "
            f"on {device} ({hardware()}); {_describe(full, split)}; {cfg.size}px ({cfg.fit})")
    stage2 = fit_stage2(model, full, split, cfg, device, progress)
    metrics = _run_metrics(model, full, split, cfg, stage2, device, name, mode, source, fold, n_folds)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_classifier(out / "best.pt", model, mode, profile=name, size=cfg.size, fit=cfg.fit,
                        normalize=cfg.normalize, class_names=CLASS_NAMES, labels=LABELS, seed=seed,
                        split_groups=metrics["split_groups"], data=metrics["data"], seg_checkpoint=source,
                        train_config=metrics["config"], head=stage2["head"],
                        threshold=stage2["threshold"]["threshold"], threshold_choice=stage2["threshold"],
                        best_val_loss=min(stage2["history"]["val_loss"], default=None))
        atomic_write_json(out / "metrics.json", metrics)
    if log:
        log(f"stage 2: {stage2['head']} head in {stage2['seconds']:.0f} s; any-slice threshold "
            f"{stage2['threshold']['threshold']:.3f} (specificity {cfg.specificity:g} on {stage2['threshold']['chosen_on']})")
    return ClassifyResult(model, stage2["history"], metrics, full, out)


def _run_metrics(model: EncoderClassifier, full: ClassificationDataset, split: dict[str, list[int]],
                 cfg: ClassifyConfig, stage2: dict[str, Any], device: torch.device, profile: str, mode: str,
                 source: str | None, fold: int | None, n_folds: int) -> dict[str, Any]:
    """The content of ``metrics.json``: the run's description, stage 2's record, val and test metrics."""
    history = stage2["history"]
    metrics = {"mode": mode, "head": stage2["head"], "profile": profile, "hardware": hardware(),
               "device": str(device), "data": str(full.root.resolve()), "encoder_checkpoint": source,
               "class_names": CLASS_NAMES, "config": dataclasses.asdict(cfg), "split": split, "fold": fold,
               "n_folds": n_folds if fold is not None else None, "split_groups": split_groups(full, split),
               "train_seconds": stage2["seconds"], "epochs_run": len(history["epoch"]), "history": history,
               "logistic": stage2["logistic"], "threshold": stage2["threshold"], "note": DISCLAIMER}
    for part in ("val", "test"):
        metrics[part] = evaluate_classifier(model, full.subset(split[part]), device,
                                            patient_threshold=stage2["threshold"]["threshold"])
    return metrics


def fold_split(full: ClassificationDataset, fold: int, n_folds: int, seed: int) -> dict[str, list[int]]:
    """Fold ``fold`` of :func:`crlearn.data.slices.classification_folds` (checked: 0 <= fold < n_folds)."""
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must lie in 0..{n_folds - 1}, got {fold}")
    return classification_folds(full, n_folds=n_folds, seed=seed)[fold]


def split_groups(full: ClassificationDataset, split: dict[str, list[int]]) -> dict[str, list[str]]:
    return {part: sorted({full.groups[i] for i in idx}) for part, idx in split.items()}


def _describe(full: ClassificationDataset, split: dict[str, list[int]]) -> str:
    groups = split_groups(full, split)
    return (f"{'/'.join(str(len(split[p])) for p in split)} train/val/test slices "
            f"({'/'.join(str(len(groups[p])) for p in split)} groups)")


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path | None = None, split: str = "all",
                        device: str | torch.device | None = None,
                        patient_threshold: float | None = None) -> tuple[dict[str, Any], ClassificationDataset]:
    """Metrics of a classifier checkpoint on a labelled folder (read at the checkpoint's size, fit and
    normalisation): ``(evaluate_classifier dict, the slices evaluated)``. The any-slice rule uses
    ``patient_threshold``, by default the one the run chose (:func:`crlearn.tasks.classifier.checkpoint_threshold`).

    ``split``: ``all`` slices, or a part of the run's own split (``train``, ``val``, ``test``, ``held-out`` = val +
    test) by its recorded groups; a part needs the folder the run was split on.
    """
    if split not in ("all", "train", "val", "test", "held-out"):
        raise ValueError(f"split must be all, train, val, test or held-out, got {split!r}")
    model, ckpt = load_classifier(checkpoint, pick_device(device))
    ds = ClassificationDataset(data if data is not None else default_classification_dir(), size=ckpt["size"],
                               fit=ckpt["fit"], normalize=ckpt["normalize"])
    if split != "all":
        if Path(ckpt["data"]).resolve() != ds.root.resolve():
            raise ValueError(f"{checkpoint}: the run was split on {ckpt['data']}, not on {ds.root.resolve()}")
        parts = ("val", "test") if split == "held-out" else (split,)
        keep = {g for p in parts for g in ckpt["split_groups"][p]}
        ds = ds.subset([i for i, g in enumerate(ds.groups) if g in keep])
    any_t = checkpoint_threshold(ckpt) if patient_threshold is None else patient_threshold
    return evaluate_classifier(model, ds, device, patient_threshold=any_t), ds
