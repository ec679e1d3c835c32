"""Speed workarounds for CPU training, kept apart from the teaching code (the GPU's are in :mod:`crlearn.training.fastpath`).

Neither changes what is computed (only how fast, and the last bits of rounding); the model classes do not know
about them. :func:`narrow_batchnorm` is a context manager that :func:`crlearn.training.engine.fit` and
:func:`crlearn.inference.predict_logits` enter around their work and that restores the caller's modules on exit;
:func:`keep_freed_memory` and :func:`fit_threads_to_cpus` change the whole process, so only the ``crlearn`` command
calls them (a library call never does). Measured effect: ``results/README.md``, "Speed". Remove a workaround when the PyTorch behaviour it names is
fixed: delete its function here and its call sites; nothing else changes.

1. **Narrow channels_last BatchNorm on CPU.** PyTorch's CPU batch-norm kernel for channels_last tensors is slow
   when a tensor has fewer channels than one SIMD vector holds (the quick profile's refinement module has 4): its
   backward is slower than the NCHW kernel's, even counting the two layout copies. :class:`NarrowBatchNorm2d`
   sends such inputs through the NCHW kernel. How to retire it: time ``nn.BatchNorm2d`` forward + backward on an
   ``(8, 4, 128, 128)`` channels_last CPU tensor against the same tensor made contiguous; when channels_last is no
   slower, delete the class and :func:`narrow_batchnorm`.
2. **glibc returning freed memory to the OS.** A training step frees and reallocates the same large activation
   buffers every step; by default glibc unmaps big blocks on free and trims the heap, so each step page-faults them
   back in and the kernel zeroes them again. :func:`keep_freed_memory` raises glibc's mmap and trim thresholds
   (``mallopt``) so freed buffers are reused. PyTorch's CPU performance guide suggests jemalloc or tcmalloc
   (``LD_PRELOAD``) for the same reason; this needs no install. The cost: the process keeps its peak memory
   until it exits. Linux with glibc only; elsewhere it does nothing.
3. **Depthwise convolution on CPU.** The SSIM term of the hybrid loss blurs its five statistics maps with two
   depthwise 1-D Gaussian convolutions (:func:`crlearn.losses.ssim`, the lesson). On CPU, oneDNN's depthwise
   convolution with an 11-tap kernel, and above all its backward, is slow: it took 37 % of a quick-profile training
   step on the 2-core AVX-512 CPU. :func:`gaussian_blur_banded` computes the same 'same'-padded blur as two matrix
   products with banded matrices (BLAS), which the loss uses on CPU: the same numbers to float rounding, the
   training step x1.26 faster there (x1.07 with AVX2 kernels only; ``results/ssim_blur_cpu.md``).
   :func:`crlearn.training.engine.fit` plugs it in through :func:`cpu_ssim_blur` (:func:`crlearn.losses.ssim_blur`,
   restored after the run); the loss never imports it. How to retire it: time :func:`crlearn.losses.ssim` forward +
   backward on that shape with the convolutions; when they are no slower, delete both functions and their call in
   ``crlearn.training.engine.fit``.
4. **Threads beyond the CPUs a container may use.** PyTorch sizes its CPU thread pool from the machine's cores and
   the affinity mask, not from a cgroup CPU quota (``docker run --cpus 2``, a Kubernetes CPU limit, many CI runners):
   in a 2-CPU container on a 16-core host it starts 16 threads that spin against each other for 2 CPUs' time. On
   the 2-core development VM a quick float32 training step took 150 ms with 2 threads and 627 / 1572 ms with 4 / 8
   (x4.2 / x10.5), and two epochs under a 1-CPU quota took x1.6 longer with torch's 2 threads than with 1
   (``results/cpu_threads/README.md``). :func:`fit_threads_to_cpus` lowers torch's thread count to
   ``joblib.cpu_count()`` (quota and affinity aware) unless the user chose one (``OMP_NUM_THREADS``). How to retire
   it: when ``torch.get_num_threads()`` in a ``--cpus 2`` container reads 2, delete the function and its call in
   ``crlearn.cli.main``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from typing import Iterator

import torch
from torch import Tensor, nn

from crlearn.losses import ssim_blur


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class NarrowBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that runs narrow channels_last CPU inputs through the NCHW kernel (workaround 1).

    Same parameters, buffers, state-dict keys and results as ``nn.BatchNorm2d``; only the speed differs.
    """

    narrow: int = 16  # below this many channels, use the NCHW kernel on CPU

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and self.num_features < self.narrow and _is_channels_last(x):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


@contextlib.contextmanager
def narrow_batchnorm(model: nn.Module, device: torch.device) -> Iterator[int]:
    """On CPU, run every narrow ``nn.BatchNorm2d`` of ``model`` as a :class:`NarrowBatchNorm2d` inside the block.

    Only the class of each module changes (its tensors and state-dict keys stay), and it is changed back on leaving
    the block, so the caller's model is the same object of the same classes afterwards. Yields how many modules
    run as the workaround (0 on other devices).
    """
    swapped = []
    if torch.device(device).type == "cpu":
        swapped = [m for m in model.modules() if type(m) is nn.BatchNorm2d and m.num_features < NarrowBatchNorm2d.narrow]
    for m in swapped:
        m.__class__ = NarrowBatchNorm2d
    try:
        yield len(swapped)
    finally:
        for m in swapped:
            m.__class__ = nn.BatchNorm2d


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (workaround 2); True if it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))


def fit_threads_to_cpus() -> int | None:
    """Lower torch's CPU threads to the CPUs this process may use (workaround 4), unless ``OMP_NUM_THREADS`` is set;
    returns the new count, or ``None`` when nothing changed."""
    from joblib import cpu_count  # scikit-learn's dependency: reads the cgroup quota and the affinity mask

    if os.environ.get("OMP_NUM_THREADS"):
        return None
    usable = max(1, cpu_count())
    if torch.get_num_threads() <= usable:
        return None
    torch.set_num_threads(usable)
    return usable


def _banded(n: int, g: Tensor) -> Tensor:
    """``(n, n)`` matrix M with ``M[i, j] = g[j - i + k // 2]`` inside the band, 0 outside: ``M @ v`` is ``v``
    filtered by ``g`` with zero 'same' padding."""
    k = g.numel()
    idx = torch.arange(n, device=g.device)
    offset = idx[None, :] - idx[:, None] + k // 2  # (n, n) tap index of g
    inside = (offset >= 0) & (offset < k)
    return torch.where(inside, g[offset.clamp(0, k - 1)], torch.zeros((), dtype=g.dtype, device=g.device))


def gaussian_blur_banded(stack: Tensor, g: Tensor) -> Tensor:
    """Separable blur of each ``(H, W)`` map of ``stack`` by the 1-D kernel ``g`` (odd length, zero 'same' padding)
    as ``M_H @ stack @ M_W^T`` (workaround 3): equal to the two depthwise convolutions to float rounding."""
    h, w = stack.shape[-2:]
    return _banded(h, g) @ stack @ _banded(w, g).T


def cpu_ssim_blur(device: torch.device) -> contextlib.AbstractContextManager:
    """On CPU, a context in which the SSIM term blurs with :func:`gaussian_blur_banded` (workaround 3); elsewhere
    one that changes nothing."""
    return ssim_blur(gaussian_blur_banded) if torch.device(device).type == "cpu" else contextlib.nullcontext()
