"""Solutions to the check-yourself exercises of notebook 03 (try them yourself first).

Run from anywhere: python notebooks/solutions/03_coarse_module.py. Each answer goes through the notebook's own
check, so a wrong solution raises AssertionError.
"""

from crlearn.exercises import check

# 03.1: decoder1's first convolution reads 64 up-sampled channels from decoder2 and the stem's 64 skip channels;
# each of its 64 filters has a 3x3 kernel per input channel, so the skip is read by 64 * 64 * 3 * 3 weights.
answer = 64 * 64 * 3 * 3  # 36,864
check("03.1", answer)

# 03.2: five halvings need a side divisible by 2**5 = 32; the largest multiple of 32 up to 630 is 19 * 32.
answer = 630 // 32 * 32  # 608
check("03.2", answer)
