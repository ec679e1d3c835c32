"""CT volumes on the command line: ``crlearn convert`` (volumes to a PNG data folder) and the whole-scan side of
``crlearn predict`` (a NIfTI file or a DICOM series folder instead of PNG slices). :mod:`crlearn.cli.main` wires
both in; the work is :mod:`crlearn.data.volumes`, :mod:`crlearn.data.windowing` and :mod:`crlearn.tasks.scan`.

    crlearn convert SCAN.nii.gz [SCAN2 ...] [--masks MASK.nii.gz ...] --out DIR [--window lung|mediastinal|L,W]
                    [--labels JSON] [--every N] [--labelled-only] [--force]
    crlearn predict --checkpoint RUN/best.pt SCAN.nii.gz|DICOM_FOLDER [--window W] [--classifier CLS.pt] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crlearn.report import DISCLAIMER

CONVERT_EPILOG = """examples:
  crlearn convert scans/coronacases_001.nii.gz --masks masks/coronacases_001.nii.gz --out data/my_ct \\
      --labels '{"lung": [1, 2], "infection": 2}'
  crlearn convert dicom/patient7/ --out data/unlabelled --window lung --every 2
  crlearn train --data data/my_ct --classes lung infection

Every slice is windowed (HU -> [0, 1]) with --window and saved as an 8-bit PNG; window.json and README.md in the
folder record the window, and checkpoints trained on the folder keep it, so crlearn predict windows a scan alike."""
WINDOW_HELP = "lung (level -600, width 1500 HU), mediastinal (40, 400) or LEVEL,WIDTH in HU"


def _stem(path: Path) -> str:
    """A scan's patient name: the file name without .nii/.nii.gz, or the DICOM folder's name."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_scan_input(paths: Sequence[str]) -> bool:
    """Whether ``crlearn predict``'s inputs are one volume (a ``.nii``/``.nii.gz`` file or a DICOM folder) rather
    than PNG slices; a volume among other inputs is a ``ValueError``."""
    from crlearn.data.volumes import is_volume_path

    volumes = [p for p in paths if is_volume_path(p)]
    if volumes and len(paths) > 1:
        raise ValueError(f"{volumes[0]}: give one CT volume (a .nii/.nii.gz file or a DICOM folder) at a time, not "
                         f"with other inputs")
    return bool(volumes)


# ----------------------------------------------------------------------------- crlearn predict SCAN


def _scan_window(args: argparse.Namespace, ckpt: dict[str, Any]) -> tuple[dict[str, Any], str]:
    from crlearn.data.windowing import checkpoint_window, parse_window, window_record

    if getattr(args, "window", None):
        name, level, width = parse_window(args.window)
        return window_record(name, level, width, "--window"), f"{name} (level {level:g} / width {width:g} HU), " \
                                                             f"from --window"
    return checkpoint_window(ckpt)


def _write_scan(out: Path, volume: Any, prediction: Any, report: dict[str, Any], win: dict[str, Any]) -> list[str]:
    """labels.nii.gz (over the input), report.json and montage.png in ``out``; returns the file names."""
    from crlearn.data.volumes import label_nifti, nifti_bytes
    from crlearn.report import save_figure
    from crlearn.tasks.scan import plot_scan_montage
    from crlearn.training.checkpoint import atomic_write_bytes, atomic_write_json

    atomic_write_bytes(out / "labels.nii.gz", nifti_bytes(label_nifti(volume, prediction.labels)))
    atomic_write_json(out / "report.json", report)
    save_figure(plot_scan_montage(volume, prediction.labels, report, win["level"], win["width"]), out / "montage.png")
    return ["labels.nii.gz", "report.json", "montage.png"]


def predict_scan(args: argparse.Namespace) -> int:
    """``crlearn predict`` on one CT volume: every slice through the checkpoint, a label volume, a report, a
    montage (:mod:`crlearn.tasks.scan`)."""
    from crlearn.cli.main import _burden_classes, _load_model, _normalization, _out
    from crlearn.data.volumes import read_volume
    from crlearn.tasks.scan import SCAN_LABELS, scan_report, scan_summary, segment_scan

    volume = read_volume(args.images[0])  # a bad file is refused before the model loads
    model, ckpt, device = _load_model(args)
    names, size = _burden_classes(args.checkpoint, ckpt["class_names"]), ckpt["train_config"]["size"]
    win, note = _scan_window(args, ckpt)
    classifier, cls_ckpt = None, None
    if args.classifier is not None:
        from crlearn.tasks.classifier import load_classifier

        classifier, cls_ckpt = load_classifier(args.classifier, device)
    out = _out(args, "runs/predict")
    out.mkdir(parents=True, exist_ok=True)
    pred = segment_scan(model, volume, size, names, win["level"], win["width"], _normalization(ckpt), device,
                        args.tta, classifier=classifier, classifier_ckpt=cls_ckpt, threshold=args.threshold)
    context = {"checkpoint": str(args.checkpoint), "class_names": names, "size": size, "tta": args.tta,
               "normalize": _normalization(ckpt), "window": win, "window_note": note, "labels": SCAN_LABELS}
    if classifier is not None:
        context.update(classifier=str(args.classifier), threshold=args.threshold)
    report = scan_report(volume, pred, **context)
    files = _write_scan(out, volume, pred, report, win)
    print(scan_summary(report))
    print(f"{len(volume.hu)} slices in {pred.seconds:.1f} s ({report['slices_per_second']:.1f} slices/s) on {device}")
    print(f"wrote {out}/: {' '.join(files)} (labels: 0 outside the lung, 1 lung, 2 lesion; the input's affine)")
    print(DISCLAIMER)
    return 0


def add_scan_options(predict_parser: argparse.ArgumentParser) -> None:
    """``crlearn predict``'s option for volume input (PNG slices ignore it)."""
    predict_parser.add_argument("--window", default=None, metavar="W",
                                help=f"with a CT volume: window the HU with this instead of the checkpoint's training "
                                     f"window (default; lung when unknown): {WINDOW_HELP}")


# ----------------------------------------------------------------------------- crlearn convert


def _labels_json(text: str | None, masks: Sequence[Any], where: str) -> dict[str, Any] | None:
    """The folder's labels.json: ``--labels`` (JSON text or a file), else every mask value as one ``infection``
    class; each value found in the masks must be declared (:func:`crlearn.data.labels.check_labels`)."""
    import numpy as np

    from crlearn.data.errors import DataError
    from crlearn.data.labels import check_labels

    if not masks:
        return None
    found = sorted({int(v) for m in masks for v in np.unique(m) if v})
    if text is None:
        return {"background": 0, "infection": found} if found else None
    try:
        raw = json.loads(Path(text).read_text()) if Path(text).is_file() else json.loads(text)
    except ValueError as exc:
        raise DataError(f"--labels: neither JSON text nor a JSON file ({exc})") from None
    declared = {v for vals in check_labels(raw, "--labels").values() for v in vals}
    missing = [v for v in found if v not in declared]
    if missing:
        raise DataError(f"{where}: mask value(s) {missing} not declared by --labels {json.dumps(raw)}")
    return raw


def _png(array: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _write_volume_slices(out: Path, volume: Any, patient: str, win: tuple[str, float, float],
                         args: argparse.Namespace) -> list[dict[str, Any]]:
    """images/ (and masks/) PNGs of one volume; returns its index.csv rows."""
    from crlearn.data.volumes import png_slices
    from crlearn.training.checkpoint import atomic_write_bytes

    rows = []
    for k, image, mask in png_slices(volume, win[1], win[2], args.every, args.labelled_only):
        name = f"{patient}_{k:04d}"
        atomic_write_bytes(out / "images" / f"{name}.png", _png(image))
        if mask is not None:
            atomic_write_bytes(out / "masks" / f"{name}.png", _png(mask))
        rows.append({"slice_id": name, "patient": patient, "slice_index": k,
                     "z_mm": round(k * volume.spacing[0], 3), "source": volume.source})
    return rows


def _readme(win: tuple[str, float, float], sources: Sequence[str], n: int, labels: Any) -> str:
    name, level, width = win
    return (f"# CT slices converted by crlearn convert\n\n{n} axial slices of {len(sources)} volume(s), windowed "
            f"with the **{name} window: level {level:g} HU, width {width:g} HU** ({level - width / 2:g} HU -> 0, "
            f"{level + width / 2:g} HU -> 255), saved as 8-bit PNG. window.json holds the same in machine-readable "
            f"form; a model trained on this folder records it in its checkpoint.\n\n"
            f"- images/PATIENT_NNNN.png: slice NNNN from the lowest (feet) up; anterior up, the patient's right on the "
            f"image left\n- masks/: the label volume's slices, values as in labels.json "
            f"({json.dumps(labels) if labels else 'no masks given'})\n"
            f"- index.csv: slice_id, patient (use it as the group of every split), slice_index, z_mm, source\n\n"
            f"Sources:\n" + "".join(f"- {s}\n" for s in sources) + f"\n{DISCLAIMER}\n")


def _read_all(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """``(patient name, Volume)`` of every input, masks paired in order; names must differ."""
    from crlearn.data.errors import DataError
    from crlearn.data.volumes import read_volume

    masks = args.masks or [None] * len(args.volumes)
    if len(masks) != len(args.volumes):
        raise DataError(f"--masks: {len(masks)} mask(s) for {len(args.volumes)} volume(s); give one per volume, in order")
    out: dict[str, Any] = {}
    for path, mask in zip(args.volumes, masks):
        name = _stem(Path(path))
        if name in out:
            raise DataError(f"{path}: a second volume named {name!r}; patient names come from the file names")
        out[name] = read_volume(path, mask)
    return list(out.items())


def cmd_convert(args: argparse.Namespace) -> int:
    from crlearn.data.windowing import WINDOW_FILE, parse_window, window_record
    from crlearn.training.checkpoint import (
        atomic_write_bytes,
        atomic_write_json,
        fresh_path,
    )

    win = parse_window(args.window)
    if args.every < 1 or (args.labelled_only and not args.masks):
        raise ValueError("--every must be at least 1, and --labelled-only needs --masks")
    volumes = _read_all(args)
    labels = _labels_json(args.labels, [v.labels for _, v in volumes if v.labels is not None], str(args.masks))
    out = fresh_path(args.out, explicit=True, force=args.force, is_dir=True)
    for sub in ("images", "masks") if labels else ("images",):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows = [row for name, vol in volumes for row in _write_volume_slices(out, vol, name, win, args)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["slice_id", "patient", "slice_index", "z_mm", "source"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "index.csv", buf.getvalue().encode())
    if labels:
        atomic_write_json(out / "labels.json", labels)
    sources = [v.source for _, v in volumes]
    atomic_write_json(out / WINDOW_FILE, window_record(*win, note=f"crlearn convert from {', '.join(sources)}"))
    atomic_write_bytes(out / "README.md", _readme(win, sources, len(rows), labels).encode())
    print(f"{len(rows)} slices of {len(volumes)} volume(s), {win[0]} window (level {win[1]:g}, width {win[2]:g} HU)")
    print(f"wrote {out}/: images/{' masks/' if labels else ''} index.csv{' labels.json' if labels else ''} "
          f"{WINDOW_FILE} README.md")
    return 0


def add_parser(sub: Any) -> None:
    """The ``convert`` command."""
    c = sub.add_parser("convert", help="CT volumes (+ masks) to the PNG data folder the training commands read",
                       epilog=CONVERT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("volumes", nargs="+", help="NIfTI files (.nii, .nii.gz) or DICOM series folders, in HU")
    c.add_argument("--masks", nargs="+", default=None, help="a NIfTI label volume per input volume, in the same order")
    c.add_argument("--out", required=True, help="the data folder to write; never overwritten without --force")
    c.add_argument("--force", action="store_true", help="overwrite an existing --out")
    c.add_argument("--window", default="lung", help=f"{WINDOW_HELP} (default lung)")
    c.add_argument("--labels", default=None,
                   help="labels.json for the masks, as JSON text or a file, e.g. '{\"lung\": [1, 2], \"infection\": 2}' "
                        "(default: every mask value is one 'infection' class)")
    c.add_argument("--every", type=int, default=1, help="keep every N-th slice (default 1: all)")
    c.add_argument("--labelled-only", action="store_true", help="keep only slices whose mask is not empty")
    c.set_defaults(func=cmd_convert)
