"""Workaround 4 of crlearn.training.perf: what more torch threads than CPUs cost. One quick-profile training step
(``ssim_blur_cpu.quick_step``: CR-Net quick, batch 8, 128 px, hybrid loss, fused Adam, float32) timed with 1, 2, 4,
8 and 16 threads on the same machine, each in a fresh process (torch's thread pool is sized once per process);
median of ``--repeats`` after 3 warm-ups.

    python scripts/cpu_threads.py --out results/cpu_threads/threads.json

More threads than CPUs is what a container with a CPU quota (``docker run --cpus 2``) on a many-core host gets
by default: PyTorch counts the host's cores. Run under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` to
use the kernels of a CPU without AVX-512.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import statistics, sys, time, torch
sys.path.insert(0, {scripts!r})
from ssim_blur_cpu import _median_ms, quick_step
from crlearn.training import perf
torch.set_num_threads({threads})
model, step = quick_step()
with perf.narrow_batchnorm(model, torch.device("cpu")), perf.cpu_ssim_blur(torch.device("cpu")):
    print(_median_ms(step, {repeats}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from ssim_blur_cpu import write  # scripts/ is on sys.path

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    steps = {}
    for n in args.threads:
        code = CHILD.format(scripts=str(Path(__file__).parent), threads=n, repeats=args.repeats)
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
        steps[n] = round(float(out.stdout.strip().splitlines()[-1]), 1)
        print(f"{n} threads: {steps[n]} ms", flush=True)
    import torch
    from joblib import cpu_count

    write({"step_ms_by_threads": steps, "cpus_usable": cpu_count(), "os_cpu_count": os.cpu_count(),
           "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "env": {k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")},
           "torch": torch.__version__}, args.out)


if __name__ == "__main__":
    main()
