"""Slices per second of a whole-scan prediction (crlearn.tasks.scan.segment_scan) on a synthetic CT volume.

The volume is made in memory (crlearn.data.phantom, no nibabel or pydicom needed): by default 300 slices of
512 x 512, the phantom's chest repeated along z. The model is the quick profile's CR-Net with two outputs (lung,
infection) and untrained weights: the time does not depend on the weights, and with a lung channel the classical
lung field is not computed. Each setting runs once untimed on the first chunk of slices (warm-up), then is timed
over the whole volume: windowing, normalisation, resizing to the model's size and back, five-view TTA (or one
pass), the masks and the label volume.

    python scripts/scan_throughput.py [--device cpu|cuda] [--model quick|full] [--size N] [--slices 300]
                                      [--batch-size 8] [--threads N] [--json FILE]

Run from the repository root (or with crlearn installed). The lead runs the same on a GPU with --device cuda.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from crlearn.data.phantom import chest_phantom
from crlearn.data.volumes import Volume
from crlearn.data.windowing import LUNG
from crlearn.nn.model import CRNet, CRNetConfig
from crlearn.report import hardware
from crlearn.tasks.scan import segment_scan
from crlearn.training.device import pick_device

NAMES = ["lung", "infection"]


def synthetic_volume(slices: int, side: int) -> Volume:
    """``slices`` x ``side`` x ``side`` voxels of 1.0 x 0.7 x 0.7 mm: a phantom chest drawn on 30 thick slices, each
    repeated along z (nearest-neighbour), to keep the drawing cheap."""
    n = min(30, slices)
    reps = -(-slices // n)
    block = chest_phantom((n, side, side), (float(reps), 0.7, 0.7))
    return Volume(np.repeat(block.hu, reps, axis=0)[:slices], (1.0, 0.7, 0.7))


def time_scan(model: CRNet, volume: Volume, size: int, device: torch.device, tta: bool, batch_size: int) -> dict:
    warm = Volume(volume.hu[: 4 * batch_size], volume.spacing)
    segment_scan(model, warm, size, NAMES, *LUNG, device=device, tta=tta, batch_size=batch_size, progress=False)
    start, cpu_start = time.perf_counter(), time.process_time()
    segment_scan(model, volume, size, NAMES, *LUNG, device=device, tta=tta, batch_size=batch_size, progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # cpu_seconds: CPU time of this process, all its threads (on a shared machine, wall time / cpu time shows the
    # share of the cores it got)
    return {"tta": tta, "seconds": round(seconds, 2), "slices_per_second": round(len(volume.hu) / seconds, 2),
            "cpu_seconds": round(cpu, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--model", choices=["quick", "full"], default="quick", help="CRNetConfig.quick() or .full()")
    p.add_argument("--size", type=int, default=None, help="model input side (default: 128 quick, 512 full)")
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--side", type=int, default=512, help="slice side in pixels")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    config = getattr(CRNetConfig, args.model)(num_classes=len(NAMES))
    size = args.size or (128 if args.model == "quick" else 512)
    torch.manual_seed(0)
    model = CRNet(config)
    volume = synthetic_volume(args.slices, args.side)
    info = {"device": str(device), "hardware": hardware(), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "model": args.model, "parameters": model.num_parameters(),
            "input_size": size, "volume": list(volume.hu.shape), "batch_size": args.batch_size}
    print(json.dumps(info))
    rows = []
    for tta in (False, True):
        rows.append({**info, **time_scan(model, volume, size, device, tta, args.batch_size)})
        print(f"TTA {'on ' if tta else 'off'}: {rows[-1]['seconds']:.1f} s, {rows[-1]['slices_per_second']:.2f} slices/s, "
              f"{rows[-1]['cpu_seconds']:.1f} CPU s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
