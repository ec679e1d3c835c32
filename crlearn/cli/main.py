"""The ``crlearn`` command: train, evaluate, predict, burden, ablate, bench. It parses arguments, calls the library
and prints; the work is done by :func:`crlearn.training.run.run`, :func:`crlearn.inference.evaluate`,
:func:`crlearn.tasks.burden.burden`, :func:`crlearn.tasks.ablation.run_ablation` and :mod:`crlearn.bench`.

    crlearn train [--data DIR ...] [--profile auto|quick|full] [--classes NAME ... | --merge] [--normalize KIND]
                  [--out RUN]
    crlearn evaluate --checkpoint RUN/best.pt [--data DIR] [--out FILE.json]
    crlearn predict --checkpoint RUN/best.pt IMAGE.png ... [--classifier CLS.pt [--threshold P]] [--out DIR]
    crlearn burden --checkpoint RUN/best.pt [--data DIR] [--out FILE.json]
    crlearn ablate [--folds K] [--profile P] [--classify [DIR]] [--out DIR]
    crlearn bench model|ssim [options]
    crlearn classify train|evaluate [options]   (the slice classifier of §2.8: crlearn.cli.classify)
    crlearn predict --checkpoint RUN/best.pt SCAN.nii.gz|DICOM_DIR [--window W] [--out DIR]   (crlearn.cli.volume)
    crlearn convert SCAN.nii.gz|DICOM_DIR ... [--masks MASK.nii.gz ...] --out DIR [--window W]   (crlearn.cli.volume)

Bad input ends with a one-line error and exit code 2. Default output paths never overwrite anything (a numeric
suffix is added); an explicit ``--out`` that already exists needs ``--force``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from crlearn.cli import choices, classify, compare, cv, volume  # the command groups (torch-free to import)
from crlearn.data.paths import default_classification_dir, default_data_dir
from crlearn.report import DISCLAIMER


def _tta_note(tta: bool) -> str:
    return ", five-view test-time augmentation" if tta else ", single pass (--no-tta)"


def _out(args: argparse.Namespace, default: str | Path, is_dir: bool = True) -> Path:
    from crlearn.training.checkpoint import fresh_path

    return fresh_path(args.out or default, explicit=args.out is not None, force=args.force, is_dir=is_dir)


def _normalization(ckpt: dict[str, Any]) -> str:
    """The intensity normalisation the checkpoint's model was trained with (older checkpoints: none)."""
    return ckpt["train_config"].get("normalize", "none")


def _load_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Any]:
    """The checkpoint's model on the chosen device: ``(model, checkpoint, device)``."""
    from crlearn.training.checkpoint import load_checkpoint
    from crlearn.training.device import pick_device

    device = pick_device(args.device)
    model, ckpt = load_checkpoint(args.checkpoint, device)
    return model, ckpt, device


def cmd_train(args: argparse.Namespace) -> int:
    from crlearn.metrics import format_table
    from crlearn.training.config import resolve_profile
    from crlearn.training.distributed import process_group
    from crlearn.training.run import RUN_FILES, run
    from crlearn.cli.cv import cv_before_training, write_cv

    profile = resolve_profile(args.profile)
    overrides = {k: getattr(args, k) for k in (*cv.VALUE_OVERRIDES, "fast") if getattr(args, k) is not None}
    overrides |= cv.switch_overrides(args)  # --bce-only, --no-amp
    data = args.data[0] if len(args.data) == 1 else args.data  # one folder: a path, as before
    folds = cv_before_training(args) if args.folds > 1 else None  # crlearn.cli.cv: the CV table, printed
    if folds is not None and args.split == "all" and args.epochs is None:
        overrides["epochs"] = folds["chosen_epochs"]  # the epoch count the folds' validation parts chose
    with process_group(args.device) as launch:  # under torchrun: one process per device; else a no-op
        result = run(data, profile=profile, classes=args.classes, merge=True if args.merge else None,
                     variant=args.variant, out=_out(args, f"runs/train-{profile}"), force=args.force,
                     resume=args.resume, device=launch.device, seed=args.seed, tta=args.tta, progress=not args.quiet,
                     log=lambda line: print(f"crlearn train: {line}", flush=True), normalize=args.normalize,
                     split=args.split, **overrides)
    if not launch.is_main:  # rank 0 reports for all
        return 0
    if folds is not None:
        write_cv(result.out, folds)
    if result.test is None:  # --split all
        print("every patient trained (--split all): no test part; quote the cross-validation's numbers "
              "(crlearn cv, or crlearn train --folds K)")
    else:
        n_test = len(result.metrics["split"]["test"])
        print(f"test split ({n_test} slices), pooled at original resolution{_tta_note(args.tta)}:")
        print(format_table(result.test))
    print(f"wrote {result.out}/: {' '.join(RUN_FILES)}")
    print(DISCLAIMER)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from crlearn.training.checkpoint import atomic_write_json
    from crlearn.data.folder import DataError, SegmentationDataset
    from crlearn.inference import evaluate
    from crlearn.data.labels import UnknownClassError
    from crlearn.metrics import format_table

    model, ckpt, device = _load_model(args)
    names = ckpt["class_names"]
    try:
        ds = SegmentationDataset(args.data, classes=names, normalize=_normalization(ckpt))
    except UnknownClassError as exc:
        raise DataError(f"{args.checkpoint}: its classes {names} do not fit {args.data} ({exc})") from None
    metrics = evaluate(model, ds, ckpt["train_config"]["size"], device, tta=args.tta)
    out = _out(args, Path(args.checkpoint).with_name(f"eval-{Path(args.data).resolve().name}.json"), is_dir=False)
    atomic_write_json(out, {"checkpoint": str(args.checkpoint), "data": str(Path(args.data).resolve()),
                            "n_slices": len(ds), "class_names": names, "tta": args.tta, "metrics": metrics,
                            "note": DISCLAIMER})
    print(f"{args.data}: {len(ds)} slices, pooled at original resolution{_tta_note(args.tta)}:")
    print(format_table(metrics))
    print(f"wrote {out}")
    print(DISCLAIMER)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from crlearn.training.checkpoint import atomic_write_bytes
    from crlearn.tasks.gate import area_rows, predict_files
    from crlearn.report import save_figure
    from crlearn.viz import plot_overlays
    from crlearn.cli.volume import is_scan_input, predict_scan

    if args.threshold is None:  # the any-slice threshold the classifier's run chose (kept in its best.pt)
        from crlearn.tasks.classifier import checkpoint_threshold, load_classifier

        args.threshold = (checkpoint_threshold(load_classifier(args.classifier)[1]) if args.classifier
                          else choices.THRESHOLD)
    if is_scan_input(args.images):  # one CT volume (NIfTI file or DICOM folder): the whole scan
        return predict_scan(args)
    model, ckpt, device = _load_model(args)
    classifier, cls_ckpt = (None, None)
    if args.classifier is not None:
        from crlearn.tasks.classifier import load_classifier

        classifier, cls_ckpt = load_classifier(args.classifier, device)
    names, size = ckpt["class_names"], ckpt["train_config"]["size"]  # the size the model was trained at
    out = _out(args, "runs/predict")
    out.mkdir(parents=True, exist_ok=True)
    preds = predict_files(args.images, model, size, _normalization(ckpt), classifier, cls_ckpt, args.threshold,
                          device, args.tta)
    for pred in preds:
        save_figure(plot_overlays(pred.image, None, pred.masks, names, titles=[pred.title]),
                    out / f"{Path(pred.path).stem}_overlay.png")
    rows = area_rows(preds, names)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "areas.csv", buf.getvalue().encode())
    print(buf.getvalue().rstrip())
    if classifier is not None:
        n_skipped = sum(not p.segmented for p in preds)
        print(f"gated by {args.classifier} at P(COVID) >= {args.threshold:g}: {len(preds) - n_skipped} segmented, "
              f"{n_skipped} not segmented (pixels 0)")
    print(f"wrote {out}/: areas.csv and one overlay PNG per image")
    print(DISCLAIMER)
    return 0


def _burden_classes(checkpoint: str, names: list[str]) -> list[str]:
    """The checkpoint's class names, refused with a one-line error naming it when there is no infection class."""
    from crlearn.tasks.burden import burden_channels
    from crlearn.training.checkpoint import CheckpointError

    try:
        burden_channels(names)
    except ValueError as exc:
        raise CheckpointError(f"{checkpoint}: {exc}") from None
    return names


def cmd_burden(args: argparse.Namespace) -> int:
    from crlearn.tasks.burden import burden, burden_markdown, burden_summary
    from crlearn.training.checkpoint import atomic_write_json, fresh_path, run_split
    from crlearn.data.folder import SegmentationDataset
    from crlearn.report import save_figure
    from crlearn.viz import plot_burden

    model, ckpt, device = _load_model(args)
    names = _burden_classes(args.checkpoint, ckpt["class_names"])
    part = None if args.split == "all" else run_split(args.checkpoint, args.split, args.data)  # from metrics.json
    ds = SegmentationDataset(args.data)  # original images: the model's normalisation is applied by burden()
    ds = ds if part is None else ds.subset(part)
    out = _out(args, Path(args.checkpoint).with_name(f"burden-{Path(args.data).resolve().name}.json"), is_dir=False)
    png = fresh_path(out.with_suffix(".png"), explicit=True, force=args.force)
    result = burden(model, ds, ckpt["train_config"]["size"], device, tta=args.tta, class_names=names,
                    normalize=_normalization(ckpt))
    atomic_write_json(out, {"checkpoint": str(args.checkpoint), "data": str(Path(args.data).resolve()),
                            "split": args.split, **result})
    save_figure(plot_burden(result), png)
    print(f"{args.data} ({args.split}): {len(ds)} slices, {result['n_groups']} patient groups, lesion / lung area "
          f"at original resolution{_tta_note(args.tta)}:")
    print(burden_markdown(result))
    print(burden_summary(result))
    print(f"wrote {out} and {png}")
    print(DISCLAIMER)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from crlearn.tasks.ablation import ablation_markdown, run_ablation, save_row_models
    from crlearn.training.checkpoint import atomic_write_bytes, atomic_write_json
    from crlearn.training.config import resolve_profile
    from crlearn.report import save_figure
    from crlearn.viz import plot_ablation

    from crlearn.training.distributed import process_group

    profile = resolve_profile(args.profile)
    out = _out(args, f"runs/ablate-{profile}")
    with process_group(args.device) as launch:  # under torchrun the (fold, row) runs are dealt out over the ranks
        result = run_ablation(args.data, profile, folds=args.folds, seed=args.seed, epochs=args.epochs,
                              max_minutes=args.max_minutes, device=launch.device, progress=not args.quiet,
                              tta=args.tta, classify_data=args.classify, fast=args.fast, seeds=args.seeds)
    if not launch.is_main:  # rank 0 writes and reports for all
        return 0
    out.mkdir(parents=True, exist_ok=True)
    saved = save_row_models(result, out) if args.save_models else []
    result.pop("models")
    md = ablation_markdown(result)
    atomic_write_json(out / "ablation.json", result)
    atomic_write_bytes(out / "ablation.md", md.encode())
    save_figure(plot_ablation(result["rows"], f"profile {profile}, {result['hardware']}"), out / "ablation.png")
    print(md)
    print(f"wrote {out}/: ablation.json ablation.md ablation.png", *(p.name for p in saved))
    print(DISCLAIMER)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from crlearn import bench
    from crlearn.training.checkpoint import atomic_write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "model":
        rows = bench.bench_model(sizes=tuple(args.sizes), batch_sizes=tuple(args.batch_sizes), steps=args.steps,
                                 warmup=args.warmup, device=args.device, variants=tuple(args.variants),
                                 width=args.width, verbose=True, channels_last=args.channels_last,
                                 modes=tuple(args.modes) if args.modes else None)  # prints the table as it goes
        if args.out:
            atomic_write_json(_out(args, args.out, is_dir=False), rows)
    else:
        bench.bench_ssim(batch_size=args.batch_size, size=args.size, repeats=args.steps, warmup=args.warmup,
                         device=args.device)
    return 0


# ----------------------------------------------------------------------------- argument parsing


def _add_data(sp: argparse.ArgumentParser, several: bool = False) -> None:
    sp.add_argument("--data", default=[str(default_data_dir())] if several else str(default_data_dir()),
                    nargs="+" if several else None,
                    help="data folder" + ("(s), trained on together" if several else "")
                         + ": images/, masks/, index.csv, optional labels.json (default: data_sample/medseg_covid100)")


def _add_profile(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--profile", choices=list(choices.PROFILES), default=None,
                    help="auto (default; $CRLEARN_PROFILE, else full with CUDA and quick without), quick or full")


def _add_device(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--device", type=_device, default=None, help=choices.DEVICES_HELP)


def _add_tta(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--no-tta", dest="tta", action="store_false",
                    help="one forward pass per slice instead of averaging the five training views")


def _add_out(sp: argparse.ArgumentParser, what: str, quiet: bool = True) -> None:
    sp.add_argument("--out", help=f"{what}; never overwritten without --force")
    sp.add_argument("--force", action="store_true", help="overwrite an existing --out")
    if quiet:
        sp.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_model_run(sp: argparse.ArgumentParser, out_help: str, quiet: bool = True) -> None:
    """The options of every command that runs a model: --device, --no-tta, --out/--force (and --quiet)."""
    _add_device(sp)
    _add_tta(sp)
    _add_out(sp, out_help, quiet)


def _add_budget(sp: argparse.ArgumentParser, minutes_help: str) -> None:
    sp.add_argument("--max-minutes", type=float, default=None, help=minutes_help)
    sp.add_argument("--seed", type=int, default=0, help="seeds the split(s), the weights and the batch order")


def _train_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="train CR-Net on a data folder and evaluate it on its test split")
    _add_data(t, several=True)
    _add_profile(t)
    t.add_argument("--classes", nargs="+", default=None,
                   help="classes of the folder's labels, one output each (full profile's default: all of them)")
    t.add_argument("--merge", action="store_true",
                   help="merge the classes into one 'infection' class (Table 7; the quick profile's default)")
    t.add_argument("--variant", choices=list(choices.VARIANTS), default=None, help="Table 7 row (default crnet)")
    t.add_argument("--normalize", choices=list(choices.NORMALIZATIONS), default="none",
                   help="per-slice intensity normalisation, kept in the checkpoint and applied by evaluate, predict "
                        "and burden (default none)")
    t.add_argument("--bce-only", action="store_true", help="plain BCE instead of the hybrid loss")
    t.add_argument("--no-amp", dest="amp", action="store_false", help=choices.NO_AMP_HELP)
    t.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    t.add_argument("--size", type=int, default=None, help="override the profile's input size (multiple of 32)")
    t.add_argument("--crop", type=int, default=None, help=choices.CROP_HELP)
    t.add_argument("--batch-size", type=int, default=None, help="override the profile's batch size")
    t.add_argument("--lr", type=float, default=None, help="override the profile's (peak) learning rate")
    t.add_argument("--fast", choices=["off", "eager", "graph", "compile"], default=None,
                   help="override the profile's training-step route (full: graph); under torchrun use off")
    _add_budget(t, "stop training after this many minutes")
    t.add_argument("--resume", default=None, help="continue the run of a last.pt checkpoint")
    t.add_argument("--split", choices=["all", "holdout"], default="all",
                   help="all (default): every patient trains for the profile's (or the CV-chosen) epochs, no "
                        "validation, the last epoch kept (its estimate: crlearn cv --no-val); holdout: the paper's "
                        "70/10/20 by patient, test metrics printed (one small split: the lesson on splits)")
    t.add_argument("--folds", type=int, default=1,
                   help="K > 1: first cross-validate the recipe on K patient folds (table printed, cv.json written); "
                        "with --split all its chosen epoch count is used unless --epochs is given")
    _add_model_run(t, "run folder (default: runs/train-<profile>, or the first free runs/train-<profile>-N)")
    t.set_defaults(func=cmd_train)


def _eval_parsers(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="metrics of a checkpoint on a data folder")
    e.add_argument("--checkpoint", required=True, help="a best.pt or last.pt")
    _add_data(e)
    _add_model_run(e, "JSON file (default: eval-<data folder>.json beside the checkpoint)", quiet=False)
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="overlays and lesion areas for images, at the checkpoint's input size")
    pr.add_argument("--checkpoint", required=True, help="a best.pt or last.pt")
    pr.add_argument("images", nargs="+", help="grayscale PNG slices, or one CT volume in HU: a .nii/.nii.gz file or "
                                               "a DICOM series folder (writes labels.nii.gz, report.json, montage.png)")
    pr.add_argument("--classifier", default=None,
                    help="a classifier best.pt (crlearn classify train): segment only the slices it calls COVID-19 "
                         "(paper §2.8); areas.csv gains p_covid and segmented columns")
    pr.add_argument("--threshold", type=float, default=None,
                    help="with --classifier: segment a slice when P(COVID) >= this (default: the threshold the "
                         f"classifier's run chose for its any-slice rule, kept in its best.pt; else {choices.THRESHOLD})")
    _add_model_run(pr, "folder for areas.csv and the overlays (default: runs/predict)", quiet=False)
    from crlearn.cli.volume import add_scan_options

    add_scan_options(pr)  # --window, for a CT volume
    pr.set_defaults(func=cmd_predict)

    bu = sub.add_parser("burden", help="lesion / lung area per slice and patient against the truth (paper §3.4)")
    bu.add_argument("--checkpoint", required=True, help="a best.pt or last.pt with an 'infection' class")
    _add_data(bu)
    bu.add_argument("--split", choices=["all", "train", "val", "test", "held-out"], default="all",
                    help="which slices: all (default), or a part of the run's own split (its metrics.json), e.g. "
                         "held-out = validation + test patients")
    _add_model_run(bu, "JSON file, the figure beside it as .png (default: burden-<data folder>.json beside the "
                       "checkpoint)", quiet=False)
    bu.set_defaults(func=cmd_burden)

    a = sub.add_parser("ablate", help="the paper's Table 7 ablation, same split and seed for every row")
    _add_data(a)
    _add_profile(a)
    a.add_argument("--folds", type=int, default=None, help="repeat over K group folds: mean ± std")
    a.add_argument("--epochs", type=int, default=None, help="cap every row's epochs")
    a.add_argument("--seeds", type=int, default=1, help="train every fold with N seeds (--seed, --seed + 1, ...; the "
                   "folds stay those of --seed): paired comparisons run by run")
    a.add_argument("--fast", choices=["off", "eager", "graph", "compile"], default=None,
                   help="the training step's route (default: the profile's; graph and compile need CUDA)")
    a.add_argument("--save-models", action="store_true",
                   help="also write each row's model of the last fold and seed as a half-precision <row>.pt")
    a.add_argument("--classify", nargs="?", const=str(default_classification_dir()), default=None, metavar="DIR",
                   help="add Table 7's classification accuracy: each row's encoder, frozen, under a linear head "
                        "trained and tested on a labelled folder's group split (default DIR: data_sample/sarscov2_ct)")
    _add_budget(a, "cap every row's training time")
    _add_model_run(a, "folder for ablation.json/.md/.png (default: runs/ablate-<profile>)")
    a.set_defaults(func=cmd_ablate)


def _bench_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="benchmarks beside the peer: model step vs SMP U-Net, SSIM vs pytorch_msssim")
    kinds = b.add_subparsers(dest="what", required=True)
    m = kinds.add_parser("model", help="training-step time and TFLOP/s of CR-Net's variants and SMP's U-Net")
    m.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512], help="input sides in pixels")
    m.add_argument("--variants", nargs="+", choices=list(choices.VARIANTS), default=list(choices.VARIANTS),
                   help="Table 7 rows")
    m.add_argument("--width", type=float, default=1.0, help="CR-Net channel multiplier (1.0: the paper's)")
    m.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="memory layout of models and inputs (default: channels_last, as training uses)")
    m.add_argument("--batch-sizes", "--batch-size", dest="batch_sizes", type=int, nargs="+", default=[8],
                   help="samples per step, each timed (default 8)")
    m.add_argument("--modes", nargs="+", choices=["eager", "graph", "compile"], default=None,
                   help="routes of the step (crlearn.training.fastpath); default: eager and graph on CUDA, else eager")
    m.add_argument("--out", default=None, help="also write the rows to this JSON file; never overwritten without --force")
    m.add_argument("--force", action="store_true", help="overwrite an existing --out")
    s = kinds.add_parser("ssim", help="SSIM loss forward + backward: crlearn vs pytorch_msssim")
    s.add_argument("--size", type=int, default=512, help="input side in pixels")
    s.add_argument("--batch-size", type=int, default=8)
    for sp in (m, s):
        sp.add_argument("--steps", type=int, default=3, help="timed repetitions (the median is reported)")
        sp.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (use 3 or more on a GPU)")
        sp.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
        _add_device(sp)
    b.set_defaults(func=cmd_bench)


DESCRIPTION = """Train, evaluate and ablate the coarse-refine segmentation network of Huang et al. 2022 (IET Image
Processing, doi:10.1049/ipr2.12278) on the bundled chest CT slices. """ + DISCLAIMER

EXAMPLES = """examples:
  crlearn train                                   # the main job: quick on a CPU, full on a GPU
  crlearn evaluate --checkpoint runs/train-quick/best.pt
  crlearn predict --checkpoint runs/train-quick/best.pt data_sample/medseg_covid100/images/*.png
  crlearn ablate --folds 3                        # Table 7
  crlearn classify train                          # the slice classifier of section 2.8
  crlearn predict --checkpoint runs/train-quick/best.pt scan.nii.gz   # a whole CT volume (or a DICOM folder)
  crlearn SUBCOMMAND --help                       # the options of one command"""


class Parser(argparse.ArgumentParser):
    """argparse's parser with usage errors on one line (exit 2), like every other error of the command."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _device(text: str) -> str:
    """argparse type of --device: the spelling is checked here (no torch); availability when the command runs."""
    kind, _, index = text.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; expected {choices.DEVICES_HELP}")
    return text


def build_parser() -> argparse.ArgumentParser:
    from crlearn import __version__

    p = Parser(prog="crlearn", description=DESCRIPTION, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"crlearn {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _eval_parsers(sub)
    _bench_parser(sub)
    for add_group in (classify.add_classify_parser, cv.add_parser, volume.add_parser, compare.add_parser):
        add_group(sub)  # classify (§2.8), cv, convert (CT volumes to a PNG folder), compare (Table 4)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and usage errors end here, before torch is imported
    from crlearn.training.checkpoint import OutputExistsError
    from crlearn.training.distributed import error_line, rank_label
    from crlearn.training.perf import fit_threads_to_cpus, keep_freed_memory

    keep_freed_memory()  # faster CPU steps, process-wide: only the command does this (crlearn.training.perf)
    threads = fit_threads_to_cpus()  # no more threads than the container's CPU quota (crlearn.training.perf)
    if threads is not None:
        print(f"crlearn: {threads} CPU threads (the CPUs this process may use; set OMP_NUM_THREADS to choose)",
              file=sys.stderr)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return args.func(args)
    except (ValueError, OutputExistsError) as exc:  # DataError, CheckpointError and bad settings included
        print(f"crlearn {args.command}: error{rank_label()}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (continue a training run with --resume RUN/last.pt)" if args.command in ("train", "classify") else ""
        print(f"crlearn {args.command}: interrupted{rank_label()}{hint}", file=sys.stderr)
        return 130
    except Exception as exc:  # under torchrun: one line naming the rank instead of a traceback from every rank
        if not rank_label():
            raise
        print(f"crlearn {args.command}: {error_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
