"""Solutions to the check-yourself exercises of notebook 02 (try them yourself first).

Run from anywhere: python notebooks/solutions/02_aspp.py. Each answer goes through the notebook's own check, so a
wrong solution raises AssertionError.
"""

import torch.nn.functional as F

from crlearn.exercises import check

# 02.1: the image-pooling branch of crlearn.nn.blocks.ASPP: average each channel over the whole map, the 1x1
# convolution (with its bias; no BatchNorm, see the ASPP docstring), ReLU, and the one value per image and channel copied
# to every pixel, so that it can be concatenated with the other four branches.
def image_pooling(x, pool_conv):
    """x: (B, C, H, W); pool_conv: the ASPP's 1x1 convolution C -> Cb -> (B, Cb, H, W)."""
    pooled = F.relu(pool_conv(F.adaptive_avg_pool2d(x, 1)))  # (B, Cb, 1, 1)
    return pooled.expand(-1, -1, *x.shape[-2:])  # (B, Cb, H, W)


answer = image_pooling
check("02.1", answer)

# 02.2: along one axis the offsets are {-3, 0, 3} + {-6, 0, 6} = {-9, -6, -3, 0, 3, 6, 9}: 7 distinct values,
# so 7 x 7 input pixels (not 9 x 9 = 81: some paths land on the same pixel). The footprint is 19 pixels wide, as
# wide as one rate-9 kernel, with holes 3 pixels apart.
offsets = {a + b for a in (-3, 0, 3) for b in (-6, 0, 6)}
answer = len(offsets) ** 2  # 49
check("02.2", answer)
