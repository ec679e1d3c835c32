"""The paper's ablation (Table 7): U-Net(SE-ResNet34) -> + ASPP -> + refine -> + hybrid loss.

Every row is trained on the same split with the same seed and evaluated on the merged ``infection`` class
(the setting of Table 7) at the data's own resolution. With ``folds`` the rows are repeated over group folds
and reported as mean ± std.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .data import SegmentationDataset, group_folds, split_by_group
from .model import CRNet
from .train import PROFILES, evaluate, fit, pick_device


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


def hardware() -> str:
    """A short description of where this runs, for every reported number."""
    if torch.cuda.is_available():
        return f"CUDA GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def run_ablation(
    data: str | Path,
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
    full = SegmentationDataset(data, merge=True)  # original resolution, for evaluation
    groups = full.groups
    splits = group_folds(groups, folds, seed) if folds else [split_by_group(groups, seed=seed)]
    names = full.class_names
    per_row: dict[str, list[dict[str, float]]] = {r.key: [] for r in rows}
    models: dict[str, CRNet] = {}
    t_start = time.perf_counter()
    for split in splits:
        train_set = SegmentationDataset(data, merge=True, size=base_cfg.size, augment=base_cfg.augment, indices=split["train"])
        val_set = SegmentationDataset(data, merge=True, size=base_cfg.size, indices=split["val"])
        test_set = SegmentationDataset(data, merge=True, indices=split["test"])
        for row in rows:
            cfg = prof.train_config(**overrides, hybrid=row.hybrid)
            torch.manual_seed(cfg.seed)  # the same initial weights for the shared layers of every row
            model = CRNet(prof.model_config(num_classes=1, variant=row.variant))
            t0 = time.perf_counter()
            hist = fit(model, train_set, val_set, cfg, names, device=device, progress=progress)
            seconds = time.perf_counter() - t0
            m = evaluate(model, test_set, cfg.size, device, tta=tta)["pooled"]["infection"]
            per_row[row.key].append({**m, "seconds": seconds, "epochs": len(hist["epoch"])})
            models[row.key] = model.cpu()
    out_rows = []
    for row in rows:
        runs = per_row[row.key]
        entry: dict[str, Any] = {"key": row.key, "label": row.label, "variant": row.variant, "hybrid": row.hybrid,
                                 "paper_dice": row.paper_dice}
        for metric in ("dice", "iou", "precision", "recall", "boundary_f1", "seconds", "epochs"):
            vals = np.array([r[metric] for r in runs], dtype=float)
            entry[metric] = float(vals.mean())
            if len(runs) > 1:
                entry[f"{metric}_std"] = float(vals.std(ddof=1))
        entry["folds"] = runs
        out_rows.append(entry)
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
        "rows": out_rows,
        "models": models,
        "note": "Paper numbers: Huang et al. 2022, Table 7, on their own data and at full scale; "
        "this run: the MedSeg sample, this profile. For teaching only, not a diagnosis.",
    }


def ablation_markdown(result: dict[str, Any]) -> str:
    """Table 7 laid out with the paper's Dice beside this run's."""
    k = result["folds"]
    head = (
        f"Ablation (paper Table 7), profile `{result['profile']}`, {result['hardware']}, "
        f"{'mean ± std over ' + str(k) + ' group folds' if k > 1 else 'one group split'}, seed {result['seed']}.\n\n"
        "| row | paper Dice | this run Dice | IoU | precision | recall | boundary F1 | train s |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )

    def fmt(r: dict[str, Any], m: str) -> str:
        return f"{r[m]:.3f} ± {r[m + '_std']:.3f}" if f"{m}_std" in r else f"{r[m]:.3f}"

    lines = [
        f"| {r['label']} | {r['paper_dice']:.3f} | {fmt(r, 'dice')} | {fmt(r, 'iou')} | {fmt(r, 'precision')} | "
        f"{fmt(r, 'recall')} | {fmt(r, 'boundary_f1')} | {r['seconds']:.0f} |"
        for r in result["rows"]
    ]
    return head + "\n".join(lines) + "\n"
