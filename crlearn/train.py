"""One training run, end to end: the library function the ``crlearn train`` command and the notebooks call.

:func:`run` loads a data set once, splits it by patient group (§2.2: 70/10/20), builds CR-Net for the chosen
profile, fits it (:func:`crlearn.engine.fit`), evaluates it on the validation and test splits at the data's own
resolution (:func:`crlearn.inference.evaluate`) and, given a run folder, writes everything there atomically:
``best.pt``, ``last.pt``, ``history.json``, ``metrics.json``, ``learning_curve.png``, ``test_overlays.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .checkpoint import atomic_write_json, fresh_path
from .data import MERGED_CLASS, SegmentationDataset, default_data_dir, read_labels
from .engine import fit
from .inference import evaluate, predict
from .model import CRNet
from .profiles import PROFILES, pick_device, resolve_profile
from .report import DISCLAIMER, hardware, save_figure
from .splits import split_by_group

RUN_FILES = ("best.pt", "last.pt", "history.json", "metrics.json", "learning_curve.png", "test_overlays.png")


@dataclass
class TrainResult:
    """What :func:`run` returns: the trained model (best weights), its history, metrics and where it was written."""

    model: CRNet
    history: dict[str, list[float]]
    metrics: dict[str, Any]  # the content of metrics.json: val and test metrics, split, profile, hardware...
    dataset: SegmentationDataset  # the whole data set at its own resolution
    out: Path | None  # the run folder (None: nothing written)

    @property
    def test(self) -> dict[str, Any]:
        return self.metrics["test"]


def run(data: str | Path | None = None, profile: str | None = None, classes: Sequence[str] | None = None,
        merge: bool | None = None, variant: str | None = None, out: str | Path | None = None, force: bool = False,
        resume: str | Path | None = None, device: str | torch.device | None = None, seed: int = 0,
        tta: bool = True, progress: bool = True, log: Callable[[str], Any] | None = print,
        **overrides: Any) -> TrainResult:
    """Train and evaluate CR-Net on a data folder; returns a :class:`TrainResult`.

    Args:
        data: the data folder (default: the bundled MedSeg set).
        profile: ``quick``, ``full`` or ``auto``/``None`` (see :func:`crlearn.profiles.resolve_profile`).
        classes, merge: the task (see :class:`~crlearn.data.SegmentationDataset`); by default the profile's
            (quick: the merged infection class; full: one channel per class).
        variant: a Table 7 row of the model (``unet``, ``unet_aspp``, ``crnet``; default ``crnet``).
        out: the run folder; ``None`` writes nothing. An existing non-empty folder needs ``force``.
        resume: a ``last.pt`` to continue.
        seed: seeds the split, the weights and the batch order.
        tta: evaluate with five-view test-time augmentation.
        log: called with one line before and after training (``None``: silent).
        overrides: :class:`~crlearn.profiles.TrainConfig` fields (``epochs``, ``size``, ``lr``, ``hybrid``...).
    """
    name = resolve_profile(profile)
    prof = PROFILES[name]
    cfg = prof.train_config(seed=seed, **overrides)
    device = pick_device(device)
    out = fresh_path(out, explicit=True, force=force, is_dir=True) if out is not None else None
    data = data if data is not None else default_data_dir()
    if classes is None and merge is None:  # the profile's task; "infection" is a class of its own where declared
        merge = prof.merge
        if merge and MERGED_CLASS in read_labels(data):
            classes, merge = [MERGED_CLASS], False
    full = SegmentationDataset(data, classes=classes, merge=bool(merge))
    split = split_by_group(full.groups, seed=seed)
    names = full.class_names
    torch.manual_seed(cfg.seed)
    model = CRNet(prof.model_config(num_classes=len(names), **({"variant": variant} if variant else {})))
    if log:
        log(f"profile {name} on {device} ({hardware()}); {model.num_parameters():,} parameters; classes {names}; "
            f"{len(split['train'])}/{len(split['val'])}/{len(split['test'])} train/val/test slices "
            f"({len(set(full.groups))} patient groups); {cfg.size}px, up to {cfg.epochs} epochs"
            + (f" -> {out}" if out else ""))
    train_set = full.subset(split["train"], size=cfg.size, augment=cfg.augment)
    val_set = full.subset(split["val"], size=cfg.size)
    history = fit(model, train_set, val_set, cfg, names, run_dir=out, resume=resume, device=device, progress=progress)
    metrics: dict[str, Any] = {
        "profile": name, "hardware": hardware(), "device": str(device), "data": str(full.root.resolve()),
        "class_names": names, "split": split, "train_seconds": sum(history["seconds"]),
        "epochs_run": len(history["epoch"]), "tta": tta, "note": DISCLAIMER,
    }
    for part in ("val", "test"):
        metrics[part] = evaluate(model, full.subset(split[part]), cfg.size, device, tta=tta)
    if out is not None:
        write_run(out, model, full, split, history, metrics, cfg.size, device, tta)
    if log:
        log(f"trained {len(history['epoch'])} epochs in {metrics['train_seconds']:.0f} s")
    return TrainResult(model, history, metrics, full, out)


def write_run(out: Path, model: CRNet, full: SegmentationDataset, split: dict[str, list[int]],
              history: dict[str, list[float]], metrics: dict[str, Any], size: int, device: torch.device,
              tta: bool) -> None:
    """metrics.json, the learning curve and four test overlays, beside the checkpoints ``fit`` wrote."""
    from .viz import plot_history, plot_overlays

    atomic_write_json(out / "metrics.json", metrics)
    save_figure(plot_history(history, f"profile {metrics['profile']}, {metrics['hardware']}"),
                out / "learning_curve.png")
    test = full.subset(split["test"][:4])
    _, pred = predict(model, test.images, size, device, tta=tta)
    fig = plot_overlays(test.images, test.one_hot(test.labels), pred, full.class_names,
                        titles=[r.name for r in test.records])
    save_figure(fig, out / "test_overlays.png")
