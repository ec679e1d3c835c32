"""Solutions to the check-yourself exercises of notebook 13 (try them yourself first).

Run from anywhere: python notebooks/solutions/13_distributed.py. Each answer goes through the notebook's own
check, so a wrong solution raises AssertionError.
"""

import torch

from crlearn.exercises import check


# 13.1: what validate reports under torchrun: every rank's [TP, FP, FN] added over the ranks (sum_over_ranks, an
# all-reduce), then one Dice. Averaging the ranks' Dice instead would weigh a rank with a tiny lesion, or none, as much
# as a rank with a large one.
def pooled_dice(rank_counts):
    """rank_counts: one int64 tensor [TP, FP, FN] per rank -> the Dice of the whole validation set."""
    tp, fp, fn = torch.stack(rank_counts).sum(dim=0).tolist()  # the all-reduce, by hand
    return 2 * tp / (2 * tp + fp + fn)


answer = pooled_dice
check("13.1", answer)
