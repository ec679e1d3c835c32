"""crlearn.calibration against scikit-learn (calibration_curve, f1/precision/recall) and hand examples."""

import numpy as np
import pytest
import torch

from crlearn.calibration import dice_by_lesion_size, reliability, slice_scores, threshold_sweep, worst_slices


@pytest.fixture()
def pixels():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 1, 16, 16, generator=g) ** 2
    target = torch.rand(3, 1, 16, 16, generator=g) < probs * 0.8  # roughly calibrated, a little over-confident
    return probs, target


def test_reliability_matches_sklearns_calibration_curve_and_the_ece_by_hand(pixels):
    calibration_curve = pytest.importorskip("sklearn.calibration").calibration_curve
    probs, target = pixels
    r = reliability(probs, target, bins=10)
    freq, conf = calibration_curve(target.flatten().numpy(), probs.flatten().numpy(), n_bins=10, strategy="uniform")
    ours = ~np.isnan(r["frequency"])
    np.testing.assert_allclose(np.array(r["frequency"])[ours], freq, atol=1e-12)
    np.testing.assert_allclose(np.array(r["confidence"])[ours], conf, atol=1e-6)
    assert sum(r["count"]) == probs.numel()
    count = np.array(r["count"])[ours]
    assert r["ece"] == pytest.approx(float((count / count.sum() * np.abs(freq - conf)).sum()), abs=1e-6)


def test_reliability_hand_example_and_bad_inputs():
    probs = torch.tensor([0.05, 0.05, 0.95, 0.95, 1.0])
    target = torch.tensor([0, 1, 1, 1, 1])
    r = reliability(probs, target, bins=2)
    assert r["count"] == [2, 3] and r["frequency"] == pytest.approx([0.5, 1.0])
    assert r["confidence"] == pytest.approx([0.05, (0.95 + 0.95 + 1.0) / 3])
    assert r["ece"] == pytest.approx(2 / 5 * 0.45 + 3 / 5 * (1 - 2.9 / 3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reliability(torch.tensor([1.5]), torch.tensor([1]))
    with pytest.raises(ValueError, match="as many pixels"):
        reliability(torch.rand(4), torch.ones(3))


def test_threshold_sweep_equals_sklearns_pixel_scores(pixels):
    metrics = pytest.importorskip("sklearn.metrics")
    probs, target = pixels
    sweep = threshold_sweep(probs, target, thresholds=(0.1, 0.3, 0.5, 0.7))
    y = target.flatten().numpy()
    for th, dice, prec, rec in zip(sweep["thresholds"], sweep["dice"], sweep["precision"], sweep["recall"]):
        pred = (probs.flatten() >= th).numpy()
        assert dice == pytest.approx(metrics.f1_score(y, pred))  # pixel Dice is the F1 score of the pixels
        assert prec == pytest.approx(metrics.precision_score(y, pred, zero_division=0))
        assert rec == pytest.approx(metrics.recall_score(y, pred))
    assert sweep["best_dice"] == max(sweep["dice"]) and sweep["best_threshold"] in sweep["thresholds"]


def test_slice_scores_size_bins_and_worst_slices_by_hand():
    target = torch.zeros(4, 1, 10, 10, dtype=torch.bool)
    pred = torch.zeros_like(target)
    target[0, 0, :5, :5] = True   # 25 % of the slice, half found
    pred[0, 0, :5, :3] = True
    target[1, 0, 0, 0] = True     # 1 %, missed
    pred[2, 0, 0, :2] = True      # no lesion, a false alarm
    s = slice_scores(pred, target)  # slice 3: nothing anywhere
    np.testing.assert_allclose(s["dice"][:3], [2 * 15 / (2 * 15 + 0 + 10), 0.0, 0.0])
    assert np.isnan(s["dice"][3]) and s["area"].tolist() == [0.25, 0.01, 0.0, 0.0]
    assert worst_slices(pred, target, k=2) == [1, 2] and worst_slices(pred[:, 0], target[:, 0], k=9) == [1, 2, 0]
    small, large = dice_by_lesion_size(pred, target, edges=(0.0, 0.05, 1.0))
    assert (small["slices"], large["slices"]) == (1, 1)  # slices without a lesion are in no bin
    assert small["mean_dice"] == 0.0 and large["pooled_dice"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="one shape"):
        slice_scores(pred, target[:2])
