"""Solutions to the check-yourself exercises of notebook 11 (try them yourself first).

Run from anywhere: python notebooks/solutions/11_ct_volumes.py. Each answer goes through the notebook's own
check, so a wrong solution raises AssertionError.
"""

from crlearn.exercises import check

# 11.1: one voxel is 0.7 x 0.7 x 1.25 = 0.6125 mm³; 20,000 of them are 12,250 mm³, and 1 mL = 1,000 mm³: 12.25 mL.
answer = 20_000 * 0.7 * 0.7 * 1.25 / 1000
check("11.1", answer)

# 11.2: the lung window runs from -600 - 750 = -1350 HU (0) to -600 + 750 = +150 HU (1): -450 HU lies 900 HU above
# its bottom, 900 / 1500 = 0.6. The mediastinal window starts at 40 - 200 = -160 HU: -450 HU is below it, black (0).
answer = ((-450 - (-600 - 1500 / 2)) / 1500, 0.0)
check("11.2", answer)
