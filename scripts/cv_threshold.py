"""Is 0.5 the right mask threshold? Patient-level CV of the shipped recipe with the threshold chosen out of fold.

Runs ``crlearn cv``'s folds (:func:`crlearn.tasks.cv.run_fold`, the quick profile, every training patient, the last
epoch kept), keeps each fold's out-of-fold probabilities and, for a grid of thresholds, every patient's
``[TP, FP, FN]`` per class and (where the data has lung masks) its predicted lesion and lung areas. Then:

- **pooled at each threshold**: the out-of-fold Dice and ratio error if one threshold were used everywhere (an
  optimistic look: the grid's best is chosen on the same patients it is scored on);
- **nested** (the honest number): for each fold k the threshold is the one with the best pooled Dice on the *other*
  folds' out-of-fold predictions (their labels only; fold k's labels are never looked at), fold k is scored at it,
  and the folds are pooled as ``crlearn cv`` pools them.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/cv_threshold.py --data data_sample/covid19_ct_lung_infection \\
        --classes lung infection --folds 3 --out results/cv_threshold/lung_seed0.json

For teaching and research; not a diagnosis.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crlearn.data.folder import MERGED_CLASS
from crlearn.inference import predict
from crlearn.metrics import confusion_counts
from crlearn.report import hardware, markdown_table
from crlearn.stats import bootstrap_mean, bootstrap_pooled, dice_from_counts, format_interval
from crlearn.tasks.burden import LUNG_CLASS, percent, slice_areas, true_masks
from crlearn.tasks.cv import Recipe, run_fold, setup
from crlearn.training.checkpoint import atomic_write_bytes, atomic_write_json

GRID = [round(float(t), 2) for t in np.arange(0.05, 0.71, 0.05)]


def fold_counts(model: Any, ds: Any, size: int) -> dict[str, Any]:
    """Per patient and threshold: ``counts[t][class] = [TP, FP, FN]`` and ``areas[t] = [pred lesion ∩ lung, pred
    lung, true lesion ∩ lung, true lung]`` (every channel cut at t; ``areas_lung05``: the lung channel at 0.5), from
    one prediction per slice (:func:`crlearn.metrics.confusion_counts`, :func:`crlearn.tasks.burden.slice_areas`)."""
    names = list(ds.class_names)
    burden = LUNG_CLASS in names and MERGED_CLASS in names and true_masks(ds)[1] is not None
    k_inf, k_lung = (names.index(MERGED_CLASS), names.index(LUNG_CLASS)) if burden else (None, None)
    out: dict[str, Any] = {}
    for i in range(0, len(ds.records), 8):
        groups = ds.groups[i : i + 8]
        target = ds.one_hot(ds.labels[i : i + 8]) > 0.5
        probs = predict(model, ds.images[i : i + 8], size, tta=True)[0]
        true = slice_areas(target[:, k_inf].numpy(), target[:, k_lung].numpy()) if burden else None
        for g in groups:
            out.setdefault(g, {"counts": {str(t): {n: [0, 0, 0] for n in names} for t in GRID},
                               "areas": {str(t): [0, 0, 0, 0] for t in GRID},
                               "areas_lung05": {str(t): [0, 0, 0, 0] for t in GRID}})
        for t in GRID:
            c = confusion_counts(probs > t, target)
            per_slice = torch.stack([c["tp"], c["fp"], c["fn"]], -1).tolist()  # (B, K, 3)
            areas = {}
            if burden:  # "areas": both channels cut at t (one threshold); "areas_lung05": the lung at 0.5
                inf_p = (probs[:, k_inf] > t).numpy()
                areas = {key: slice_areas(inf_p, (probs[:, k_lung] > cut).numpy()) for key, cut in
                         (("areas", t), ("areas_lung05", 0.5))}
            for j, g in enumerate(groups):
                for n, counts in zip(names, per_slice[j]):
                    p = out[g]["counts"][str(t)]
                    p[n] = [a + b for a, b in zip(p[n], counts)]
                for key, (lesion, lung) in areas.items():
                    add = (lesion[j], lung[j], true[0][j], true[1][j])
                    out[g][key][str(t)] = [x + int(y) for x, y in zip(out[g][key][str(t)], add)]
    return out


def pooled(patients: dict[str, Any], thresholds: dict[str, float], cls: str, areas: str = "areas") -> dict[str, Any]:
    """Pooled Dice of ``cls`` and ratio error (from ``areas``) with each patient scored at ``thresholds[patient]``."""
    counts = np.array([patients[g]["counts"][str(thresholds[g])][cls] for g in patients], np.float64)
    out = {"dice": bootstrap_pooled(counts, dice_from_counts)}
    a = np.array([patients[g][areas][str(thresholds[g])] for g in patients], np.float64)
    if a[:, 3].sum() > 0:
        err = percent(a[:, 0], a[:, 1]) - percent(a[:, 2], a[:, 3])
        out["ratio_error_pp"] = bootstrap_mean(np.abs(err))
        out["per_patient_error_pp"] = dict(zip(patients, err.round(2).tolist()))
    out["per_patient_dice"] = {g: float(dice_from_counts(c)) for g, c in zip(patients, counts)}
    return out


def patients_of(run: dict[str, Any], skip_fold: int | None = None) -> dict[str, Any]:
    return {g: p for f in run["raw"] if f["fold"] != skip_fold for g, p in f["patients"].items()}


RULE = ("the threshold of the grid with the highest mean, over the runs, of the mean over each run's classes of the "
        "pooled out-of-fold Dice; ties: the one nearer 0.5")


def objective(runs: list[dict[str, Any]], t: float, skip: tuple[int, int] | None = None) -> float:
    """The choice rule: the mean over runs of the mean over their classes of the pooled out-of-fold Dice at ``t``,
    fold ``skip[1]`` of run ``skip[0]`` left out."""
    scores = []
    for r, run in enumerate(runs):
        every = patients_of(run, skip[1] if skip and skip[0] == r else None)
        classes = list(next(iter(every.values()))["counts"][str(t)])
        scores.append(np.mean([dice_from_counts(np.array([p["counts"][str(t)][c] for p in every.values()],
                                                         np.float64).sum(0)) for c in classes]))
    return float(np.mean(scores))


def best(runs: list[dict[str, Any]], grid: list[float], skip: tuple[int, int] | None = None) -> float:
    return max(grid, key=lambda t: (objective(runs, t, skip), -abs(t - 0.5)))  # ties: the cut nearer 0.5


def choose(files: list[str], out: Path) -> dict[str, Any]:
    """One threshold for every run's classes by :func:`objective`, and the nested estimate of that choice: each
    fold of each run scored at the threshold chosen without its labels (its run's other folds and the other runs)."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    grid = sorted(set.intersection(*(set(r["grid"]) for r in runs)))
    chosen = best(runs, grid)
    rows = []
    for r, run in enumerate(runs):
        every = patients_of(run)
        nested_t = {f["fold"]: best(runs, grid, (r, f["fold"])) for f in run["raw"]}
        t_of = {g: nested_t[f["fold"]] for f in run["raw"] for g in f["patients"]}
        for c in next(iter(every.values()))["counts"][str(chosen)]:
            rows.append({"file": files[r], "data": run["recipe"]["data"], "seed": run["seed"], "class": c,
                         "at_0.5": pooled(every, {g: 0.5 for g in every}, c),
                         "at_chosen": pooled(every, {g: chosen for g in every}, c),
                         "nested": pooled(every, t_of, c), "nested_thresholds": nested_t,
                         **({"nested_lung_at_0.5": pooled(every, t_of, c, areas="areas_lung05")}
                            if all("areas_lung05" in p for p in every.values()) else {})})
    result = {"mask_threshold": chosen, "grid": grid, "rule": RULE,
              "objective": {str(t): objective(runs, t) for t in grid}, "rows": rows, "hardware": hardware()}
    atomic_write_json(out / "choice.json", result)
    atomic_write_bytes(out / "choice.md", choice_markdown(result).encode())
    return result


def choice_markdown(result: dict[str, Any]) -> str:
    """The table of :func:`choose`: per run and class, pooled Dice (and ratio error) at 0.5, at the chosen threshold
    (chosen on these same folds: optimistic) and nested (each fold at a threshold chosen without its labels)."""
    def cell(r: dict[str, Any]) -> str:
        ratio = f"; {format_interval(r['ratio_error_pp'], 2)} pp" if "ratio_error_pp" in r else ""
        return f"{format_interval(r['dice'])}{ratio}"

    t = result["mask_threshold"]
    rows = [[Path(r["data"][0]).name if r["data"] else "medseg_covid100", str(r["seed"]), r["class"], cell(r["at_0.5"]),
             cell(r["at_chosen"]), cell(r["nested"]), ", ".join(f"{v:g}" for v in r["nested_thresholds"].values())]
            for r in result["rows"]]
    head = ["data", "seed", "class", "at 0.5", f"at {t:g} (chosen on these folds)", "nested", "nested thresholds"]
    curve = ", ".join(f"{k}: {v:.4f}" for k, v in result["objective"].items())
    return (f"Mask threshold chosen: **{t:g}**: {result['rule']}.\n\nObjective over the grid: {curve}\n\n"
            f"{markdown_table(head, rows)}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=None)
    ap.add_argument("--classes", nargs="+", default=None)
    ap.add_argument("--merge", action="store_true", default=None)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="the run's JSON; with --choose the folder of choice.json")
    ap.add_argument("--choose", nargs="+", metavar="RUN.json", help="choose one threshold from these runs")
    ap.add_argument("--smoke", action="store_true", help="a tiny net for one epoch: checks the script, measures nothing")
    args = ap.parse_args()
    if args.choose:
        result = choose(args.choose, Path(args.out))
        print("chosen", result["mask_threshold"], {t: round(v, 4) for t, v in result["objective"].items()})
        for row in result["rows"]:
            print(row["file"], row["class"], *(f"{k} {row[k]['dice']['value']:.4f} "
                  f"{row[k].get('ratio_error_pp', {}).get('value', float('nan')):.2f}" for k in
                  ("at_0.5", "at_chosen", "nested")), row["nested_thresholds"])
        return
    smoke = dict(overrides=dict(epochs=1), model=dict(width=0.125, aspp_channels=8, refine_channels=8))
    recipe = Recipe(name="shipped", data=args.data, classes=args.classes, merge=args.merge, val_fraction=0.0,
                    **(smoke if args.smoke else {}))
    s = setup(recipe, args.folds, args.seed)
    folds = []
    for k in range(args.folds):
        f = run_fold(recipe, k, args.folds, args.seed, keep_model=True)
        model = f.pop("model")
        patients = {}
        for p, fo in zip(s.parts, s.folds):
            patients.update(fold_counts(model, p.full.subset(fo[k]["test"]), s.cfg.size))
        folds.append({"fold": k, "patients": patients, "seconds": f["seconds"],
                      "cv_folders": {key: v["patients"] for key, v in f["folders"].items()}})
        print(f"fold {k}: {f['seconds']:.0f} s", flush=True)
    result = {"recipe": recipe.to_dict(), "seed": args.seed, "folds": args.folds, "hardware": hardware(),
              "grid": GRID, "raw": folds}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out), result)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
