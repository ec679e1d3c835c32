"""Solutions to the check-yourself exercises of notebook 07 (try them yourself first).

Run from anywhere: python notebooks/solutions/07_train_full_model.py. Each answer goes through the notebook's own
check, so a wrong solution raises AssertionError.
"""

import math

from crlearn.data.folder import default_data_dir, scan_folder
from crlearn.exercises import check
from crlearn.training.config import PROFILES
from crlearn.data.splits import split_by_group

# 07.1: 53 training slices x 5 views = 265 samples; batches of 8 give ceil(265 / 8) = 34 steps per epoch; 15 epochs.
cfg = PROFILES["quick"].train_config()
n_train = len(split_by_group([r.group for r in scan_folder(default_data_dir())], seed=0)["train"])
answer = cfg.epochs * math.ceil(5 * n_train / cfg.batch_size)  # 15 * 34 = 510
check("07.1", answer)

# 07.2: pooled: TP 900, FP 150, FN 250 in all, so Dice = 1800 / (1800 + 150 + 250).
answer = 2 * 900 / (2 * 900 + 150 + 250)  # 0.818
check("07.2", answer)
