"""Solutions to the check-yourself exercises of notebook 06 (try them yourself first).

Run from anywhere: python notebooks/solutions/06_metrics.py. Each answer goes through the notebook's own check,
so a wrong solution raises AssertionError.
"""

import numpy as np

from crlearn.exercises import check

# 06.1: the empty slice has no lesion but one predicted pixel: TP = FN = 0, FP = 1, so its Dice is 0 / 1 = 0 (only a
# slice empty in both masks scores 1). The per-slice mean is (9 * 0.9 + 0) / 10.
answer = (9 * 0.9 + 0) / 10  # 0.81
check("06.1", answer)

# 06.2: shifting a square by 3 px moves its left and right edges by 3 px; every boundary pixel of one square is at most
# 3 px from the other's boundary, and the edge columns that moved are exactly 3 px away, so the 95th percentile is 3.
answer = 3
check("06.2", answer)


# 06.3: pooled scores: add each count over the slices first, then take each ratio once (Eq. 2-5). A denominator of 0
# follows crlearn's rule (section 4): 1 if TP, FP and FN are all 0 (nothing to find, nothing found), else 0.
def pooled_scores(tp, fp, fn):
    """tp, fp, fn: per-slice pixel counts (arrays of one length) -> the pooled Dice, IoU, precision and recall."""
    tp, fp, fn = (float(np.sum(c)) for c in (tp, fp, fn))

    def ratio(num, den):
        return 1.0 if tp + fp + fn == 0 else (num / den if den > 0 else 0.0)

    return {"dice": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn),
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn)}


answer = pooled_scores
check("06.3", answer)
