"""Patient-level splits (§2.2): no patient's slices on both sides of a split.

The paper splits by patient 70/10/20 into train, validation and test, and reports five-fold cross-validation.
Here a "patient" is the group column of a data folder's ``index.csv`` (a real patient or volume ID where the source
has one, a computed pseudo-patient group where it has not: see each data set's README).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def assign_groups(groups: Sequence[str], fractions: Sequence[float], seed: int = 0) -> list[list[int]]:
    """Deal whole groups into parts of (about) the given slice fractions; returns sorted slice indices per part.

    Groups are shuffled with ``seed`` and, biggest first (ties in shuffled order), each goes whole to the part
    furthest below its target number of slices. No group ever lies in two parts, and the slice fractions land
    close to the targets even when groups differ much in size (the sample's largest pseudo-patient has 16 slices).
    """
    uniq = sorted(set(groups))
    open_parts = [k for k, f in enumerate(fractions) if f > 0]
    if len(uniq) < len(open_parts):
        raise ValueError(f"need at least one group per part, got {len(uniq)} groups for {len(open_parts)} parts")
    size = {g: 0 for g in uniq}
    for g in groups:
        size[g] += 1
    target = [f * len(groups) for f in fractions]
    have = [0] * len(fractions)
    part: dict[str, int] = {}
    shuffled = [uniq[k] for k in np.random.default_rng(seed).permutation(len(uniq))]
    for g in sorted(shuffled, key=lambda g: -size[g]):
        k = max(open_parts, key=lambda p: (target[p] - have[p]) / target[p])
        part[g] = k
        have[k] += size[g]
    return [[i for i, g in enumerate(groups) if part[g] == k] for k in range(len(fractions))]


def split_by_group(
    groups: Sequence[str], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, list[int]]:
    """Patient-level train/val/test split (paper §2.2: 70/10/20), deterministic for a seed.

    See :func:`assign_groups`.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    train, val, test = assign_groups(groups, fractions, seed)
    return {"train": train, "val": val, "test": test}


def group_folds(
    groups: Sequence[str], n_folds: int = 5, seed: int = 0, val_fraction: float = 0.125
) -> list[dict[str, list[int]]]:
    """K-fold cross-validation by patient group (paper §2.2: five folds), deterministic for a seed.

    The groups are dealt into ``n_folds`` group-disjoint parts of about equal slice count; fold k tests on part k
    and splits the rest again by group into train and validation (``val_fraction``, for early stopping).
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    parts = assign_groups(groups, [1.0 / n_folds] * n_folds, seed)
    folds = []
    for k, test in enumerate(parts):
        rest = [i for i in range(len(groups)) if i not in set(test)]
        inner = assign_groups([groups[i] for i in rest], (1 - val_fraction, val_fraction), seed + k + 1)
        folds.append({"train": [rest[i] for i in inner[0]], "val": [rest[i] for i in inner[1]], "test": test})
    return folds
