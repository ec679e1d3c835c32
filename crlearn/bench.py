"""Benchmarks: the speed of CR-Net's training step against an off-the-shelf U-Net.

``bench_model`` times forward + backward + Adam step of each CR-Net variant (Table 7
rows) side by side with ``segmentation_models_pytorch.Unet("resnet34")`` when that
package is installed, and reports achieved GFLOP/s, so that "slower" can be told
apart from "does more work".

    python -m crlearn.bench model --sizes 128 256 --batch-size 8
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .model import VARIANTS, CRNet, CRNetConfig
from .train import pick_device

SMP_LABEL = "SMP U-Net (ResNet34)"


def _smp_unet() -> nn.Module | None:
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return None
    return smp.Unet("resnet34", encoder_weights=None, in_channels=1, classes=1)


def _outputs(out: Any) -> list[Tensor]:
    """The logit maps a training step supervises: one for SMP/U-Net rows, two for CR-Net."""
    if isinstance(out, Tensor):
        return [out]
    return [out.coarse] if out.final is out.coarse else [out.coarse, out.final]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
                amp: bool, step: bool = True) -> None:
    opt.zero_grad(set_to_none=True)
    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        loss = sum(F.binary_cross_entropy_with_logits(o.float(), y) for o in _outputs(model(x)))
    loss.backward()
    if step:
        opt.step()


class _Case:
    """One model at one input size: its optimiser, a fixed batch, FLOPs and step times."""

    def __init__(self, key: str, label: str, model: nn.Module, size: int, batch_size: int,
                 device: torch.device, channels_last: bool):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.key, self.label, self.amp = key, label, device.type == "cuda"
        self.model = model.to(device=device, memory_format=fmt).train()
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch_size, 1, size, size, generator=gen).to(device, memory_format=fmt)
        self.y = (torch.rand(batch_size, 1, size, size, generator=gen) > 0.9).float().to(device)
        counter = FlopCounterMode(display=False)
        with counter:
            _train_step(self.model, self.opt, self.x, self.y, self.amp, step=False)
        self.flops = float(counter.get_total_flops())
        self.times: list[float] = []

    def step(self, timed: bool = True) -> None:
        device = self.x.device
        _sync(device)
        t0 = time.perf_counter()
        _train_step(self.model, self.opt, self.x, self.y, self.amp)
        _sync(device)
        if timed:
            self.times.append(time.perf_counter() - t0)


def bench_model(sizes: Sequence[int] = (128, 256, 512), batch_size: int = 8, steps: int = 3,
                warmup: int = 1, device: str | torch.device | None = None,
                variants: Sequence[str] = ("unet", "unet_aspp", "crnet"), width: float = 1.0,
                verbose: bool = True, channels_last: bool = True) -> list[dict]:
    """Time one training step (forward, backward, Adam) of each model at each size.

    The models' steps are interleaved (model A, B, C, A, B, C, ...) and the median
    step time is reported, so that other load on the machine hits every model alike.
    On CUDA the models run under bf16 autocast; ``channels_last`` (default: on, as
    :func:`crlearn.train.fit` trains on every device) puts every model, SMP's included,
    and its inputs in that memory layout. FLOPs
    are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward +
    backward (convolutions and matmuls; norms, activations and the optimiser are
    uncounted), so GFLOP/s compares how well each network uses the hardware.

    Returns one dict per (model, size): model, variant, size, batch_size, device,
    params, step_s, gflop_per_step, gflops_per_s, ratio_to_smp (step time / SMP's at
    the same size; None without segmentation_models_pytorch).
    """
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"variants must be among {sorted(VARIANTS)}, got {v!r}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got {steps} and {warmup}")
    device = pick_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as fit() trains; every model alike
    models: dict[str, tuple[str, nn.Module]] = {}
    smp_model = _smp_unet()
    if smp_model is None:
        if verbose:
            print("note: segmentation_models_pytorch not installed; SMP U-Net baseline skipped")
    else:
        models["smp"] = (SMP_LABEL, smp_model)
    for v in variants:
        models[v] = (f"CR-Net {VARIANTS[v]}", CRNet(CRNetConfig.full(width=width, variant=v)))
    if verbose:
        print(f"device: {device}, torch threads: {torch.get_num_threads()}, batch size: {batch_size}, "
              f"channels_last: {channels_last}")
        print(format_table([]), flush=True)

    rows = []
    for size in sizes:
        cases = [_Case(key, label, model, size, batch_size, device, channels_last)
                 for key, (label, model) in models.items()]
        for i in range(warmup + steps):
            for case in cases:
                case.step(timed=i >= warmup)
        smp_time = statistics.median(cases[0].times) if "smp" in models else None
        for case in cases:
            step_s = statistics.median(case.times)
            row = {
                "model": case.label, "variant": case.key, "size": size, "batch_size": batch_size,
                "device": str(device), "params": sum(p.numel() for p in case.model.parameters()),
                "step_s": step_s, "gflop_per_step": case.flops / 1e9,
                "gflops_per_s": case.flops / 1e9 / step_s,
                "ratio_to_smp": step_s / smp_time if smp_time else None,
            }
            rows.append(row)
            if verbose:
                print(_format_row(row), flush=True)
        del cases  # free optimiser state and batches before the next size
    return rows


def _format_row(r: dict) -> str:
    ratio = "-" if r["ratio_to_smp"] is None else f"{r['ratio_to_smp']:.2f}"
    return (f"| {r['model']} | {r['size']} | {r['params'] / 1e6:.1f} M | {r['step_s']:.3f} | "
            f"{r['gflop_per_step']:.1f} | {r['gflops_per_s']:.1f} | {ratio} |")


def format_table(rows: Sequence[dict]) -> str:
    """A markdown table of ``bench_model`` rows."""
    head = ("| model | size | params | step (s) | GFLOP / step | GFLOP/s | time / SMP |\n"
            "|---|---|---|---|---|---|---|")
    return "\n".join([head] + [_format_row(r) for r in rows])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m crlearn.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("model", help="training-step speed of CR-Net vs SMP U-Net")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="memory layout (default: channels_last, as training uses)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "model":
        bench_model(args.sizes, args.batch_size, args.steps, args.warmup, args.device,
                    args.variants, args.width, channels_last=args.channels_last)  # prints row by row


if __name__ == "__main__":
    main()
