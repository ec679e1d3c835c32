"""Solutions to the check-yourself exercises of notebook 01 (try them yourself first).

Run from anywhere: python notebooks/solutions/01_se_res_block.py. Each answer goes through the notebook's own
check, so a wrong solution raises AssertionError.
"""

import torch
import torch.nn.functional as F

from crlearn.exercises import check

# 01.1: fc1 is a 1x1 convolution 96 -> 12 channels with a bias, fc2 12 -> 96 with a bias.
answer = (96 * 12 + 12) + (12 * 96 + 96)  # 2,412
check("01.1", answer)

# 01.2: the shortcut is a 1x1 convolution 64 -> 128 without bias, then BatchNorm(128): a weight and a bias per
# channel (its running mean and variance are buffers, not parameters).
answer = 64 * 128 + 2 * 128  # 8,448
check("01.2", answer)


# 01.3: the SE forward pass (Hu et al. 2018; crlearn.nn.blocks.SEBlock) from the weights alone. A 1x1 convolution
# on a (B, C, 1, 1) map is a matrix product: w1 is (C/r, C, 1, 1), so z @ w1[:, :, 0, 0].T + b1 is fc1. Squeeze each
# channel to its mean, excite through fc1, ReLU, fc2 and a sigmoid (one weight in (0, 1) per channel), scale x.
def se_forward(x, w1, b1, w2, b2):
    """x: (B, C, H, W); w1 (C/r, C, 1, 1), b1 (C/r,), w2 (C, C/r, 1, 1), b2 (C,) -> (B, C, H, W)."""
    z = x.mean(dim=(2, 3))  # squeeze: (B, C)
    hidden = F.relu(z @ w1[:, :, 0, 0].T + b1)  # fc1 and ReLU: (B, C/r)
    weights = torch.sigmoid(hidden @ w2[:, :, 0, 0].T + b2)  # fc2 and sigmoid: (B, C)
    return x * weights[:, :, None, None]  # scale: broadcast over H and W


answer = se_forward
check("01.3", answer)
