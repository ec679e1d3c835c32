"""Speed workarounds for CPU training, kept apart from the teaching code (the GPU's are in :mod:`crlearn.training.fastpath`).

Neither changes what is computed (only how fast, and the last bits of rounding); the model classes do not know
about them. The engine applies both (:func:`apply_to_model` in :func:`crlearn.training.engine.fit` and
:func:`crlearn.inference.predict_logits`, :func:`keep_freed_memory` in ``fit`` and the ``crlearn`` command).
Measured effect: README, "Speed". Remove a workaround when the PyTorch behaviour it names is fixed: delete its
function here and its one call in the engine; nothing else changes.

1. **Narrow channels_last BatchNorm on CPU.** PyTorch's CPU batch-norm kernel for channels_last tensors is slow
   when a tensor has fewer channels than one SIMD vector holds (the quick profile's refinement module has 8): its
   backward is slower than the NCHW kernel's, even counting the two layout copies. :class:`NarrowBatchNorm2d`
   sends such inputs through the NCHW kernel. How to retire it: time ``nn.BatchNorm2d`` forward + backward on an
   ``(8, 8, 128, 128)`` channels_last CPU tensor against the same tensor made contiguous; when channels_last is no
   slower, delete the class and :func:`apply_to_model`.
2. **glibc returning freed memory to the OS.** A training step frees and reallocates the same large activation
   buffers every step; by default glibc unmaps big blocks on free and trims the heap, so each step page-faults them
   back in and the kernel zeroes them again. :func:`keep_freed_memory` raises glibc's mmap and trim thresholds
   (``mallopt``) so freed buffers are reused. PyTorch's CPU performance guide suggests jemalloc or tcmalloc
   (``LD_PRELOAD``) for the same reason; this needs no install. The cost: the process keeps its peak memory
   until it exits. Linux with glibc only; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import sys

import torch
from torch import Tensor, nn


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


def apply_to_model(model: nn.Module, device: torch.device) -> int:
    """On CPU, turn every narrow ``nn.BatchNorm2d`` of ``model`` into a :class:`NarrowBatchNorm2d` in place.

    Only the class of each module changes (its tensors and state-dict keys stay), so checkpoints are unaffected.
    Returns how many modules were changed (0 on other devices).
    """
    if torch.device(device).type != "cpu":
        return 0
    changed = 0
    for m in model.modules():
        if type(m) is nn.BatchNorm2d and m.num_features < NarrowBatchNorm2d.narrow:
            m.__class__ = NarrowBatchNorm2d
            changed += 1
    return changed


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
