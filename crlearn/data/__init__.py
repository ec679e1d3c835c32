"""Data: a folder of slices and masks (§2.2), its classes, the x5 augmentation views (§2.3), patient-level splits,
the classifier's labelled slices (§2.8) and the error bad input raises.

``SegmentationDataset`` is imported on first use (PEP 562): ``crlearn.data.paths`` and ``crlearn.data.errors`` need
no torch."""

from __future__ import annotations

import importlib
from typing import Any

from crlearn.data.errors import DataError
from crlearn.data.paths import default_data_dir

__all__ = ["DataError", "SegmentationDataset", "default_data_dir"]


def __getattr__(name: str) -> Any:
    if name == "SegmentationDataset":
        return importlib.import_module("crlearn.data.folder").SegmentationDataset
    raise AttributeError(f"module 'crlearn.data' has no attribute {name!r}")
