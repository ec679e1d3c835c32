"""Speed of the SSIM loss: crlearn vs. ``pytorch_msssim`` (§2.7, Eq. 1, L_ssim).

Times forward + backward of ``1 - SSIM`` on the same inputs for both
implementations and prints the medians. ``pytorch_msssim`` is an optional
dependency (``pip install crlearn[bench]``).

    python -m crlearn.bench_ssim
"""

from __future__ import annotations

import statistics
import time

import torch

from crlearn.losses import ssim_loss

__all__ = ["bench_ssim"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(step, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


def bench_ssim(
    batch_size: int = 8,
    size: int = 512,
    channels: int = 1,
    repeats: int = 10,
    device: str | torch.device | None = None,
    warmup: int = 2,
    verbose: bool = True,
) -> dict:
    """Median time of SSIM-loss forward + backward, crlearn vs. ``pytorch_msssim.ssim``.

    Both get the same probabilities (``requires_grad=True``) and binary target,
    an 11x11 Gaussian window with sigma 1.5 and data range 1; runs alternate
    between the two implementations. ``pytorch_msssim``
    filters in 'valid' mode, crlearn with zero 'same' padding (slightly more pixels).

    Args:
        batch_size, size, channels: input shape ``[batch_size, channels, size, size]``.
        repeats: timed runs per implementation (median reported).
        device: e.g. ``"cuda"``; default CUDA if available, else CPU.
        warmup: untimed runs first.
        verbose: print a one-line summary.

    Returns:
        ``{"crlearn_s", "pytorch_msssim_s", "speedup", "shape", "device", "threads"}``;
        ``speedup`` = pytorch_msssim time / crlearn time (> 1: crlearn is faster).
    """
    try:
        from pytorch_msssim import ssim as msssim_ssim
    except ImportError as err:  # pragma: no cover - optional dependency
        raise ImportError("bench_ssim needs pytorch_msssim: pip install 'crlearn[bench]'") from err

    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    gen = torch.Generator().manual_seed(0)
    shape = (batch_size, channels, size, size)
    probs = torch.rand(shape, generator=gen).to(device).requires_grad_(True)
    target = (torch.rand(shape, generator=gen) > 0.5).float().to(device)

    def ours() -> None:
        probs.grad = None
        ssim_loss(probs, target).backward()

    def theirs() -> None:
        probs.grad = None
        (1 - msssim_ssim(probs, target, data_range=1.0, win_size=11, win_sigma=1.5)).backward()

    # Interleave the two so that load from other processes hits both alike.
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for i in range(warmup + repeats):
        for name, step in (("ours", ours), ("theirs", theirs)):
            t = _time_once(step, device)
            if i >= warmup:
                times[name].append(t)
    t_ours, t_theirs = statistics.median(times["ours"]), statistics.median(times["theirs"])
    result = {
        "crlearn_s": t_ours,
        "pytorch_msssim_s": t_theirs,
        "speedup": t_theirs / t_ours,
        "shape": list(shape),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if verbose:
        print(
            f"SSIM loss fwd+bwd {list(shape)} on {device} ({result['threads']} threads), median of {repeats}: "
            f"crlearn {1e3 * t_ours:.1f} ms | pytorch_msssim {1e3 * t_theirs:.1f} ms | "
            f"speed-up x{result['speedup']:.2f}"
        )
    return result


if __name__ == "__main__":
    bench_ssim()
