"""Solutions to the check-yourself exercises of notebook 04 (try them yourself first).

Run from anywhere: python notebooks/solutions/04_refinement_module.py. Each answer goes through the notebook's own
check, so a wrong solution raises AssertionError.
"""

from crlearn.exercises import check

# 04.1: four 2x2 poolings: 512 / 16 = 32. The centre pixel is 16; the taps at 16 - r and 16 + r must lie in
# 0..31, so r <= 15. Unlike the coarse module's ASPP (16 x 16, notebook 02), all three paper rates fit here.
side = 512 // 2**4
answer = (side, side - 1 - side // 2)  # (32, 15)
check("04.1", answer)

# 04.2: only conv_in (K -> 64, 3x3, bias) and conv_out (64 -> K, 3x3, bias) depend on the number of classes K:
# K * 64 * 9 + 64 and 64 * K * 9 + K parameters. From K = 1 to K = 3 that is 2 * (64 * 9) + 2 * (64 * 9 + 1).
answer = 2 * 64 * 9 + 2 * (64 * 9 + 1)  # 2,306
check("04.2", answer)
