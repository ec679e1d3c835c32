"""Solutions to the check-yourself exercises of notebook 06 (try them yourself first).

Run from anywhere: python notebooks/solutions/06_metrics.py. Each answer goes through the notebook's own check,
so a wrong solution raises AssertionError.
"""

from crlearn.exercises import check

# 06.1: the empty slice has no lesion but one predicted pixel: TP = FN = 0, FP = 1, so its Dice is 0 / 1 = 0 (only a
# slice empty in both masks scores 1). The per-slice mean is (9 * 0.9 + 0) / 10.
answer = (9 * 0.9 + 0) / 10  # 0.81
check("06.1", answer)

# 06.2: shifting a square by 3 px moves its left and right edges by 3 px; every boundary pixel of one square is at most
# 3 px from the other's boundary, and the edge columns that moved are exactly 3 px away, so the 95th percentile is 3.
answer = 3
check("06.2", answer)
