"""Table 4 (Huang et al. 2022, §3.3): U-Net, U-Net++ and CR-Net per lesion class, on the same patient folds.

Each model (:data:`TABLE4`: :class:`crlearn.nn.unet.UNet`, :class:`crlearn.nn.unetpp.UNetPlusPlus` with deep
supervision, :class:`crlearn.nn.model.CRNet`) is one network of three output channels (GGO, consolidation,
effusion), trained by the same engine with the same profile, loss and budget on K patient-group folds
(:func:`crlearn.data.splits.group_folds`, the same folds for every model and seed) for N seeds (weights and batch
order; the folds stay fixed). Every patient is in exactly one test fold, so each seed gives one out-of-fold
prediction per patient.

What is reported, per model and lesion class:

- **Dice, pixel precision, pixel recall pooled out of fold**: each patient's test-fold pixel counts ``[TP, FP, FN]``
  (at the slices' own resolution), summed over the seeds, pooled over patients; the 95 % interval resamples patients
  (:func:`crlearn.stats.bootstrap_pooled`). It says how much the patients sampled move the number, not how much
  the seeds do.
- **Dice mean and std over the K x N runs** (each run's test fold pooled): the spread over folds and seeds.
- **Paired comparisons** (:func:`crlearn.stats.paired_comparison`): CR-Net minus each baseline, run by run (the
  same fold and seed), how many runs CR-Net wins and the mean difference with its interval.

The paper's Table 4 numbers (:data:`PAPER_TABLE4`) come from the authors' data (fibrosis, consolidation, GGO) at
full scale; MedSeg has no fibrosis (its third class is pleural effusion), and the quick profile is a 2-core-CPU
model: set them side by side, not against each other. The profile was tuned for CR-Net (README, "Quick profile"),
and the baselines are trained with it unchanged, with CR-Net's hybrid loss (the paper does not say how its
baselines were trained): that favours CR-Net, if anything.

``jobs > 1`` runs the K x N x 3 trainings in worker processes (``spawn``; each loads the data once and uses one
torch thread), longest first; the results do not depend on the order.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from crlearn.data.folder import SegmentationDataset, default_data_dir, scan_folder
from crlearn.data.splits import group_folds
from crlearn.inference import patient_counts
from crlearn.nn.model import build_model
from crlearn.report import DISCLAIMER, hardware, markdown_table
from crlearn.stats import N_BOOT, bootstrap_pooled, dice_from_counts, paired_comparison
from crlearn.tasks.ablation import fold_sets, patient_totals, train_fresh
from crlearn.training.config import PROFILES
from crlearn.training.device import pick_device
from crlearn.training.workers import worker_pool

LESIONS = ("ggo", "consolidation", "effusion")  # MedSeg's three lesion classes, one output channel each


@dataclass(frozen=True)
class CompareRow:
    """One model of Table 4: its key, label, :func:`crlearn.nn.model.build_model` name and options, and its
    relative training cost (jobs are started most expensive first)."""

    key: str
    label: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    cost: float = 1.0


TABLE4: tuple[CompareRow, ...] = (
    CompareRow("unet", "U-Net", "plain_unet", cost=2.0),
    CompareRow("unetpp", "U-Net++", "unetpp", {"deep_supervision": True}, cost=6.0),  # Zhou et al. train with it
    CompareRow("crnet", "CR-Net", "crnet", cost=1.0),
)
BASELINE_KEYS = ("unet", "unetpp")

# Huang et al. 2022, Table 4 (../shared/PAPER_NUMBERS.md): (Dice, pixel precision, pixel recall) by model and lesion,
# on the authors' data. CR-Net's GGO precision is printed "892" in the paper, read here as 0.892. The paper's third
# class is fibrosis, which MedSeg does not have: effusion has no paper number.
PAPER_TABLE4: dict[str, dict[str, tuple[float, float, float]]] = {
    "unet": {"fibrosis": (0.833, 0.897, 0.851), "consolidation": (0.735, 0.844, 0.787), "ggo": (0.780, 0.805, 0.822)},
    "unetpp": {"fibrosis": (0.879, 0.919, 0.899), "consolidation": (0.820, 0.873, 0.862),
               "ggo": (0.829, 0.850, 0.897)},
    "crnet": {"fibrosis": (0.901, 0.934, 0.940), "consolidation": (0.864, 0.872, 0.913), "ggo": (0.860, 0.892, 0.910)},
}
METRICS = ("dice", "precision", "recall")


def precision_from_counts(counts: np.ndarray) -> float:
    """Pooled pixel precision TP / (TP + FP) from summed ``[TP, FP, FN]`` (NaN when nothing was predicted)."""
    tp, fp = float(counts[0]), float(counts[1])
    return tp / (tp + fp) if tp + fp else float("nan")


def recall_from_counts(counts: np.ndarray) -> float:
    """Pooled pixel recall TP / (TP + FN) from summed ``[TP, FP, FN]`` (NaN when there is no lesion pixel)."""
    tp, fn = float(counts[0]), float(counts[2])
    return tp / (tp + fn) if tp + fn else float("nan")


METRIC_FNS: dict[str, Callable[[np.ndarray], float]] = {
    "dice": dice_from_counts, "precision": precision_from_counts, "recall": recall_from_counts}


@dataclass(frozen=True)
class CompareSetup:
    """What every training run shares (sent to the worker processes)."""

    data: str
    profile: str = "quick"
    folds: int = 5
    split_seed: int = 0  # seeds the folds, the same for every model and training seed
    epochs: int | None = None  # caps every run's epochs (None: the profile's)
    tta: bool = True  # five-view test-time augmentation at evaluation
    device: str | None = None


@dataclass(frozen=True)
class CompareJob:
    """One training run: a model, a fold, a training seed."""

    row: CompareRow
    fold: int
    seed: int


def run_job(setup: CompareSetup, job: CompareJob, full: SegmentationDataset, progress: bool = False
            ) -> dict[str, Any]:
    """Train one model on one fold with one seed and count its test patients' pixels."""
    prof = PROFILES[setup.profile]
    cfg = prof.train_config(seed=job.seed, **({"epochs": setup.epochs} if setup.epochs is not None else {}))
    split = group_folds(full.groups, setup.folds, setup.split_seed)[job.fold]
    train_set, val_set, test_set = fold_sets(full, split, cfg)
    model_cfg = prof.model_config(num_classes=len(full.class_names))
    model, hist, seconds = train_fresh(lambda: build_model(job.row.model, model_cfg, **job.row.options), cfg,
                                       train_set, val_set, full.class_names, setup.device, progress)
    counts = patient_counts(model, test_set, cfg.size, setup.device, setup.tta)
    return {"row": job.row.key, "fold": job.fold, "seed": job.seed, "seconds": seconds,
            "epochs": len(hist["epoch"]), "parameters": sum(p.numel() for p in model.parameters()),
            "patients": list(counts), "counts": [counts[g].tolist() for g in counts]}


_WORKER: dict[str, Any] = {}  # a worker process's own copy of the data (set by _init_worker, in workers only)


def _init_worker(setup: CompareSetup, extra_init: Callable[[], None] | None) -> None:
    torch.set_num_threads(1)
    if extra_init is not None:
        extra_init()
    _WORKER["full"] = load_lesions(setup.data)


def _run_in_worker(setup: CompareSetup, job: CompareJob) -> dict[str, Any]:
    return run_job(setup, job, _WORKER["full"])


def load_lesions(data: str | Path) -> SegmentationDataset:
    """The data folder at its own resolution with the three lesion classes, one channel each (:data:`LESIONS`)."""
    return SegmentationDataset(data, classes=list(LESIONS))


def run_jobs(setup: CompareSetup, jobs: Sequence[CompareJob], n_workers: int = 1, progress: bool = True,
             log: Callable[[str], None] | None = None, worker_init: Callable[[], None] | None = None
             ) -> list[dict[str, Any]]:
    """Every job, in this process (``n_workers=1``) or in ``n_workers`` spawned processes of one torch thread each
    (``worker_init``, a picklable function, runs first in each); results in the order of ``jobs``."""
    log = log or (lambda line: None)
    order = sorted(range(len(jobs)), key=lambda k: -jobs[k].row.cost)  # the longest first: a shorter tail
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    t0 = time.perf_counter()

    def done(k: int, res: dict[str, Any]) -> None:
        results[k] = res
        n = sum(r is not None for r in results)
        log(f"{n}/{len(jobs)} {res['row']} fold {res['fold']} seed {res['seed']}: {res['epochs']} epochs in "
            f"{res['seconds']:.0f} s ({time.perf_counter() - t0:.0f} s since start)")

    if n_workers <= 1:
        full = load_lesions(setup.data)
        for k in order:
            done(k, run_job(setup, jobs[k], full, progress))
        return results  # type: ignore[return-value]
    with worker_pool(n_workers, _init_worker, (setup, worker_init)) as pool:
        futures = {pool.submit(_run_in_worker, setup, jobs[k]): k for k in order}
        for fut in as_completed(futures):
            done(futures[fut], fut.result())
    return results  # type: ignore[return-value]


def run_compare(data: str | Path | None = None, profile: str = "quick", folds: int = 5, seeds: int = 3,
                epochs: int | None = None, jobs: int = 1, device: str | None = None, tta: bool = True,
                rows: Sequence[CompareRow] = TABLE4, progress: bool = True,
                log: Callable[[str], None] | None = None,
                worker_init: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train every model of ``rows`` on every fold for seeds ``0 .. seeds-1``; returns :func:`summarise`'s rows
    with the setup, the machine and the wall time. ``jobs`` worker processes (1: all in this process)."""
    if seeds < 1 or jobs < 1:
        raise ValueError(f"seeds and jobs must be at least 1, got seeds={seeds}, jobs={jobs}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    setup = CompareSetup(str(data if data is not None else default_data_dir()), profile, folds, 0, epochs, tta,
                         str(pick_device(device)))
    groups = [rec.group for rec in scan_folder(setup.data)]  # the slices in the data set's order, not decoded
    fold_list = group_folds(groups, folds, setup.split_seed)  # refuses folds < 2 or more folds than groups
    job_list = [CompareJob(r, f, s) for s in range(seeds) for f in range(folds) for r in rows]
    if log is not None:
        log(f"{len(job_list)} training runs ({len(rows)} models x {folds} folds x {seeds} seeds) in {jobs} "
            f"process(es), device {setup.device}")
    t0 = time.perf_counter()
    runs = run_jobs(setup, job_list, jobs, progress and jobs == 1, log, worker_init)
    cfg = PROFILES[profile].train_config(**({"epochs": epochs} if epochs is not None else {}))
    return {"table": "Huang et al. 2022, Table 4", "data": setup.data, "profile": profile, "folds": folds,
            "seeds": seeds, "jobs": jobs, "device": setup.device, "hardware": hardware(), "tta": tta,
            "threads_per_run": 1 if jobs > 1 else torch.get_num_threads(),
            "wall_seconds": time.perf_counter() - t0, "train_config": dataclasses.asdict(cfg),
            "models": {r.key: {"label": r.label, "model": r.model, "options": r.options} for r in rows},
            "test_groups": [sorted({groups[i] for i in f["test"]}) for f in fold_list],
            **summarise(runs, rows), "note": "Paper numbers: Huang et al. 2022, Table 4, on their own data "
            f"(fibrosis, not effusion) at full scale; this run: {Path(setup.data).name}, profile {profile}. "
            f"{DISCLAIMER}"}


def summarise(runs: Sequence[dict[str, Any]], rows: Sequence[CompareRow] = TABLE4) -> dict[str, Any]:
    """Table 4's rows and the paired comparisons from the runs of :func:`run_job`: ``{"rows": [...], "paired":
    [...], "runs": [...]}`` (the runs with their per-patient counts, from which all of it can be recomputed)."""
    out_rows, per_run_dice = [], {}
    for row in rows:
        mine = [r for r in runs if r["row"] == row.key]
        pooled = patient_totals(mine)  # {group: (K, 3)} summed over the seeds
        counts = np.stack(list(pooled.values()))  # (patients, K, 3)
        for k, lesion in enumerate(LESIONS):
            dice_runs = [dice_from_counts(np.sum(r["counts"], axis=0)[k]) for r in mine]  # one per (fold, seed)
            per_run_dice[row.key, lesion] = {(r["fold"], r["seed"]): d for r, d in zip(mine, dice_runs)}
            finite = np.array([d for d in dice_runs if np.isfinite(d)])
            paper = PAPER_TABLE4.get(row.key, {}).get(lesion)
            out_rows.append({
                "key": row.key, "label": row.label, "lesion": lesion,
                **{m: pooled_interval(counts[:, k], m) for m in METRICS},
                "dice_mean": float(finite.mean()) if len(finite) else None,
                "dice_std": float(finite.std(ddof=1)) if len(finite) > 1 else None,
                "runs_defined": len(finite), "runs": len(dice_runs),
                "paper": dict(zip(METRICS, paper)) if paper else None,
                "seconds_mean": float(np.mean([r["seconds"] for r in mine])),
                "parameters": mine[0]["parameters"]})
    return {"rows": out_rows, "paired": paired_rows(per_run_dice, rows),
            "runs": list(runs)}


def pooled_interval(counts: np.ndarray, metric: str) -> dict[str, Any]:
    """:func:`crlearn.stats.bootstrap_pooled` of a metric of :data:`METRIC_FNS` on per-patient ``[TP, FP, FN]``;
    ``value``, ``low`` and ``high`` are ``None`` when the metric is undefined on all patients together (no lesion
    pixel and none predicted)."""
    fn = METRIC_FNS[metric]
    if not np.isfinite(fn(counts.sum(axis=0))):
        return {"value": None, "low": None, "high": None, "patients": len(counts)}
    return bootstrap_pooled(counts, metric=fn)


def paired_rows(per_run_dice: dict[tuple[str, str], dict[tuple[int, int], float]],
                rows: Sequence[CompareRow] = TABLE4) -> list[dict[str, Any]]:
    """CR-Net against each baseline, per lesion, over the (fold, seed) runs where both Dice values are defined
    (a test fold without that lesion and without a prediction of it has none)."""
    keys = [r.key for r in rows]
    if "crnet" not in keys:
        return []
    out = []
    for lesion in LESIONS:
        b = per_run_dice["crnet", lesion]
        for base in (k for k in keys if k != "crnet"):
            a = per_run_dice[base, lesion]
            both = [run for run in sorted(a) if run in b and np.isfinite(a[run]) and np.isfinite(b[run])]
            if not both:
                continue
            cmp = paired_comparison([a[r] for r in both], [b[r] for r in both])
            out.append({"lesion": lesion, "a": base, "b": "crnet", **cmp, "pairs": [list(r) for r in both],
                        "runs_dropped": len(a) - len(both)})
    return out


def _ci(ci: dict[str, Any]) -> str:
    if ci["value"] is None:
        return "-"
    return f"{ci['value']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def compare_markdown(result: dict[str, Any]) -> str:
    """Table 4 laid out as the paper lays it out (model, lesion, Dice, pixel precision, pixel recall), this run's
    pooled out-of-fold values with their patient-bootstrap 95 % intervals, the paper's beside, and the paired
    comparisons of CR-Net with each baseline."""
    k, n = result["folds"], result["seeds"]
    head = (f"Table 4 (Huang et al. 2022, §3.3) on `{Path(result['data']).name}`, profile `{result['profile']}`, "
            f"{k} patient-group folds x {n} seed(s) ({k * n} runs per model), {result['hardware']}, device "
            f"{result['device']}, {result['jobs']} process(es), {result['wall_seconds']:.0f} s. Dice, precision, "
            "recall: pooled out of fold (each patient's test-fold pixel counts summed over the seeds), 95 % "
            f"interval from {N_BOOT:,} resamples of the "
            f"{result['rows'][0]['dice']['patients']} patients. Paper: its own data, full scale; its third class "
            "is fibrosis (MedSeg's is effusion, no paper number).")
    cells = []
    for r in result["rows"]:
        p = r["paper"]
        spread = "-" if r["dice_mean"] is None else (
            f"{r['dice_mean']:.3f}" + (f" ± {r['dice_std']:.3f}" if r["dice_std"] is not None else ""))
        cells.append([r["label"], r["lesion"], *(_ci(r[m]) for m in METRICS),
                      *((f"{p[m]:.3f}" for m in METRICS) if p else ("-",) * 3),
                      f"{spread} ({r['runs_defined']}/{r['runs']})", f"{r['parameters']:,}", f"{r['seconds_mean']:.0f}"])
    header = ["model", "lesion", "Dice", "pixel precision", "pixel recall", "paper Dice", "paper precision",
              "paper recall", "Dice per run, mean ± std (runs)", "parameters", "train s per run"]
    labels = {r["key"]: r["label"] for r in result["rows"]}
    paired = [[p["lesion"], f"{labels[p['b']]} − {labels[p['a']]}", f"{p['wins']}/{p['runs']}",
               f"{p['mean']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}]"] for p in result["paired"]]
    return (f"{head}\n\n{markdown_table(header, cells)}\n\nPaired by (fold, seed), Dice: how many runs CR-Net wins "
            "and the mean difference, 95 % bootstrap interval over the runs (runs where a fold has neither the "
            f"lesion nor a prediction of it are left out).\n\n"
            f"{markdown_table(['lesion', 'difference', 'CR-Net wins', 'mean difference [95 % CI]'], paired)}\n")
