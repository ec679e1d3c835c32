"""Where a run computes: the device, mixed precision (CUDA, and CPUs with bf16 instructions), and how a batch reaches
the device."""

from __future__ import annotations

import contextlib
import functools

import torch


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to compute on: ``None``/``"auto"`` picks CUDA, else Apple's MPS, else the CPU.

    An explicit device that this machine lacks (``cuda`` without CUDA, ``cuda:3`` on a one-GPU machine, ``mps``
    off a Mac) raises ``ValueError`` with one line saying so.
    """
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {device!r} asked for, but this machine has "
                         f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA device(s); "
                         "use --device cpu (or leave --device out)")
    if dev.type == "mps" and not _mps_available():
        raise ValueError(f"device {device!r} asked for, but MPS is not available here; use --device cpu")
    return dev


@functools.cache  # the CPU does not change within a process; read once, not every epoch
def cpu_computes_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16), where oneDNN's bf16 kernels are fast.

    Without these instructions bf16 on a CPU is emulated and slower than float32, so autocast stays off there. So it
    does where PyTorch is held below AVX-512 (``ATEN_CPU_CAPABILITY=avx2``, as when timing a CPU without AVX-512).
    """
    try:
        flags = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # an older torch, or a build without cpuinfo
        return False
    if "AVX512" not in torch.backends.cpu.get_cpu_capability():
        return False
    return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))


def autocast_dtype(device: torch.device, amp: bool = True, cpu: bool = False) -> torch.dtype | None:
    """The autocast dtype of a training step, or ``None`` for none.

    CUDA: bf16 where supported, else fp16. CPU: bf16 only when ``cpu`` is asked for (``TrainConfig.cpu_amp``) and
    the CPU computes bf16 natively (:func:`cpu_computes_bf16`); otherwise float32. ``amp=False`` turns it off
    everywhere. Validation and inference call it without ``cpu``, so on a CPU they stay float32.
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu and cpu_computes_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context when ``dtype`` is ``None``."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a batch to the device (non-blocking from pinned memory on CUDA), 4-D tensors in channels_last layout.

    channels_last suits cuDNN's tensor-core kernels and oneDNN's CPU convolutions alike, so every device uses it.
    """
    x = x.to(device, non_blocking=device.type == "cuda")
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
