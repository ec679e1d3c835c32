"""Cross-validate a grid of training recipes in parallel, choose per task on the choice folds, report on more folds.

Every (recipe, fold) is an independent job in a ``concurrent.futures.ProcessPoolExecutor`` (each worker one torch
thread); each recipe's folds are pooled by :func:`crlearn.tasks.cv.summarise` (out-of-fold Dice from per-patient counts
with a patient-bootstrap interval, mean ± std over folds, lesion/lung ratio error where the data has lung masks).

    PYTHONPATH=. python scripts/cv_grid.py --workers 14 --folds 3 --then-report 5 --time-budget 480 --out results/cv_grid

- ``--grid builtin`` (default) is issue 20's levers, quick profile; ``--grid FILE.json`` a list of recipes
  (:class:`crlearn.tasks.cv.Recipe` fields plus ``task`` and ``score``: ``[[folder name, class], ...]``).
- ``--then-report K``: once every choice recipe of a task is done, the one with the best pooled out-of-fold Dice on
  the choice folds (mean over the task's ``score`` classes; the choice folds' test parts are the only thing looked
  at, never the report's) is run again with K folds (another dealing of the patients: seed + 1).
- ``--time-budget S``: a job is started only if it is expected to end within S seconds of the start (expected
  seconds = a cost model calibrated on the jobs done so far); what would not fit is skipped and listed.

Writes ``OUT/choice-<K>fold/<recipe>.json``, ``OUT/report-<K>fold/<recipe>.json`` as each recipe completes, and
``OUT/summary.md`` and ``OUT/summary.json`` (the table, what was chosen on what, what was skipped) at the end.
Runs with ``PYTHONPATH=.`` only (no install). For teaching and research; not a diagnosis.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

MEDSEG = "data_sample/medseg_covid100"
LUNG = "data_sample/covid19_ct_lung_infection"
TINY_MODEL = dict(width=0.125, aspp_channels=8, refine_channels=8)  # --tiny: the unit tests' CR-Net


def builtin_grid() -> list[dict[str, Any]]:
    """Issue 20's levers, each a recipe of the quick profile with the task it is scored on."""
    ms = dict(task="medseg_infection", data=[MEDSEG], merge=True, score=[["medseg_covid100", "infection"]])
    lung = dict(task="lung_infection", data=[LUNG], classes=["lung", "infection"],
                score=[["covid19_ct_lung_infection", "lung"], ["covid19_ct_lung_infection", "infection"]])
    grid = [
        dict(ms, name="ms_baseline"),
        dict(ms, name="ms_both_sets", data=[MEDSEG, LUNG], merge=None, classes=["infection"]),
        dict(ms, name="ms_intensity", overrides=dict(intensity_augment=True)),
        dict(ms, name="ms_intensity_scale", overrides=dict(intensity_augment=True, scale_augment=True)),
        dict(ms, name="ms_standardize", overrides=dict(normalize="standardize")),
        dict(ms, name="ms_epochs10", overrides=dict(epochs=10)),
        dict(ms, name="ms_epochs13", overrides=dict(epochs=13)),
        dict(ms, name="ms_no_val", val_fraction=0.0),  # the fold trains on all its patients, keeps the last epoch
        dict(lung, name="lung_128"),
        dict(lung, name="lung_192", overrides=dict(size=192)),
        dict(lung, name="lung_256", overrides=dict(size=256)),
        dict(lung, name="lung_standardize", overrides=dict(normalize="standardize")),
        dict(lung, name="lung_intensity", overrides=dict(intensity_augment=True)),
        dict(lung, name="lung_no_val", val_fraction=0.0),
    ]
    # "both sets" for the lung task is left out: MedSeg has no lung masks, so its slices would teach the lung
    # channel "no lung anywhere" (a loss masked per channel would be needed).
    return grid


# ----------------------------------------------------------------------------- the jobs


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _job(recipe: dict[str, Any], k: int, n_folds: int, seed: int, tta: bool, device: str) -> dict[str, Any]:
    """One fold of one recipe, in a worker process: :func:`crlearn.tasks.cv.run_fold`'s dict."""
    from crlearn.tasks.cv import run_fold

    return run_fold(recipe, k, n_folds, seed=seed, tta=tta, device=device)


def cost(recipe: dict[str, Any], n_folds: int) -> float:
    """Relative cost of one fold: epochs x pixels x training slices (the quick profile's 17 epochs at 128 px on
    MedSeg's two thirds = 1)."""
    over = recipe.get("overrides", {})
    slices = {MEDSEG: 76, LUNG: 109}
    n = sum(slices.get(d, 100) for d in recipe.get("data") or [MEDSEG]) * (1 - 1 / n_folds)
    return over.get("epochs", 17) / 17 * (over.get("size", 128) / 128) ** 2 * n / (76 * 2 / 3)


class Scheduler:
    """Keeps at most ``workers`` jobs in flight, starts a job only if it is expected to end inside the budget."""

    def __init__(self, pool: cf.Executor, workers: int, budget: float | None, args: argparse.Namespace):
        self.pool, self.workers, self.budget, self.args = pool, workers, budget, args
        self.t0 = time.perf_counter()
        self.queue: list[tuple[str, dict[str, Any], int, int, int]] = []  # (phase, recipe, k, n_folds, seed)
        self.running: dict[cf.Future, tuple[str, dict[str, Any], int, int, int]] = {}
        self.rate: float | None = None  # seconds per unit of cost, the slowest seen so far
        self.skipped: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, jobs: list[tuple[str, dict[str, Any], int, int, int]], first: bool = False) -> None:
        jobs = sorted(jobs, key=lambda j: -cost(j[1], j[3]))  # longest first: the last round ends together
        self.queue = jobs + self.queue if first else sorted(self.queue + jobs, key=lambda j: -cost(j[1], j[3]))

    def observe(self, job: tuple[str, dict[str, Any], int, int, int], seconds: float) -> None:
        r = seconds / cost(job[1], job[3])
        self.rate = r if self.rate is None else max(self.rate, r)

    def fill(self) -> None:
        """Start queued jobs while a worker is free; drop those that can no longer end inside the budget."""
        keep = []
        for job in self.queue:
            if len(self.running) >= self.workers:
                keep.append(job)
                continue
            expected = None if self.rate is None else self.rate * cost(job[1], job[3])
            if self.budget is not None and expected is not None and self.elapsed() + expected > self.budget:
                self.skipped.append(f"{job[0]}:{job[1]['name']}:fold{job[2]} (expected {expected:.0f} s, "
                                    f"{self.budget - self.elapsed():.0f} s left)")
                continue
            fut = self.pool.submit(_job, job[1], job[2], job[3], job[4], self.args.tta, self.args.device)
            self.running[fut] = job
        self.queue = keep


# ----------------------------------------------------------------------------- choosing and writing


def score(summary: dict[str, Any], entry: dict[str, Any]) -> float:
    """Mean over the entry's ``score`` classes of the pooled out-of-fold Dice."""
    vals = [summary["folders"][folder]["classes"][cls]["pooled_dice"]["value"] for folder, cls in entry["score"]]
    return sum(vals) / len(vals)


def choose(task: str, results: dict[str, dict[str, Any]], entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The task's recipe with the best :func:`score` among those whose choice folds all completed."""
    done = [e for e in entries if e["task"] == task and e["name"] in results]
    if not done:
        return None
    best = max(done, key=lambda e: score(results[e["name"]], e))
    return {"task": task, "chosen": best["name"],
            "scores": {e["name"]: score(results[e["name"]], e) for e in done},
            "chosen_on": f"pooled out-of-fold Dice of {best['score']} (mean over those classes) on the "
                         f"{results[best['name']]['n_folds']} choice folds (seed {results[best['name']]['seed']}); "
                         "inside each fold only its inner validation part picked the epoch",
            "not_finished": [e["name"] for e in entries if e["task"] == task and e["name"] not in results]}


def summary_rows(phase: str, entry: dict[str, Any], s: dict[str, Any]) -> list[list[str]]:
    from crlearn.stats import format_interval

    rows = []
    for folder, cls in entry["score"]:
        f = s["folders"][folder]
        c = f["classes"][cls]
        fd = c["fold_dice"]
        ratio = (f.get("ratio_error") or {}).get("mae_pp")
        rows.append([entry["name"], entry["task"], phase, f"{folder}/{cls}",
                     f"{fd['mean']:.3f} ± {fd['std']:.3f}" if fd["std"] is not None else f"{fd['mean']:.3f}",
                     format_interval(c["pooled_dice"]), format_interval(ratio, 2) if ratio else "-",
                     f"{sum(s['seconds']):.0f}", str(s["best_epoch"])])
    return rows


HEADER = ["recipe", "task", "phase", "data/class", "Dice mean ± std over folds", "pooled Dice [95 % CI, patients]",
          "ratio error pp [95 % CI]", "fold seconds (sum)", "best epochs"]


def write_summary(out: Path, entries: dict[str, dict[str, Any]], done: dict[str, dict[str, dict[str, Any]]],
                  choices: list[dict[str, Any]], sched: Scheduler, args: argparse.Namespace) -> None:
    from crlearn.report import markdown_table
    from crlearn.training.checkpoint import atomic_write_bytes, atomic_write_json

    rows = [r for phase, res in done.items() for name, s in res.items() for r in summary_rows(phase, entries[name], s)]
    head = (f"CV grid: `{' '.join(sys.argv)}`; {args.workers} workers x 1 thread on {platform.machine()} "
            f"({os.cpu_count()} CPUs), wall {sched.elapsed():.0f} s. Pooled Dice: out-of-fold predictions of all "
            "folds pooled, 95 % interval by bootstrap over patients. For teaching and research; not a diagnosis.")
    lines = [head, "", markdown_table(HEADER, rows), ""]
    lines += [f"- **{c['task']}**: chose `{c['chosen']}` on {c['chosen_on']}." for c in choices]
    lines += [f"- skipped (time budget): {', '.join(sched.skipped)}" if sched.skipped else "- nothing skipped"]
    atomic_write_bytes(out / "summary.md", ("\n".join(lines) + "\n").encode())
    atomic_write_json(out / "summary.json", {"command": sys.argv, "wall_seconds": sched.elapsed(),
                                             "workers": args.workers, "choices": choices, "skipped": sched.skipped,
                                             "results": {p: sorted(r) for p, r in done.items()}})


# ----------------------------------------------------------------------------- the run


def load_entries(args: argparse.Namespace) -> list[dict[str, Any]]:
    entries = builtin_grid() if args.grid == "builtin" else json.loads(Path(args.grid).read_text())
    if args.only:
        entries = [e for e in entries if e["name"] in args.only]
    for e in entries:
        over = dict(e.get("overrides", {}))
        over.update({k: v for k, v in (("epochs", args.epochs), ("size", args.size)) if v is not None})
        e["overrides"] = over
        if args.tiny:
            e["model"] = dict(TINY_MODEL)
    if len({e["name"] for e in entries}) < len(entries):
        raise SystemExit("cv_grid: recipe names must be unique")
    return entries


def finish_recipe(phase: str, name: str, folds: list[dict[str, Any]], entry: dict[str, Any], out: Path,
                  done: dict[str, dict[str, dict[str, Any]]]) -> None:
    from crlearn.tasks.cv import summarise
    from crlearn.training.checkpoint import atomic_write_json

    s = summarise(entry, folds)
    s["task"], s["score"], s["phase"] = entry["task"], entry["score"], phase
    done.setdefault(phase, {})[name] = s
    (out / phase).mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / phase / f"{name}.json", s)
    print(f"[{phase}] {name}: " + ", ".join(f"{f}/{c} {s['folders'][f]['classes'][c]['pooled_dice']['value']:.3f}"
                                             for f, c in entry["score"]), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise SystemExit(f"cv_grid: {out} exists and is not empty; pass --force or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    entries = load_entries(args)
    by_name = {e["name"]: e for e in entries}
    choice = f"choice-{args.folds}fold"
    report = f"report-{args.then_report}fold" if args.then_report else None
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # inherited by the workers
    folds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    done: dict[str, dict[str, dict[str, Any]]] = {}
    choices: list[dict[str, Any]] = []
    tasks_left = {e["task"] for e in entries}
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_init_worker) as pool:
        sched = Scheduler(pool, args.workers, args.time_budget, args)
        sched.add([(choice, e, k, args.folds, args.seed) for e in entries for k in range(args.folds)])
        sched.fill()
        while sched.running:
            finished, _ = cf.wait(list(sched.running), return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                job = sched.running.pop(fut)
                phase, entry, k, n, _ = job
                try:
                    res = fut.result()
                except Exception as exc:  # one failed job must not lose the others
                    print(f"[{phase}] {entry['name']} fold {k}: FAILED {type(exc).__name__}: {exc}", flush=True)
                    sched.skipped.append(f"{phase}:{entry['name']}:fold{k} (failed: {exc})")
                    continue
                sched.observe(job, res["seconds"])
                folds.setdefault((phase, entry["name"]), []).append(res)
                if len(folds[(phase, entry["name"])]) == n:
                    finish_recipe(phase, entry["name"], folds[(phase, entry["name"])], entry, out, done)
            for task in sorted(tasks_left):
                pending = [j for j in list(sched.queue) + list(sched.running.values())
                           if j[0] == choice and j[1]["task"] == task]
                if pending:
                    continue
                tasks_left.discard(task)
                c = choose(task, done.get(choice, {}), entries)
                if c is None:
                    continue
                choices.append(c)
                if report:
                    e = by_name[c["chosen"]]
                    sched.add([(report, e, k, args.then_report, args.seed + 1) for k in range(args.then_report)],
                              first=True)
            sched.fill()
            write_summary(out, by_name, done, choices, sched, args)
    write_summary(out, by_name, done, choices, sched, args)
    print((out / "summary.md").read_text())
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="example: PYTHONPATH=. python scripts/cv_grid.py --workers 14 --folds 3 "
                                       "--then-report 5 --time-budget 480 --out results/cv_grid",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default="builtin", help="builtin, or a JSON file: a list of recipes")
    p.add_argument("--only", nargs="+", default=None, help="run only these recipe names")
    p.add_argument("--folds", type=int, default=3, help="folds of the choice runs (default 3)")
    p.add_argument("--then-report", type=int, default=None, metavar="K",
                   help="rerun each task's chosen recipe with K folds (e.g. 5)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="parallel jobs")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="start no job expected to end later than this after the start")
    p.add_argument("--seed", type=int, default=0, help="seed of the choice folds (report: seed + 1)")
    p.add_argument("--device", default="cpu", help="device of every job (default cpu: one thread per worker)")
    p.add_argument("--no-tta", dest="tta", action="store_false", help="evaluate without the five-view TTA")
    p.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs (testing)")
    p.add_argument("--size", type=int, default=None, help="override every recipe's size (testing)")
    p.add_argument("--tiny", action="store_true", help="the unit tests' tiny CR-Net (testing the script)")
    p.add_argument("--out", default="results/cv_grid", help="output folder")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    args = p.parse_args(argv)
    if args.folds < 2 or (args.then_report is not None and args.then_report < 2):
        p.error("--folds and --then-report need at least 2")
    return args


if __name__ == "__main__":
    sys.exit(main())
