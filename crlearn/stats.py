"""Intervals a reader can trust: bootstrap over patients, and paired comparisons of two settings.

The unit of resampling is the patient (a data folder's group), never the slice: slices of one patient are alike,
so resampling slices would pretend there is more evidence than there is and give intervals that are too narrow.

- :func:`bootstrap_pooled` resamples patients with replacement and recomputes a *pooled* metric from their summed
  counts (e.g. Dice from true positives, false positives and false negatives), the way crlearn reports metrics;
- :func:`bootstrap_mean` does the same for a per-patient value (e.g. a lesion/lung ratio error);
- :func:`paired_comparison` compares two settings measured on the same folds and seeds: how often B beats A, and
  the mean difference with a bootstrap interval over those paired runs.

Percentile intervals (Efron & Tibshirani 1993, ch. 13), seeded by a ``numpy`` generator owned by the call.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

N_BOOT = 2000  # resamples; enough for the second decimal of a 95 % interval
LEVEL = 0.95


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    lo, hi = np.nanpercentile(samples, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def resample_indices(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` indices drawn with replacement: row b is bootstrap sample b of ``n`` patients."""
    if n < 1:
        raise ValueError("need at least one patient to resample")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def dice_from_counts(counts: np.ndarray) -> float:
    """Pooled Dice 2TP / (2TP + FP + FN) from summed ``[TP, FP, FN]`` counts (NaN when all three are 0)."""
    tp, fp, fn = (float(c) for c in np.asarray(counts, dtype=float)[:3])
    den = 2 * tp + fp + fn
    return 2 * tp / den if den else float("nan")


def bootstrap_pooled(counts: Sequence[Sequence[float]], metric: Callable[[np.ndarray], float] = dice_from_counts,
                     n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> dict[str, Any]:
    """A pooled metric and its patient-bootstrap interval.

    Args:
        counts: one row of counts per patient, e.g. ``[TP, FP, FN]`` summed over that patient's slices.
        metric: maps the counts summed over patients (one row) to the metric; Dice by default.
        n_boot, level, seed: resamples, interval level, and the seed of the call's own generator.

    Returns ``{"value", "low", "high", "patients", "n_boot", "level"}``: ``value`` is the metric on all patients.
    """
    c = np.asarray(counts, dtype=float)
    if c.ndim != 2:
        raise ValueError(f"counts must be (patients, k), got shape {c.shape}")
    idx = resample_indices(len(c), n_boot, seed)
    samples = np.array([metric(c[row].sum(axis=0)) for row in idx])
    low, high = _percentiles(samples, level)
    return {"value": float(metric(c.sum(axis=0))), "low": low, "high": high, "patients": len(c),
            "n_boot": n_boot, "level": level}


def bootstrap_mean(values: Sequence[float], n_boot: int = N_BOOT, level: float = LEVEL,
                   seed: int = 0) -> dict[str, Any]:
    """The mean of one value per patient and its patient-bootstrap interval (same keys as :func:`bootstrap_pooled`)."""
    v = np.asarray(values, dtype=float).ravel()
    idx = resample_indices(len(v), n_boot, seed)
    low, high = _percentiles(v[idx].mean(axis=1), level)
    return {"value": float(v.mean()), "low": low, "high": high, "patients": len(v), "n_boot": n_boot, "level": level}


def paired_comparison(a: Sequence[float], b: Sequence[float], n_boot: int = N_BOOT, level: float = LEVEL,
                      seed: int = 0) -> dict[str, Any]:
    """Setting B against setting A on the same (fold, seed) runs: ``b[i] - a[i]`` paired.

    Returns ``{"diffs", "mean", "low", "high", "wins", "runs"}``: the paired differences, their mean with a
    bootstrap interval over runs, and in how many runs B beat A. With few runs the interval is wide: say so.
    """
    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_.shape != b_.shape or a_.ndim != 1:
        raise ValueError(f"a and b must be 1-D and of one length, got {a_.shape} and {b_.shape}")
    d = b_ - a_
    ci = bootstrap_mean(d, n_boot, level, seed)
    return {"diffs": d.tolist(), "mean": ci["value"], "low": ci["low"], "high": ci["high"],
            "wins": int((d > 0).sum()), "runs": len(d)}


def format_interval(ci: dict[str, Any], digits: int = 3) -> str:
    """``0.712 [0.650, 0.770]``: a value and its interval, for tables."""
    return f"{ci['value']:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"
