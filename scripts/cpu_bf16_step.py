"""Time one quick-profile training step on the CPU in float32 and under bfloat16 autocast (a lever for issue 20's
main-job time, not adopted: its accuracy is not cross-validated, and CPUs without native bf16 run it emulated).

    python scripts/cpu_bf16_step.py --out results/cpu_bf16_step.json

The step is the engine's (CR-Net quick, batch 8, 128 px, hybrid loss with deep supervision, fused Adam, channels_last,
the CPU workarounds of crlearn.training.perf on); both variants interleaved, median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from crlearn import losses
    from crlearn.nn.model import CRNet
    from crlearn.report import hardware
    from crlearn.training import perf
    from crlearn.training.config import PROFILES

    torch.manual_seed(0)
    model = CRNet(PROFILES["quick"].model_config(num_classes=1)).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    x = torch.rand(8, 1, 128, 128).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(8, 1, 128, 128) > 0.8).float()

    def step(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = losses.deep_supervision_loss(out, y, hybrid=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    times: dict[bool, list[float]] = {False: [], True: []}
    cpu = torch.device("cpu")
    with perf.narrow_batchnorm(model, cpu), perf.cpu_ssim_blur(cpu):
        for bf16 in (False, True, False, True):  # warm-up
            step(bf16)
        for _ in range(args.repeats):
            for bf16 in (False, True):
                times[bf16].append(step(bf16))
    fp32, bf = (statistics.median(times[b]) * 1e3 for b in (False, True))
    out = {"fp32_step_ms": round(fp32, 1), "bf16_autocast_step_ms": round(bf, 1), "speedup": round(fp32 / bf, 2),
           "threads": args.threads, "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "hardware": hardware(), "torch": torch.__version__}
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
