"""Solutions to the check-yourself exercises of notebook 10 (try them yourself first).

Run from anywhere: python notebooks/solutions/10_classifier.py. Each answer goes through the notebook's own check, so
a wrong solution raises AssertionError.
"""

from crlearn.exercises import check

# 10.1: the patient is called negative only if all 30 slices are: 0.98 ** 30 = 0.545, so positive with 1 - 0.545.
answer = 1 - 0.98**30  # 0.455: almost one healthy patient in two
check("10.1", answer)

# 10.2: top-left corners 0, 8, ..., 112 (= 128 - 16) along each axis: 15 positions, 15 * 15 occluded copies.
answer = 15 * 15
check("10.2", answer)
