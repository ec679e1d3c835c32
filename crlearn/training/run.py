"""One training run, end to end: the library function the ``crlearn train`` command and the notebooks call.

:func:`run` loads a data set once, splits it by patient group (§2.2: 70/10/20), builds CR-Net for the chosen
profile, fits it (:func:`crlearn.training.engine.fit`), evaluates it on the validation and test splits at the data's own
resolution (:func:`crlearn.inference.evaluate`) and, given a run folder, writes everything there atomically:
``best.pt``, ``last.pt``, ``history.json``, ``metrics.json``, ``learning_curve.png``, ``test_overlays.png``.

Several data folders train one model on all of them (e.g. MedSeg and the lung set, with ``infection`` as the shared
class): each folder is loaded and split by its own groups, the training and validation parts are joined, and the
model is evaluated on each folder's validation and test split apart (the folders' images differ in size and look).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import ConcatDataset, Dataset

from crlearn.data.augment import jittered
from crlearn.data.errors import DataError
from crlearn.training.checkpoint import atomic_write_json, fresh_path, record_in_checkpoints
from crlearn.data.windowing import folders_window
from crlearn.data.folder import MERGED_CLASS, SegmentationDataset, default_data_dir, read_labels
from crlearn.training.engine import fit, seeded
from crlearn.inference import evaluate, predict
from crlearn.nn.model import CRNet
from crlearn.training.config import PROFILES, resolve_profile
from crlearn.training.device import pick_device
from crlearn.training.distributed import is_main
from crlearn.report import DISCLAIMER, hardware, save_figure
from crlearn.data.splits import split_by_group

RUN_FILES = ("best.pt", "last.pt", "history.json", "metrics.json", "learning_curve.png", "test_overlays.png")
SPLITS = ("holdout", "all")  # run(split=...): the paper's 70/10/20 by patient, or every patient trains (issue 20)


@dataclass
class TrainResult:
    """What :func:`run` returns: the trained model (best weights), its history, metrics and where it was written.

    ``dataset`` is the whole data set at its own resolution; with several folders, the list of them (in the order
    given). ``test`` is ``metrics["test"]``: the evaluation dict, or with several folders folder name -> that dict.
    """

    model: CRNet
    history: dict[str, list[float]]
    metrics: dict[str, Any]  # the content of metrics.json: val and test metrics, split, profile, hardware...
    dataset: SegmentationDataset | list[SegmentationDataset]
    out: Path | None  # the run folder (None: nothing written)

    @property
    def test(self) -> dict[str, Any]:
        return self.metrics["test"]


@dataclass
class Part:
    """One data folder of a run: its name in the metrics, the whole data set and its own split."""

    key: str
    full: SegmentationDataset
    split: dict[str, list[int]]


def data_folders(data: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """The folder(s) of ``run(data=...)``: one path, several, or ``None`` for the bundled MedSeg set."""
    if data is None:
        return [default_data_dir()]
    folders = [Path(data)] if isinstance(data, (str, Path)) else [Path(d) for d in data]
    if not folders:
        raise ValueError("data: no folder given")
    resolved = [f.resolve() for f in folders]
    if len(set(resolved)) < len(resolved):
        raise ValueError(f"data: a folder is given twice: {[str(f) for f in folders]}")
    return folders


def _task(folder: Path, merge_default: bool, classes: Sequence[str] | None,
          merge: bool | None) -> tuple[Sequence[str] | None, bool]:
    """classes and merge for one folder: by default the profile's task, ``infection`` a class of its own where
    the folder's labels declare one."""
    if classes is None and merge is None:
        if merge_default and MERGED_CLASS in read_labels(folder):
            return [MERGED_CLASS], False
        return None, merge_default
    return classes, bool(merge)


def every_patient(n: int) -> dict[str, list[int]]:
    """The ``split="all"`` layout: every slice trains; no validation and no test part."""
    return {"train": list(range(n)), "val": [], "test": []}


def load_parts(folders: Sequence[Path], merge_default: bool, classes: Sequence[str] | None, merge: bool | None,
               normalize: str, seed: int, split: str = "holdout") -> list[Part]:
    """Load every folder once and split it by its own groups (``split="all"``: :func:`every_patient`); every folder
    must resolve to the same classes."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    keys = [f.name for f in folders]
    if len(set(keys)) < len(keys):
        keys = [str(f.resolve()) for f in folders]
    parts = []
    for key, folder in zip(keys, folders):
        cls, mrg = _task(folder, merge_default, classes, merge)
        full = SegmentationDataset(folder, classes=cls, merge=mrg, normalize=normalize)
        parts.append(Part(key, full, split_by_group(full.groups, seed=seed) if split == "holdout"
                          else every_patient(len(full.groups))))
    if any(p.full.class_names != parts[0].full.class_names for p in parts):
        found = "; ".join(f"{p.full.root}: {p.full.class_names}" for p in parts)
        raise DataError(f"the data folders give different classes ({found}); choose classes all of them have, "
                        f"e.g. classes=['{MERGED_CLASS}']")
    return parts


def split_groups(parts: Sequence[Part]) -> dict[str, list[str]]:
    """The patient groups of each split part, named ``folder/group`` so that groups of two folders never collide."""
    return {name: sorted({f"{p.key}/{p.full.groups[i]}" for p in parts for i in p.split[name]})
            for name in ("train", "val", "test")}


def joined(sets: list[SegmentationDataset]) -> Dataset:
    return sets[0] if len(sets) == 1 else ConcatDataset(sets)


def _per_folder(parts: Sequence[Part], values: list[Any]) -> Any:
    """One folder: the value itself (the single-folder layout); several: folder name -> value."""
    return values[0] if len(parts) == 1 else {p.key: v for p, v in zip(parts, values)}


def _describe(parts: Sequence[Part]) -> str:
    def one(p: Part) -> str:
        s = p.split
        return (f"{len(s['train'])}/{len(s['val'])}/{len(s['test'])} train/val/test slices "
                f"({len(set(p.full.groups))} patient groups)")
    return one(parts[0]) if len(parts) == 1 else "; ".join(f"{p.key}: {one(p)}" for p in parts)


def run(data: str | Path | Sequence[str | Path] | None = None, profile: str | None = None,
        classes: Sequence[str] | None = None, merge: bool | None = None, variant: str | None = None,
        out: str | Path | None = None, force: bool = False, resume: str | Path | None = None,
        device: str | torch.device | None = None, seed: int = 0, tta: bool = True, progress: bool = True,
        log: Callable[[str], Any] | None = print, normalize: str | None = None, split: str = "holdout",
        **overrides: Any) -> TrainResult:
    """Train and evaluate CR-Net on a data folder, or on several together; returns a :class:`TrainResult`.

    Args:
        data: the data folder (default: the bundled MedSeg set), or a list of folders to train on together. Each
            folder is split by its own groups (seed ``seed``); the training and validation parts are joined.
        profile: ``quick``, ``full`` or ``auto``/``None`` (see :func:`crlearn.training.config.resolve_profile`).
        classes, merge: the task (see :class:`~crlearn.data.folder.SegmentationDataset`); by default the profile's
            (quick: the merged infection class; full: one channel per class). Resolved per folder: every folder
            must give the same channels (``classes=["infection"]``: MedSeg's merged union, the lung set's class).
        variant: a Table 7 row of the model (``unet``, ``unet_aspp``, ``crnet``; default ``crnet``).
        out: the run folder; ``None`` writes nothing. An existing non-empty folder needs ``force``.
        resume: a ``last.pt`` to continue.
        seed: seeds the split, the weights and the batch order.
        tta: evaluate with five-view test-time augmentation.
        log: called with one line before and after training (``None``: silent).
        normalize: per-slice intensity normalisation (``none``, ``standardize``, ``equalize``:
            :func:`crlearn.data.folder.normalize_intensity`); ``None``: the TrainConfig default, ``none``. Kept in the
            checkpoints' ``train_config``.
        split: ``"holdout"`` (the paper's §2.2 70/10/20 by patient: early stopping on val, metrics on test; the
            lesson on splits) or ``"all"``: every patient trains, for the profile's (CV-chosen, :mod:`crlearn.tasks.cv`)
            epochs, with no validation (the last epoch is kept) and no test part (``val`` and ``test`` are ``None``;
            the numbers to quote are the cross-validation's).
        overrides: :class:`~crlearn.training.config.TrainConfig` fields (``epochs``, ``size``, ``lr``, ``hybrid``...).

    ``metrics`` holds ``val`` and ``test`` (:func:`crlearn.inference.evaluate` dicts), ``split`` (slice indices)
    and ``data`` (the folder); with several folders each of these is a dict folder name -> value (``data`` a list
    of paths), and ``split_groups`` names each part's groups as ``folder/group``.
    """
    name = resolve_profile(profile)
    prof = PROFILES[name]
    log = log if is_main() else None  # under torchrun rank 0 alone logs and writes (crlearn.training.distributed)
    if normalize is not None:
        overrides["normalize"] = normalize
    cfg = prof.train_config(seed=seed, **overrides)
    device = pick_device(device)
    out = fresh_path(out, explicit=True, force=force, is_dir=True) if out is not None else None
    parts = load_parts(data_folders(data), prof.merge, classes, merge, cfg.normalize, seed, split)
    names = parts[0].full.class_names
    with seeded(cfg.seed, device):  # the initial weights; the caller's generators are left as they were
        model = CRNet(prof.model_config(names, num_classes=len(names), **({"variant": variant} if variant else {})))
    if log:
        log(f"profile {name} on {device} ({hardware()}); {model.num_parameters():,} parameters; classes {names}; "
            f"{_describe(parts)}; {cfg.size}px{f' (trained on random {cfg.crop} px windows)' if cfg.crop else ''}, "
            f"up to {cfg.epochs} epochs" + (f" -> {out}" if out else ""))
    train_set = jittered(joined([p.full.subset(p.split["train"], size=cfg.size, augment=cfg.augment) for p in parts]),
                         cfg.intensity_augment, cfg.scale_augment, cfg.seed, cfg.crop)
    val_set = joined([p.full.subset(p.split["val"], size=cfg.size) for p in parts]) if split == "holdout" else None
    history = fit(model, train_set, val_set, cfg, names, run_dir=out, resume=resume, device=device, progress=progress)
    metrics = run_metrics(model, parts, history, cfg, name, device, tta, split)
    if out is not None and is_main():
        write_run(out, model, parts, history, metrics, cfg.size, device, tta)
    if log:
        log(f"trained {len(history['epoch'])} epochs in {metrics['train_seconds']:.0f} s")
    return TrainResult(model, history, metrics, parts[0].full if len(parts) == 1 else [p.full for p in parts], out)


def run_metrics(model: CRNet, parts: Sequence[Part], history: dict[str, list[float]], cfg: Any, profile: str,
                device: torch.device, tta: bool, split: str) -> dict[str, Any]:
    """The content of metrics.json: the run's settings, and with ``split="holdout"`` the val and test metrics."""
    metrics: dict[str, Any] = {
        "profile": profile, "hardware": hardware(), "device": str(device),
        "data": _per_folder(parts, [str(p.full.root.resolve()) for p in parts]),
        "class_names": list(parts[0].full.class_names), "split": _per_folder(parts, [p.split for p in parts]),
        "split_mode": split, "train_seconds": sum(history["seconds"]), "epochs_run": len(history["epoch"]),
        "tta": tta, "normalize": cfg.normalize, "note": DISCLAIMER,
    }
    if len(parts) > 1:
        metrics["data"] = list(metrics["data"].values())
        metrics["split_groups"] = split_groups(parts)
    for part in ("val", "test"):
        metrics[part] = None if split == "all" else _per_folder(
            parts, [evaluate(model, p.full.subset(p.split[part]), cfg.size, device, tta=tta) for p in parts])
    if split == "all":
        metrics["validation"] = "none: every patient trains; the last epoch of the fixed schedule is kept"
    return metrics


def write_run(out: Path, model: CRNet, parts: Sequence[Part], history: dict[str, list[float]],
              metrics: dict[str, Any], size: int, device: torch.device, tta: bool) -> None:
    """metrics.json, the learning curve and four test overlays (shared among the folders), beside the checkpoints
    ``fit`` wrote."""
    from crlearn.viz import plot_history, plot_overlays

    atomic_write_json(out / "metrics.json", metrics)
    record_in_checkpoints(out, data_window=folders_window([p.full.root for p in parts]))  # how scans get windowed
    save_figure(plot_history(history, f"profile {metrics['profile']}, {metrics['hardware']}"),
                out / "learning_curve.png")
    images, targets, preds, titles = [], [], [], []
    for p in parts:
        test = p.full.subset((p.split["test"] or p.split["train"])[: max(1, 4 // len(parts))])  # all: train slices
        _, pred = predict(model, test.images, size, device, tta=tta)
        images += list(test.images)
        targets += list(test.one_hot(test.labels))
        preds += list(pred)
        titles += [("" if p.split["test"] else "trained on: ") + r.name for r in test.records]  # no test part
    fig = plot_overlays(images, targets, preds, parts[0].full.class_names, titles=titles)
    save_figure(fig, out / "test_overlays.png")
