"""Cross-validation of the whole classifier recipe by pseudo-patient group (Huang et al. 2022, §2.2: five folds;
§2.8, §3.5: the classifier and its patient-level rule).

Fold k of :func:`crlearn.data.slices.classification_folds` tests on its own groups; everything else (the head, its
penalty, the any-slice rule's threshold, early stopping) is chosen on the other groups by
:func:`crlearn.tasks.classifier_run.run_classify`. Every pseudo-patient is tested exactly once, and the test
predictions of all folds are pooled:

- slice AUC on the pooled probabilities, slice accuracy at P >= 0.5;
- patients by the any-slice rule (each fold's own threshold, chosen for a specificity on its training groups)
  and by the mean-probability rule (0.5): accuracy, sensitivity, specificity;

each with a 95 % bootstrap interval over pseudo-patients (:mod:`crlearn.stats`: patients are resampled, never
slices), plus the mean and standard deviation over folds.

Stage 1 (the segmenter whose encoder the frozen and finetune variants use) trains on the segmentation sets only,
which share no slice with the classifier's data, so it is trained once and reused by every fold and variant.

Folds run in parallel worker processes (``jobs``; one torch thread each).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crlearn.stats import (
    LEVEL,
    N_BOOT,
    bootstrap_pooled,
    format_interval,
    paired_comparison,
    resample_indices,
)

# name -> (mode, ClassifyConfig overrides): the variants compared (Table 6's rows, the frozen one with two heads)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "frozen-logistic": ("frozen", {"head": "logistic"}),
    "frozen-torch": ("frozen", {"head": "torch"}),
    "finetune": ("finetune", {}),
    "scratch": ("scratch", {}),
}
CV_FILES = ("cv.json", "cv.md")
RATES = {"accuracy": (0, 1), "sensitivity": (2, 3), "specificity": (4, 5)}  # columns of _patient_rows


def check_variant(name: str) -> str:
    if name not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {name!r}")
    return name


# ----------------------------------------------------------------------------- one fold (in a worker)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def fold_job(job: dict[str, Any]) -> dict[str, Any]:
    """One (variant, fold): :func:`~crlearn.tasks.classifier_run.run_classify` on fold ``job["fold"]``, nothing
    written; returns the test part's slice probabilities, labels and groups, the chosen threshold and timings."""
    from crlearn.tasks.classifier import predict_proba
    from crlearn.tasks.classifier_run import run_classify

    t0 = time.perf_counter()
    mode, extra = VARIANTS[check_variant(job["variant"])]
    r = run_classify(job["data"], encoder=None if mode == "scratch" else job["encoder"], mode=mode,
                     profile=job["profile"], seed=job["seed"], device=job["device"], log=None, fold=job["fold"],
                     n_folds=job["n_folds"], **{**extra, **job["overrides"]})
    test = r.dataset.subset(r.metrics["split"]["test"])
    probs = predict_proba(r.model, test.images, r.metrics["device"])
    return {"variant": job["variant"], "fold": job["fold"], "y": test.targets.tolist(), "probs": probs.tolist(),
            "groups": list(test.groups), "threshold": r.metrics["threshold"], "logistic": r.metrics["logistic"],
            "split_groups": r.metrics["split_groups"], "epochs_run": r.metrics["epochs_run"],
            "train_seconds": r.metrics["train_seconds"], "wall_seconds": time.perf_counter() - t0,
            "config": r.metrics["config"]}


def run_jobs(jobs: Sequence[dict[str, Any]], workers: int = 1,
             log: Callable[[str], Any] | None = None) -> list[dict[str, Any]]:
    """Run :func:`fold_job` on each job: in this process (``workers`` 1) or in a pool of fresh (spawned) processes
    with one torch thread each. Results in the jobs' order."""
    def note(rec: dict[str, Any]) -> None:
        if log:
            log(f"{rec['variant']} fold {rec['fold']}: {rec['wall_seconds']:.0f} s")

    if workers <= 1:
        out = []
        for job in jobs:
            out.append(fold_job(job))
            note(out[-1])
        return out
    from crlearn.training.workers import worker_pool

    with worker_pool(workers, _one_thread) as pool:
        futures = [pool.submit(fold_job, job) for job in jobs]
        out = []
        for f in futures:
            out.append(f.result())
            note(out[-1])
        return out


# ----------------------------------------------------------------------------- pooled metrics with intervals


def rank_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half): ``(R+ - n+(n+ + 1)/2) / (n+ n-)`` with ``R+``
    the positives' summed ranks; equal to :func:`sklearn.metrics.roc_auc_score`, and fast enough to bootstrap.
    NaN with one class only."""
    from scipy.stats import rankdata

    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    return float((rankdata(probs)[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auc(y: Sequence[int], probs: Sequence[float], groups: Sequence[Hashable], n_boot: int = N_BOOT,
                  level: float = LEVEL, seed: int = 0) -> dict[str, Any]:
    """Slice ROC AUC of pooled predictions with a bootstrap interval over patients (whole groups resampled with
    replacement, their slices with them; a resample with one class only is skipped). Keys as
    :func:`crlearn.stats.bootstrap_pooled`."""
    y_, p_, g_ = np.asarray(y, dtype=int), np.asarray(probs, dtype=np.float64), np.asarray(groups)
    names = sorted(set(g_.tolist()))
    members = [np.flatnonzero(g_ == name) for name in names]
    samples = []
    for row in resample_indices(len(names), n_boot, seed):
        idx = np.concatenate([members[i] for i in row])
        samples.append(rank_auc(y_[idx], p_[idx]))
    low, high = np.nanpercentile(samples, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return {"value": rank_auc(y_, p_), "low": float(low), "high": float(high), "patients": len(names),
            "n_boot": n_boot, "level": level}


def _ratio(cols: tuple[int, int]) -> Callable[[np.ndarray], float]:
    return lambda c: float(c[cols[0]] / c[cols[1]]) if c[cols[1]] else float("nan")


def _patient_rows(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per test patient (pooled over folds): label, the two rules' calls, and its slices' correct count at 0.5."""
    label, any_call, mean_call, slices = [], [], [], []
    for rec in records:
        y, p, g = np.asarray(rec["y"]), np.asarray(rec["probs"]), np.asarray(rec["groups"])
        for name in sorted(set(g.tolist())):
            m = g == name
            label.append(int(y[m][0]))
            any_call.append(int(p[m].max() >= rec["threshold"]["threshold"]))
            mean_call.append(int(p[m].mean() >= 0.5))
            slices.append([int(((p[m] >= 0.5) == y[m]).sum()), int(m.sum())])
    return {"label": np.array(label), "any_slice": np.array(any_call), "mean_probability": np.array(mean_call),
            "slices": np.array(slices)}


def _rule_counts(label: np.ndarray, call: np.ndarray) -> np.ndarray:
    """Per patient ``[correct, 1, TP, positive, TN, negative]``: pooled sums give accuracy, sensitivity, spec."""
    return np.stack([call == label, np.ones_like(label), (call == 1) & (label == 1), label == 1,
                     (call == 0) & (label == 0), label == 0], axis=1).astype(float)


def _per_fold(records: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for rec in records:
        rows = _patient_rows([rec])
        y, p = np.asarray(rec["y"]), np.asarray(rec["probs"])
        out.setdefault("slice_auc", []).append(rank_auc(y, p))
        out.setdefault("slice_accuracy", []).append(float(((p >= 0.5) == y).mean()))
        for rule in ("any_slice", "mean_probability"):
            c = _rule_counts(rows["label"], rows[rule]).sum(axis=0)
            for what, cols in RATES.items():
                out.setdefault(f"{rule}_{what}", []).append(_ratio(cols)(c))
        out.setdefault("threshold", []).append(rec["threshold"]["threshold"])
    return out


def summarize(records: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """One variant's folds pooled: ``{"pooled": {metric: interval dict}, "per_fold": {metric: [...]},
    "mean_std": {metric: [mean, std]}, "n_slices", "n_patients"}`` (module docstring)."""
    rows = _patient_rows(records)
    y = np.concatenate([r["y"] for r in records])
    p = np.concatenate([r["probs"] for r in records])
    g = [f"{r['fold']}/{name}" for r in records for name in r["groups"]]
    pooled = {"slice_auc": bootstrap_auc(y, p, g, seed=seed),
              "slice_accuracy": bootstrap_pooled(rows["slices"], _ratio((0, 1)), seed=seed)}
    for rule in ("any_slice", "mean_probability"):
        counts = _rule_counts(rows["label"], rows[rule])
        for what, cols in RATES.items():
            pooled[f"{rule}_{what}"] = bootstrap_pooled(counts, _ratio(cols), seed=seed)
    per_fold = _per_fold(records)
    mean_std = {k: [float(np.nanmean(v)), float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0]
                for k, v in per_fold.items()}
    return {"pooled": pooled, "per_fold": per_fold, "mean_std": mean_std, "n_slices": len(y),
            "n_patients": len(rows["label"]), "n_folds": len(records)}


# ----------------------------------------------------------------------------- the whole cross-validation


def _stage1(encoder: str | Path | None, needs: bool, profile: str, seed: int, workdir: Path, device: Any,
            log: Callable[[str], Any] | None, seg_overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Stage 1 once (or the given encoder): ``{"encoder", "seconds", "trained"}``."""
    if encoder is not None or not needs:
        return {"encoder": None if encoder is None else str(encoder), "seconds": 0.0, "trained": False}
    from crlearn.tasks.classifier_run import train_segmenter

    t0 = time.perf_counter()
    result = train_segmenter(profile, seed, workdir / "segmenter", True, device, False, log, **(seg_overrides or {}))
    test = {k: v for k, v in result.metrics.get("test", {}).items()} if isinstance(result.metrics, dict) else {}
    return {"encoder": str(workdir / "segmenter" / "best.pt"), "seconds": time.perf_counter() - t0,
            "trained": True, "data": [str(d) for d in (seg_overrides or {}).get("data", [])] or "stage1_data()",
            "test": test}


def cross_validate_classifier(n_folds: int = 5, data: str | Path | None = None,
                              variants: Sequence[str] = ("frozen-logistic",), encoder: str | Path | None = None,
                              profile: str | None = None, seed: int = 0, jobs: int = 1, device: str | None = None,
                              workdir: str | Path | None = None, log: Callable[[str], Any] | None = print,
                              seg_overrides: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """K-fold group cross-validation of the classifier recipe for each of ``variants`` (:data:`VARIANTS`).

    Args:
        n_folds: group folds (every pseudo-patient tested once).
        data: the labelled folder (default: the bundled ``data_sample/sarscov2_ct``).
        encoder: a segmentation checkpoint for the frozen/finetune variants; ``None`` trains stage 1 once
            (:func:`crlearn.tasks.classifier_run.train_segmenter`) into ``workdir/segmenter`` (default: a temporary
            folder) and every fold and variant reuses it.
        jobs: worker processes for the (variant, fold) runs, one torch thread each.
        seg_overrides: stage 1's overrides (``epochs``, ``data``...); ``overrides``: :class:`ClassifyConfig` fields.

    Returns ``{"variants": {name: summarize(...)}, "folds": [fold records], "stage1", "comparisons", ...}``.
    """
    from crlearn.data.slices import default_classification_dir
    from crlearn.report import hardware
    from crlearn.training.config import resolve_profile

    variants = [check_variant(v) for v in variants]
    name, t0 = resolve_profile(profile), time.perf_counter()
    data = str(data if data is not None else default_classification_dir())
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(workdir) if workdir is not None else Path(tmp)
        needs = any(VARIANTS[v][0] != "scratch" for v in variants)
        stage1 = _stage1(encoder, needs, name, seed, wd, device, log, seg_overrides)
        job_list = [{"variant": v, "fold": k, "data": data, "encoder": stage1["encoder"], "profile": name,
                     "seed": seed, "device": device, "n_folds": n_folds, "overrides": overrides}
                    for v in variants for k in range(n_folds)]
        records = run_jobs(job_list, jobs, log)
    by_variant = {v: summarize([r for r in records if r["variant"] == v], seed) for v in variants}
    return {"n_folds": n_folds, "seed": seed, "profile": name, "data": data, "variants": by_variant,
            "comparisons": _comparisons(by_variant), "stage1": stage1, "folds": records, "jobs": jobs,
            "overrides": overrides, "hardware": hardware(), "cpu_count": os.cpu_count(),
            "wall_seconds": time.perf_counter() - t0}


def _comparisons(by_variant: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each variant against the first, paired per fold (same folds and seed): slice AUC and any-slice accuracy."""
    names = list(by_variant)
    out = {}
    for other in names[1:]:
        for metric in ("slice_auc", "any_slice_accuracy"):
            a, b = by_variant[names[0]]["per_fold"][metric], by_variant[other]["per_fold"][metric]
            out[f"{other} - {names[0]}: {metric}"] = paired_comparison(a, b)
    return out


# ----------------------------------------------------------------------------- the report


CV_COLUMNS = (("slice_auc", "slice AUC"), ("slice_accuracy", "slice accuracy"),
              ("any_slice_accuracy", "patients, any slice: accuracy"), ("any_slice_sensitivity", "sensitivity"),
              ("any_slice_specificity", "specificity"), ("mean_probability_accuracy", "patients, mean P: accuracy"),
              ("mean_probability_sensitivity", "sensitivity"), ("mean_probability_specificity", "specificity"))


def cv_markdown(result: dict[str, Any]) -> str:
    """The pooled table (value [95 % patient-bootstrap interval]), the per-fold mean ± std and the thresholds."""
    from crlearn.report import markdown_table

    rows, fold_rows = [], []
    for v, s in result["variants"].items():
        rows.append([v, s["n_patients"]] + [format_interval(s["pooled"][k]) for k, _ in CV_COLUMNS])
        fold_rows.append([v] + [f"{s['mean_std'][k][0]:.3f} ± {s['mean_std'][k][1]:.3f}"
                                for k in ("slice_auc", "any_slice_accuracy", "mean_probability_accuracy")]
                         + [", ".join(f"{t:.3f}" for t in s["per_fold"]["threshold"])])
    head = ["variant", "pseudo-patients"] + [label for _, label in CV_COLUMNS]
    lines = [(f"{result['n_folds']}-fold group cross-validation on {result['data']} (profile {result['profile']}, "
             f"seed {result['seed']}); pooled out-of-fold predictions, 95 % bootstrap intervals over pseudo-patients."),
             "", markdown_table(head, rows), "", "Per fold (mean ± std over folds) and each fold's any-slice threshold:",
             "", markdown_table(["variant", "slice AUC", "any-slice accuracy", "mean-P accuracy", "thresholds"],
                                fold_rows)]
    for key, c in result["comparisons"].items():
        lines.append(f"\nPaired per fold, {key}: mean {c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}], "
                     f"better in {c['wins']} of {c['runs']} folds.")
    st = result["stage1"]
    lines.append(f"\nStage 1: {'trained once, ' + format(st['seconds'], '.0f') + ' s' if st['trained'] else st['encoder']}"
                 f"; machine: {result['hardware']} ({result['cpu_count']} CPUs), {result['jobs']} jobs; "
                 f"wall {result['wall_seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def write_cv(result: dict[str, Any], out: Path) -> list[Path]:
    """``cv.json`` and ``cv.md`` in the folder ``out`` (created), written atomically."""
    from crlearn.training.checkpoint import atomic_write_bytes, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "cv.json", result)
    atomic_write_bytes(out / "cv.md", cv_markdown(result).encode())
    return [out / f for f in CV_FILES]
