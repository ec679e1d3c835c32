"""Nothing is lost: atomic files, output paths that are never overwritten without ``force``, and checkpoints.

A file is written to ``NAME.tmp`` and renamed over ``NAME`` only when complete, so a crash never leaves half a
result. A checkpoint holds the weights, the model and training configs, the class names and the package version;
:func:`load_checkpoint` rebuilds the model with ``torch.load(weights_only=True)`` and refuses any other file with a
:class:`CheckpointError` naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from crlearn import __version__
from crlearn.nn.ensemble import CRNetEnsemble
from crlearn.nn.model import CRNet, CRNetConfig

CHECKPOINT_FORMAT = "crlearn-checkpoint-v1"
ENSEMBLE_FORMAT = "crlearn-ensemble-v1"  # a CRNetEnsemble: its state dict holds every member's ("members.K....")


class CheckpointError(ValueError):
    """A file that is not a crlearn checkpoint, or one that does not fit the data."""


class OutputExistsError(FileExistsError):
    """An explicit output path exists and overwriting it was not asked for (``force``)."""


# ----------------------------------------------------------------------------- atomic files


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to ``path.tmp`` then rename: a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fresh_path(path: str | Path, explicit: bool = True, force: bool = False, is_dir: bool = False) -> Path:
    """Where to write without losing anything.

    A path that does not exist (or an empty folder) is used as it is, and so is any path with ``force``. An
    ``explicit`` existing path (one the user chose) raises :class:`OutputExistsError`; a default one gets the first
    free ``-2``, ``-3``... suffix instead.
    """
    path = Path(path)
    exists = path.exists() and (not is_dir or not path.is_dir() or any(path.iterdir()))
    if not exists or force:
        return path
    if explicit:
        raise OutputExistsError(f"{path} already exists; pass --force to overwrite it or choose another --out")
    for k in range(2, 10_000):
        cand = path.with_name(f"{path.stem}-{k}{path.suffix}")
        if not cand.exists():
            return cand
    raise OutputExistsError(f"{path}: no free output name")


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    path: str | Path, model: nn.Module, class_names: Sequence[str], train_config: Any, half: bool = False,
    **state: Any
) -> None:
    """Weights, model and training config, class names and package version, written atomically.

    ``train_config`` is a :class:`~crlearn.training.config.TrainConfig`. Extra ``state`` (optimizer, epoch, history...)
    lets :func:`crlearn.training.engine.fit` resume the same run. ``half`` stores the floating-point weights as
    float16 (half the file, for shipped demo models); :func:`load_checkpoint` loads them into float32 modules.
    """
    model = getattr(model, "_orig_mod", model)
    ensemble = isinstance(model, CRNetEnsemble)  # one file for the whole ensemble, with its own tag
    ckpt = {
        "format": ENSEMBLE_FORMAT if ensemble else CHECKPOINT_FORMAT,
        **({"members": len(model)} if ensemble else {}),
        "crlearn_version": __version__,
        "model_config": model.config.to_dict(),
        "train_config": dataclasses.asdict(train_config),
        "class_names": list(class_names),
        "state_dict": _half(cpu_state(model)) if half else cpu_state(model),
        "weights_dtype": "float16" if half else "float32",
        **state,
    }
    atomic_torch_save(ckpt, path)


def record_in_checkpoints(run_dir: str | Path, **fields: Any) -> None:
    """Add ``fields`` to a run's ``best.pt`` and ``last.pt`` (each rewritten atomically), e.g. the data's HU window
    (``data_window``, :func:`crlearn.data.windowing.folders_window`) that only the caller of ``fit`` knows. Readers
    take such a field with ``ckpt.get(...)``: older checkpoints without it still load."""
    for name in ("best.pt", "last.pt"):
        path = Path(run_dir) / name
        if path.is_file():
            atomic_torch_save({**torch.load(path, map_location="cpu", weights_only=True), **fields}, path)


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state dict on the CPU (a snapshot: later training does not change it)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[CRNet, dict[str, Any]]:
    """Rebuild the model from a checkpoint (``torch.load(weights_only=True)``); returns ``(model, checkpoint)``.

    A fold ensemble's file (:data:`ENSEMBLE_FORMAT`) gives a :class:`~crlearn.nn.ensemble.CRNetEnsemble`, which
    every caller uses as it uses one CR-Net."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # pickle, zip or unsupported-type errors all mean "not one of ours"
        raise CheckpointError(f"{path}: not a crlearn checkpoint ({type(exc).__name__}: {exc})") from None
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if isinstance(fmt, str) and fmt.startswith("crlearn-classifier"):  # crlearn.tasks.classifier.CLASSIFIER_FORMAT
        raise CheckpointError(f"{path}: a classifier checkpoint (crlearn classify train), not a segmentation "
                              f"checkpoint (crlearn train)")
    if fmt not in (CHECKPOINT_FORMAT, ENSEMBLE_FORMAT):
        raise CheckpointError(f"{path}: not a crlearn checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    config = CRNetConfig.from_dict(ckpt["model_config"])
    model = CRNet(config) if fmt == CHECKPOINT_FORMAT else CRNetEnsemble([CRNet(config) for _ in range(ckpt["members"])])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt


def run_split(checkpoint: str | Path, part: str, data: str | Path) -> list[int]:
    """Slice indices of a run's ``part`` (``train``, ``val``, ``test``, or ``held-out`` = val + test) of ``data``.

    Read from the ``metrics.json`` that :func:`crlearn.training.run.run` wrote beside the checkpoint; a
    :class:`CheckpointError` when there is none or it was made on another data folder.
    """
    path = Path(checkpoint).with_name("metrics.json")
    try:
        metrics = json.loads(path.read_text())
        split, made_on = metrics["split"], metrics["data"]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: no run split to take '{part}' from ({type(exc).__name__})") from None
    if not isinstance(made_on, str) or Path(made_on).resolve() != Path(data).resolve():
        raise CheckpointError(f"{path}: the run was split on {made_on}, not on {Path(data).resolve()}")
    if part == "held-out":
        return sorted(split["val"] + split["test"])
    return list(split[part])
