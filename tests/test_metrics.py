"""Segmentation metrics and classifier metrics of §3.2 (Eq. 2-9; the classifier of §2.8): hand-computed cases,
scikit-learn agreement, empty-case rule, the markdown table."""

import math

import pytest
import torch
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from crlearn.metrics import (
    SegmentationMeter,
    binarize,
    boundary,
    boundary_f1,
    classification_metrics,
    confusion_counts,
    format_table,
    hd95,
    patient_level,
    segmentation_scores,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _mask(h, w, pixels):
    m = torch.zeros(1, 1, h, w, dtype=torch.bool)
    for r, c in pixels:
        m[0, 0, r, c] = True
    return m


def _square(h, w, r0, c0, side):
    m = torch.zeros(1, 1, h, w, dtype=torch.bool)
    m[0, 0, r0 : r0 + side, c0 : c0 + side] = True
    return m


# --------------------------------------------------------------------------- Dice, IoU, precision, recall


def test_scores_hand_computed_on_4x4_masks():
    pred = _mask(4, 4, [(0, 0), (0, 1), (0, 2)])  # 3 pixels
    target = _mask(4, 4, [(0, 1), (0, 2), (1, 2)])  # 3 pixels, 2 shared: TP 2, FP 1, FN 1
    counts = confusion_counts(pred, target)
    assert (counts["tp"].item(), counts["fp"].item(), counts["fn"].item()) == (2, 1, 1)
    scores = segmentation_scores(pred, target)
    assert scores["dice"].item() == pytest.approx(2 * 2 / (3 + 3))
    assert scores["iou"].item() == pytest.approx(2 / 4)
    assert scores["precision"].item() == pytest.approx(2 / 3)
    assert scores["recall"].item() == pytest.approx(2 / 3)


def test_pooled_scores_equal_scikit_learn_on_flattened_masks():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(6, 2, 16, 16, generator=gen) > 0.7
    pred = (target ^ (torch.rand(6, 2, 16, 16, generator=gen) > 0.8)) & (torch.rand(6, 2, 16, 16, generator=gen) > 0.1)
    scores = segmentation_scores(pred, target)
    for c in range(2):
        y, p = target[:, c].flatten().numpy(), pred[:, c].flatten().numpy()
        assert scores["dice"][c].item() == pytest.approx(f1_score(y, p))
        assert scores["iou"][c].item() == pytest.approx(jaccard_score(y, p))
        assert scores["precision"][c].item() == pytest.approx(precision_score(y, p))
        assert scores["recall"][c].item() == pytest.approx(recall_score(y, p))


def test_both_empty_slice_scores_one_everywhere():
    empty = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    for pooled in (True, False):
        scores = segmentation_scores(empty, empty, pooled=pooled)
        assert all(v.item() == 1.0 for v in scores.values())
    assert boundary_f1(empty, empty).item() == 1.0


def test_empty_ground_truth_with_false_positives_scores_zero():
    target = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    pred = _mask(4, 4, [(1, 1)])
    scores = segmentation_scores(pred, target)
    assert all(v.item() == 0.0 for v in scores.values())  # recall is 0/0 -> 0 because FP > 0
    assert boundary_f1(pred, target).item() == 0.0


def test_missed_lesion_scores_zero_precision_and_recall():
    pred = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    target = _mask(4, 4, [(1, 1), (1, 2)])
    scores = segmentation_scores(pred, target)
    assert all(v.item() == 0.0 for v in scores.values())


def test_per_slice_mean_counts_empty_slices_as_perfect_and_pooled_sums_counts():
    target = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    pred = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    target[0, 0, 0, :2] = pred[0, 0, 0, :2] = True  # slice 0: perfect (Dice 1)
    # slice 1: both empty (Dice 1 by the rule)
    pred[2, 0, 3, :2] = True  # slice 2: two false positives (Dice 0)
    assert segmentation_scores(pred, target, pooled=False)["dice"].item() == pytest.approx(2 / 3)
    assert segmentation_scores(pred, target, pooled=True)["dice"].item() == pytest.approx(2 * 2 / (2 * 2 + 2))


def test_binarize_thresholds_at_one_half():
    probs = torch.tensor([0.2, 0.5, 0.7]).view(1, 1, 1, 3)
    assert binarize(probs).flatten().tolist() == [False, True, True]
    assert binarize(torch.logit(probs), threshold=0.0).flatten().tolist() == [False, True, True]


def test_scores_refuse_probabilities():
    with pytest.raises(ValueError, match="pred must be bool or hold only 0 and 1; threshold probabilities"):
        segmentation_scores(torch.rand(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="mask must be bool"):
        boundary(torch.full((1, 1, 4, 4), 0.5))


def test_scores_refuse_mismatched_or_non_4d_masks():
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"pred and target must have the same shape, got \(1, 1, 4, 4\) and"):
        confusion_counts(mask, torch.zeros(1, 1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"pred must be \[B, C, H, W\], got shape \(4, 4\)"):
        segmentation_scores(mask[0, 0], mask[0, 0])
    with pytest.raises(ValueError, match=r"mask must be \[B, C, H, W\]"):
        boundary(mask[0])


# --------------------------------------------------------------------------- boundary F1 and HD95


def test_boundary_is_the_ring_of_a_square_and_ignores_the_image_border():
    ring = boundary(_square(6, 6, 1, 1, 3))
    assert ring.sum().item() == 8 and not ring[0, 0, 2, 2]
    assert boundary(torch.ones(1, 1, 5, 5, dtype=torch.bool)).sum().item() == 0
    assert boundary(_square(5, 5, 0, 0, 3)).sum().item() == 5  # only the two inner sides


def test_boundary_f1_hand_computed_on_shifted_square():
    target = _square(6, 6, 1, 1, 3)  # ring of 8 pixels
    pred = _square(6, 6, 1, 2, 3)  # same square one column to the right: 4 ring pixels shared
    assert boundary_f1(pred, target, tolerance=0).item() == pytest.approx(0.5)
    assert boundary_f1(pred, target, tolerance=1).item() == pytest.approx(1.0)


def test_hd95_hand_computed_and_empty_cases():
    a = _mask(8, 8, [(2, 2)])
    b = _mask(8, 8, [(2, 5)])
    assert hd95(a, b).item() == pytest.approx(3.0)
    empty = torch.zeros_like(a)
    assert hd95(empty, empty).item() == 0.0
    assert math.isinf(hd95(a, empty).item())


# --------------------------------------------------------------------------- meter


def test_meter_matches_functions_and_accumulates_batches():
    gen = torch.Generator().manual_seed(3)
    target = torch.rand(5, 2, 20, 20, generator=gen) > 0.6
    pred = target ^ (torch.rand(5, 2, 20, 20, generator=gen) > 0.85)
    meter = SegmentationMeter(["ggo", "consolidation"])
    meter.update(pred[:2], target[:2])
    meter.update(pred[2:].float(), target[2:].long())  # {0, 1} of any dtype
    result = meter.compute()
    assert result["n_slices"] == 5
    for summary, pooled in (("pooled", True), ("per_slice", False)):
        scores = segmentation_scores(pred, target, pooled=pooled)
        bf = boundary_f1(pred, target, tolerance=2, pooled=pooled)
        for c, name in enumerate(["ggo", "consolidation"]):
            got = result[summary][name]
            assert set(got) == {"dice", "iou", "precision", "recall", "boundary_f1"}
            for k in ("dice", "iou", "precision", "recall"):
                assert got[k] == pytest.approx(scores[k][c].item())
            assert got["boundary_f1"] == pytest.approx(bf[c].item())
    meter.reset()
    with pytest.raises(ValueError, match="before any update"):
        meter.compute()


def test_meter_refuses_wrong_number_of_classes():
    meter = SegmentationMeter(["ggo", "consolidation"])
    with pytest.raises(ValueError, match="consolidation"):
        meter.update(torch.zeros(1, 1, 4, 4, dtype=torch.bool), torch.zeros(1, 1, 4, 4, dtype=torch.bool))


# --------------------------------------------------------------------------- classification


def test_classification_metrics_hand_computed():
    result = classification_metrics([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])  # TP 2, FN 1, FP 1, TN 1
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["specificity"] == pytest.approx(1 / 2)
    assert result["confusion_matrix"] == [[1, 1], [1, 2]]


def test_classification_metrics_without_positive_predictions_are_zero():
    result = classification_metrics([0, 1], [0, 0])
    assert result["precision"] == 0.0 and result["f1"] == 0.0
    assert result["confusion_matrix"] == [[1, 0], [1, 0]]


def test_patient_is_positive_if_any_slice_is_positive():
    slices = [0, 1, 0, 0, 0, 1]
    groups = ["a", "a", "b", "b", "c", "c"]
    assert patient_level(slices, groups) == {"a": 1, "b": 0, "c": 1}


# --------------------------------------------------------------------------- table


def test_format_table_lays_out_classes_by_metrics():
    meter = SegmentationMeter(["ggo", "consolidation"])
    target = torch.cat([_square(8, 8, 2, 2, 3), _square(8, 8, 1, 1, 2)], dim=1)  # 9 and 4 pixels
    pred = torch.cat([_square(8, 8, 2, 2, 3), _square(8, 8, 1, 1, 1)], dim=1)  # ggo exact; consolidation 1 of 4
    meter.update(pred, target)
    table = format_table(meter.compute(), columns=("dice", "precision", "recall"))
    assert table == (
        "| Class | Dice (%) | Precision (%) | Recall (%) |\n"
        "|---|---|---|---|\n"
        "| ggo | 100.00 | 100.00 | 100.00 |\n"
        "| consolidation | 40.00 | 100.00 | 25.00 |"
    )
    raw = format_table({"ggo": {"dice": 0.5}, "n": 3}, columns=("dice", "iou"), percent=False, digits=3)
    assert raw == "| Class | Dice | IoU |\n|---|---|---|\n| ggo | 0.500 | - |"
    per_slice = format_table(meter.compute(), columns=("iou", "boundary_f1"), summary="per_slice", digits=1)
    assert per_slice == (
        "| Class | IoU (%) | BF (%) |\n|---|---|---|\n| ggo | 100.0 | 100.0 |\n| consolidation | 25.0 | 100.0 |"
    )


def test_boundary_counts_match_max_pool_morphology():
    import torch.nn.functional as F

    from crlearn.metrics import boundary_counts

    gen = torch.Generator().manual_seed(4)
    target = torch.rand(3, 2, 23, 17, generator=gen) > 0.5
    pred = torch.rand(3, 2, 23, 17, generator=gen) > 0.5

    def ref_boundary(m):
        return m & ~(-F.max_pool2d(-m.float(), 3, stride=1, padding=1) > 0.5)

    def ref_dilate(m, r):
        return F.max_pool2d(m.float(), 2 * r + 1, stride=1, padding=r) > 0.5

    bp, bt = ref_boundary(pred), ref_boundary(target)
    assert torch.equal(boundary(pred), bp)
    for tol in (0, 1, 3):
        got = boundary_counts(pred, target, tolerance=tol)
        assert torch.equal(got["pred_matched"], (bp & ref_dilate(bt, tol)).sum(dim=(2, 3)))
        assert torch.equal(got["target_matched"], (bt & ref_dilate(bp, tol)).sum(dim=(2, 3)))
