"""The patient bootstrap and the paired comparison, on hand examples."""

import numpy as np
import pytest

from crlearn.stats import (bootstrap_mean, bootstrap_pooled, dice_from_counts, paired_comparison,
                           resample_indices)


def test_dice_from_counts_is_two_tp_over_two_tp_plus_fp_plus_fn():
    assert dice_from_counts([3, 1, 1]) == pytest.approx(6 / 8)
    assert np.isnan(dice_from_counts([0, 0, 0]))


def test_bootstrap_resamples_whole_patients_by_hand():
    # Two patients: one perfect (TP 10), one missed entirely (FN 10). A resample holds 0, 1 or 2 copies of each.
    counts = [[10, 0, 0], [0, 0, 10]]
    ci = bootstrap_pooled(counts, n_boot=4000, seed=1)
    assert ci["value"] == pytest.approx(20 / 30)  # pooled: 2*10 / (2*10 + 10)
    # the only possible resamples give Dice 1 (both perfect), 0 (both missed) or 2/3: the 95 % interval is [0, 1]
    assert (ci["low"], ci["high"]) == (0.0, 1.0)
    idx = resample_indices(2, 4000, seed=1)
    values = {round(dice_from_counts(np.asarray(counts, float)[r].sum(0)), 6) for r in idx}
    assert values == {0.0, 1.0, round(2 / 3, 6)}


def test_bootstrap_interval_of_identical_patients_has_no_width():
    ci = bootstrap_pooled([[5, 1, 2]] * 6)
    assert ci["low"] == ci["high"] == pytest.approx(ci["value"])


def test_bootstrap_mean_matches_numpy_percentiles_of_resampled_means():
    v = np.array([1.0, 2.0, 4.0, 8.0])
    ci = bootstrap_mean(v, n_boot=500, seed=3)
    idx = np.random.default_rng(3).integers(0, 4, size=(500, 4))
    lo, hi = np.percentile(v[idx].mean(1), [2.5, 97.5])
    assert (ci["low"], ci["high"]) == pytest.approx((lo, hi))
    assert ci["value"] == pytest.approx(3.75)


def test_paired_comparison_counts_wins_and_differences():
    r = paired_comparison([0.5, 0.6, 0.7], [0.6, 0.5, 0.9])
    assert r["diffs"] == pytest.approx([0.1, -0.1, 0.2])
    assert r["wins"] == 2 and r["runs"] == 3 and r["mean"] == pytest.approx(0.2 / 3)
    assert r["low"] <= r["mean"] <= r["high"]
    with pytest.raises(ValueError, match="one length"):
        paired_comparison([1, 2], [1])
