"""Table 6 measured over five group folds: the segmentation encoder frozen (the paper's), fine-tuned, or a fresh
encoder trained from scratch, each with the same pooling + linear head, split, seed and epoch budget.

    python scripts/classifier_table6.py results/classifier_table6.json [--folds 5] [--encoder SEG.pt]

Quick profile on the CPU. Stage 1 (one segmenter, trained once on the MedSeg sample with the quick profile and
seed 0, unless ``--encoder`` gives one) is shared by the frozen and fine-tuned rows of every fold: the
segmentation data do not depend on the classification fold. Stage 2 runs
:func:`crlearn.tasks.classifier_run.run_classify` on fold k of
:func:`crlearn.data.slices.classification_folds` (five folds by pseudo-patient group, both classes in every
part): each fold's test groups are held out from training and from early stopping, and no setting is chosen on
them. The JSON is rewritten after every run, so an interrupted run keeps what it finished, and runs already in the
file are not repeated. A Markdown table (mean +- sample std over folds, and the paired per-fold difference of the
frozen row against scratch) is written beside it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import crlearn
from crlearn.training.checkpoint import atomic_write_bytes, atomic_write_json
from crlearn.tasks.classifier import MODES
from crlearn.tasks.classifier_run import run_classify
from crlearn.report import DISCLAIMER, hardware, markdown_table
from crlearn.training.run import run

METRICS = {  # column: how to read it from a run's test metrics
    "slice AUC": lambda t: t["slice"]["auc"],
    "slice accuracy": lambda t: t["slice"]["accuracy"],
    "sensitivity": lambda t: t["slice"]["sensitivity"],
    "specificity": lambda t: t["slice"]["specificity"],
    "patients, any slice": lambda t: t["patient"]["any_slice"]["accuracy"],
    "patients, mean probability": lambda t: t["patient"]["mean_probability"]["accuracy"],
}


def one_run(mode: str, fold: int, folds: int, encoder: str | None) -> dict:
    t0 = time.perf_counter()
    r = run_classify(encoder=None if mode == "scratch" else encoder, mode=mode, profile="quick", fold=fold,
                     n_folds=folds, log=None, device="cpu")
    return {"mode": mode, "fold": fold, "seconds": time.perf_counter() - t0, "epochs": r.metrics["epochs_run"],
            "test_groups": r.metrics["split_groups"]["test"], "n_test": r.test["slice"]["n"],
            **{k: f(r.test) for k, f in METRICS.items()}}


def summary(runs: list[dict], folds: int) -> tuple[list[dict], str]:
    rows, cells = [], []
    for mode in MODES:
        got = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["fold"])
        if not got:
            continue
        row = {"mode": mode, "folds": len(got)}
        for k in (*METRICS, "seconds"):
            v = np.array([r[k] for r in got], dtype=float)
            row[k] = float(v.mean())
            row[k + " std"] = float(v.std(ddof=1)) if len(v) > 1 else None
        rows.append(row)
        cells.append([mode, f"{len(got)}/{folds}", *(f"{row[k]:.3f} ± {row[k + ' std'] or 0:.3f}" for k in METRICS),
                      f"{row['seconds']:.0f}"])
    table = markdown_table(["mode", "folds", *METRICS, "stage 2 s"], cells)
    by = {(r["mode"], r["fold"]): r for r in runs}
    diffs = [by["frozen", k]["slice AUC"] - by["scratch", k]["slice AUC"] for k in range(folds)
             if ("frozen", k) in by and ("scratch", k) in by]
    if diffs:
        table += (f"\nPaired per fold, frozen minus scratch slice AUC: "
                  f"{', '.join(f'{d:+.3f}' for d in diffs)} (mean {np.mean(diffs):+.3f}).\n")
    return rows, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="JSON file (a .md table is written beside it)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--encoder", help="segmentation checkpoint for the frozen and fine-tuned rows (default: train one)")
    args = ap.parse_args()
    res = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    encoder = args.encoder or res.get("encoder")
    if encoder is None or not Path(encoder).exists():
        seg_dir = Path(tempfile.mkdtemp(prefix="table6-seg-"))
        t0 = time.perf_counter()
        run(profile="quick", seed=0, out=seg_dir / "run", device="cpu", log=None)
        res["stage1_seconds"] = time.perf_counter() - t0
        encoder = str(seg_dir / "run" / "best.pt")
    res.update({"encoder": encoder, "folds": args.folds, "profile": "quick", "hardware": hardware(),
                "crlearn": crlearn.__version__, "note": DISCLAIMER})
    for fold in range(args.folds):
        for mode in MODES:
            if any(r["mode"] == mode and r["fold"] == fold for r in res["runs"]):
                continue
            res["runs"].append(one_run(mode, fold, args.folds, encoder))
            print(json.dumps(res["runs"][-1]), flush=True)
            res["rows"], table = summary(res["runs"], args.folds)
            atomic_write_json(args.out, res)
            atomic_write_bytes(args.out.with_suffix(".md"), table.encode())
    print(summary(res["runs"], args.folds)[1])


if __name__ == "__main__":
    main()
