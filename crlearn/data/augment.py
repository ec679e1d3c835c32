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


# ----------------------------------------------------------------------------- jitter beside the paper's views
# This project's choice (issue 20), not the paper's: random intensity and scale jitter of the training samples, on
# top of the x5 views. Ranges: mild, inside what two CT exports of one scan differ by (window, contrast, noise).

BRIGHTNESS = 0.15  # brightness factor drawn from 1 +- this
CONTRAST = 0.20  # contrast factor drawn from 1 +- this
GAMMA = 1.25  # gamma drawn log-uniformly from [1/GAMMA, GAMMA]
NOISE = 0.03  # standard deviation of added Gaussian noise, drawn uniformly from [0, NOISE]
SCALE = 0.15  # zoom drawn from 1 +- this, with a shift of up to 5 % of the side


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def intensity_jitter(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random brightness, contrast, gamma (``torchvision.transforms.v2.functional``) and Gaussian noise of an image
    ``[1,H,W]`` in [0, 1]; every draw from ``generator``. The result stays in [0, 1]; the mask is untouched."""
    from torchvision.transforms.v2 import functional as TF

    x = TF.adjust_brightness(image, _uniform(generator, 1 - BRIGHTNESS, 1 + BRIGHTNESS))
    x = TF.adjust_contrast(x, _uniform(generator, 1 - CONTRAST, 1 + CONTRAST))
    x = TF.adjust_gamma(x, GAMMA ** _uniform(generator, -1.0, 1.0))
    sigma = _uniform(generator, 0.0, NOISE)
    return (x + sigma * torch.randn(x.shape, generator=generator)).clamp_(0, 1)


def scale_jitter(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random zoom and shift (``torchvision.transforms.v2.functional.affine``) of an image ``[1,H,W]``
    (bilinear) and its mask ``[C,H,W]`` (nearest, as a ``tv_tensors.Mask``: values never mix)."""
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    h, w = image.shape[-2:]
    scale = _uniform(generator, 1 - SCALE, 1 + SCALE)
    shift = [round(_uniform(generator, -0.05, 0.05) * w), round(_uniform(generator, -0.05, 0.05) * h)]
    args = dict(angle=0.0, translate=shift, scale=scale, shear=[0.0, 0.0])
    out = TF.affine(image, interpolation=InterpolationMode.BILINEAR, **args)
    return out, TF.affine(tv_tensors.Mask(mask), **args).as_subclass(torch.Tensor)


def random_crop(image: torch.Tensor, mask: torch.Tensor, side: int, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``side`` x ``side`` window (``torchvision.transforms.v2.functional.crop``) of an image
    ``[1,H,W]`` and its mask ``[C,H,W]``: patch training, as nnU-Net does. The network is fully convolutional, so it
    trains on windows and predicts whole slices (``TrainConfig.crop``; its cost and accuracy: ``results/cv_speed/``)."""
    from torchvision.transforms.v2 import functional as TF

    h, w = image.shape[-2:]
    if not 0 < side <= min(h, w):
        raise ValueError(f"crop side must lie in (0, {min(h, w)}], got {side}")
    top = int(torch.randint(h - side + 1, (), generator=generator))
    left = int(torch.randint(w - side + 1, (), generator=generator))
    return TF.crop(image, top, left, side, side), TF.crop(mask, top, left, side, side)


class Jittered(torch.utils.data.Dataset):
    """A training set whose samples get :func:`scale_jitter`, :func:`random_crop` and/or :func:`intensity_jitter`
    as they are read.

    Wraps any dataset of ``(image [1,S,S], mask [C,S,S])`` (e.g. a :class:`crlearn.data.folder.SegmentationDataset`
    with the x5 views); the draws come from the wrapper's own generator (``seed``), so a run with the same batch
    order sees the same jitter. Only for loops that read the samples every epoch (``TrainConfig.fast="off"``).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, intensity: bool = True, scale: bool = False,
                 seed: int = 0, crop: int = 0):
        self.dataset, self.intensity, self.scale, self.crop = dataset, intensity, scale, crop
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.dataset[i]
        if self.scale:
            image, mask = scale_jitter(image, mask, self.generator)
        if self.crop:
            image, mask = random_crop(image, mask, self.crop, self.generator)
        if self.intensity:
            image = intensity_jitter(image, self.generator)
        return image, mask


def jittered(dataset: torch.utils.data.Dataset, intensity: bool, scale: bool,
             seed: int = 0, crop: int = 0) -> torch.utils.data.Dataset:
    """``dataset`` itself when no jitter and no crop (``crop=0``) is asked for, else :class:`Jittered` around it."""
    return Jittered(dataset, intensity, scale, seed, crop) if intensity or scale or crop else dataset
