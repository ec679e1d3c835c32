"""The classical image-only lung field (crlearn.tasks.lung_field) against expert lung masks.

Usage: python scripts/classical_lung_field.py DATA_DIR OUT_JSON

For every slice of a folder whose labels declare ``lung`` and ``infection`` (data_sample/covid19_ct_lung_infection):
Dice of the image-only lung field against the true lung field, and the lesion/lung ratio it gives (field united
with the TRUE lesions, as crlearn.tasks.lung_field.burden_table does) against the true ratio, per slice and per patient.
"""

import json
import sys
import time

import numpy as np
import torch

from crlearn.tasks.burden import group_areas, percent, slice_areas
from crlearn.data.folder import SegmentationDataset
from crlearn.metrics import confusion_counts, ratios_from_counts
from crlearn.report import hardware
from crlearn.tasks.lung_field import include_lesions, lung_mask

data, out = sys.argv[1], sys.argv[2]
ds = SegmentationDataset(data, classes=["lung", "infection"])
masks = ds.one_hot(ds.labels).bool()  # (N, 2, H, W): lung, infection
t0 = time.perf_counter()
fields = np.stack([lung_mask(ds.images[i, 0]) for i in range(len(ds))])  # image only
seconds = (time.perf_counter() - t0) / len(ds)
inf, true_lung = masks[:, 1].numpy(), masks[:, 0].numpy()
united = np.stack([include_lesions(f, m) for f, m in zip(fields, inf)])  # as crlearn burden does without lung masks
counts = confusion_counts(torch.from_numpy(fields)[:, None], masks[:, :1])  # per slice
dices = ratios_from_counts(counts["tp"], counts["fp"], counts["fn"])["dice"][:, 0].numpy()
true_areas, classical_areas = slice_areas(inf, true_lung), slice_areas(inf, united)
true_ratio, classical_ratio = percent(*true_areas) / 100, percent(*classical_areas) / 100
rows = [{"slice": rec.name, "group": rec.group, "lung_dice": float(d), "true_ratio": float(t),
         "classical_ratio": float(c)} for rec, d, t, c in zip(ds.records, dices, true_ratio, classical_ratio)]
err = 100 * (classical_ratio - true_ratio)
true_g, classical_g = group_areas(*true_areas, ds.groups), group_areas(*classical_areas, ds.groups)
per_group = {k: {"slices": int(true_g[k][0]), "true_ratio": float(true_g[k][1] / true_g[k][2]),
                 "classical_ratio": float(classical_g[k][1] / classical_g[k][2])} for k in sorted(true_g)}
gerr = np.array([100 * (g["classical_ratio"] - g["true_ratio"]) for g in per_group.values()])
result = {
    "data": data, "hardware": hardware(), "n_slices": len(ds), "seconds_per_slice": seconds,
    "lung_dice": {"min": float(dices.min()), "median": float(np.median(dices)), "mean": float(dices.mean()),
                  "slices_below_0.8": int((dices < 0.8).sum()), "slices_below_0.5": int((dices < 0.5).sum())},
    "ratio_error_pp_per_slice": {"mae": float(np.abs(err).mean()), "bias": float(err.mean()),
                                 "max_abs": float(np.abs(err).max())},
    "ratio_error_pp_per_group": {"mae": float(np.abs(gerr).mean()), "bias": float(gerr.mean())},
    "per_group": per_group, "slices": rows,
    "note": "image-only lung field of crlearn.tasks.lung_field, united with the true lesions; for teaching, not a diagnosis",
}
with open(out, "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps({k: v for k, v in result.items() if k not in ("slices",)}, indent=2))
