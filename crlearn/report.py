"""How results are shown and kept: the teaching disclaimer, where a number was measured (and that GPU's peak),
markdown tables, and figures written as PNG (atomically, see :mod:`crlearn.training.checkpoint`)."""

from __future__ import annotations

import io
import platform
import re
from pathlib import Path
from typing import Any, Sequence

DISCLAIMER = "crlearn is for teaching only: these numbers and pictures are not a diagnosis."


def hardware() -> str:
    """A short description of where this runs, for every reported number."""
    import torch  # here, not at the top: the command line imports this module to print its help

    if torch.cuda.is_available():
        return f"CUDA GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's datasheets, which print twice these "with
# sparsity": H100 SXM and H200 989, H100 NVL and H200 NVL 835, H100 PCIe 756, A100 312, L4 121; the T4 has no
# bf16 (its fp16 peak, 65).
# Matched as whole words in torch.cuda.get_device_name(), first match first ("NVIDIA H100 80GB HBM3" is the SXM).
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
    ("A100", 312.0), ("L4", 121.0), ("T4", 65.0),
)


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak (:data:`PEAK_TFLOPS`) of the GPU that ``torch.cuda.get_device_name()`` names, or None."""
    for name, peak in PEAK_TFLOPS:
        if re.search(rf"\b{re.escape(name)}\b", device_name, flags=re.IGNORECASE):
            return peak
    return None


def peak_note(device: Any) -> str:
    """The device's name and dense bf16 peak: the physical limit that achieved TFLOP/s compare with."""
    if device.type != "cuda":
        return "CPU, peak unknown"
    import torch

    name = torch.cuda.get_device_name(device)
    peak = peak_tflops(name)
    return f"{name}, dense bf16 peak " + (f"{peak:.0f} TFLOP/s (NVIDIA datasheet)" if peak else "unknown")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table: one header row, then one row per sequence of cells (each cell formatted with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def figure_png(fig: Any, dpi: int = 90) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> None:
    """Write a figure as a PNG file atomically (a crash never leaves half a picture) and close it."""
    from crlearn.training.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, figure_png(fig, dpi))
