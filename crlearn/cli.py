"""The ``crlearn`` command: train, evaluate, predict, ablate, bench.

    crlearn train [--data DIR] [--profile auto|quick|full] [--classes ggo consolidation ... | --merge] [--out RUN]
    crlearn evaluate --checkpoint RUN/best.pt [--data DIR]
    crlearn predict --checkpoint RUN/best.pt IMAGE.png ...
    crlearn ablate [--folds K] [--profile P]
    crlearn bench model|ssim

Bad input ends with a one-line error and exit code 2. Default output paths never overwrite anything (a numeric
suffix is added); an explicit ``--out`` that already exists needs ``--force``.
For teaching only: nothing this command prints or draws is a diagnosis.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

DISCLAIMER = "crlearn is for teaching only: these numbers and pictures are not a diagnosis."


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _fresh_path(path: Path, explicit: bool, force: bool, is_dir: bool) -> Path:
    """Where to write: an explicit existing path needs --force; a default one gets a -2, -3... suffix."""
    exists = path.exists() and (not is_dir or any(path.iterdir()))
    if not exists or force:
        return path
    if explicit:
        raise UsageError(f"{path} already exists; pass --force to overwrite it or choose another --out")
    for k in range(2, 10_000):
        cand = path.with_name(f"{path.stem}-{k}{path.suffix}")
        if not cand.exists():
            return cand
    raise UsageError(f"{path}: no free output name")


def _save_fig(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    from .train import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _metrics_table(metrics: dict[str, Any], title: str) -> str:
    from .metrics import format_table

    return f"{title}\n{format_table(metrics)}"


# ----------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .ablation import hardware
    from .data import SegmentationDataset, split_by_group
    from .model import CRNet
    from .train import PROFILES, atomic_write_json, evaluate, fit, pick_device, resolve_profile
    from .viz import plot_history, plot_overlays

    profile = resolve_profile(args.profile)
    prof = PROFILES[profile]
    overrides: dict[str, Any] = {"seed": args.seed}
    for name in ("epochs", "size", "batch_size", "lr", "max_minutes"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.bce_only:
        overrides["hybrid"] = False
    cfg = prof.train_config(**overrides)
    out = _fresh_path(Path(args.out or f"runs/train-{profile}"), args.out is not None, args.force, is_dir=True)
    device = pick_device(args.device)

    # The task: --classes/--merge, else the profile's default (quick: merged infection; full: each lesion class).
    if args.classes is None and not args.merge:
        args.merge = prof.merge
    full = SegmentationDataset(args.data, classes=args.classes, merge=args.merge)
    split = split_by_group(full.groups, seed=args.seed)
    names = full.class_names
    kw = dict(classes=args.classes, merge=args.merge, size=cfg.size)
    train_set = SegmentationDataset(args.data, augment=cfg.augment, indices=split["train"], **kw)
    val_set = SegmentationDataset(args.data, indices=split["val"], **kw)
    torch.manual_seed(cfg.seed)
    model = CRNet(prof.model_config(num_classes=len(names), **({"variant": args.variant} if args.variant else {})))
    print(
        f"crlearn train: profile {profile} on {device} ({hardware()}); {model.num_parameters():,} parameters; "
        f"classes {names}; {len(split['train'])}/{len(split['val'])}/{len(split['test'])} train/val/test slices "
        f"({len(set(full.groups))} patient groups); {cfg.size}px, up to {cfg.epochs} epochs -> {out}"
    )
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    history = fit(model, train_set, val_set, cfg, names, run_dir=out, resume=args.resume, device=device,
                  progress=not args.quiet)
    train_seconds = time.perf_counter() - t0

    results: dict[str, Any] = {
        "profile": profile,
        "hardware": hardware(),
        "device": str(device),
        "data": str(Path(args.data).resolve()),
        "class_names": names,
        "split": split,
        "train_seconds": train_seconds,
        "epochs_run": len(history["epoch"]),
        "tta": args.tta,
        "note": DISCLAIMER,
    }
    for part in ("val", "test"):
        ds = SegmentationDataset(args.data, classes=args.classes, merge=args.merge, indices=split[part])
        results[part] = evaluate(model, ds, cfg.size, device, tta=args.tta)
    atomic_write_json(out / "metrics.json", results)
    _save_fig(plot_history(history, f"profile {profile}, {hardware()}"), out / "learning_curve.png")
    test = SegmentationDataset(args.data, classes=args.classes, merge=args.merge, indices=split["test"][:4])
    from .train import predict

    _, pred = predict(model, test.images, cfg.size, device, tta=args.tta)
    fig = plot_overlays(test.images, test.one_hot(test.labels), pred, names, titles=[r.name for r in test.records])
    _save_fig(fig, out / "test_overlays.png")
    print(f"trained {len(history['epoch'])} epochs in {train_seconds:.0f} s")
    title = f"test split ({len(split['test'])} slices), pooled at original resolution{_tta_note(args.tta)}:"
    print(_metrics_table(results["test"], title))
    print(f"wrote {out}/: best.pt last.pt history.json metrics.json learning_curve.png test_overlays.png")
    print(DISCLAIMER)
    return 0


# ----------------------------------------------------------------------------- evaluate and predict


def _tta_note(tta: bool) -> str:
    return ", five-view test-time augmentation" if tta else ", single pass (--no-tta)"


def _load_model(path: str):
    from .train import load_checkpoint, pick_device

    device = pick_device(None)
    model, ckpt = load_checkpoint(path, device)
    return model, ckpt, device


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import DataError, SegmentationDataset, resolve_classes
    from .train import atomic_write_json, evaluate

    model, ckpt, device = _load_model(args.checkpoint)
    names = ckpt["class_names"]
    try:
        resolve_classes(None if names == ["infection"] else names, merge=names == ["infection"])
    except DataError as exc:
        raise UsageError(f"{args.checkpoint}: its classes {names} do not fit the data's labels ({exc})") from None
    merged = names == ["infection"]
    ds = SegmentationDataset(args.data, classes=None if merged else names, merge=merged)
    size = ckpt["train_config"]["size"]
    metrics = evaluate(model, ds, size, device, tta=args.tta)
    out = _fresh_path(
        Path(args.out or Path(args.checkpoint).with_name(f"eval-{Path(args.data).resolve().name}.json")),
        args.out is not None, args.force, is_dir=False,
    )
    result = {"checkpoint": str(args.checkpoint), "data": str(Path(args.data).resolve()), "n_slices": len(ds),
              "class_names": names, "tta": args.tta, "metrics": metrics, "note": DISCLAIMER}
    atomic_write_json(out, result)
    print(_metrics_table(metrics, f"{args.data}: {len(ds)} slices, pooled at original resolution{_tta_note(args.tta)}:"))
    print(f"wrote {out}")
    print(DISCLAIMER)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .data import read_image
    from .train import atomic_write_bytes, predict
    from .viz import plot_overlays

    model, ckpt, device = _load_model(args.checkpoint)
    names, size = ckpt["class_names"], ckpt["train_config"]["size"]
    out = _fresh_path(Path(args.out or "runs/predict"), args.out is not None, args.force, is_dir=True)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in args.images:
        image = torch.from_numpy(read_image(path))[None, None]  # (1, 1, H, W)
        probs, labels = predict(model, image, size, device, tta=args.tta)
        h, w = image.shape[-2:]
        for k, name in enumerate(names):
            px = int(labels[0, k].sum())
            rows.append({"image": str(path), "class": name, "pixels": px, "fraction": px / (h * w)})
        fig = plot_overlays(image, None, labels, names, titles=[Path(path).stem])
        _save_fig(fig, out / f"{Path(path).stem}_overlay.png")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["image", "class", "pixels", "fraction"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "areas.csv", buf.getvalue().encode())
    print(buf.getvalue().rstrip())
    print(f"wrote {out}/: areas.csv and one overlay PNG per image")
    print(DISCLAIMER)
    return 0


# ----------------------------------------------------------------------------- ablate and bench


def cmd_ablate(args: argparse.Namespace) -> int:
    from .ablation import ablation_markdown, run_ablation
    from .train import atomic_write_bytes, atomic_write_json, resolve_profile
    from .viz import plot_ablation

    profile = resolve_profile(args.profile)
    out = _fresh_path(Path(args.out or f"runs/ablate-{profile}"), args.out is not None, args.force, is_dir=True)
    result = run_ablation(args.data, profile, folds=args.folds, seed=args.seed, epochs=args.epochs,
                          max_minutes=args.max_minutes, progress=not args.quiet)
    result.pop("models")
    out.mkdir(parents=True, exist_ok=True)
    md = ablation_markdown(result)
    atomic_write_json(out / "ablation.json", result)
    atomic_write_bytes(out / "ablation.md", md.encode())
    _save_fig(plot_ablation(result["rows"], f"profile {profile}, {result['hardware']}"), out / "ablation.png")
    print(md)
    print(f"wrote {out}/: ablation.json ablation.md ablation.png")
    print(DISCLAIMER)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "model":
        from .bench import bench_model, format_table

        rows = bench_model(sizes=tuple(args.sizes), batch_size=args.batch_size, steps=args.steps,
                           warmup=args.warmup, width=args.width, verbose=False, channels_last=args.channels_last)
        print(format_table(rows))
    else:
        from .bench_ssim import bench_ssim

        bench_ssim(batch_size=args.batch_size, size=args.sizes[-1], repeats=args.steps)
    return 0


# ----------------------------------------------------------------------------- argument parsing


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .data import default_data_dir

    p = argparse.ArgumentParser(prog="crlearn", description=__doc__.split("\n\n")[0] + " " + DISCLAIMER)
    p.add_argument("--version", action="version", version=f"crlearn {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def data_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data", default=str(default_data_dir()),
                        help="PNG folder: images/, masks/, optional index.csv (default: the bundled data_sample/)")

    def common(sp: argparse.ArgumentParser, default_profile: bool = True) -> None:
        sp.add_argument("--out", help="output folder (default: runs/<command>-<profile>, never overwritten)")
        sp.add_argument("--force", action="store_true", help="overwrite an existing --out")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    def tta_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--no-tta", dest="tta", action="store_false",
                        help="one forward pass per slice instead of averaging the five training views")

    t = sub.add_parser("train", help="train CR-Net on a PNG folder and evaluate it on its test split")
    data_arg(t)
    t.add_argument("--profile", default=None, help="auto (default; $CRLEARN_PROFILE), quick or full")
    t.add_argument("--classes", nargs="+", default=None,
                   help="lesion classes, one output each (full profile's default: ggo consolidation effusion)")
    t.add_argument("--merge", action="store_true",
                   help="merge the classes into one 'infection' class (Table 7; the quick profile's default)")
    t.add_argument("--variant", choices=["unet", "unet_aspp", "crnet"], default=None, help="Table 7 row (default crnet)")
    t.add_argument("--bce-only", action="store_true", help="plain BCE instead of the hybrid loss")
    t.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    t.add_argument("--size", type=int, default=None, help="override the profile's input size (multiple of 32)")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--max-minutes", type=float, default=None, help="stop training after this many minutes")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    t.add_argument("--resume", default=None, help="continue the run of a last.pt checkpoint")
    tta_arg(t)
    common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="metrics of a checkpoint on a PNG folder")
    e.add_argument("--checkpoint", required=True)
    data_arg(e)
    tta_arg(e)
    common(e)
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="overlays and lesion areas for images")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("images", nargs="+", help="grayscale PNG slices")
    tta_arg(pr)
    common(pr)
    pr.set_defaults(func=cmd_predict)

    a = sub.add_parser("ablate", help="the paper's Table 7 ablation, same split and seed for every row")
    data_arg(a)
    a.add_argument("--profile", default=None, help="auto (default; $CRLEARN_PROFILE), quick or full")
    a.add_argument("--folds", type=int, default=None, help="repeat over K group folds: mean ± std")
    a.add_argument("--epochs", type=int, default=None, help="cap every row's epochs")
    a.add_argument("--max-minutes", type=float, default=None, help="cap every row's training time")
    a.add_argument("--seed", type=int, default=0)
    common(a)
    a.set_defaults(func=cmd_ablate)

    b = sub.add_parser("bench", help="benchmarks: model step vs SMP U-Net, SSIM vs pytorch_msssim")
    b.add_argument("what", choices=["model", "ssim"])
    b.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    b.add_argument("--batch-size", type=int, default=8)
    b.add_argument("--steps", type=int, default=3)
    b.add_argument("--warmup", type=int, default=1, help="untimed steps first (model; use 3 or more on a GPU)")
    b.add_argument("--width", type=float, default=1.0)
    b.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="memory layout of models and inputs (default: channels_last, as training uses)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .data import DataError
    from .train import CheckpointError, keep_freed_memory

    args = build_parser().parse_args(argv)
    keep_freed_memory()  # faster CPU training steps (see its docstring)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return args.func(args)
    except (UsageError, DataError, CheckpointError) as exc:
        print(f"crlearn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
