"""Measure workaround 3 of crlearn.training.perf: the SSIM blur as depthwise convolutions vs banded matrix products
on CPU, alone (forward + backward of an (8, 5, 128, 128) stack) and inside one quick-profile training step (model,
deep-supervised hybrid loss, backward, Adam), in one run, the two routes interleaved.

    python scripts/ssim_blur_cpu.py --threads 2 --out results/ssim_blur_cpu.json

Run it again under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` to see a CPU without AVX-512.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def _median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def cli(doc: str, repeats: int) -> argparse.Namespace:
    """The options of the CPU step scripts (this one and ``cpu_bf16_step.py``); sets torch's thread count."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def quick_step(bf16: bool = False):
    """A quick-profile CR-Net (seed 0, channels_last), fused Adam and one fixed random batch of 8 at 128 px;
    returns ``(model, step)``, ``step()`` one training step (forward under bf16 autocast when asked)."""
    from crlearn import losses
    from crlearn.nn.model import CRNet
    from crlearn.training.config import PROFILES

    torch.manual_seed(0)
    model = CRNet(PROFILES["quick"].model_config(num_classes=1)).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    x = torch.rand(8, 1, 128, 128).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(8, 1, 128, 128) > 0.8).float()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = losses.deep_supervision_loss(out, y, hybrid=True)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return model, step


def write(out: dict, path: Path | None) -> None:
    print(json.dumps(out, indent=1))
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")


def main() -> None:
    args = cli(__doc__, 15)
    from crlearn import losses
    from crlearn.training import perf

    routes = {"conv": losses._gaussian_filter_conv, "banded": perf.gaussian_blur_banded}
    g = losses._gaussian_1d(11, 1.5, torch.float32, torch.device("cpu"))
    stack = torch.rand(8, 5, 128, 128, requires_grad=True)
    model, step = quick_step()

    out = {"threads": args.threads, "cpu": platform.processor() or platform.machine(),
           "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "env": {k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}}
    with perf.narrow_batchnorm(model, torch.device("cpu")):
        for name, blur in routes.items():
            with losses.ssim_blur(blur):  # the blur the loss uses inside this block
                out[f"blur_fwd_bwd_ms_{name}"] = _median_ms(lambda: blur(stack, g).square().sum().backward(),
                                                            args.repeats)
                out[f"train_step_ms_{name}"] = _median_ms(step, args.repeats)
    out["blur_speedup"] = out["blur_fwd_bwd_ms_conv"] / out["blur_fwd_bwd_ms_banded"]
    out["step_speedup"] = out["train_step_ms_conv"] / out["train_step_ms_banded"]
    write(out, args.out)


if __name__ == "__main__":
    main()
