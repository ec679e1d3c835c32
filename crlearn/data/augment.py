"""The paper's x5 augmentation (§2.3): each slice as it is, rotated by 90, 180 and 270 degrees, and flipped.

The same five views serve training (:class:`crlearn.data.folder.SegmentationDataset` with ``augment=True``) and test-time
augmentation (:func:`crlearn.inference.predict_logits`), which maps each view's prediction back with ``inverse=True``.
"""

from __future__ import annotations

import torch

AUGMENTATIONS: tuple[str, ...] = ("identity", "rot90", "rot180", "rot270", "hflip")


def apply_view(x: torch.Tensor, kind: str, inverse: bool = False) -> torch.Tensor:
    """One of the paper's five views (§2.3) on the last two dims of any tensor, e.g. a batch ``(B, C, H, W)``.

    Rotations by multiples of 90 degrees and flips move pixels exactly (no interpolation); ``rot90`` turns
    counter-clockwise, like ``TF.rotate(90)``. ``inverse=True`` undoes the view: test-time augmentation
    (:func:`crlearn.inference.predict_logits`) maps each view's prediction back with it.
    """
    if kind == "identity":
        return x
    if kind in ("rot90", "rot180", "rot270"):
        k = int(kind[3:]) // 90
        return torch.rot90(x, -k if inverse else k, dims=(-2, -1))
    if kind == "hflip":
        return torch.flip(x, dims=(-1,))
    raise ValueError(f"unknown augmentation {kind!r}; expected one of {AUGMENTATIONS}")


def augment_pair(image: torch.Tensor, mask: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one of the paper's five views (§2.3) identically to an image ``[1,H,W]`` and a mask ``[C,H,W]``:
    :func:`apply_view` on both, so image and mask stay aligned pixel for pixel."""
    return apply_view(image, kind), apply_view(mask, kind)
