"""crlearn: a teaching rebuild of the coarse-refine COVID-19 CT segmentation network.

Huang et al., "A coarse-refine segmentation network for COVID-19 CT images",
IET Image Processing 16(2), 2022, doi:10.1049/ipr2.12278.

For teaching only: nothing here is a medical device or gives a diagnosis.

The names below are imported on first use (PEP 562), so ``import crlearn`` and ``crlearn --help`` stay instant
and torch is imported only when a model or data set is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "CRNet": "crlearn.nn.model", "CRNetConfig": "crlearn.nn.model", "CRNetOutput": "crlearn.nn.model",
    "SegmentationDataset": "crlearn.data.folder",
}
_SUBMODULES = ("losses", "metrics", "inference", "stats", "viz", "nn", "data", "training", "tasks")

__all__ = [*_LAZY, *_SUBMODULES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"crlearn.{name}")
    raise AttributeError(f"module 'crlearn' has no attribute {name!r}")
