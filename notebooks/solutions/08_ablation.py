"""Solutions to the check-yourself exercises of notebook 08 (try them yourself first).

Run from anywhere: python notebooks/solutions/08_ablation.py. Each answer goes through the notebook's own check, so a
wrong solution raises AssertionError.
"""

from crlearn.exercises import check

# 08.1: the encoder halves the side five times (stem, max-pool, layer2, layer3, layer4): 128 / 32 = 4. Around the
# centre pixel (2, 2) a rate-6 tap sits at 2 - 6 or 2 + 6 in each direction, outside 0..3: only the centre tap is left.
answer = (4, 1)
check("08.1", answer)

# 08.2: differences +0.02, -0.01, +0.06; mean 0.07 / 3 = 0.023; b wins on folds 1 and 3.
answer = ((0.02 - 0.01 + 0.06) / 3, 2)
check("08.2", answer)
