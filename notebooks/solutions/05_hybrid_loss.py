"""Solutions to the check-yourself exercises of notebook 05 (try them yourself first).

Run from anywhere: python notebooks/solutions/05_hybrid_loss.py. Each answer goes through the notebook's own check,
so a wrong solution raises AssertionError.
"""

from crlearn.exercises import check

# 05.1: I = 2 (the two predicted lesion pixels), U = 2 + 4 - 2 = 4, so L = 1 - (2 + 1) / (4 + 1).
answer = 1 - (2 + 1) / (4 + 1)  # 0.4
check("05.1", answer)

# 05.2: on an empty mask I = 0 and U = A, so L = A / (A + 1) = 0.9 gives A = 0.9 / (1 - 0.9).
answer = 9
check("05.2", answer)
