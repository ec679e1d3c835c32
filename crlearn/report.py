"""How results are shown and kept: the teaching disclaimer, where a number was measured, markdown tables, and
figures written as PNG (atomically, see :mod:`crlearn.checkpoint`)."""

from __future__ import annotations

import io
import platform
from pathlib import Path
from typing import Any, Sequence

import torch

DISCLAIMER = "crlearn is for teaching only: these numbers and pictures are not a diagnosis."


def hardware() -> str:
    """A short description of where this runs, for every reported number."""
    if torch.cuda.is_available():
        return f"CUDA GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


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
    from .checkpoint import atomic_write_bytes

    atomic_write_bytes(path, figure_png(fig, dpi))
