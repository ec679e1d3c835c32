"""Argument checks shared by the modules that take masks and tensors: one place, one wording of each error."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor


def check_positive_int(name: str, value: object) -> None:
    """``ValueError`` unless ``value`` is an ``int`` (not a ``bool``) of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array from a tensor (any device, detached) or anything ``np.asarray`` takes."""
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def as_bool_mask(x: Any, name: str = "mask") -> Any:
    """``x`` as a boolean mask of the same kind (tensor stays tensor, anything else becomes numpy).

    ``ValueError`` naming ``name`` unless ``x`` is already boolean or holds only 0 and 1 (threshold
    probabilities first, e.g. with :func:`crlearn.metrics.binarize`).
    """
    if not isinstance(x, Tensor):
        x = np.asarray(x)
    if x.dtype in (torch.bool, np.bool_):
        return x
    if not bool(((x == 0) | (x == 1)).all()):
        raise ValueError(f"{name} must be bool or hold only 0 and 1; threshold probabilities first")
    return x != 0


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """``ValueError`` unless ``a`` is ``[B, C, H, W]`` and ``b`` has the same shape."""
    if a.dim() != 4:
        raise ValueError(f"{name_a} must be [B, C, H, W], got shape {tuple(a.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
