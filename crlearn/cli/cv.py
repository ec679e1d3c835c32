"""``crlearn cv``: patient-level K-fold cross-validation of one training recipe (§2.2), and ``crlearn train --folds K``.

It parses, calls :func:`crlearn.tasks.cv.cross_validate` and prints the table; :mod:`crlearn.cli.main` wires it in.

    crlearn cv [--data DIR ...] [--profile quick|full] [--classes NAME ... | --merge] [--folds K] [--normalize KIND]
               [--intensity-augment] [--scale-augment] [--no-amp] [--no-val] [--epochs N] [--size N] [--crop N] [--save-models]
               [--out DIR] [--force] [--seed N] [--device DEV] [--no-tta] [--quiet]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from crlearn.report import DISCLAIMER

EPILOG = """examples:
  crlearn cv --profile quick --merge --folds 5
  crlearn cv --data data_sample/covid19_ct_lung_infection --classes lung infection --folds 3 --size 192
  crlearn cv --data data_sample/medseg_covid100 data_sample/covid19_ct_lung_infection --classes infection

Every patient group is tested once; the out-of-fold predictions of all folds are pooled (Dice from the summed
per-patient counts) with a 95 % interval by bootstrap over patients, beside the mean and std over folds. Inside
each fold, only its inner validation part (never the test part) picks the epoch. Writes cv.json and cv.md (and with
--save-models fold<k>.pt and ensemble.pt) into --out."""


VALUE_OVERRIDES = ("epochs", "size", "crop", "batch_size", "lr", "max_minutes")  # TrainConfig fields both commands take


def switch_overrides(args: argparse.Namespace) -> dict[str, bool]:
    """The :class:`~crlearn.training.config.TrainConfig` fields that ``--bce-only`` and ``--no-amp`` turn off (the
    flags ``crlearn train`` and ``crlearn cv`` share)."""
    return ({"hybrid": False} if getattr(args, "bce_only", False) else {}) | (
        {"amp": False} if not getattr(args, "amp", True) else {})


def recipe_from_args(args: argparse.Namespace) -> Any:
    """The :class:`crlearn.tasks.cv.Recipe` of ``crlearn cv``'s (or ``crlearn train``'s) arguments."""
    from crlearn.tasks.cv import VAL_FRACTION, Recipe
    from crlearn.training.config import resolve_profile

    overrides = {k: getattr(args, k) for k in VALUE_OVERRIDES if getattr(args, k, None) is not None}
    overrides |= switch_overrides(args)
    if getattr(args, "normalize", None) is not None:
        overrides["normalize"] = args.normalize
    for flag in ("intensity_augment", "scale_augment"):
        if getattr(args, flag, False):
            overrides[flag] = True
    return Recipe(name=getattr(args, "name", None) or "cli", data=list(args.data), profile=resolve_profile(args.profile),
                  classes=args.classes, merge=True if args.merge else None, variant=getattr(args, "variant", None),
                  overrides=overrides, val_fraction=0.0 if getattr(args, "no_val", False) else VAL_FRACTION)


def run_cv(args: argparse.Namespace, out: Path, recipe: Any) -> dict[str, Any]:
    """Cross-validate ``recipe`` with ``args.folds`` folds, write cv.json and cv.md into ``out``, print the table."""
    from crlearn.tasks.cv import cross_validate, cv_markdown
    from crlearn.training.checkpoint import atomic_write_bytes

    result = cross_validate(recipe, n_folds=args.folds, seed=args.seed, tta=args.tta, device=args.device,
                            progress=not args.quiet, out=out, save_models=getattr(args, "save_models", False),
                            log=lambda line: print(f"crlearn cv: {line}", flush=True))
    md = cv_markdown(result.summary)
    atomic_write_bytes(out / "cv.md", md.encode())
    print(md)
    return result.summary


def cmd_cv(args: argparse.Namespace) -> int:
    from crlearn.training.checkpoint import fresh_path

    recipe = recipe_from_args(args)
    out = fresh_path(args.out or f"runs/cv-{recipe.profile}", explicit=args.out is not None, force=args.force,
                     is_dir=True)
    run_cv(args, out, recipe)
    print(f"wrote {out}/: cv.json cv.md" + (" fold<k>.pt ensemble.pt" if args.save_models else ""))
    print(DISCLAIMER)
    return 0


def add_parser(sub: Any) -> None:
    """The ``cv`` command."""
    from crlearn.cli.choices import CROP_HELP, NO_AMP_HELP, NORMALIZATIONS
    from crlearn.data.paths import default_data_dir

    c = sub.add_parser("cv", help="patient-level K-fold cross-validation of one training recipe",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--data", nargs="+", default=[str(default_data_dir())],
                   help="data folder(s), trained on together, each dealt into K folds by its own groups "
                        "(default: data_sample/medseg_covid100)")
    c.add_argument("--profile", choices=["auto", "quick", "full"], default=None, help="auto (default), quick or full")
    c.add_argument("--classes", nargs="+", default=None, help="classes of the folders' labels, one output each")
    c.add_argument("--merge", action="store_true", help="merge the classes into one 'infection' class (Table 7)")
    c.add_argument("--folds", type=int, default=5, help="K (default 5, as the paper; 3 suffice to choose)")
    c.add_argument("--normalize", choices=list(NORMALIZATIONS), default=None, help="per-slice intensity normalisation")
    c.add_argument("--intensity-augment", action="store_true", help="random brightness, contrast, gamma and noise")
    c.add_argument("--scale-augment", action="store_true", help="random zoom and shift")
    c.add_argument("--no-amp", dest="amp", action="store_false", help=NO_AMP_HELP)
    c.add_argument("--no-val", action="store_true",
                   help="no inner validation: each fold trains on all its training patients for the fixed epochs and "
                        "keeps the last (as crlearn train --split all)")
    c.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    c.add_argument("--size", type=int, default=None, help="override the profile's input size (multiple of 32)")
    c.add_argument("--crop", type=int, default=None, help=CROP_HELP)
    c.add_argument("--seed", type=int, default=0, help="seeds the folds, the weights and the batch order")
    c.add_argument("--save-models", action="store_true", help="also write fold<k>.pt and their ensemble.pt")
    c.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    c.add_argument("--no-tta", dest="tta", action="store_false", help="evaluate without the five-view TTA")
    c.add_argument("--out", help="folder for cv.json and cv.md (default runs/cv-<profile>); never overwritten "
                                 "without --force")
    c.add_argument("--force", action="store_true", help="write into an existing --out")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_cv)


def cv_before_training(args: argparse.Namespace) -> dict[str, Any]:
    """``crlearn train --folds K``: the recipe of the train arguments cross-validated first (nothing written yet);
    prints the table and returns the summary (its ``chosen_epochs`` sets ``--split all``'s epochs)."""
    from crlearn.tasks.cv import cross_validate, cv_markdown

    result = cross_validate(recipe_from_args(args), n_folds=args.folds, seed=args.seed, tta=args.tta,
                            device=args.device, progress=not args.quiet,
                            log=lambda line: print(f"crlearn train: cv {line}", flush=True))
    print(cv_markdown(result.summary))
    return result.summary


def write_cv(out: Path, summary: dict[str, Any]) -> None:
    """cv.json and cv.md beside the run's files."""
    from crlearn.tasks.cv import cv_markdown
    from crlearn.training.checkpoint import atomic_write_bytes, atomic_write_json

    atomic_write_json(out / "cv.json", summary)
    atomic_write_bytes(out / "cv.md", cv_markdown(summary).encode())
