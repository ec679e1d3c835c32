"""CT slices and lesion masks from a PNG folder, the paper's x5 augmentation and patient-level splits.

Huang et al. 2022, §2.1-2.3 (data, pre-processing, augmentation) and §3.1 (70/10/20 split, five folds).

Folder format (the format of ``data_sample/``; any folder laid out like it works the same)::

    ROOT/images/NAME.png   8-bit (or 16-bit) grayscale slice
    ROOT/masks/NAME.png    same size; one integer label per pixel (0 = background)
    ROOT/index.csv         optional; a ``slice_id`` (or ``name``) column and a group column
                           (``pseudo_patient_group``, ``patient_id``, ``patient`` or ``group``)

Every problem with the input raises :class:`DataError` naming the file and what is wrong.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

# Label values of MedSeg COVID-19 "dataset 1" (data_sample/README.md). The paper's third class is fibrosis,
# which this data does not have: pleural effusion takes its place.
MEDSEG_LABELS: dict[str, int] = {"ggo": 1, "consolidation": 2, "effusion": 3}
DEFAULT_CLASSES: tuple[str, ...] = tuple(MEDSEG_LABELS)
MERGED_CLASS = "infection"  # the single class of the paper's ablation (Table 7)
GROUP_COLUMNS = ("pseudo_patient_group", "patient_id", "patient", "group")
NAME_COLUMNS = ("slice_id", "name", "file")
# The paper's x5 augmentation (§2.3): each slice as-is, rotated by 90/180/270 degrees, and flipped horizontally.
AUGMENTATIONS: tuple[str, ...] = ("identity", "rot90", "rot180", "rot270", "hflip")


def default_data_dir() -> Path:
    """The bundled sample: ``$CRLEARN_DATA`` if set, else ``data_sample/`` beside the package, else ``./data_sample``."""
    env = os.environ.get("CRLEARN_DATA")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[1] / "data_sample"
    return beside if beside.is_dir() else Path("data_sample")


class DataError(ValueError):
    """Bad input data. The message names the file (or folder) and the problem."""


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


def read_mask(path: str | Path, max_label: int) -> np.ndarray:
    """Read an integer label mask as uint8 ``(H, W)``; every value must lie in ``0..max_label``."""
    path = Path(path)
    mode, arr = _open_image(path, "mask")
    if arr.ndim != 2:
        raise DataError(f"{path}: mask has mode {mode!r} and shape {arr.shape}; a single-channel label image is expected")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"{path}: mask contains NaN or infinite values")
    values = np.unique(arr)
    bad = [v for v in values.tolist() if v < 0 or v > max_label or v != int(v)]
    if bad:
        shown = ", ".join(str(v) for v in bad[:8])
        raise DataError(
            f"{path}: unknown label value(s) {shown}; expected integers 0..{max_label} "
            f"(0 = background). Is this a 0/255 display mask rather than a label mask?"
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
        raise DataError(f"{root}: data folder not found")
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


def resolve_classes(
    classes: Sequence[str] | None = None, merge: bool = False, labels: dict[str, int] | None = None
) -> tuple[list[str], list[tuple[int, ...]]]:
    """Output channel names and, for each channel, the label values it covers.

    ``classes`` selects a subset of ``labels`` (default: all of MedSeg's GGO, consolidation, effusion);
    ``merge=True`` unites them into one ``infection`` channel (the paper's ablation setting, Table 7).
    """
    labels = dict(MEDSEG_LABELS if labels is None else labels)
    chosen = list(labels) if classes is None else list(classes)
    if not chosen:
        raise DataError("no classes selected")
    if chosen == [MERGED_CLASS]:
        chosen, merge = list(labels), True
    unknown = [c for c in chosen if c not in labels]
    if unknown:
        raise DataError(f"unknown class name(s) {unknown}; known classes: {list(labels)} (or '{MERGED_CLASS}')")
    if len(set(chosen)) != len(chosen):
        raise DataError(f"class names repeated: {chosen}")
    if merge:
        return [MERGED_CLASS], [tuple(labels[c] for c in chosen)]
    return chosen, [(labels[c],) for c in chosen]


# ----------------------------------------------------------------------------- the dataset


def apply_view(x: torch.Tensor, kind: str, inverse: bool = False) -> torch.Tensor:
    """One of the paper's five views (§2.3) on the last two dims of any tensor, e.g. a batch ``(B, C, H, W)``.

    Rotations by multiples of 90 degrees and flips move pixels exactly (no interpolation); ``rot90`` turns
    counter-clockwise, like ``TF.rotate(90)``. ``inverse=True`` undoes the view: test-time augmentation
    (:func:`crlearn.train.predict_logits`) maps each view's prediction back with it.
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


class SegmentationDataset(Dataset):
    """Slices of a PNG folder as ``(image [1,S,S] float in [0,1], mask [C,S,S] float {0,1})``.

    Args:
        root: the data folder (images/, masks/, optional index.csv).
        classes: lesion classes to segment, one output channel each (default GGO, consolidation, effusion).
        merge: unite the chosen classes into one ``infection`` channel (the paper's Table 7 setting).
        size: side of the square output (image bilinear with antialias, mask nearest); ``None`` keeps 512.
        augment: the paper's x5 augmentation: each slice appears five times (identity, rot90/180/270, hflip).
        indices: restrict to these slice indices (a split); ``None`` takes all.
        labels: class name -> label value in the masks (default MedSeg's ggo=1, consolidation=2, effusion=3).

    Slices are read, checked and resized once, at construction; ``__getitem__`` only augments.
    """

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[str] | None = None,
        merge: bool = False,
        size: int | None = None,
        augment: bool = False,
        indices: Sequence[int] | None = None,
        labels: dict[str, int] | None = None,
    ) -> None:
        self.root = Path(root)
        self.class_names, self._channel_labels = resolve_classes(classes, merge, labels)
        self.max_label = max(MEDSEG_LABELS.values() if labels is None else labels.values())
        all_records = scan_folder(self.root)
        self.records = [all_records[i] for i in indices] if indices is not None else all_records
        self.size = size
        self.augment = augment
        images, masks = [], []
        for rec in self.records:
            img, lab = self._load(rec)
            images.append(img)
            masks.append(lab)
        self.images = torch.stack(images) if images else torch.empty(0)  # (N, 1, S, S) float32
        self.labels = torch.stack(masks) if masks else torch.empty(0)  # (N, S, S) uint8 label map

    def _load(self, rec: SliceRecord) -> tuple[torch.Tensor, torch.Tensor]:
        image = read_image(rec.image_path)
        label = read_mask(rec.mask_path, self.max_label)
        if image.shape != label.shape:
            raise DataError(
                f"{rec.mask_path}: mask size {label.shape[1]}x{label.shape[0]} does not match "
                f"image {rec.image_path.name} size {image.shape[1]}x{image.shape[0]}"
            )
        if self.size is None and self.records and rec is not self.records[0]:
            first = self.images_shape
            if image.shape != first:
                raise DataError(
                    f"{rec.image_path}: image size {image.shape[1]}x{image.shape[0]} differs from the first slice's "
                    f"{first[1]}x{first[0]}; pass size= to resize every slice to one size"
                )
        else:
            self.images_shape = image.shape
        img_t = torch.from_numpy(image)[None]  # (1, H, W)
        lab_t = torch.from_numpy(label)[None]  # (1, H, W)
        if self.size is not None and tuple(img_t.shape[-2:]) != (self.size, self.size):
            img_t = TF.resize(img_t, [self.size, self.size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
            lab_t = TF.resize(tv_tensors.Mask(lab_t), [self.size, self.size]).as_subclass(torch.Tensor)  # nearest
        return img_t.clamp_(0, 1), lab_t[0]

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


# ----------------------------------------------------------------------------- patient-level splits


def assign_groups(groups: Sequence[str], fractions: Sequence[float], seed: int = 0) -> list[list[int]]:
    """Deal whole groups into parts of (about) the given slice fractions; returns sorted slice indices per part.

    Groups are shuffled with ``seed`` and, biggest first (ties in shuffled order), each goes whole to the part
    furthest below its target number of slices. No group ever lies in two parts, and the slice fractions land
    close to the targets even when groups differ much in size (the sample's largest pseudo-patient has 16 slices).
    """
    uniq = sorted(set(groups))
    open_parts = [k for k, f in enumerate(fractions) if f > 0]
    if len(uniq) < len(open_parts):
        raise ValueError(f"need at least one group per part, got {len(uniq)} groups for {len(open_parts)} parts")
    size = {g: 0 for g in uniq}
    for g in groups:
        size[g] += 1
    target = [f * len(groups) for f in fractions]
    have = [0] * len(fractions)
    part: dict[str, int] = {}
    shuffled = [uniq[k] for k in np.random.default_rng(seed).permutation(len(uniq))]
    for g in sorted(shuffled, key=lambda g: -size[g]):
        k = max(open_parts, key=lambda p: (target[p] - have[p]) / target[p])
        part[g] = k
        have[k] += size[g]
    return [[i for i, g in enumerate(groups) if part[g] == k] for k in range(len(fractions))]


def split_by_group(
    groups: Sequence[str], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, list[int]]:
    """Patient-level train/val/test split (paper §3.1: 70/10/20), deterministic for a seed; see :func:`assign_groups`."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    train, val, test = assign_groups(groups, fractions, seed)
    return {"train": train, "val": val, "test": test}


def group_folds(
    groups: Sequence[str], n_folds: int = 5, seed: int = 0, val_fraction: float = 0.125
) -> list[dict[str, list[int]]]:
    """K-fold cross-validation by patient group (paper §3.1: five folds), deterministic for a seed.

    The groups are dealt into ``n_folds`` group-disjoint parts of about equal slice count; fold k tests on part k
    and splits the rest again by group into train and validation (``val_fraction``, for early stopping).
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    parts = assign_groups(groups, [1.0 / n_folds] * n_folds, seed)
    folds = []
    for k, test in enumerate(parts):
        rest = [i for i in range(len(groups)) if i not in set(test)]
        inner = assign_groups([groups[i] for i in rest], (1 - val_fraction, val_fraction), seed + k + 1)
        folds.append({"train": [rest[i] for i in inner[0]], "val": [rest[i] for i in inner[1]], "test": test})
    return folds
