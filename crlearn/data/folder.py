"""CT slices and lesion masks from a PNG folder, their classes, and the paper's x5 augmentation.

Huang et al. 2022, §2.2 (data) and §2.3 (augmentation); the patient-level splits are in :mod:`crlearn.data.splits`.

Folder format (each data set under ``data_sample/`` has it, e.g. ``data_sample/medseg_covid100``; any folder laid
out like it works the same)::

    ROOT/images/NAME.png   8-bit (or 16-bit) grayscale slice
    ROOT/masks/NAME.png    same size; one integer label per pixel (0 = background)
    ROOT/index.csv         optional; a ``slice_id`` (or ``name``) column and a group column
                           (``pseudo_patient_group``, ``patient_id``, ``patient``, ``volume`` or ``group``)
    ROOT/labels.json       optional; class name -> mask value, or list of mask values, e.g.
                           ``{"background": 0, "lung": [1, 2], "infection": 2}``

In ``labels.json`` a plain integer is exactly that one mask value; a list makes the class the union of its values
(classes may overlap: the channels are multi-label). ``background`` may only be 0 and is not a class; no other
class may cover 0. Without ``labels.json`` the folder is read with MedSeg's labels (:data:`MEDSEG_LABELS`).

Every problem with the input raises :class:`DataError` naming the file and what is wrong.

Intensity normalisation (:func:`normalize_intensity`, ``SegmentationDataset(normalize=...)``) makes slices of
different sources look alike: MedSeg's slices are display-windowed, the lung set's min-max scaled and CLAHE-equalised
per slice, and a model trained on one meets a domain shift on the other (``results/cross_dataset.md``).
"""

from __future__ import annotations

import copy
import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from crlearn.data.errors import DataError
from crlearn.data.paths import DEFAULT_DATA, default_data_dir, not_found  # noqa: F401 (re-exported)
from crlearn.data.augment import AUGMENTATIONS, augment_pair
from crlearn.data.labels import (  # noqa: F401 (the class names are re-exported: a data set is where readers look for them)
    BACKGROUND,
    DEFAULT_CLASSES,
    MAX_MASK_VALUE,
    MEDSEG_LABELS,
    MERGED_CLASS,
    LabelValues,
    check_labels,
    read_labels,
    resolve_classes,
)

GROUP_COLUMNS = ("pseudo_patient_group", "patient_id", "patient", "volume", "group")
NAME_COLUMNS = ("slice_id", "name", "file")


NORMALIZATIONS = ("none", "standardize", "equalize")  # the kinds of normalize_intensity
STANDARDIZE_CLIP = 3.0  # "standardize" keeps +-3 standard deviations and maps them onto [0, 1]


@dataclass(frozen=True)
class SliceRecord:
    """One slice on disk: its name, image and mask paths, and its patient group."""

    name: str
    image_path: Path
    mask_path: Path | None
    group: str


# ----------------------------------------------------------------------------- reading files


def _open_image(path: Path, what: str) -> tuple[str, np.ndarray]:
    """PIL mode and pixel array of a file; :class:`DataError` naming the file if it is missing or unreadable."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.mode, np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable {what} ({exc})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read a grayscale slice as float32 ``(H, W)`` in [0, 1].

    8-bit ("L") and 16-bit ("I;16", "I") images are accepted, and RGB(A) files whose colour channels are all
    equal (a grey picture saved as colour). Anything else, an unreadable file, or a non-finite value raises
    :class:`DataError`.
    """
    path = Path(path)
    mode, arr = _open_image(path, "image")
    if mode in ("RGB", "RGBA"):
        rgb = arr[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise DataError(f"{path}: image is colour ({mode}); a grayscale CT slice is expected")
        arr, mode = rgb[..., 0], "L"
    if mode in ("L", "P"):
        if mode == "P":
            raise DataError(f"{path}: image is a palette image (P); a grayscale CT slice is expected")
        return arr.astype(np.float32) / 255.0
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        out = arr.astype(np.float32)
        hi = 65535.0 if mode.startswith("I;16") else max(float(out.max()), 1.0)
        return np.clip(out / hi, 0.0, 1.0)
    if mode == "F":
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: image contains NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise DataError(f"{path}: float image values outside [0, 1] (min {arr.min():.3g}, max {arr.max():.3g})")
        return arr.astype(np.float32)
    raise DataError(f"{path}: image mode {mode!r} with shape {arr.shape}; a single-channel grayscale slice is expected")


def read_mask(path: str | Path, known: Collection[int]) -> np.ndarray:
    """Read an integer label mask as uint8 ``(H, W)``.

    ``known`` holds the values the folder's labels declare (0, background, is always allowed); any other value
    raises :class:`DataError` naming the file and the value.
    """
    path = Path(path)
    mode, arr = _open_image(path, "mask")
    if arr.ndim != 2:
        raise DataError(f"{path}: mask has mode {mode!r} and shape {arr.shape}; a single-channel label image is expected")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"{path}: mask contains NaN or infinite values")
    allowed = {0, *known}
    bad = [v for v in np.unique(arr).tolist() if v not in allowed]
    if bad:
        shown = ", ".join(str(v) for v in bad[:8])
        expected = ", ".join(str(v) for v in sorted(allowed))
        raise DataError(
            f"{path}: label value(s) {shown} not declared by the folder's labels (labels.json, or MedSeg's "
            f"default); expected one of {expected} (0 = background). Is this a 0/255 display mask?"
        )
    return arr.astype(np.uint8)


def read_index(root: Path) -> dict[str, str] | None:
    """Map slice name -> group from ``root/index.csv``, or ``None`` if there is no usable group column."""
    path = root / "index.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        name_col = next((c for c in NAME_COLUMNS if c in fields), None)
        group_col = next((c for c in GROUP_COLUMNS if c in fields), None)
        if name_col is None or group_col is None:
            return None
        return {Path(row[name_col]).stem: row[group_col] for row in reader}


def scan_folder(root: str | Path, require_masks: bool = True) -> list[SliceRecord]:
    """List the slices of a PNG folder, checking its layout.

    Raises :class:`DataError` for a missing folder, no images, or an image without a mask. Without a group
    column in ``index.csv`` each slice is its own group and a warning says so.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(not_found(root))
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir():
        raise DataError(f"{root}: no images/ sub-folder (expected images/NAME.png and masks/NAME.png)")
    images = sorted(img_dir.glob("*.png"))
    if not images:
        raise DataError(f"{img_dir}: no .png images found")
    if require_masks and not mask_dir.is_dir():
        raise DataError(f"{root}: no masks/ sub-folder (expected masks/NAME.png for every images/NAME.png)")
    groups = read_index(root)
    if groups is None:
        warnings.warn(
            f"{root}: no index.csv with a group column; each slice is treated as its own patient group, "
            "so near-duplicate slices of one patient may fall on both sides of a split",
            stacklevel=2,
        )
        groups = {}
    records = []
    for img in images:
        mask = mask_dir / img.name
        if require_masks and not mask.exists():
            raise DataError(f"{img}: no matching mask {mask}")
        records.append(SliceRecord(img.stem, img, mask if mask.exists() else None, groups.get(img.stem, img.stem)))
    return records


# ----------------------------------------------------------------------------- intensity normalisation


def check_normalization(kind: str) -> str:
    """``kind`` if it is one of :data:`NORMALIZATIONS`, else ValueError listing them."""
    if kind not in NORMALIZATIONS:
        raise ValueError(f"unknown intensity normalisation {kind!r}; expected one of {list(NORMALIZATIONS)}")
    return kind


def _normalize_slice(x: torch.Tensor, kind: str) -> torch.Tensor:
    """One slice (any shape, all its pixels together) normalised; a constant slice becomes mid-grey 0.5."""
    flat = x.reshape(-1).float()
    if flat.max() == flat.min():
        return torch.full_like(x, 0.5, dtype=torch.float32)
    if kind == "standardize":
        z = ((flat - flat.mean()) / flat.std(correction=0)).clamp_(-STANDARDIZE_CLIP, STANDARDIZE_CLIP)
        return ((z + STANDARDIZE_CLIP) / (2 * STANDARDIZE_CLIP)).reshape(x.shape)
    ordered = flat.sort().values  # "equalize": count(pixels <= v), shifted so the darkest grey level maps to 0
    below = torch.searchsorted(ordered, flat, right=True).float()
    lowest = below.min()
    return ((below - lowest) / (flat.numel() - lowest)).reshape(x.shape)


def normalize_intensity(images: torch.Tensor, kind: str = "none") -> torch.Tensor:
    """Per-slice intensity normalisation of ``(N, 1, H, W)`` or ``(1, H, W)`` images in [0, 1]; same shape, in [0, 1].

    Each slice is normalised on its own statistics (so one slice's result never depends on the others):

    - ``"none"``: the images as they are.
    - ``"standardize"``: z-score, ``(x - mean) / std`` over the slice's pixels, clipped to +-3 std and mapped
      linearly onto [0, 1] (the mean lands on 0.5): whatever the window or contrast a source used, every slice then
      has the same mean and spread.
    - ``"equalize"``: global histogram equalisation: each pixel's new grey level is the slice's cumulative
      histogram at its value, ``(count(pixels <= v) - c0) / (n - c0)`` with ``c0`` the count of the darkest level
      (as OpenCV's ``equalizeHist``), so the output is monotone in the input and its histogram roughly uniform. A
      global stand-in for CLAHE (contrast-limited *adaptive* equalisation, tile by tile), which the lung set was
      prepared with; CLAHE itself needs OpenCV or scikit-image, which crlearn does not install.

    A constant slice (no contrast to spread) becomes 0.5 under both. Unknown ``kind``: ValueError listing the kinds.
    """
    check_normalization(kind)
    if images.dim() not in (3, 4):
        raise ValueError(f"images must be (N, 1, H, W) or (1, H, W), got shape {tuple(images.shape)}")
    if kind == "none":
        return images
    if images.dim() == 3:
        return _normalize_slice(images, kind)
    return torch.stack([_normalize_slice(x, kind) for x in images]) if len(images) else images.float()


# ----------------------------------------------------------------------------- the dataset


def _resize_slice(image: torch.Tensor, label: torch.Tensor, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One slice ``(1,H,W)`` float and its label map ``(H,W)`` uint8 to ``size x size``: the image bilinear with
    antialias (clamped to [0, 1]), the label map nearest (label values never mix). ``None`` or the same size: as is.
    The only resize of the data pipeline, used at construction and by :meth:`SegmentationDataset.subset`."""
    if size is None or tuple(image.shape[-2:]) == (size, size):
        return image, label
    image = TF.resize(image, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True).clamp_(0, 1)
    label = TF.resize(tv_tensors.Mask(label[None]), [size, size]).as_subclass(torch.Tensor)[0]  # nearest
    return image, label


class SegmentationDataset(Dataset):
    """Slices of a PNG folder as ``(image [1,S,S] float in [0,1], mask [C,S,S] float {0,1})``.

    Args:
        root: the data folder (images/, masks/, optional index.csv and labels.json).
        classes: classes to segment, one output channel each (default: every class of the labels).
        merge: unite the chosen classes into one ``infection`` channel (the paper's Table 7 setting).
        size: side of the square output (image bilinear with antialias, mask nearest); ``None`` keeps the
            slices' own size, which must then be the same for all.
        augment: the paper's x5 augmentation: each slice appears five times (identity, rot90/180/270, hflip).
        indices: restrict to these slice indices (a split); ``None`` takes all.
        labels: class name -> mask value or list of values; ``None`` reads the folder's ``labels.json``
            (:func:`read_labels`; MedSeg's ggo=1, consolidation=2, effusion=3 without one).
        normalize: intensity normalisation of every slice (:func:`normalize_intensity`: ``none``,
            ``standardize``, ``equalize``), applied once as the slice is read, at its own size, before resizing.

    Slices are read, checked and resized once, at construction; ``__getitem__`` only augments. To split one data
    set several ways without reading it again, build it once with ``size=None`` and take its parts with
    :meth:`subset`.
    """

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[str] | None = None,
        merge: bool = False,
        size: int | None = None,
        augment: bool = False,
        indices: Sequence[int] | None = None,
        labels: dict[str, int] | dict[str, Sequence[int]] | None = None,
        normalize: str = "none",
    ) -> None:
        self.root = Path(root)
        self.normalize = check_normalization(normalize)
        self.label_values = read_labels(self.root) if labels is None else check_labels(labels, "labels")
        try:
            self.class_names, self._channel_labels = resolve_classes(classes, merge, self.label_values)
        except DataError as exc:  # name the file the classes were looked up in
            source = self.root / "labels.json" if labels is None and (self.root / "labels.json").is_file() else self.root
            raise type(exc)(f"{source}: {exc}") from None
        self.known_values = sorted({v for vals in self.label_values.values() for v in vals})
        all_records = scan_folder(self.root)
        self.records = [all_records[i] for i in indices] if indices is not None else all_records
        self.size = size
        self.augment = augment
        self._store(self._read(rec) for rec in self.records)

    def _read(self, rec: SliceRecord) -> tuple[torch.Tensor, torch.Tensor]:
        """One slice at its own size: image ``(1,H,W)`` float32, label map ``(H,W)`` uint8, checked."""
        image = read_image(rec.image_path)
        label = read_mask(rec.mask_path, self.known_values)
        if image.shape != label.shape:
            raise DataError(
                f"{rec.mask_path}: mask size {label.shape[1]}x{label.shape[0]} does not match "
                f"image {rec.image_path.name} size {image.shape[1]}x{image.shape[0]}"
            )
        image = normalize_intensity(torch.from_numpy(image)[None].clamp_(0, 1), self.normalize)
        return image, torch.from_numpy(label)

    def _store(self, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Resize (image, label map) pairs to ``self.size`` and stack them into ``self.images`` / ``self.labels``;
        with ``size=None`` every slice must have the first one's size."""
        images, labels = [], []
        for rec, (image, label) in zip(self.records, pairs):
            if self.size is None and images and image.shape != images[0].shape:
                h, w = image.shape[-2:]
                h0, w0 = images[0].shape[-2:]
                raise DataError(
                    f"{rec.image_path}: image size {w}x{h} differs from the first slice's "
                    f"{w0}x{h0}; pass size= to resize every slice to one size"
                )
            image, label = _resize_slice(image, label, self.size)
            images.append(image)
            labels.append(label)
        self.images = torch.stack(images) if images else torch.empty(0)  # (N, 1, S, S) float32
        self.labels = torch.stack(labels) if labels else torch.empty(0)  # (N, S, S) uint8 label map

    def subset(self, indices: Sequence[int], size: int | None = None, augment: bool = False) -> SegmentationDataset:
        """The slices at ``indices`` as a new dataset, from memory (no file is read again).

        Same classes, labels and intensity normalisation as this one. ``size`` resizes exactly as construction does, so
        ``full.subset(idx, size=S, augment=a)`` equals ``SegmentationDataset(root, size=S, augment=a,
        indices=idx)`` tensor for tensor when ``full`` was built with ``size=None``. ``size=None`` keeps this
        dataset's size. Resizing an already resized dataset to another size is refused (it would resample twice).
        """
        if self.size is not None and size is not None and size != self.size:
            raise ValueError(
                f"subset(size={size}) of a dataset already resized to {self.size}: build the full dataset with "
                "size=None (the original resolution) and resize in subset()"
            )
        idx = [int(i) for i in indices]
        out = copy.copy(self)
        out.class_names, out._channel_labels = list(self.class_names), list(self._channel_labels)
        out.records = [self.records[i] for i in idx]
        out.size = self.size if size is None else size
        out.augment = augment
        out._store((self.images[i], self.labels[i]) for i in idx)
        return out

    def one_hot(self, label: torch.Tensor) -> torch.Tensor:
        """Label map ``(..., H, W)`` -> multi-label mask ``(..., C, H, W)`` float, one channel per class."""
        chans = [torch.isin(label, torch.tensor(vals, dtype=label.dtype)) for vals in self._channel_labels]
        return torch.stack(chans, dim=-3).float()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def groups(self) -> list[str]:
        return [r.group for r in self.records]

    def __len__(self) -> int:
        return len(self.records) * (len(AUGMENTATIONS) if self.augment else 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        n_views = len(AUGMENTATIONS) if self.augment else 1
        j, view = divmod(i, n_views)
        image, mask = self.images[j], self.one_hot(self.labels[j])  # (1,S,S), (C,S,S)
        if self.augment:
            image, mask = augment_pair(image, mask, AUGMENTATIONS[view])
        return image, mask
