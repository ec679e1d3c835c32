"""The paper's ablation (Table 7): U-Net(SE-ResNet34) -> + ASPP -> + refine -> + hybrid loss.

Every row is trained on the same split with the same seed and evaluated on the merged ``infection`` class
(the setting of Table 7) at the data's own resolution. With ``folds`` the rows are repeated over group folds
and reported as mean ± std; with ``seeds`` every fold is trained again with other seeds (weights and batch order;
the folds stay fixed). Each row also gets its Dice pooled out of fold over the patients (counts summed over the
seeds) with a 95 % bootstrap interval over patients, and :func:`paired_differences` compares rows run by run (the
same fold and seed) with an interval over runs.

Table 7 also gives each row's COVID-19 slice classification accuracy: the row's encoder as the classifier of §2.8.
With ``classify_data`` every trained model gets that column too: its encoder, frozen, under a linear head
(:func:`crlearn.tasks.classifier.classifier_from_segmenter`) trained by :func:`crlearn.tasks.classifier_run.fit_classifier`
on one group split of the labelled slices (the same for every row and fold) and scored on its test groups.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from crlearn.data.slices import ClassificationDataset, classification_split
from crlearn.tasks.classifier import classifier_from_segmenter, evaluate_classifier
from crlearn.tasks.classifier_run import ClassifyConfig, classify_config, fit_classifier, split_groups
from crlearn.data.folder import MERGED_CLASS, SegmentationDataset, default_data_dir
from crlearn.training.engine import fit, seeded
from crlearn.inference import evaluate, patient_counts
from crlearn.nn.model import CRNet
from crlearn.training import distributed
from crlearn.training.checkpoint import load_checkpoint, save_checkpoint
from crlearn.training.config import PROFILES, TrainConfig
from crlearn.training.device import pick_device
from crlearn.report import DISCLAIMER, hardware, markdown_table
from crlearn.stats import bootstrap_mean, bootstrap_pooled, format_interval
from crlearn.data.splits import group_folds, split_by_group


@dataclass(frozen=True)
class AblationRow:
    """One row of Table 7: a model variant, a loss, and the paper's Dice and classification accuracy for it."""

    key: str
    label: str
    variant: str  # CRNetConfig.variant
    hybrid: bool  # hybrid loss (True) or BCE alone
    paper_dice: float  # Huang et al. 2022, Table 7
    paper_accuracy: float  # Table 7: COVID-19 slice classification accuracy with the row's encoder (§2.8)


TABLE7: tuple[AblationRow, ...] = (
    AblationRow("unet", "U-Net (SE-ResNet34)", "unet", False, 0.793, 0.933),
    AblationRow("aspp", "+ ASPP", "unet_aspp", False, 0.817, 0.950),
    AblationRow("refine", "+ refine", "crnet", False, 0.850, 0.961),
    AblationRow("hybrid", "+ hybrid loss", "crnet", True, 0.870, 0.983),
)
ClassifyTask = tuple[ClassificationDataset, dict[str, list[int]], ClassifyConfig]  # slices, group split, config
CLS_METRICS = ("cls_accuracy", "cls_auc")  # per fold, with classify_data


def classification_task(data: str | Path, profile: str, size: int, seed: int = 0) -> ClassifyTask:
    """The labelled slices of ``data`` read once at ``size`` (the segmentation profile's), their group split
    (:func:`crlearn.data.slices.classification_split`, ``seed``) and the profile's frozen-mode
    :class:`~crlearn.tasks.classifier_run.ClassifyConfig`: one task for every row and fold."""
    cfg = classify_config(profile, "frozen", seed=seed, size=size)
    full = ClassificationDataset(data, size=cfg.size, fit=cfg.fit, normalize=cfg.normalize)
    return full, classification_split(full, seed=seed), cfg


def task_record(task: ClassifyTask) -> dict[str, Any]:
    """What the result keeps of a task (its ``classify`` entry): data folder, config, split groups, test slices."""
    full, split, cfg = task
    return {"data": str(full.root.resolve()), "config": dataclasses.asdict(cfg),
            "split_groups": split_groups(full, split), "n_test_slices": len(split["test"])}


def classification_scores(segmenter: CRNet, task: ClassifyTask, device: str | torch.device | None = None,
                          progress: bool = False) -> dict[str, float | None]:
    """Table 7's accuracy column for one trained segmenter: its encoder, frozen, under a linear head, trained as
    ``crlearn classify train`` trains it (:func:`~crlearn.tasks.classifier_run.fit_classifier`: the augmented train
    part, early stopping on val) and scored on the test groups: ``{"cls_accuracy", "cls_auc"}`` at slice level."""
    full, split, cfg = task
    torch.manual_seed(cfg.seed)  # the head's initial weights, as run_classify seeds them
    classifier = classifier_from_segmenter(segmenter, "frozen")
    fit_classifier(classifier, full.subset(split["train"], augment=cfg.augment), full.subset(split["val"]), cfg,
                   device, progress)
    scores = evaluate_classifier(classifier, full.subset(split["test"]), device)["slice"]
    return {"cls_accuracy": scores["accuracy"], "cls_auc": scores["auc"]}


def fold_sets(full: SegmentationDataset, split: dict[str, list[int]], cfg: TrainConfig
              ) -> tuple[SegmentationDataset, SegmentationDataset, SegmentationDataset]:
    """A split's parts of a data set loaded once at its own resolution: train (at ``cfg.size``, x5-augmented when
    ``cfg.augment``), validation (at ``cfg.size``) and test (original resolution, where metrics are computed)."""
    return (full.subset(split["train"], size=cfg.size, augment=cfg.augment), full.subset(split["val"], size=cfg.size),
            full.subset(split["test"]))


def train_fresh(make_model: Callable[[], nn.Module], cfg: TrainConfig, train_set: Dataset, val_set: Dataset,
                names: Sequence[str], device: str | torch.device | None = None, progress: bool = True
                ) -> tuple[nn.Module, dict[str, list[float]], float]:
    """Build a model with initial weights drawn from ``cfg.seed`` (the same weights for the layers that rows
    share; the caller's generator is left as it was) and :func:`~crlearn.training.engine.fit` it:
    ``(model, history, training seconds)``. One training run of every row and fold here and in
    :mod:`crlearn.tasks.compare` (Table 4)."""
    with seeded(cfg.seed, torch.device("cpu")):  # weights are drawn on the CPU; the caller's generators restored
        model = make_model()
    t0 = time.perf_counter()
    hist = fit(model, train_set, val_set, cfg, names, device=device, progress=progress)
    return model, hist, time.perf_counter() - t0


def _keep_model(scores: dict[str, Any], model: CRNet) -> tuple[dict[str, Any], CRNet | None]:
    """A job's result as :func:`~crlearn.training.distributed.spread` gathers it: under ``torchrun`` the scores alone
    (the models stay on their ranks), in one process the model too."""
    return scores, (model if distributed.world_size() == 1 else None)


def _train_row(parts: tuple[SegmentationDataset, SegmentationDataset, SegmentationDataset], row: AblationRow,
               prof: Any, overrides: dict[str, Any], names: Sequence[str], device: torch.device, progress: bool,
               tta: bool, task: ClassifyTask | None) -> tuple[dict[str, Any], CRNet]:
    """One row trained on a split's training part (``parts``: :func:`fold_sets`) and scored on its test part:
    ``(scores, the model on the CPU)``."""
    cfg = prof.train_config(**overrides, hybrid=row.hybrid)
    train_set, val_set, test_set = parts
    model, hist, seconds = train_fresh(lambda: CRNet(prof.model_config(num_classes=1, variant=row.variant)),
                                       cfg, train_set, val_set, names, device, progress)
    counts = patient_counts(model, test_set, cfg.size, device, tta=tta)  # {group: (1, 3)}
    scores = {**evaluate(model, test_set, cfg.size, device, tta=tta)["pooled"][MERGED_CLASS],
              "seconds": seconds, "epochs": len(hist["epoch"]), "seed": cfg.seed,
              "patients": list(counts), "counts": [counts[g][0].tolist() for g in counts]}
    if task is not None:
        scores.update(classification_scores(model, task, device, progress))
    return scores, model.cpu()


def _spread_rows(full: SegmentationDataset, splits: Sequence[dict[str, list[int]]], rows: Sequence[AblationRow],
                 prof: Any, overrides: dict[str, Any], base_cfg: TrainConfig, device: torch.device, progress: bool,
                 tta: bool, task: ClassifyTask | None, seeds: Sequence[int]
                 ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, CRNet]]:
    """Every (seed, split, row) run, as independent jobs (under ``torchrun`` dealt out over the ranks): each row's
    scores run by run (seed-major, then fold), and the last run's models (one process only). A split's parts are
    built once per process."""
    jobs = [(s, k, row) for s in seeds for k in range(len(splits)) for row in rows]
    parts: dict[int, tuple] = {}

    def job(skr: tuple[int, int, AblationRow]) -> tuple[dict[str, Any], CRNet | None]:
        s, k, row = skr
        if k not in parts:
            parts[k] = fold_sets(full, splits[k], base_cfg)
        scores, model = _train_row(parts[k], row, prof, {**overrides, "seed": s}, full.class_names, device,
                                   progress, tta, task)
        return _keep_model({"fold": k, **scores}, model)

    done = distributed.spread(job, jobs)
    per_row = {r.key: [scores for (_, _, row), (scores, _) in zip(jobs, done) if row is r] for r in rows}
    return per_row, {row.key: model for (_, _, row), (_, model) in zip(jobs, done) if model is not None}


def run_ablation(data: str | Path | None = None, profile: str = "quick", folds: int | None = None, seed: int = 0,
                 epochs: int | None = None, max_minutes: float | None = None, rows: Sequence[AblationRow] = TABLE7,
                 device: str | torch.device | None = None, progress: bool = True, tta: bool = True,
                 classify_data: str | Path | None = None, fast: str | None = None, seeds: int = 1) -> dict[str, Any]:
    """Train and evaluate every row; returns ``{"rows": [...], "profile": ..., "hardware": ..., ...}``.

    ``epochs`` and ``max_minutes`` cap every row's training (the same cap for all rows); they are recorded, as is
    ``fast``, the training step's route (:class:`~crlearn.training.config.TrainConfig`; ``None``: the profile's).
    Each row reports the pooled test Dice of the infection class, and also IoU, precision, recall and
    boundary F1, evaluated with test-time augmentation unless ``tta=False``; ``models`` (not saved to JSON)
    keeps the trained models of the last run (last seed, last fold) for inspection (one process only;
    :func:`save_row_models` writes them). Under ``torchrun`` the (seed, fold, row) runs are dealt out over the
    ranks (:func:`crlearn.training.distributed.spread`) and every rank returns the same table.

    ``classify_data`` (a labelled folder, e.g. :func:`crlearn.data.slices.default_classification_dir`; ``None``
    skips it) adds Table 7's accuracy column: :func:`classification_scores` of each trained model on the run's one
    :func:`classification_task` (``epochs`` does not cap the head): ``cls_accuracy``, ``cls_auc``, ``classify``.

    ``seeds`` trains every (fold, row) with the seeds ``seed, seed + 1, ...`` (weights and batch order); the folds
    are dealt by ``seed`` alone, so every seed sees the same folds. Each row's ``folds`` list then holds its
    ``folds x seeds`` runs (each with its ``fold`` and ``seed``), and ``pooled_dice`` its out-of-fold Dice over the
    patients with a bootstrap interval.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    t_wall = time.perf_counter()
    prof = PROFILES[profile]
    device = pick_device(device)
    caps = {"epochs": epochs, "max_minutes": max_minutes, "fast": fast}
    overrides: dict[str, Any] = {"seed": seed, **{k: v for k, v in caps.items() if v is not None}}
    base_cfg = prof.train_config(**overrides)
    full = SegmentationDataset(data if data is not None else default_data_dir(), merge=True)  # loaded once
    splits = group_folds(full.groups, folds, seed) if folds else [split_by_group(full.groups, seed=seed)]
    task = classification_task(classify_data, profile, base_cfg.size, seed) if classify_data is not None else None
    t_start = time.perf_counter()
    per_row, models = _spread_rows(full, splits, rows, prof, overrides, base_cfg, device, progress, tta, task,
                                   range(seed, seed + seeds))
    return {
        "profile": profile,
        "hardware": hardware(),
        "device": str(device),
        "folds": folds or 1,
        "seed": seed,
        "seeds": seeds,
        "train_config": dict(vars(base_cfg)),
        "model_config": prof.model_config(num_classes=1).to_dict(),
        "tta": tta,  # five-view test-time augmentation at evaluation
        "total_seconds": time.perf_counter() - t_start,  # training and evaluation of every row and fold
        "wall_seconds": time.perf_counter() - t_wall,  # the whole call, the data loading included
        "data": full.root.name,
        "splits": [{part: list(map(int, idx)) for part, idx in split.items()} for split in splits],
        "rows": [summarise_row(row, per_row[row.key]) for row in rows],
        "models": models,
        "note": "Paper numbers: Huang et al. 2022, Table 7, on their own data and at full scale; "
        f"this run: {full.root.name}, this profile. {DISCLAIMER}",
        **({"classify": task_record(task)} if task is not None else {}),
    }


def expected_seconds(n_train: int, profile: str = "quick", epochs: int | None = None,
                     rows: Sequence[AblationRow] = TABLE7, device: str | torch.device | None = None,
                     steps: int = 2) -> dict[str, float]:
    """How long training the ``rows`` on ``n_train`` slices for ``epochs`` (default: the profile's) will take here,
    by timing ``steps`` training steps of each row's model (one untimed first) on random batches and multiplying
    by the steps of the run (the x5 views, the batch size): ``{row key: seconds}``. Validation, evaluation and the
    data loading are not counted (a few per cent in the quick profile; ``results/profile_quick_epoch.md``)."""
    from crlearn.training.fastpath import TrainStep, segmentation_loss
    from crlearn.training import perf

    prof, device = PROFILES[profile], pick_device(device)
    cfg = prof.train_config(**({"epochs": epochs} if epochs is not None else {}))
    run_steps = cfg.epochs * -(-n_train * (5 if cfg.augment else 1) // cfg.batch_size)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(cfg.batch_size, 1, cfg.size, cfg.size, generator=gen).to(device, memory_format=torch.channels_last)
    y = (torch.rand(cfg.batch_size, 1, cfg.size, cfg.size, generator=gen) > 0.9).float().to(device)
    out = {}
    for row in rows:
        with seeded(cfg.seed, torch.device("cpu")):
            model = CRNet(prof.model_config(num_classes=1, variant=row.variant))
        model = model.to(device, memory_format=torch.channels_last).train()
        step = TrainStep(segmentation_loss(model, dataclasses.replace(cfg, hybrid=row.hybrid), device),
                         torch.optim.Adam(model.parameters(), lr=cfg.lr))
        with perf.narrow_batchnorm(model, device):
            step(x, y)
            t0 = time.perf_counter()
            for _ in range(steps):
                float(step(x, y).detach())  # read the loss: the step has finished
        out[row.key] = (time.perf_counter() - t0) / steps * run_steps
    return out


def save_row_models(result: dict[str, Any], folder: str | Path) -> list[Path]:
    """Each row's model of the last run (``result["models"]``, one process only) as a half-precision checkpoint
    ``<key>.pt`` in ``folder`` (a few MB each; :func:`load_row_models` and ``crlearn predict`` read them), with the
    row, the data folder's name and the split it was trained on. Returns the paths."""
    missing = [row["key"] for row in result["rows"] if row["key"] not in result.get("models", {})]
    if missing:
        raise ValueError(f"no trained model for rows {missing}: the models stay in one process (not under torchrun)")
    paths = []
    for row in result["rows"]:
        cfg = TrainConfig(**{**result["train_config"], "hybrid": row["hybrid"]})
        path = Path(folder) / f"{row['key']}.pt"
        save_checkpoint(path, result["models"][row["key"]], [MERGED_CLASS], cfg, half=True, row=row["key"],
                        label=row["label"], data=result["data"], split=result["splits"][-1])
        paths.append(path)
    return paths


def load_row_models(folder: str | Path, rows: Sequence[AblationRow] = TABLE7) -> dict[str, CRNet]:
    """The rows' models saved by :func:`save_row_models` (``crlearn ablate --save-models``), by row key, in eval
    mode on the CPU; a missing or foreign file raises :class:`~crlearn.training.checkpoint.CheckpointError` naming it."""
    return {row.key: load_checkpoint(Path(folder) / f"{row.key}.pt")[0] for row in rows}


def summarise_row(row: AblationRow, runs: Sequence[dict[str, float]]) -> dict[str, Any]:
    """One row of the result: the row's settings, the mean (and sample std over folds) of each metric, the folds.
    The classification metrics (:data:`CLS_METRICS`) when the folds have them; an undefined AUC (``None``) is left
    out of its mean, and a metric no fold defines is ``None``."""
    entry: dict[str, Any] = {"key": row.key, "label": row.label, "variant": row.variant, "hybrid": row.hybrid,
                             "paper_dice": row.paper_dice, "paper_accuracy": row.paper_accuracy}
    cls = [m for m in CLS_METRICS if runs and m in runs[0]]
    for metric in ("dice", "iou", "precision", "recall", "boundary_f1", "seconds", "epochs", *cls):
        vals = np.array([r[metric] for r in runs if r[metric] is not None], dtype=float)
        entry[metric] = float(vals.mean()) if len(vals) else None
        if len(vals) > 1:
            entry[f"{metric}_std"] = float(vals.std(ddof=1))
    entry["dice_mean"] = entry["dice"]  # the name results/ and the GPU issue use for the mean over folds
    if runs and all("counts" in r for r in runs):
        entry["pooled_dice"] = bootstrap_pooled(list(patient_totals(runs).values()))
    entry["folds"] = list(runs)
    return entry


def patient_totals(runs: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Each patient's test counts (``[TP, FP, FN]``, or ``(K, 3)`` per class) summed over the runs that tested it
    (one per seed), from the runs' ``patients`` and ``counts``."""
    totals: dict[str, np.ndarray] = {}
    for r in runs:
        for g, c in zip(r["patients"], r["counts"]):
            totals[g] = totals.get(g, 0) + np.asarray(c, dtype=float)
    return dict(sorted(totals.items()))


def ablation_markdown(result: dict[str, Any]) -> str:
    """Table 7 laid out with the paper's Dice beside this run's; with a ``classify`` entry, the paper's slice
    classification accuracy beside this run's, and its AUC."""
    k, n = result["folds"], result.get("seeds", 1)
    runs = f"{k} group folds" + (f" x {n} seeds" if n > 1 else "")
    seeds = f"seed {result['seed']}" if n == 1 else f"seeds {result['seed']}-{result['seed'] + n - 1}"
    head = (f"Ablation (paper Table 7), profile `{result['profile']}`, {result['hardware']}, "
            f"{'mean ± std over ' + runs if k * n > 1 else 'one group split'}, {seeds}.")
    pooled = all("pooled_dice" in r for r in result["rows"])
    if pooled:
        head += (" Pooled Dice: each test patient's pixel counts (summed over the seeds) pooled over all test "
                 "patients, 95 % interval by bootstrap over patients.")
    cls = result.get("classify")
    if cls:
        head += (f" Accuracy: the row's encoder, frozen, under a linear head trained on `{Path(cls['data']).name}`, "
                 f"slice level on its {cls['n_test_slices']} test-group slices.")

    def fmt(r: dict[str, Any], m: str) -> str:
        if r[m] is None:
            return "-"
        return f"{r[m]:.3f} ± {r[m + '_std']:.3f}" if f"{m}_std" in r else f"{r[m]:.3f}"

    header = ["row", "paper Dice", "this run Dice", *(["pooled Dice [95 % CI]"] if pooled else []), "IoU",
              "precision", "recall", "boundary F1"]
    header += ["paper accuracy", "this run accuracy", "AUC"] if cls else []
    cells = [[r["label"], f"{r['paper_dice']:.3f}", fmt(r, "dice"),
              *([format_interval(r["pooled_dice"])] if pooled else []),
              *(fmt(r, m) for m in ("iou", "precision", "recall", "boundary_f1")),
              *([f"{r['paper_accuracy']:.3f}", *(fmt(r, m) for m in CLS_METRICS)] if cls else []),
              f"{r['seconds']:.0f}"] for r in result["rows"]]
    return f"{head}\n\n{markdown_table(header + ['train s'], cells)}\n"


def paired_differences(result: dict[str, Any], metric: str = "dice") -> list[dict[str, Any]]:
    """Each row against the row before it, and the last row against the first, run by run (fold by fold, and seed
    by seed): the runs share the test slices, so the per-run difference removes what the split does to both rows
    (a paired comparison).

    Returns one entry per comparison: ``{"a", "b", "diffs": [b - a per run], "mean", "std" (None for one run),
    "low", "high" (the mean's 95 % bootstrap interval over runs, :func:`crlearn.stats.bootstrap_mean`), "wins":
    runs where b > a, "folds": the number of runs}``.
    """
    rows = result["rows"]
    pairs = [(rows[i - 1], rows[i]) for i in range(1, len(rows))] + ([(rows[0], rows[-1])] if len(rows) > 2 else [])
    out = []
    for a, b in pairs:
        diffs = np.array([fb[metric] - fa[metric] for fa, fb in zip(a["folds"], b["folds"])], dtype=float)
        ci = bootstrap_mean(diffs)  # the mean difference's interval over runs
        out.append({"a": a["label"], "b": b["label"], "diffs": diffs.tolist(), "mean": float(diffs.mean()),
                    "std": float(diffs.std(ddof=1)) if len(diffs) > 1 else None, "low": ci["low"],
                    "high": ci["high"], "wins": int((diffs > 0).sum()), "folds": len(diffs)})
    return out


def paired_markdown(result: dict[str, Any], metric: str = "dice") -> str:
    """:func:`paired_differences` as a Markdown table."""
    cells = [[f"{p['a']} → {p['b']}", ", ".join(f"{d:+.3f}" for d in p["diffs"]),
              f"{p['mean']:+.3f}" + (f" ± {p['std']:.3f}" if p["std"] is not None else ""),
              f"[{p['low']:+.3f}, {p['high']:+.3f}]", f"{p['wins']}/{p['folds']}"]
             for p in paired_differences(result, metric)]
    return markdown_table(["comparison", f"{metric} difference per run", "mean ± std", "95 % CI of the mean",
                           "runs improved"], cells)
