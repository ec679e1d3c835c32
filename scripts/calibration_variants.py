"""What the output-bias prior, the weight EMA and TTA do to calibration (issue 22, item 5; notebook 07 reads it).

The full CR-Net of Table 7 (merged infection, hybrid loss), quick profile, trained three times on the MedSeg
seed-0 holdout split (53 / 8 / 15 slices; the same weights' seed): the profile as it is (prior 0.05, EMA 0.98),
without the EMA, and with the prior 0.5 (an untrained network then predicts 0.5 everywhere). Each is read with and
without five-view TTA: pixel ECE and the reliability bins on the validation and test slices, the threshold with
the best pooled Dice on the validation slices, the test Dice at 0.5 and at that threshold, and the test's
summed probability over its lesion pixels (above 1: the network expects more lesion than there is).

    python scripts/calibration_variants.py --out results/calibration_quick

One split of 8 validation and 15 test slices: a lesson on what the knobs do, not a measurement to choose by.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

VARIANTS = {  # label: (CRNetConfig overrides, TrainConfig overrides)
    "profile (prior 0.05, EMA 0.98)": ({}, {}),
    "no EMA": ({}, {"ema": None}),
    "prior 0.5": ({"prior": 0.5}, {}),
}


def read_variant(model, parts, size: int, tta: bool) -> dict:
    from crlearn.calibration import reliability, threshold_sweep
    from crlearn.inference import predict
    from crlearn.metrics import segmentation_scores

    out = {}
    for name, part in parts.items():
        probs, _ = predict(model, part.images, size, "cpu", tta=tta)
        target = part.one_hot(part.labels) > 0.5
        out[name] = {"reliability": reliability(probs, target), "sweep": threshold_sweep(probs, target)}
        out[name]["probs_target"] = (probs, target)
    best = out["val"]["sweep"]["best_threshold"]
    probs, target = out["test"].pop("probs_target")
    out["val"].pop("probs_target")
    dice = {th: float(segmentation_scores(probs >= th, target)["dice"][0]) for th in (0.5, best)}
    return {"val_best_threshold": best, "test_area_ratio": float(probs.sum() / target.sum()), "test_dice_at_0.5": dice[0.5], "test_dice_at_val_best": dice[best],
            "val_ece": out["val"]["reliability"]["ece"], "test_ece": out["test"]["reliability"]["ece"], **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--epochs", type=int, default=None, help="override the profile's epochs (a smoke test)")
    args = ap.parse_args()
    from crlearn.data.folder import SegmentationDataset, default_data_dir
    from crlearn.data.splits import split_by_group
    from crlearn.nn.model import CRNet
    from crlearn.report import DISCLAIMER, hardware, markdown_table
    from crlearn.tasks.ablation import fold_sets, train_fresh
    from crlearn.training.checkpoint import atomic_write_bytes, atomic_write_json, fresh_path
    from crlearn.training.config import PROFILES

    out = fresh_path(args.out, force=args.force, is_dir=True)
    prof = PROFILES["quick"]
    full = SegmentationDataset(default_data_dir(), merge=True)
    split = split_by_group(full.groups, seed=0)
    train_set, val_set, test_set = fold_sets(full, split, prof.train_config())
    parts = {"val": full.subset(split["val"]), "test": test_set}
    result = {"hardware": hardware(), "split": {k: len(v) for k, v in split.items()}, "variants": {}}
    for label, (model_over, train_over) in VARIANTS.items():
        cfg = prof.train_config(seed=0, **train_over, **({"epochs": args.epochs} if args.epochs else {}))
        t0 = time.perf_counter()
        model, _, _ = train_fresh(lambda: CRNet(prof.model_config(num_classes=1, **model_over)), cfg, train_set,
                                  val_set, full.class_names, "cpu", progress=False)
        result["variants"][label] = {"model": model_over, "train": train_over, "seconds": time.perf_counter() - t0,
                                     **{f"tta_{t}": read_variant(model, parts, cfg.size, t) for t in (False, True)}}
        print(label, f"{result['variants'][label]['seconds']:.0f} s", flush=True)
    cells = [[label, f"TTA {'on' if t else 'off'}", f"{r['val_ece']:.4f}", f"{r['test_ece']:.4f}",
              f"{r['val_best_threshold']:.2f}", f"{r['test_dice_at_0.5']:.3f}", f"{r['test_dice_at_val_best']:.3f}", f"{r['test_area_ratio']:.2f}"]
             for label, v in result["variants"].items() for t in (False, True) for r in [v[f"tta_{t}"]]]
    md = (f"# Calibration of the quick CR-Net: prior, EMA, TTA\n\n`python scripts/calibration_variants.py`, "
          f"{result['hardware']}; MedSeg merged infection, seed-0 holdout split {result['split']} slices, one "
          "training per variant (seed 0). Pixel ECE over 10 bins; threshold chosen on the validation slices.\n\n"
          + markdown_table(["variant", "TTA", "val ECE", "test ECE", "val-best threshold", "test Dice at 0.5",
                            "test Dice at val-best", "test predicted / true lesion area"], cells)
          + f"\n\nOne split, 8 validation and 15 test slices, one seed: what the knobs do, not a ranking. {DISCLAIMER}\n")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "calibration.json", result)
    atomic_write_bytes(out / "calibration.md", md.encode())
    print(md)


if __name__ == "__main__":
    main()
