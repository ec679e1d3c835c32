"""CT slices labelled COVID-19 or not, for the encoder used as a slice classifier (Huang et al. 2022, §2.8, §3.5).

Folder format (``data_sample/sarscov2_ct`` has it; any folder laid out like it works the same)::

    ROOT/images/NAME.png   8-bit (or 16-bit) grayscale slice, of any size (sizes may differ from file to file)
    ROOT/index.csv         one row per slice: a ``slice_id`` (or ``name``/``file``) column, a ``label`` column
                           (``covid`` or ``non_covid``: :data:`LABELS`) and a group column
                           (``pseudo_patient_group``, ``patient_id``, ...: :data:`crlearn.data.folder.GROUP_COLUMNS`)

The index is the list of slices: an image without a row is not read. Every slice is brought to one square input
size in one of two ways (``fit``):

- ``"pad"`` (default): keep the aspect ratio, resize so that the longer side is ``size`` (bilinear, antialiased),
  and pad the shorter side with zeros (black) on both sides, centred. Nothing is distorted.
- ``"stretch"``: resize straight to ``size x size`` (bilinear, antialiased); a wide crop gets squeezed.

Every problem with the input raises :class:`~crlearn.checks.DataError` with one line naming the file.
"""

from __future__ import annotations

import copy
import csv
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from crlearn.data.errors import DataError
from crlearn.data.paths import DEFAULT_CLASSIFICATION_DATA, default_classification_dir, not_found  # noqa: F401 (re-exported)
from crlearn.data.augment import AUGMENTATIONS, apply_view
from crlearn.data.folder import (
    GROUP_COLUMNS,
    NAME_COLUMNS,
    check_normalization,
    normalize_intensity,
    read_image,
)
from crlearn.data.splits import group_folds, split_by_group

LABELS = {"non_covid": 0, "covid": 1}  # index.csv label -> class index; 1 (COVID-19) is the positive class
CLASS_NAMES = sorted(LABELS, key=LABELS.get)  # ["non_covid", "covid"]: the classifier's outputs, in order
LABEL_COLUMN = "label"
FITS = ("pad", "stretch")  # how a slice becomes a square input (module docstring)
def read_class_index(root: Path) -> list[tuple[str, int, str]]:
    """``(slice name, class index, group)`` per row of ``root/index.csv``, checked (:class:`DataError` naming it)."""
    path = root / "index.csv"
    if not path.is_file():
        raise DataError(f"{path}: index.csv not found (expected columns slice_id, {LABEL_COLUMN}, and a group column)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        name_col = next((c for c in NAME_COLUMNS if c in fields), None)
        group_col = next((c for c in GROUP_COLUMNS if c in fields), None)
        for col, options in ((name_col, NAME_COLUMNS), (LABEL_COLUMN if LABEL_COLUMN in fields else None,
                                                        (LABEL_COLUMN,)), (group_col, GROUP_COLUMNS)):
            if col is None:
                raise DataError(f"{path}: no {' / '.join(options)} column (columns found: {', '.join(fields)})")
        rows = []
        for line, row in enumerate(reader, start=2):
            name, label = Path(row[name_col] or "").stem, (row[LABEL_COLUMN] or "").strip()
            if label not in LABELS:
                raise DataError(f"{path}: line {line} (slice {name!r}): unknown label {label!r}; expected one of "
                                f"{', '.join(LABELS)}")
            rows.append((name, LABELS[label], row[group_col]))
    if not rows:
        raise DataError(f"{path}: no slices listed")
    return rows


def fit_square(image: torch.Tensor, size: int, fit: str = "pad") -> torch.Tensor:
    """A slice ``(1, H, W)`` in [0, 1] as ``(1, size, size)``: ``pad`` (aspect kept, zero borders, centred) or
    ``stretch`` (both sides resized); bilinear with antialias either way (module docstring)."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {list(FITS)}, got {fit!r}")
    h, w = image.shape[-2:]
    if fit == "stretch":
        hh, ww = size, size
    else:
        scale = size / max(h, w)
        hh, ww = max(1, round(h * scale)), max(1, round(w * scale))
    if (hh, ww) != (h, w):
        image = F.interpolate(image[None], size=(hh, ww), mode="bilinear", align_corners=False,
                              antialias=True)[0].clamp_(0, 1)
    top, left = (size - hh) // 2, (size - ww) // 2
    return F.pad(image, (left, size - ww - left, top, size - hh - top))  # zeros: (1, size, size)


def classifier_input(image: torch.Tensor, size: int, fit: str = "pad", normalize: str = "none") -> torch.Tensor:
    """A slice ``(1, H, W)`` as the classifier reads it: clamped to [0, 1], normalised at its own size
    (:func:`crlearn.data.folder.normalize_intensity`), then brought to ``(1, size, size)`` by :func:`fit_square`. The one
    path of :class:`ClassificationDataset` and of gated prediction (:func:`crlearn.tasks.gate.predict_files`)."""
    return fit_square(normalize_intensity(image.clamp(0, 1), normalize), size, fit)


class ClassificationDataset(Dataset):
    """CT slices of a labelled folder as ``(image [1,S,S] float in [0,1], target)``, target 1 = COVID-19 (§2.8).

    Args:
        root: the data folder (images/, index.csv with slice_id, label and group columns).
        size: side of the square input, pixels.
        augment: the paper's x5 augmentation (§2.3): each slice appears five times (identity, rot90/180/270,
            hflip; :mod:`crlearn.data.augment`).
        indices: restrict to these rows of index.csv (a split); ``None`` takes all.
        fit: ``"pad"`` (aspect kept, zero borders; default) or ``"stretch"`` (module docstring).
        normalize: intensity normalisation of every slice at its own size, before ``fit``
            (:func:`crlearn.data.folder.normalize_intensity`).

    Slices are read, checked and resized once: ``images (N, 1, S, S)``, ``targets (N,)`` long, ``groups`` and
    ``names`` (lists); :meth:`subset` takes parts from memory.
    """

    def __init__(self, root: str | Path, size: int = 128, augment: bool = False,
                 indices: Sequence[int] | None = None, fit: str = "pad", normalize: str = "none") -> None:
        if fit not in FITS:
            raise ValueError(f"fit must be one of {list(FITS)}, got {fit!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.root, self.size, self.augment, self.fit = Path(root), size, augment, fit
        self.normalize = check_normalization(normalize)
        if not self.root.is_dir():
            raise DataError(not_found(self.root))
        rows = read_class_index(self.root)
        rows = [rows[int(i)] for i in indices] if indices is not None else rows
        self.names = [r[0] for r in rows]
        self.groups = [r[2] for r in rows]
        self.targets = torch.tensor([r[1] for r in rows], dtype=torch.long)  # (N,)
        images = [self._read(name) for name in self.names]
        self.images = torch.stack(images) if images else torch.empty(0, 1, size, size)  # (N, 1, S, S)

    def _read(self, name: str) -> torch.Tensor:
        image = torch.from_numpy(read_image(self.root / "images" / f"{name}.png"))[None]  # (1, H, W)
        return classifier_input(image, self.size, self.fit, self.normalize)

    def subset(self, indices: Sequence[int], augment: bool = False) -> ClassificationDataset:
        """The slices at ``indices`` as a new data set, from memory (no file is read again)."""
        idx = [int(i) for i in indices]
        out = copy.copy(self)
        out.names, out.groups = [self.names[i] for i in idx], [self.groups[i] for i in idx]
        out.targets, out.images = self.targets[idx], self.images[idx]
        out.augment = augment
        return out

    def __len__(self) -> int:
        return len(self.names) * (len(AUGMENTATIONS) if self.augment else 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        n_views = len(AUGMENTATIONS) if self.augment else 1
        j, view = divmod(i, n_views)
        return apply_view(self.images[j], AUGMENTATIONS[view]), self.targets[j]


# ----------------------------------------------------------------------------- patient-level splits (§2.2)


def group_labels(targets: Sequence[int], groups: Sequence[str], source: str | Path) -> dict[str, int]:
    """The label of each group (the label of its slices); a group whose slices disagree is a :class:`DataError`
    naming ``source`` (the patient's truth would be undefined)."""
    out: dict[str, int] = {}
    for t, g in zip((int(t) for t in targets), groups):
        if out.setdefault(g, t) != t:
            raise DataError(f"{source}: group {g!r} has slices of both classes; a patient group needs one label")
    return out


def _by_class(dataset: ClassificationDataset) -> list[list[int]]:
    """Slice indices of each class (class index order), after checking that every group has one label."""
    group_labels(dataset.targets.tolist(), dataset.groups, dataset.root / "index.csv")
    return [[i for i, t in enumerate(dataset.targets.tolist()) if t == k] for k in range(len(LABELS))]


def _check_parts(dataset: ClassificationDataset, split: dict[str, list[int]]) -> dict[str, list[int]]:
    for part, idx in split.items():
        present = {int(dataset.targets[i]) for i in idx}
        for name, k in LABELS.items():
            if k not in present:
                raise DataError(f"{dataset.root / 'index.csv'}: no {name} slice in the {part} part of the split; "
                                f"every class needs at least three groups")
    return split


def classification_split(dataset: ClassificationDataset, seed: int = 0,
                         fractions: Sequence[float] = (0.7, 0.1, 0.2)) -> dict[str, list[int]]:
    """Patient-level train/val/test split (§2.2: 70/10/20 by group), stratified by class.

    The groups of each class are split on their own (:func:`crlearn.data.splits.split_by_group`, same seed) and the
    parts joined, so every part holds both classes in about the data's proportion. A class missing from a part
    (fewer than three groups) is a :class:`DataError` naming index.csv. Returns sorted slice indices per part.
    """
    split: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for members in _by_class(dataset):
        try:
            part = split_by_group([dataset.groups[i] for i in members], fractions, seed)
        except ValueError:  # fewer groups than parts: the check below names the class
            part = {"train": list(range(len(members))), "val": [], "test": []}
        for name in split:
            split[name] += [members[i] for i in part[name]]
    return _check_parts(dataset, {k: sorted(v) for k, v in split.items()})


def classification_folds(dataset: ClassificationDataset, n_folds: int = 5, seed: int = 0) -> list[dict[str, list[int]]]:
    """K-fold cross-validation by group (§2.2: five folds), stratified like :func:`classification_split`: fold k
    joins fold k of each class's :func:`crlearn.data.splits.group_folds`."""
    folds: list[dict[str, list[int]]] = [{"train": [], "val": [], "test": []} for _ in range(n_folds)]
    for members in _by_class(dataset):
        try:
            class_folds = group_folds([dataset.groups[i] for i in members], n_folds, seed)
        except ValueError as exc:
            raise DataError(f"{dataset.root / 'index.csv'}: cannot make {n_folds} group folds ({exc})") from None
        for fold, part in zip(folds, class_folds):
            for name in fold:
                fold[name] += [members[i] for i in part[name]]
    return [_check_parts(dataset, {k: sorted(v) for k, v in fold.items()}) for fold in folds]
