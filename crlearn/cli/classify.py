"""``crlearn classify``: the slice classifier of §2.8. It parses, calls :func:`crlearn.tasks.classifier_run.run_classify`
or :func:`crlearn.tasks.classifier_run.evaluate_checkpoint`, and prints; :mod:`crlearn.cli.main` wires it in.

    crlearn classify train [--data DIR] [--encoder CKPT | --scratch] [--finetune] [--head logistic|torch]
                           [--specificity S] [--profile quick|full] [--out RUN] [--force] [--seed N] [--epochs N]
    crlearn classify evaluate --checkpoint RUN/best.pt [--data DIR] [--split all|val|test|...] [--threshold P]
    crlearn classify cv [--folds K] [--jobs N] [--variants frozen-logistic,...] [--encoder CKPT] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from crlearn.cli import choices
from crlearn.report import DISCLAIMER, markdown_table

CV_VARIANTS = ("frozen-logistic", "frozen-torch", "finetune", "scratch")  # crlearn.tasks.classifier_cv.VARIANTS
VIEW_USES = ("augment", "mean", "identity")  # crlearn.tasks.logistic_head.VIEW_USES
HEADS = ("logistic", "torch")  # crlearn.tasks.classifier_run.HEADS


def _out(args: argparse.Namespace, default: str | Path, is_dir: bool = True) -> Path:
    from crlearn.training.checkpoint import fresh_path

    return fresh_path(args.out or default, explicit=args.out is not None, force=args.force, is_dir=is_dir)


def metrics_table(metrics: dict[str, Any]) -> str:
    """One markdown row per level: slices, and patients by the any-slice and the mean-probability rule."""
    s, p = metrics["slice"], metrics["patient"]

    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    rows = [["slice", s["n"], pct(s["accuracy"]), pct(s["sensitivity"]), pct(s["specificity"]), pct(s["precision"]),
             pct(s["f1"]), "-" if s["auc"] is None else f"{s['auc']:.3f}"]]
    for rule in ("any_slice", "mean_probability"):
        r = p[rule]
        rows.append([f"patient ({rule.replace('_', ' ')})", r["n_groups"], pct(r["accuracy"]), pct(r["sensitivity"]),
                     pct(r["specificity"]), "-", "-", "-"])
    header = ["Level", "n", "Accuracy (%)", "Sensitivity (%)", "Specificity (%)", "Precision (%)", "F1 (%)", "AUC"]
    return markdown_table(header, rows)


def cmd_classify_train(args: argparse.Namespace) -> int:
    from crlearn.tasks.classifier_run import CLASSIFY_FILES, run_classify
    from crlearn.training.config import resolve_profile

    profile = resolve_profile(args.profile)
    mode = "scratch" if args.scratch else "finetune" if args.finetune else "frozen"
    overrides = {k: getattr(args, k) for k in ("epochs", "size", "fit", "normalize", "batch_size", "lr", "max_minutes",
                                               "head", "views", "specificity") if getattr(args, k) is not None}
    result = run_classify(args.data, encoder=args.encoder, mode=mode, profile=profile,
                          out=_out(args, f"runs/classify-{mode}-{profile}"), force=args.force, seed=args.seed,
                          device=args.device, progress=not args.quiet,
                          log=lambda line: print(f"crlearn classify: {line}", flush=True), **overrides)
    print(f"test split ({result.test['n_slices']} slices, {result.test['patient']['any_slice']['n_groups']} "
          f"pseudo-patient groups); slices and mean probability at {result.test['threshold']:g}, any slice at "
          f"{result.test['patient_threshold']:.3f} (chosen for specificity {result.metrics['config']['specificity']:g} "
          f"on {result.metrics['threshold']['chosen_on']}):")
    print(metrics_table(result.test))
    print(f"wrote {result.out}/: {' '.join(CLASSIFY_FILES)}" + (" and segmenter/" if (result.out / "segmenter").is_dir()
                                                                 else ""))
    print(DISCLAIMER)
    return 0


def cmd_classify_evaluate(args: argparse.Namespace) -> int:
    from crlearn.tasks.classifier_run import evaluate_checkpoint
    from crlearn.training.checkpoint import atomic_write_json

    metrics, ds = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, device=args.device,
                                      patient_threshold=args.threshold)
    out = _out(args, Path(args.checkpoint).with_name(f"eval-{ds.root.resolve().name}.json"), is_dir=False)
    atomic_write_json(out, {"checkpoint": str(args.checkpoint), "data": str(ds.root.resolve()), "split": args.split,
                            "n_slices": len(ds), "metrics": metrics, "note": DISCLAIMER})
    print(f"{ds.root} ({args.split}): {len(ds)} slices; slices and mean probability at {metrics['threshold']:g}, "
          f"any slice at {metrics['patient_threshold']:.3f}"
          + (" (--threshold)" if args.threshold is not None else " (the checkpoint's)") + ":")
    print(metrics_table(metrics))
    print(f"wrote {out}")
    print(DISCLAIMER)
    return 0


def cmd_classify_cv(args: argparse.Namespace) -> int:
    from crlearn.tasks.classifier_cv import cross_validate_classifier, write_cv

    out = _out(args, "runs/classify-cv")
    overrides = {k: getattr(args, k) for k in ("epochs", "size", "views", "specificity") if getattr(args, k) is not None}
    result = cross_validate_classifier(args.folds, args.data, variants=args.variants.split(","), encoder=args.encoder,
                                       profile=args.profile, seed=args.seed, jobs=args.jobs, device=args.device,
                                       workdir=out, log=lambda line: print(f"crlearn classify cv: {line}", flush=True),
                                       seg_overrides={"epochs": args.seg_epochs} if args.seg_epochs else None,
                                       **overrides)
    write_cv(result, out)
    print((out / "cv.md").read_text().rstrip())
    print(f"wrote {out}/: cv.json cv.md" + (" and segmenter/" if result["stage1"]["trained"] else ""))
    print(DISCLAIMER)
    return 0


def _cv_parser(kinds: Any) -> None:
    from crlearn.data.paths import default_classification_dir

    cv = kinds.add_parser("cv", help="K-fold pseudo-patient cross-validation of the whole recipe, with intervals",
                          epilog="example: crlearn classify cv --folds 5 --jobs 2 --out runs/classify-cv\n"
                                 "Stage 1 (the segmenter) trains once: its data share no slice with the classifier's.",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    cv.add_argument("--data", default=str(default_classification_dir()), help="labelled folder (default: sarscov2_ct)")
    cv.add_argument("--folds", type=int, default=5, help="group folds; every pseudo-patient is tested once (default 5)")
    cv.add_argument("--jobs", type=int, default=1, help="worker processes, one torch thread each (default 1)")
    cv.add_argument("--variants", default="frozen-logistic",
                    help=f"comma-separated, of {', '.join(CV_VARIANTS)} (default frozen-logistic)")
    cv.add_argument("--encoder", default=None, help="segmentation best.pt to use; default: train stage 1 once")
    cv.add_argument("--profile", choices=list(choices.PROFILES), default=None, help="quick, full or auto (default)")
    cv.add_argument("--seg-epochs", type=int, default=None, help="stage 1 epochs (default: the profile's)")
    cv.add_argument("--epochs", type=int, default=None, help="stage 2 epoch cap of the torch heads")
    cv.add_argument("--size", type=int, default=None, help="override the classifier's input size in pixels")
    cv.add_argument("--views", choices=list(VIEW_USES), default=None,
                    help="how the logistic head uses the x5 views (default augment)")
    cv.add_argument("--specificity", type=float, default=None, help="the any-slice threshold's target (default 0.9)")
    cv.add_argument("--seed", type=int, default=0, help="seeds the folds, stage 1 and the heads")
    cv.add_argument("--device", default=None, help=choices.DEVICES_HELP)
    cv.add_argument("--out", help="folder for cv.json, cv.md and segmenter/ (default: runs/classify-cv, or the first "
                                  "free -N); never overwritten without --force")
    cv.add_argument("--force", action="store_true", help="overwrite an existing --out")
    cv.set_defaults(func=cmd_classify_cv)


def _train_options(t: Any) -> None:
    """The head and the threshold choice of ``classify train``."""
    t.add_argument("--head", choices=list(HEADS), default=None,
                   help="frozen mode's head: logistic (default; scikit-learn, its penalty chosen by group CV) or "
                        "torch (Adam on cached features)")
    t.add_argument("--views", choices=list(VIEW_USES), default=None,
                   help="how the logistic head uses the x5 views (default augment)")
    t.add_argument("--specificity", type=float, default=None,
                   help="the any-slice rule's slice threshold is chosen for this specificity on groups outside the "
                        "test part (default 0.9); kept in best.pt")


def add_classify_parser(sub: Any) -> None:
    """The ``classify`` command and its ``train``, ``evaluate`` and ``cv`` subcommands (no torch imported)."""
    from crlearn.cli.choices import FITS, NORMALIZATIONS
    from crlearn.data.paths import default_classification_dir

    c = sub.add_parser("classify", help="the encoder as a COVID-19 vs non-COVID slice classifier (paper §2.8)")
    kinds = c.add_subparsers(dest="what", required=True)
    t = kinds.add_parser("train", help="train the classifier (after a segmenter, unless --encoder or --scratch)")
    e = kinds.add_parser("evaluate", help="slice and patient metrics of a classifier checkpoint on a labelled folder")
    for sp in (t, e):
        sp.add_argument("--data", default=str(default_classification_dir()),
                        help="labelled folder: images/, index.csv with label and group columns "
                             "(default: data_sample/sarscov2_ct)")
        sp.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
        sp.add_argument("--force", action="store_true", help="overwrite an existing --out")
    mode = t.add_mutually_exclusive_group()
    t.add_argument("--encoder", default=None, help="segmentation checkpoint (crlearn train's best.pt) whose encoder "
                                                   "to use; default: train one first, with the same profile")
    mode.add_argument("--scratch", action="store_true", help="a fresh encoder of the same width (Table 6)")
    mode.add_argument("--finetune", action="store_true", help="train the encoder with the head (default: frozen)")
    t.add_argument("--profile", choices=["auto", "quick", "full"], default=None,
                   help="auto (default; $CRLEARN_PROFILE, else full with CUDA and quick without), quick or full")
    t.add_argument("--seed", type=int, default=0, help="seeds the split, the segmenter, the head and the batch order")
    t.add_argument("--epochs", type=int, default=None, help="override the epoch cap (the same for every mode)")
    t.add_argument("--size", type=int, default=None, help="override the input size in pixels")
    t.add_argument("--fit", choices=list(FITS), default=None, help="pad (aspect kept; default) or stretch")
    t.add_argument("--normalize", choices=list(NORMALIZATIONS), default=None, help="per-slice intensity normalisation")
    t.add_argument("--batch-size", type=int, default=None, help="override the batch size")
    t.add_argument("--lr", type=float, default=None, help="override the mode's learning rate")
    t.add_argument("--max-minutes", type=float, default=None, help="stop stage 2 after this many minutes")
    _train_options(t)
    t.add_argument("--out", help="run folder (default: runs/classify-<mode>-<profile>, or the first free -N); "
                                 "never overwritten without --force")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_classify_train)
    e.add_argument("--checkpoint", required=True, help="a classifier best.pt (crlearn classify train)")
    e.add_argument("--split", choices=["all", "train", "val", "test", "held-out"], default="all",
                   help="all slices (default), or a part of the run's own split (by its recorded groups)")
    e.add_argument("--threshold", type=float, default=None,
                   help="the any-slice rule's slice threshold (default: the one the run chose, kept in best.pt)")
    e.add_argument("--out", help="JSON file (default: eval-<data folder>.json beside the checkpoint); never "
                                 "overwritten without --force")
    e.set_defaults(func=cmd_classify_evaluate)
    _cv_parser(kinds)
