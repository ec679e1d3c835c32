"""The networks, small blocks first: the SE residual block and ASPP (§2.5), the SE-ResNet-34 encoder, the coarse
U-Net (Fig. 1), the refinement module (§2.6, Fig. 3) and CR-Net, which joins them.

``CRNet``, ``CRNetConfig``, ``CRNetOutput`` and ``VARIANTS`` are imported on first use (PEP 562)."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["VARIANTS", "CRNet", "CRNetConfig", "CRNetOutput", "BASELINES", "build_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("crlearn.nn.model"), name)
    raise AttributeError(f"module 'crlearn.nn' has no attribute {name!r}")
