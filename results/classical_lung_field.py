"""The classical image-only lung field (crlearn.severity) against expert lung masks.

Usage: python results/classical_lung_field.py DATA_DIR OUT_JSON

For every slice of a folder whose labels declare ``lung`` and ``infection`` (data_sample/covid19_ct_lung_infection):
Dice of the image-only lung field against the true lung field, and the lesion/lung ratio it gives (field united
with the TRUE lesions, as crlearn.severity.burden_table does) against the true ratio, per slice and per patient.
"""

import json
import sys
import time

import numpy as np
import torch

from crlearn.data import SegmentationDataset
from crlearn.metrics import segmentation_scores
from crlearn.report import hardware
from crlearn.severity import include_lesions, lung_mask

data, out = sys.argv[1], sys.argv[2]
ds = SegmentationDataset(data, classes=["lung", "infection"])
masks = ds.one_hot(ds.labels).bool()  # (N, 2, H, W): lung, infection
t0 = time.perf_counter()
fields = np.stack([lung_mask(ds.images[i, 0]) for i in range(len(ds))])  # image only
seconds = (time.perf_counter() - t0) / len(ds)
united = np.stack([include_lesions(fields[i], masks[i, 1].numpy()) for i in range(len(ds))])
inf = masks[:, 1].numpy()
true_lung = masks[:, 0].numpy()
rows, groups = [], {}
for i, rec in enumerate(ds.records):
    t = inf[i].sum() / true_lung[i].sum()
    c = (inf[i] & united[i]).sum() / max(united[i].sum(), 1)
    d = float(segmentation_scores(torch.from_numpy(fields[i])[None, None], masks[i : i + 1, :1])["dice"][0])
    rows.append({"slice": rec.name, "group": rec.group, "lung_dice": d, "true_ratio": float(t),
                 "classical_ratio": float(c)})
    g = groups.setdefault(rec.group, [0, 0, 0, 0])
    g[0] += int(inf[i].sum()); g[1] += int(true_lung[i].sum())
    g[2] += int((inf[i] & united[i]).sum()); g[3] += int(united[i].sum())
dices = np.array([r["lung_dice"] for r in rows])
err = np.array([100 * (r["classical_ratio"] - r["true_ratio"]) for r in rows])
per_group = {k: {"slices": sum(r["group"] == k for r in rows), "true_ratio": v[0] / v[1],
                 "classical_ratio": v[2] / v[3]} for k, v in sorted(groups.items())}
gerr = np.array([100 * (g["classical_ratio"] - g["true_ratio"]) for g in per_group.values()])
result = {
    "data": data, "hardware": hardware(), "n_slices": len(ds), "seconds_per_slice": seconds,
    "lung_dice": {"min": float(dices.min()), "median": float(np.median(dices)), "mean": float(dices.mean()),
                  "slices_below_0.8": int((dices < 0.8).sum()), "slices_below_0.5": int((dices < 0.5).sum())},
    "ratio_error_pp_per_slice": {"mae": float(np.abs(err).mean()), "bias": float(err.mean()),
                                 "max_abs": float(np.abs(err).max())},
    "ratio_error_pp_per_group": {"mae": float(np.abs(gerr).mean()), "bias": float(gerr.mean())},
    "per_group": per_group, "slices": rows,
    "note": "image-only lung field of crlearn.severity, united with the true lesions; for teaching, not a diagnosis",
}
with open(out, "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps({k: v for k, v in result.items() if k not in ("slices",)}, indent=2))
