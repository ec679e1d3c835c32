"""Solutions to the check-yourself exercises of notebook 02 (try them yourself first).

Run from anywhere: python notebooks/solutions/02_aspp.py. Each answer goes through the notebook's own check, so a
wrong solution raises AssertionError.
"""

from crlearn.exercises import check

# 02.1: the taps sit at 8 - r, 8 and 8 + r; they must lie in 0..15, so r <= 8 and r <= 7.
answer = 7
check("02.1", answer)

# 02.2: along one axis the offsets are {-3, 0, 3} + {-6, 0, 6} = {-9, -6, -3, 0, 3, 6, 9}: 7 distinct values,
# so 7 x 7 input pixels (not 9 x 9 = 81: some paths land on the same pixel). The footprint is 19 pixels wide, as
# wide as one rate-9 kernel, with holes 3 pixels apart.
offsets = {a + b for a in (-3, 0, 3) for b in (-6, 0, 6)}
answer = len(offsets) ** 2  # 49
check("02.2", answer)
