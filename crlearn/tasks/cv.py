"""Patient-level K-fold cross-validation of one training recipe: every patient tested once (§2.2: five folds).

The paper reports five-fold cross-validation (§2.2). A recipe (profile, :class:`~crlearn.training.config.TrainConfig`
overrides, classes, data folders) is trained K times; fold k tests on the k-th group part of every folder and trains
on the rest, whose own group split gives the inner validation part (early stopping and the best epoch: the only
thing any choice inside a fold looks at; the test part is never used for a choice).

What is kept, at the data's own resolution:

- per fold, :func:`crlearn.inference.evaluate`'s metrics (Dice, IoU, precision, recall, boundary F1) on its test part,
  the epoch whose validation loss was best, the seconds;
- per patient (``folder/group``), the summed ``[TP, FP, FN]`` of every class, so the out-of-fold predictions of all
  folds pool into one Dice that equals the Dice of their concatenation, with a 95 % interval by resampling patients
  (:func:`crlearn.stats.bootstrap_pooled`);
- where a folder has lung masks and the model a ``lung`` and an ``infection`` channel, each patient's predicted and
  true lesion / lung ratio (§3.4, :mod:`crlearn.tasks.burden`) and the mean absolute error with its interval
  (:func:`crlearn.stats.bootstrap_mean`).

:func:`run_fold` is one fold, the unit of a parallel grid (``scripts/cv_grid.py``); :func:`summarise` pools fold
results; :func:`cross_validate` does both for the ``crlearn cv`` command and ``crlearn train --folds K``.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from crlearn.data.augment import jittered
from crlearn.data.folder import MERGED_CLASS, SegmentationDataset
from crlearn.data.splits import group_folds
from crlearn.inference import predict
from crlearn.metrics import SegmentationMeter, confusion_counts
from crlearn.nn.ensemble import CRNetEnsemble
from crlearn.nn.model import CRNet
from crlearn.report import DISCLAIMER, hardware, markdown_table
from crlearn.stats import bootstrap_mean, bootstrap_pooled, dice_from_counts, format_interval
from crlearn.tasks.burden import LUNG_CLASS, percent, slice_areas, true_masks
from crlearn.training.checkpoint import atomic_write_json, save_checkpoint
from crlearn.training.config import PROFILES, TrainConfig, resolve_profile
from crlearn.training.device import pick_device
from crlearn.training.engine import fit, seeded
from crlearn.training.run import Part, joined, data_folders, load_parts

VAL_FRACTION = 0.125  # of each fold's training patients, the inner validation part (early stopping only)


@dataclass
class Recipe:
    """What is trained: data folder(s), profile, task and TrainConfig overrides (``epochs``, ``size``,
    ``normalize``, ``intensity_augment``...). ``name`` labels it in tables."""

    name: str = "baseline"
    data: list[str] | None = None  # folders trained on together; None: the bundled MedSeg set
    profile: str = "quick"
    classes: list[str] | None = None
    merge: bool | None = None
    variant: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)  # CRNetConfig overrides of the profile's (tests: a tiny net)
    val_fraction: float = VAL_FRACTION  # inner validation part of each fold's training patients; 0: none, the
    # fold trains on all of them for the fixed epochs and keeps the last (as the shipped model, split="all", does)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ----------------------------------------------------------------------------- the splitter


def patient_folds(groups: Sequence[str], n_folds: int, seed: int = 0, val_fraction: float = VAL_FRACTION,
                  strata: Sequence[Any] | None = None) -> list[dict[str, list[int]]]:
    """K folds by patient group: every group in exactly one test part, never in two parts of one fold.

    Without ``strata`` this is :func:`crlearn.data.splits.group_folds`. With ``strata`` (one label per slice, constant
    within a group, e.g. COVID / non-COVID) the groups of each stratum are dealt on their own and fold k joins
    fold k of every stratum, so every part holds every stratum (a stratum with fewer groups than needed: ValueError).
    """
    if strata is None:
        return group_folds(groups, n_folds, seed, val_fraction)
    if len(strata) != len(groups):
        raise ValueError(f"{len(strata)} strata for {len(groups)} slices")
    folds: list[dict[str, list[int]]] = [{"train": [], "val": [], "test": []} for _ in range(n_folds)]
    for s in sorted(set(strata), key=str):
        members = [i for i, v in enumerate(strata) if v == s]
        sub = [groups[i] for i in members]
        mixed = {g for g, v in zip(groups, strata) if g in set(sub) and v != s}
        if mixed:
            raise ValueError(f"group(s) {sorted(mixed)[:3]} lie in two strata: a group must have one stratum")
        for fold, part in zip(folds, group_folds(sub, n_folds, seed, val_fraction)):
            for name in fold:
                fold[name] += [members[i] for i in part[name]]
    return [{k: sorted(v) for k, v in f.items()} for f in folds]


# ----------------------------------------------------------------------------- one fold


@dataclass
class Setup:
    """A recipe made concrete: the profile, the TrainConfig, the loaded folders and each folder's K folds."""

    recipe: Recipe
    profile: str
    cfg: TrainConfig
    parts: list[Part]
    folds: list[list[dict[str, list[int]]]]  # folds[p][k]: fold k of folder p

    @property
    def class_names(self) -> list[str]:
        return list(self.parts[0].full.class_names)


def setup(recipe: Recipe, n_folds: int, seed: int = 0) -> Setup:
    """Load the recipe's folders once and deal each into ``n_folds`` group folds by its own groups."""
    name = resolve_profile(recipe.profile)
    prof = PROFILES[name]
    cfg = prof.train_config(**{**recipe.overrides, "seed": seed})
    parts = load_parts(data_folders(recipe.data), prof.merge, recipe.classes, recipe.merge, cfg.normalize, seed)
    folds = [patient_folds(p.full.groups, n_folds, seed, recipe.val_fraction) for p in parts]
    return Setup(recipe, name, cfg, parts, folds)


def train_fold(s: Setup, k: int, device: torch.device, progress: bool = False) -> tuple[CRNet, dict[str, Any]]:
    """Train fold ``k`` (train parts joined, inner validation parts joined); returns the best-epoch model and its
    history (``best_epoch``: the epoch of the lowest validation loss, which the model holds)."""
    cfg, prof = s.cfg, PROFILES[s.profile]
    train = joined([p.full.subset(f[k]["train"], size=cfg.size, augment=cfg.augment) for p, f in zip(s.parts, s.folds)])
    val = joined([p.full.subset(f[k]["val"], size=cfg.size) for p, f in zip(s.parts, s.folds)])
    train = jittered(train, cfg.intensity_augment, cfg.scale_augment, cfg.seed, cfg.crop)
    with seeded(cfg.seed, device):
        extra = {**s.recipe.model, **({"variant": s.recipe.variant} if s.recipe.variant else {})}
        model = CRNet(prof.model_config(s.class_names, **{**extra, "num_classes": len(s.class_names)}))
    history = fit(model, train, val, cfg, s.class_names, device=device, progress=progress)
    no_val = all(np.isnan(history["val_loss"]))  # no inner validation: the last epoch is the model
    history["best_epoch"] = [len(history["epoch"]) if no_val else int(np.nanargmin(history["val_loss"])) + 1]
    return model, history


def _with_merged(names: list[str], pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`crlearn.inference.evaluate`: the merged ``infection`` channel added when there are several
    classes and none is called so."""
    if len(names) > 1 and MERGED_CLASS not in names:
        return torch.cat([pred, pred.any(1, keepdim=True)], 1), torch.cat([target, target.any(1, keepdim=True)], 1)
    return pred, target


def score_part(model: CRNet, ds: SegmentationDataset, size: int, device: torch.device, tta: bool = True,
              batch_size: int = 8) -> dict[str, Any]:
    """One folder's test part at its own resolution: ``metrics`` (evaluate's dict) and ``patients``: group ->
    ``{"counts": {class: [TP, FP, FN]}, "areas": [pred lesion, pred lung, true lesion, true lung] px or absent}``."""
    names = list(ds.class_names)
    shown = names + ([MERGED_CLASS] if len(names) > 1 and MERGED_CLASS not in names else [])
    meter = SegmentationMeter(shown)
    counts = {g: np.zeros((len(shown), 3), np.int64) for g in ds.groups}
    areas = {g: np.zeros(4, np.int64) for g in ds.groups}
    burden = LUNG_CLASS in names and MERGED_CLASS in names and true_masks(ds)[1] is not None
    for i in range(0, len(ds.records), batch_size):
        target = ds.one_hot(ds.labels[i : i + batch_size]) > 0.5
        pred = predict(model, ds.images[i : i + batch_size], size, device, tta=tta)[1]
        if burden:
            k_inf, k_lung = names.index(MERGED_CLASS), names.index(LUNG_CLASS)
            p = slice_areas(pred[:, k_inf].numpy(), pred[:, k_lung].numpy())
            t = slice_areas(target[:, k_inf].numpy(), target[:, k_lung].numpy())
            for j, g in enumerate(ds.groups[i : i + batch_size]):
                areas[g] += (p[0][j], p[1][j], t[0][j], t[1][j])
        pred, target = _with_merged(names, pred, target)
        meter.update(pred, target)
        c = confusion_counts(pred, target)
        for j, g in enumerate(ds.groups[i : i + batch_size]):
            counts[g] += torch.stack([c["tp"][j], c["fp"][j], c["fn"][j]], 1).numpy()
    patients = {g: {"counts": {n: counts[g][ci].tolist() for ci, n in enumerate(shown)},
                    **({"areas": areas[g].tolist()} if burden else {})} for g in counts}
    return {"metrics": meter.compute(), "patients": patients}


def run_fold(recipe: Recipe | dict[str, Any], k: int, n_folds: int, seed: int = 0, tta: bool = True,
             device: str | torch.device | None = None, progress: bool = False,
             keep_model: bool = False) -> dict[str, Any]:
    """Train and test fold ``k`` of ``n_folds``: one JSON-able dict (``model`` added, a CRNet on the CPU, with
    ``keep_model``). Every folder's test part is tested apart (``folders``: folder name -> :func:`score_part`)."""
    recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
    device = pick_device(device)
    t0 = time.perf_counter()
    s = setup(recipe, n_folds, seed)
    model, history = train_fold(s, k, device, progress)
    t_train = time.perf_counter() - t0
    folders = {p.key: score_part(model, p.full.subset(f[k]["test"]), s.cfg.size, device, tta)
               for p, f in zip(s.parts, s.folds)}
    out = {"fold": k, "n_folds": n_folds, "seed": seed, "best_epoch": history["best_epoch"][0],
           "epochs_run": len(history["epoch"]), "history": history, "train_seconds": t_train,
           "seconds": time.perf_counter() - t0, "folders": folders, "class_names": s.class_names,
           "test_groups": {p.key: sorted({p.full.groups[i] for i in f[k]["test"]}) for p, f in zip(s.parts, s.folds)},
           "profile": s.profile, "train_config": dataclasses.asdict(s.cfg)}
    if keep_model:
        out["model"] = model.cpu()
    return out


# ----------------------------------------------------------------------------- pooling the folds


def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    v = [float(x) for x in values if x is not None and np.isfinite(x)]
    return {"mean": float(np.mean(v)) if v else None, "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
            "folds": [float(x) if x is not None else None for x in values]}


def _ratio_errors(patients: dict[str, Any]) -> dict[str, Any] | None:
    """Per patient: true and predicted lesion / lung % and the error (pp); the mean absolute error's interval."""
    rows = {g: p["areas"] for g, p in patients.items() if "areas" in p}
    if not rows:
        return None
    a = np.array(list(rows.values()), dtype=np.float64)
    pred, true = percent(a[:, 0], a[:, 1]), percent(a[:, 2], a[:, 3])
    err = pred - true
    ok = np.isfinite(err)
    return {"per_patient": {g: {"true_percent": float(t), "pred_percent": float(p), "error_pp": float(e)}
                            for g, t, p, e in zip(rows, true, pred, err) if np.isfinite(e)},
            "mae_pp": bootstrap_mean(np.abs(err[ok])) if ok.any() else None}


def summarise_folder(key: str, folds: Sequence[dict[str, Any]], n_boot: int = 2000) -> dict[str, Any]:
    """One folder over all folds: per class mean ± std of the fold Dice (and IoU, boundary F1), the pooled
    out-of-fold Dice from the patients' summed counts with its patient-bootstrap interval, and the ratio error."""
    parts = [f["folders"][key] for f in folds]
    patients = {g: p for part in parts for g, p in part["patients"].items()}
    if len(patients) < sum(len(part["patients"]) for part in parts):
        raise ValueError(f"{key}: a patient group was tested in two folds; out-of-fold counts need each once")
    classes = list(parts[0]["metrics"]["pooled"])
    out: dict[str, Any] = {"patients": len(patients), "slices": sum(p["metrics"]["n_slices"] for p in parts),
                           "classes": {}}
    for c in classes:
        counts = np.array([patients[g]["counts"][c] for g in patients], dtype=np.float64)
        out["classes"][c] = {
            "fold_dice": _mean_std([p["metrics"]["pooled"][c]["dice"] for p in parts]),
            "fold_iou": _mean_std([p["metrics"]["pooled"][c]["iou"] for p in parts]),
            "fold_boundary_f1": _mean_std([p["metrics"]["pooled"][c]["boundary_f1"] for p in parts]),
            "pooled_dice": bootstrap_pooled(counts, dice_from_counts, n_boot=n_boot),
            "counts": counts.sum(0).astype(int).tolist()}
    ratio = _ratio_errors(patients)
    if ratio is not None:
        out["ratio_error"] = ratio
    out["per_patient_counts"] = {g: p["counts"] for g, p in patients.items()}
    return out


def summarise(recipe: Recipe | dict[str, Any], folds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The recipe's CV result from its fold results (:func:`run_fold`, any order): JSON-able."""
    recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
    folds = sorted(folds, key=lambda f: f["fold"])
    best = [f["best_epoch"] for f in folds]
    return {
        "recipe": recipe.to_dict(), "profile": folds[0]["profile"], "n_folds": folds[0]["n_folds"],
        "seed": folds[0]["seed"], "class_names": folds[0]["class_names"], "hardware": hardware(),
        "train_config": folds[0]["train_config"],
        "best_epoch": best, "chosen_epochs": int(round(statistics.median(best))),
        "seconds": [f["seconds"] for f in folds], "train_seconds": [f["train_seconds"] for f in folds],
        "folders": {key: summarise_folder(key, folds) for key in folds[0]["folders"]},
        "folds": [{k: v for k, v in f.items() if k not in ("folders", "model")} for f in folds],
        "choice": "the epoch of each fold's best validation loss (its inner validation part); no test part is "
                  "used for any choice",
        "note": DISCLAIMER,
    }


@dataclass
class CVResult:
    """What :func:`cross_validate` returns: the JSON-able summary and the K fold models (best epoch each)."""

    summary: dict[str, Any]
    models: list[CRNet]


def cross_validate(recipe: Recipe, n_folds: int = 5, seed: int = 0, tta: bool = True,
                   device: str | torch.device | None = None, progress: bool = False, out: str | Path | None = None,
                   save_models: bool = False, log: Callable[[str], Any] | None = None) -> CVResult:
    """K-fold patient-level CV of ``recipe``, one fold after another; returns a :class:`CVResult`.

    With ``out`` (a folder that exists or may be made) ``cv.json`` is written there, and with ``save_models`` each
    fold's model as ``fold{k}.pt`` (a crlearn checkpoint, ``best_epoch`` in it) and their ensemble as ``ensemble.pt``
    (:class:`~crlearn.nn.ensemble.CRNetEnsemble`; every fold model saw test patients of the others: its CV numbers
    are not the ensemble's).
    """
    folds, models = [], []
    for k in range(n_folds):
        f = run_fold(recipe, k, n_folds, seed, tta, device, progress, keep_model=True)
        models.append(f.pop("model"))
        folds.append(f)
        if log:
            log(f"fold {k + 1}/{n_folds}: best epoch {f['best_epoch']}, {f['seconds']:.0f} s")
    summary = summarise(recipe, folds)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "cv.json", summary)
        if save_models:
            cfg = TrainConfig(**summary["train_config"])
            for k, (m, f) in enumerate(zip(models, folds)):
                save_checkpoint(out / f"fold{k}.pt", m, summary["class_names"], cfg, epoch=f["best_epoch"] - 1,
                                fold=k, n_folds=n_folds, test_groups=f["test_groups"])
            save_checkpoint(out / "ensemble.pt", CRNetEnsemble(models), summary["class_names"], cfg,
                            n_folds=n_folds, best_epoch=summary["best_epoch"])
    return CVResult(summary, models)


# ----------------------------------------------------------------------------- text


def cv_rows(summary: dict[str, Any]) -> list[list[str]]:
    """One row per folder and class: Dice mean ± std over folds, pooled Dice [95 % interval], ratio error."""
    rows = []
    for key, f in summary["folders"].items():
        ratio = f.get("ratio_error", {}) or {}
        mae = format_interval(ratio["mae_pp"], 2) if ratio.get("mae_pp") else "-"
        for c, m in f["classes"].items():
            fd = m["fold_dice"]
            std = f" ± {fd['std']:.3f}" if fd["std"] is not None else ""
            rows.append([summary["recipe"]["name"], key, c, f"{fd['mean']:.3f}{std}", format_interval(m["pooled_dice"]),
                         str(f["patients"]), mae])
    return rows


CV_HEADER = ["recipe", "data", "class", "Dice mean ± std over folds", "pooled out-of-fold Dice [95 % CI]",
             "patients", "ratio error pp [95 % CI]"]


def cv_markdown(summary: dict[str, Any]) -> str:
    """The CV table of one recipe, with a line saying what it is."""
    head = (f"{summary['n_folds']}-fold patient-level cross-validation, profile `{summary['profile']}`, seed "
            f"{summary['seed']}, {summary['hardware']}; best epochs {summary['best_epoch']} (chosen "
            f"{summary['chosen_epochs']}); interval: bootstrap over patients.")
    return f"{head}\n\n{markdown_table(CV_HEADER, cv_rows(summary))}\n"
