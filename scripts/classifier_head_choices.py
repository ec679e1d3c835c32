"""Choices of the frozen classifier's logistic head, made by 5-fold pseudo-patient cross-validation (issue 20):
how the paper's x5 views enter the fit (``augment``, ``mean``, ``identity``) and the specificity the any-slice
threshold is chosen for, for one or more stage-1 encoders.

A frozen encoder maps a slice to the same pooled feature in every fold, so the features of all slices (five views
each) are computed once per encoder, and each fold fits :func:`crlearn.tasks.logistic_head.fit_logistic` on its
train and validation groups exactly as ``crlearn classify train`` does (same folds, same seed), then predicts its
test groups from view 0. Pooled out-of-fold metrics with pseudo-patient bootstrap intervals:
:func:`crlearn.tasks.classifier_cv.summarize`.

    PYTHONPATH=. python scripts/classifier_head_choices.py --encoder both=runs/seg-both/best.pt \\
        --encoder medseg=runs/seg-medseg/best.pt --out results/classifier_cv/head_choices
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch


def encoder_features(path: str, size: int) -> tuple[np.ndarray, object]:
    from crlearn.data.slices import ClassificationDataset, default_classification_dir
    from crlearn.tasks.classifier import classifier_from_checkpoint
    from crlearn.tasks.classifier_run import encode_features

    ds = ClassificationDataset(default_classification_dir(), size=size)
    model = classifier_from_checkpoint(path, "frozen")
    feats = encode_features(model, ds.subset(range(len(ds)), augment=True), torch.device("cpu")).tensors[0]
    return feats.view(len(ds), 5, -1).double().numpy(), ds


def fold_records(views: np.ndarray, ds, use: str, specificity: float, n_folds: int, seed: int) -> list[dict]:
    from crlearn.data.slices import classification_folds
    from crlearn.tasks.logistic_head import fit_logistic

    y, groups, records = ds.targets.numpy(), np.array(ds.groups), []
    for k, fold in enumerate(classification_folds(ds, n_folds=n_folds, seed=seed)):
        fit = np.array(sorted(fold["train"] + fold["val"]))
        test = np.array(fold["test"])
        pipe, info = fit_logistic(views[fit], y[fit], groups[fit].tolist(), use, seed, specificity)
        probs = pipe.predict_proba(views[test, 0])[:, 1]
        records.append({"variant": use, "fold": k, "y": y[test].tolist(), "probs": probs.tolist(),
                        "groups": groups[test].tolist(), "threshold": info["threshold"], "C": info["C"]})
    return records


def main(argv: list[str] | None = None) -> int:
    from crlearn.report import hardware, markdown_table
    from crlearn.stats import format_interval
    from crlearn.tasks.classifier_cv import summarize
    from crlearn.training.checkpoint import atomic_write_bytes, atomic_write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", action="append", required=True, help="NAME=PATH of a segmentation best.pt")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--views", default="augment,mean,identity")
    p.add_argument("--specificities", default="0.8,0.9,0.95")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    t0, rows, result = time.perf_counter(), [], {"command": "PYTHONPATH=. python scripts/classifier_head_choices.py "
                                                            + " ".join(sys.argv[1:]), "runs": []}
    for spec in args.encoder:
        name, path = spec.split("=", 1)
        views, ds = encoder_features(path, args.size)
        for use in args.views.split(","):
            for s in (float(x) for x in args.specificities.split(",")):
                recs = fold_records(views, ds, use, s, args.folds, args.seed)
                summary = summarize(recs, args.seed)
                result["runs"].append({"encoder": name, "path": path, "views": use, "specificity": s,
                                       "summary": summary, "C": [r["C"] for r in recs]})
                pooled = summary["pooled"]
                rows.append([name, use, s] + [format_interval(pooled[k]) for k in (
                    "slice_auc", "slice_accuracy", "any_slice_accuracy", "any_slice_sensitivity",
                    "any_slice_specificity", "mean_probability_accuracy")]
                    + [", ".join(f"{t:.3f}" for t in summary["per_fold"]["threshold"])])
                print(rows[-1], flush=True)
    result.update(hardware=hardware(), wall_seconds=time.perf_counter() - t0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "head_choices.json", result)
    table = markdown_table(["encoder", "views", "target specificity", "slice AUC", "slice accuracy",
                            "any slice: accuracy", "sensitivity", "specificity", "mean P: accuracy", "thresholds"],
                           rows)
    atomic_write_bytes(out / "head_choices.md", (
        f"{args.folds}-fold pseudo-patient CV of the frozen encoder's logistic head (seed {args.seed}); pooled "
        f"out-of-fold predictions, 95 % bootstrap intervals over pseudo-patients.\n\n{table}\n\n"
        f"Command: `{result['command']}`; machine: {result['hardware']}; {result['wall_seconds']:.0f} s.\n").encode())
    print(f"wrote {out}/head_choices.json, head_choices.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
