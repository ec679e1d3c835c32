"""A workaround: synchronised BatchNorm for CPU processes (Gloo), which PyTorch's ``nn.SyncBatchNorm`` refuses.

Why BatchNorm must be synchronised at all: with data-parallel training (:mod:`crlearn.training.distributed`) each
process sees only its share of the global batch (batch 8 over 2 processes: 4 slices each). A plain BatchNorm
normalises with the mean and variance of those 4 slices, so the two processes compute different activations and
gradients than one process would on the 8 together: the "same global batch" is then not the same training.
``nn.SyncBatchNorm`` all-reduces the statistics so every process normalises with those of the whole global batch.

What this works around: PyTorch's ``nn.SyncBatchNorm`` runs on GPUs only (torch 2.14: "SyncBatchNorm expected input
tensor to be on GPU", and ``aten::batch_norm_stats`` has no CPU kernel), so the CPU tests and the 2-process runs of
this project (Gloo) would train with unsynchronised statistics. :class:`CPUSyncBatchNorm` computes the same
statistics with one differentiable all-reduce per layer (forward: the per-channel sums of x and x² and the pixel
count; backward: the sum of their gradients over the ranks, as ``nn.SyncBatchNorm``'s backward does), in float64 as
the CPU BatchNorm kernel accumulates, so that E[x²] - E[x]² loses next to nothing to cancellation. Outside a process
group, with one process, or in eval mode it is exactly ``nn.BatchNorm2d``. Measured: ``tests/test_distributed.py``
(two ranks with a global batch equal one rank with the same batch to float tolerance); its cost, one collective per
layer per pass (132 per step for the quick CR-Net's 66 BatchNorms): ``results/ddp_scaling_cpu.md``. How to retire
it: when ``nn.SyncBatchNorm`` accepts CPU tensors, delete this module and convert with
``nn.SyncBatchNorm.convert_sync_batchnorm`` on every device (:func:`crlearn.training.distributed.sync_batchnorm`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) forward; the gradient summed over the ranks backward (each rank's input fed every rank's
    loss). What ``torch.distributed.nn.functional.all_reduce`` does, which torch 2.14 deprecates."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:  # type: ignore[override]
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        out = grad.clone()
        dist.all_reduce(out)
        return out


def all_reduce(t: Tensor) -> Tensor:
    return _SumOverRanks.apply(t)


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are those of the global batch over all processes (CPU, Gloo).

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm2d`` (checkpoints load into a plain model).
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c, xd = x.shape[1], x.double()
        count = torch.full((1,), float(x.numel() // c), dtype=torch.float64)
        sums = all_reduce(torch.cat([xd.sum(dim=(0, 2, 3)), (xd * xd).sum(dim=(0, 2, 3)), count]))  # one collective
        n = sums[2 * c]  # pixels per channel in the global batch
        mean = sums[:c] / n  # (C,)
        var = (sums[c:2 * c] / n - mean * mean).clamp_min(0)  # biased, as BatchNorm normalises
        centred = xd - mean[None, :, None, None]
        y = (centred * torch.rsqrt(var + self.eps)[None, :, None, None]).to(x.dtype)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / (n - 1).clamp_min(1))
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased_var.to(self.running_var.dtype), alpha=factor)


def convert(model: nn.Module) -> nn.Module:
    """Turn every ``nn.BatchNorm2d`` (subclasses included) of ``model`` into a :class:`CPUSyncBatchNorm`, in place.

    Only the class of each module changes (its tensors stay); returns ``model``.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.__class__ = CPUSyncBatchNorm
    return model
