"""Solutions to the check-yourself exercises of notebook 12 (try them yourself first).

Run from anywhere: python notebooks/solutions/12_table4_baselines.py. Each answer goes through the notebook's own
check, so a wrong solution raises AssertionError.
"""

import torch
import torch.nn.functional as F

from crlearn.exercises import check


# 12.1: one node X^{i,j} of U-Net++ (Zhou et al. 2018, Eq. 1): up-sample the node below-left to this level's size
# (bilinear, align_corners=False, as crlearn's UpBlock), concatenate the j same-level features and it, in that order,
# along the channels (j * C_i + C_{i+1} channels), then the node's double convolution back to C_i.
def nested_node(same_level, below, conv):
    """same_level: j tensors (B, C_i, H, W); below: (B, C_{i+1}, H/2, W/2); conv: the node's DoubleConv."""
    up = F.interpolate(below, size=same_level[0].shape[-2:], mode="bilinear", align_corners=False)
    return conv(torch.cat([*same_level, up], dim=1))  # (B, j * C_i + C_{i+1}, H, W) -> (B, C_i, H, W)


answer = nested_node
check("12.1", answer)
