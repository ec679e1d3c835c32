"""The paper's ablation (Table 7): U-Net(SE-ResNet34) -> + ASPP -> + refine -> + hybrid loss.

Every row is trained on the same split with the same seed and evaluated on the merged ``infection`` class
(the setting of Table 7) at the data's own resolution. With ``folds`` the rows are repeated over group folds
and reported as mean ± std.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .data import MERGED_CLASS, SegmentationDataset, default_data_dir
from .engine import fit
from .inference import evaluate
from .model import CRNet
from .profiles import PROFILES, pick_device
from .report import DISCLAIMER, hardware, markdown_table
from .splits import group_folds, split_by_group


@dataclass(frozen=True)
class AblationRow:
    """One row of Table 7: a model variant, a loss, and the paper's Dice for it."""

    key: str
    label: str
    variant: str  # CRNetConfig.variant
    hybrid: bool  # hybrid loss (True) or BCE alone
    paper_dice: float  # Huang et al. 2022, Table 7


TABLE7: tuple[AblationRow, ...] = (
    AblationRow("unet", "U-Net (SE-ResNet34)", "unet", False, 0.793),
    AblationRow("aspp", "+ ASPP", "unet_aspp", False, 0.817),
    AblationRow("refine", "+ refine", "crnet", False, 0.850),
    AblationRow("hybrid", "+ hybrid loss", "crnet", True, 0.870),
)


def run_ablation(
    data: str | Path | None = None,
    profile: str = "quick",
    folds: int | None = None,
    seed: int = 0,
    epochs: int | None = None,
    max_minutes: float | None = None,
    rows: Sequence[AblationRow] = TABLE7,
    device: str | torch.device | None = None,
    progress: bool = True,
    tta: bool = True,
) -> dict[str, Any]:
    """Train and evaluate every row; returns ``{"rows": [...], "profile": ..., "hardware": ..., ...}``.

    ``epochs`` and ``max_minutes`` cap every row's training (the same cap for all rows); they are recorded.
    Each row reports the pooled test Dice of the infection class, and also IoU, precision, recall and
    boundary F1, evaluated with test-time augmentation unless ``tta=False``; ``models`` (not saved to JSON)
    keeps the trained models of the last fold for inspection.
    """
    prof = PROFILES[profile]
    device = pick_device(device)
    overrides: dict[str, Any] = {"seed": seed}
    if epochs is not None:
        overrides["epochs"] = epochs
    if max_minutes is not None:
        overrides["max_minutes"] = max_minutes
    base_cfg = prof.train_config(**overrides)
    full = SegmentationDataset(data if data is not None else default_data_dir(), merge=True)  # loaded once
    groups = full.groups
    splits = group_folds(groups, folds, seed) if folds else [split_by_group(groups, seed=seed)]
    names = full.class_names
    per_row: dict[str, list[dict[str, float]]] = {r.key: [] for r in rows}
    models: dict[str, CRNet] = {}
    t_start = time.perf_counter()
    for split in splits:
        train_set = full.subset(split["train"], size=base_cfg.size, augment=base_cfg.augment)
        val_set = full.subset(split["val"], size=base_cfg.size)
        test_set = full.subset(split["test"])  # original resolution
        for row in rows:
            cfg = prof.train_config(**overrides, hybrid=row.hybrid)
            torch.manual_seed(cfg.seed)  # the same initial weights for the shared layers of every row
            model = CRNet(prof.model_config(num_classes=1, variant=row.variant))
            t0 = time.perf_counter()
            hist = fit(model, train_set, val_set, cfg, names, device=device, progress=progress)
            seconds = time.perf_counter() - t0
            m = evaluate(model, test_set, cfg.size, device, tta=tta)["pooled"][MERGED_CLASS]
            per_row[row.key].append({**m, "seconds": seconds, "epochs": len(hist["epoch"])})
            models[row.key] = model.cpu()
    return {
        "profile": profile,
        "hardware": hardware(),
        "device": str(device),
        "folds": folds or 1,
        "seed": seed,
        "train_config": {k: v for k, v in vars(base_cfg).items()},
        "model_config": prof.model_config(num_classes=1).to_dict(),
        "tta": tta,  # five-view test-time augmentation at evaluation
        "total_seconds": time.perf_counter() - t_start,
        "rows": [summarise_row(row, per_row[row.key]) for row in rows],
        "models": models,
        "note": "Paper numbers: Huang et al. 2022, Table 7, on their own data and at full scale; "
        f"this run: {full.root.name}, this profile. {DISCLAIMER}",
    }


def summarise_row(row: AblationRow, runs: Sequence[dict[str, float]]) -> dict[str, Any]:
    """One row of the result: the row's settings, the mean (and sample std over folds) of each metric, the folds."""
    entry: dict[str, Any] = {"key": row.key, "label": row.label, "variant": row.variant, "hybrid": row.hybrid,
                             "paper_dice": row.paper_dice}
    for metric in ("dice", "iou", "precision", "recall", "boundary_f1", "seconds", "epochs"):
        vals = np.array([r[metric] for r in runs], dtype=float)
        entry[metric] = float(vals.mean())
        if len(runs) > 1:
            entry[f"{metric}_std"] = float(vals.std(ddof=1))
    entry["folds"] = list(runs)
    return entry


def ablation_markdown(result: dict[str, Any]) -> str:
    """Table 7 laid out with the paper's Dice beside this run's."""
    k = result["folds"]
    head = (f"Ablation (paper Table 7), profile `{result['profile']}`, {result['hardware']}, "
            f"{'mean ± std over ' + str(k) + ' group folds' if k > 1 else 'one group split'}, seed {result['seed']}.")

    def fmt(r: dict[str, Any], m: str) -> str:
        return f"{r[m]:.3f} ± {r[m + '_std']:.3f}" if f"{m}_std" in r else f"{r[m]:.3f}"

    header = ["row", "paper Dice", "this run Dice", "IoU", "precision", "recall", "boundary F1", "train s"]
    cells = [[r["label"], f"{r['paper_dice']:.3f}", *(fmt(r, m) for m in ("dice", "iou", "precision", "recall",
              "boundary_f1")), f"{r['seconds']:.0f}"] for r in result["rows"]]
    return f"{head}\n\n{markdown_table(header, cells)}\n"
