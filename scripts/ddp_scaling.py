"""Data-parallel scaling of CR-Net's training step: step time and samples/s for 1 and N processes.

Each row times the training step ``crlearn train`` runs (forward, the hybrid deep-supervision loss, backward, fused
Adam; under ``torchrun`` with DistributedDataParallel and synchronised BatchNorm: :mod:`crlearn.training.distributed`)
on random inputs of the profile's size; the data pipeline is not timed. Rows:

- ``1, no DDP``: one plain process (what ``crlearn train`` does without torchrun);
- ``N, DDP``: ``torchrun --standalone --nproc-per-node=N``, the global batch (default: the profile's, the paper's 8)
  split over the N processes (strong scaling: the same training, faster); ``--per-rank-batch B`` keeps B per process
  instead (weak scaling: a larger global batch).

CPU: Gloo, ``--threads`` intra-op threads per process (default 1). CUDA: NCCL, one GPU per process, bf16 autocast
as in training; the full profile's CUDA-graph step does not compose with DDP, so every row here is the eager step.

    python scripts/ddp_scaling.py --device cpu --profile quick --nprocs 1 2            # here
    python scripts/ddp_scaling.py --device cuda --profile full --nprocs 1 2 4 8        # a multi-GPU machine

Prints a markdown table (and writes it with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def worker(args: argparse.Namespace) -> None:
    """One process of one row: time ``args.steps`` steps after ``args.warmup``; rank 0 writes the times to JSON."""
    import torch

    from crlearn.losses import deep_supervision_loss
    from crlearn.nn.model import CRNet
    from crlearn.training import distributed
    from crlearn.training.config import PROFILES
    from crlearn.training.device import autocast, autocast_dtype, to_device
    from crlearn.training.engine import replicas

    torch.set_num_threads(args.threads)
    prof = PROFILES[args.profile]
    cfg = prof.train_config(fast="off", batch_size=args.batch_size or prof.train["batch_size"])
    with distributed.process_group(args.device) as launch:
        device = launch.device
        torch.backends.cudnn.benchmark = device.type == "cuda"  # as fit() does: fixed input size
        per_rank = args.per_rank_batch or distributed.per_rank_batch(cfg.batch_size)
        torch.manual_seed(0)
        model = CRNet(prof.model_config(num_classes=1)).to(device=device, memory_format=torch.channels_last)
        trained, stepped = replicas(model, device, cfg)
        if args.unsynced_bn and distributed.active():  # diagnostic: DDP without synchronised BatchNorm
            trained, stepped = model, distributed.wrap(model, device)
        opt = torch.optim.Adam(trained.parameters(), lr=cfg.lr, fused=True)
        g = torch.Generator().manual_seed(launch.rank)
        x = to_device(torch.rand(per_rank, 1, cfg.size, cfg.size, generator=g), device)
        y = to_device((torch.rand(per_rank, 1, cfg.size, cfg.size, generator=g) > 0.8).float(), device)
        dtype = autocast_dtype(device, cfg.amp)
        stepped.train()
        times = []
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            with autocast(device, dtype):
                loss = deep_supervision_loss(stepped(x), y, hybrid=cfg.hybrid)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            float(loss.detach())  # waits for the device (and, with DDP, for every rank's gradients)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        if launch.is_main:
            Path(args.json).write_text(json.dumps({"times": times, "per_rank": per_rank, "world": launch.world_size,
                                                   "ddp": distributed.active(), "device": str(device)}))


def run_row(args: argparse.Namespace, nproc: int | None) -> dict:
    """One row in fresh processes: ``nproc=None`` one plain process, else torchrun with ``nproc`` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(HERE), "--worker", "--json", str(out)] + [
            a for k in ("device", "profile", "steps", "warmup", "threads", "batch_size", "per_rank_batch")
            if getattr(args, k) is not None for a in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
        cmd += ["--unsynced-bn"] if args.unsynced_bn else []
        if nproc is not None:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] + cmd[1:]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run(cmd, check=True, env=env)
        return json.loads(out.read_text())


def table(rows: list[tuple[str, dict]]) -> str:
    """Markdown: step time (median), samples/s of the global batch, speed-up and efficiency against 1 DDP process."""
    lines = ["| processes | per-process batch | global batch | step time, median (ms) | samples/s | speed-up | "
             "scaling efficiency |", "|---|---|---|---|---|---|---|"]
    base = None
    for name, r in rows:
        step = statistics.median(r["times"])
        rate = r["per_rank"] * r["world"] / step
        if r["ddp"] and r["world"] == 1:
            base = rate
        up = f"{rate / base:.2f}x" if base else "-"
        eff = f"{rate / (base * r['world']):.0%}" if base else "-"
        lines.append(f"| {name} | {r['per_rank']} | {r['per_rank'] * r['world']} | {1000 * step:.0f} | "
                     f"{rate:.1f} | {up} | {eff} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="example: python scripts/ddp_scaling.py "
                                "--device cpu --profile quick --nprocs 1 2")
    p.add_argument("--device", default="cpu", help="cpu (Gloo) or cuda (NCCL, one GPU per process)")
    p.add_argument("--profile", choices=["quick", "full"], default="quick")
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2], help="processes per DDP row")
    p.add_argument("--steps", type=int, default=10, help="timed steps per row (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process (CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (default: the profile's)")
    p.add_argument("--per-rank-batch", type=int, default=None, help="batch per process instead (weak scaling)")
    p.add_argument("--no-plain", action="store_true", help="skip the one-process row without DDP")
    p.add_argument("--unsynced-bn", action="store_true",
                   help="diagnostic: DDP rows with plain BatchNorm (not the same training; shows what syncing costs)")
    p.add_argument("--out", default=None, help="also write the table (markdown) here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    rows = [] if args.no_plain else [("1, no DDP", run_row(args, None))]
    rows += [(f"{n}, DDP" + (", unsynced BN" if args.unsynced_bn else ""), run_row(args, n)) for n in args.nprocs]
    md = table(rows)
    print(md)
    if args.out:
        Path(args.out).write_text(md + "\n")


if __name__ == "__main__":
    main()
