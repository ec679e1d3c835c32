"""Solutions to the check-yourself exercises of notebook 01 (try them yourself first).

Run from anywhere: python notebooks/solutions/01_se_res_block.py. Each answer goes through the notebook's own
check, so a wrong solution raises AssertionError.
"""

from crlearn.exercises import check

# 01.1: fc1 is a 1x1 convolution 96 -> 12 channels with a bias, fc2 12 -> 96 with a bias.
answer = (96 * 12 + 12) + (12 * 96 + 96)  # 2,412
check("01.1", answer)

# 01.2: the shortcut is a 1x1 convolution 64 -> 128 without bias, then BatchNorm(128): a weight and a bias per
# channel (its running mean and variance are buffers, not parameters).
answer = 64 * 128 + 2 * 128  # 8,448
check("01.2", answer)
