"""Solutions to the check-yourself exercises of notebook 09 (try them yourself first).

Run from anywhere: python notebooks/solutions/09_lesion_burden.py. Each answer goes through the notebook's own
check, so a wrong solution raises AssertionError.
"""

from crlearn.exercises import check

# 09.1: the infection is the union of the classes: 3,000 + 1,200 - 200 = 4,000 pixels of 40,000, i.e. 10 %,
# which lies in the band 5 % <= r < 25 %: score 2.
answer = ((3000 + 1200 - 200) / 40_000, 2)
check("09.1", answer)

# 09.2: pooled over the patient's slices: (1,000 + 300) / (10,000 + 30,000) = 3.25 %. The mean of the two slice
# ratios (10 % and 1 %) would say 5.5 %: the small lung section would count as much as the large one.
answer = 100 * (1000 + 300) / (10_000 + 30_000)
check("09.2", answer)
