"""The cross-data-set lesson, measured: train on one bundled set (or both), evaluate on both sets' splits.

    python scripts/cross_dataset.py results/cross_dataset.json [--rows a b c d g e f h]

Quick profile, seed 0, the task ``infection`` (MedSeg: the union of GGO, consolidation and effusion; the lung set:
its declared infection class), test-time augmentation on. Every model is evaluated with
:func:`crlearn.inference.evaluate` on the validation and the test split of BOTH sets, each split being the one
``crlearn.training.run.run`` makes for that folder with seed 0 (``split_by_group(groups, seed=0)``), with the model's own
intensity normalisation. Rows:

    a/b  trained on MedSeg / on the lung set, no normalisation
    c/d  the same with per-slice standardisation     e/f  the same with per-slice histogram equalisation
    g    trained on both folders together, no normalisation
    h    both together with the better of standardize / equalize, chosen on the VALIDATION splits only (mean
         pooled validation Dice of rows c+d against e+f, both sets): the test splits choose nothing

The JSON is rewritten after every row, so an interrupted run keeps what it finished; rows already in the file are
not run again (delete the file, or name other rows, to start over).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import crlearn
from crlearn.training.checkpoint import atomic_write_json
from crlearn.data.folder import NORMALIZATIONS, SegmentationDataset, normalize_intensity
from crlearn.inference import evaluate
from crlearn.training.config import PROFILES
from crlearn.report import DISCLAIMER, hardware
from crlearn.data.splits import split_by_group
from crlearn.training.run import run

ROOT = Path(__file__).resolve().parents[1]
SETS = {"medseg": ROOT / "data_sample" / "medseg_covid100", "lung": ROOT / "data_sample" / "covid19_ct_lung_infection"}
ROWS = {  # row: (training sets, normalisation; None = chosen on validation from c-f)
    "a": (["medseg"], "none"), "b": (["lung"], "none"),
    "c": (["medseg"], "standardize"), "d": (["lung"], "standardize"),
    "g": (["medseg", "lung"], "none"),
    "e": (["medseg"], "equalize"), "f": (["lung"], "equalize"),
    "h": (["medseg", "lung"], None),
}
CLASS = "infection"
SIZE = PROFILES["quick"].train["size"]  # 128 px
_datasets: dict[tuple[str, str], SegmentationDataset] = {}


def dataset(name: str, normalize: str) -> SegmentationDataset:
    """A whole bundled set at its own resolution, task ``infection``, with the given normalisation (cached)."""
    if (name, normalize) not in _datasets:
        _datasets[name, normalize] = SegmentationDataset(SETS[name], classes=[CLASS], normalize=normalize)
    return _datasets[name, normalize]


def summary(metrics: dict) -> dict:
    """Pooled metrics of the infection class and the number of slices."""
    return {**metrics["pooled"][CLASS], "n_slices": metrics["n_slices"]}


def intensity_stats() -> dict:
    """What each normalisation does to the two sets' grey levels: over all slices of a set, the mean of the
    per-slice mean and standard deviation, and the mean and standard deviation over all lesion pixels."""
    stats = {}
    for name in SETS:
        raw = dataset(name, "none")
        lesion = raw.one_hot(raw.labels)[:, 0].bool()
        for kind in NORMALIZATIONS:
            x = normalize_intensity(raw.images, kind)
            flat, les = x.flatten(1), x[:, 0][lesion]
            stats.setdefault(name, {})[kind] = {
                "slice_mean": float(flat.mean(1).mean()), "slice_std": float(flat.std(1).mean()),
                "lesion_mean": float(les.mean()), "lesion_std": float(les.std())}
    return stats


def choose_normalization(rows: dict) -> str:
    """standardize or equalize: the higher mean pooled validation Dice over rows c, d (resp. e, f), both sets."""
    def mean_val(keys: tuple[str, str]) -> float:
        dice = [rows[k]["eval"][s]["val"]["dice"] for k in keys for s in SETS]
        return sum(dice) / len(dice)
    scores = {"standardize": mean_val(("c", "d")), "equalize": mean_val(("e", "f"))}
    return max(scores, key=scores.get)


def measure(row: str, rows: dict) -> dict:
    """Train the row's model with ``crlearn.training.run.run`` and evaluate it on both sets' validation and test splits."""
    trained_on, normalize = ROWS[row]
    chosen_by = None
    if normalize is None:
        normalize, chosen_by = choose_normalization(rows), "validation Dice of rows c-f"
    folders = [SETS[s] for s in trained_on]
    t0 = time.perf_counter()
    result = run(folders if len(folders) > 1 else folders[0], profile="quick", classes=[CLASS], seed=0,
                 normalize=normalize, tta=True, progress=False, log=print)
    train_wall = time.perf_counter() - t0
    out = {"trained_on": trained_on, "normalize": normalize, "normalize_chosen_by": chosen_by,
           "train_seconds": result.metrics["train_seconds"], "epochs_run": result.metrics["epochs_run"],
           "run_seconds": train_wall, "eval": {}}
    for name in SETS:
        full = dataset(name, normalize)
        split = split_by_group(full.groups, seed=0)
        if name in trained_on:  # run made this very split (checked) and evaluated the model on it already
            own = {what: result.metrics[what] for what in ("split", "val", "test")}
            if len(trained_on) > 1:
                own = {what: m[SETS[name].name] for what, m in own.items()}
            assert own["split"] == split, (row, name)
            out["eval"][name] = {part: summary(own[part]) for part in ("val", "test")}
        else:
            out["eval"][name] = {part: summary(evaluate(result.model, full.subset(split[part]), SIZE, tta=True))
                                 for part in ("val", "test")}
    out["wall_seconds"] = time.perf_counter() - t0
    return out


def table(rows: dict) -> str:
    header = ["row", "trained on", "normalize", "MedSeg test Dice", "lung-set test Dice", "MedSeg val Dice",
              "lung-set val Dice", "train s", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in ROWS:
        if key not in rows:
            continue
        r = rows[key]
        ev = r["eval"]
        lines.append(f"| {key} | {' + '.join(r['trained_on'])} | {r['normalize']} | {ev['medseg']['test']['dice']:.3f} | "
                     f"{ev['lung']['test']['dice']:.3f} | {ev['medseg']['val']['dice']:.3f} | "
                     f"{ev['lung']['val']['dice']:.3f} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="JSON file to write (rows already in it are kept and not run again)")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args = ap.parse_args()
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc.update(hardware=hardware(), torch=torch.__version__, crlearn=crlearn.__version__, profile="quick", seed=0,
               size=128, tta=True, task=CLASS, note=DISCLAIMER)
    rows = doc.setdefault("rows", {})
    if "intensity" not in doc:
        doc["intensity"] = intensity_stats()
        atomic_write_json(args.out, doc)
    for row in args.rows:
        if row in rows:
            continue
        print(f"== row {row}: {ROWS[row]}", flush=True)
        rows[row] = measure(row, rows)
        atomic_write_json(args.out, doc)
        print(table(rows), flush=True)


if __name__ == "__main__":
    main()
