"""Solutions to the check-yourself exercises of notebook 00 (try them yourself first).

Run from anywhere: python notebooks/solutions/00_setup_and_data.py. Each answer goes through the notebook's own
check, so a wrong solution raises AssertionError.
"""

import torch

from crlearn.data.augment import AUGMENTATIONS
from crlearn.data.folder import SegmentationDataset, default_data_dir
from crlearn.exercises import check
from crlearn.data.splits import split_by_group

ds = SegmentationDataset(default_data_dir())  # as in the notebook: 76 slices, labels 0..3
split = split_by_group(ds.groups, (0.7, 0.1, 0.2), seed=0)

# 00.1: every training slice is served in each of the five views (identity, three rotations, a flip).
answer = len(split["train"]) * len(AUGMENTATIONS)  # 53 * 5
check("00.1", answer)

# 00.2: inverse pixel frequency: a class with 31 times fewer pixels gets a 31 times larger weight.
counts = torch.bincount(ds.labels.flatten(), minlength=4).tolist()  # background, GGO, consolidation, effusion
answer = counts[1] / counts[3]  # 837,235 / 26,718, about 31
check("00.2", answer)
