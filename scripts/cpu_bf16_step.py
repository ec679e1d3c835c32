"""Time one quick-profile training step on the CPU in float32 and under bfloat16 autocast (a lever for issue 20's
main-job time; adopted as ``TrainConfig.cpu_amp`` after cross-validation, ``results/cv_bf16/``, on only where the CPU
computes bf16 natively: elsewhere it runs emulated, slower).

    python scripts/cpu_bf16_step.py --out results/cpu_bf16_step.json

The step is ``ssim_blur_cpu.quick_step`` (CR-Net quick, batch 8, 128 px, hybrid loss with deep supervision, fused
Adam, channels_last), with the CPU workarounds of crlearn.training.perf on; the two variants (two models of the same
seed) interleaved, median of ``--repeats``.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch
from ssim_blur_cpu import cli, quick_step, write  # the same model, batch and step (scripts/ is on sys.path)


def main() -> None:
    args = cli(__doc__, 12)
    from crlearn.report import hardware
    from crlearn.training import perf

    cpu = torch.device("cpu")
    steps = {bf16: quick_step(bf16) for bf16 in (False, True)}
    times: dict[bool, list[float]] = {False: [], True: []}
    with contextlib.ExitStack() as stack:
        for model, _ in steps.values():
            stack.enter_context(perf.narrow_batchnorm(model, cpu))
        stack.enter_context(perf.cpu_ssim_blur(cpu))
        for bf16 in (False, True, False, True):  # warm-up
            steps[bf16][1]()
        for _ in range(args.repeats):
            for bf16, (_, step) in steps.items():
                t0 = time.perf_counter()
                step()
                times[bf16].append(time.perf_counter() - t0)
    fp32, bf = (statistics.median(times[b]) * 1e3 for b in (False, True))
    write({"fp32_step_ms": round(fp32, 1), "bf16_autocast_step_ms": round(bf, 1), "speedup": round(fp32 / bf, 2),
           "threads": args.threads, "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "hardware": hardware(), "torch": torch.__version__}, args.out)


if __name__ == "__main__":
    main()
