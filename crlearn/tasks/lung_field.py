"""Lesion burden: an estimated lung field and the lesion-area / lung-area ratio (§3.4).

Huang et al. 2022, §3.4 estimate how severe a patient's COVID-19 is from the proportion of the lung occupied by
lesions. That needs a lung mask. The bundled MedSeg sample has none (``data_sample/medseg_covid100/README.md``),
so this module estimates the lung field from the image alone with a classical pipeline (numpy and
``scipy.ndimage``):

1. **smooth** the slice with a 5 x 5 box filter (less speckle for the threshold);
2. **Otsu threshold** (Otsu, IEEE Trans. SMC 9(1):62-66, 1979): the grey level that best splits the histogram
   into two classes; on a lung-window slice, air and lung fall below it, soft tissue and bone above;
3. **remove the outside air**: dark connected components that touch the image border surround the body;
4. **candidates**: the dark components inside the body of at least ``min_area`` of the image; each goes to the
   side of the body's midline (column centre of the body) its own centre lies on;
5. **close** each side on its own (dilate, then erode, by a disc-like octagon of ``closing_radius``, 4 % of the
   side by default) and **fill holes**: vessels, airways and lesions enclosed by lung (dense lesions are *bright*,
   above the threshold) become lung, fragments of one lung join, notches narrower than about twice the radius
   (a dense lesion entering from the chest wall) are bridged, and the two lungs are never joined;
6. **keep the big pieces**: pieces smaller than ``min_component`` of the largest are dropped (trachea, bronchi);
7. optionally **unite with a lesion mask** (ground truth or prediction), then fill holes again, so that every
   lesion pixel counts as lung: the ratio then lies in [0, 1] (:func:`include_lesions`).

Otsu's threshold is written out below (it is a lesson); labelling, hole filling, closing and the box filter are
``scipy.ndimage``'s. Measured coverage and timings: ``results/severity_lung_field.md``.

Limitations (state them whenever you show a number made with this module):

- the images are display-windowed 8-bit pictures rebuilt from JPGs, not Hounsfield units, so no fixed air/tissue
  threshold exists; Otsu adapts per slice but this is not a validated lung segmentation (no ground-truth lung
  masks exist for the sample);
- dense consolidation or effusion along the chest wall (broad "bites" out of the lung outline) is missed by the
  image-only field, on many of the sample slices with lesions; step 7 repairs the ratio, but with a *predicted*
  lesion mask a missed lesion shrinks the lung field too;
- a lung that touches the image border (a tightly cropped slice) is removed with the outside air; a slice whose
  lungs lie above each other (an unusual orientation) is closed as one side;
- the closing fills part of the mediastinal notch; gas in the bowel or stomach next to the lung base may be kept;
- one axial slice is not a volume: a ratio on one slice is not the patient's lung involvement.

Ratios made with this module are **for teaching, not a diagnosis**.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from crlearn.checks import as_bool_mask, to_numpy
from crlearn.data.folder import MERGED_CLASS

__all__ = [
    "otsu_threshold",
    "label_components",
    "fill_holes",
    "closing",
    "LungSteps",
    "lung_mask_steps",
    "lung_mask",
    "include_lesions",
    "lesion_ratio",
    "burden_table",
    "CT_SCORE_BANDS",
    "ct_score_band",
]

_SQUARE = ndimage.generate_binary_structure(2, 2)  # 3 x 3: the 8 neighbours
_CROSS = ndimage.generate_binary_structure(2, 1)  # plus-shaped: the 4 neighbours
_OCTAGON = ndimage.binary_dilation(np.pad(_CROSS, 1), _SQUARE)  # 5 x 5, corners cut: a square step, then a cross


def _to_image(image: Any) -> np.ndarray:
    """A 2-D float32 array in [0, 1] from ``(H, W)`` or ``(1, H, W)``, numpy or torch, uint8 or float."""
    a = to_numpy(image)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"image must be (H, W) or (1, H, W), got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError("image contains NaN or infinite values")
    if a.min() < 0 or a.max() > 1:
        raise ValueError(f"float image values must lie in [0, 1], got [{a.min():.3g}, {a.max():.3g}]")
    return a


# ----------------------------------------------------------------------------- building blocks


def otsu_threshold(image: Any, bins: int = 256) -> float:
    """Otsu's threshold of an image in [0, 1]: the level maximising the between-class variance.

    Returns a value ``t`` in (0, 1]; pixels ``< t`` form the dark class. Otsu, "A threshold selection method from
    gray-level histograms", IEEE Trans. SMC 9(1):62-66, 1979.
    """
    x = _to_image(image)
    hist = np.bincount(np.minimum((x * bins).astype(np.int64), bins - 1).ravel(), minlength=bins)
    p = hist / hist.sum()
    centers = (np.arange(bins) + 0.5) / bins
    w0 = np.cumsum(p)  # weight of the dark class when the cut lies after bin k
    w1 = 1.0 - w0
    mu = np.cumsum(p * centers)  # w0 * (mean of the dark class)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * w1)  # = w0 * w1 * (mean0 - mean1) ** 2
    between[(w0 <= 1e-12) | (w1 <= 1e-12)] = -1.0
    return (int(np.argmax(between)) + 1) / bins  # the upper edge of the last dark bin


def label_components(mask: Any, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Connected components of a 2-D bool mask: ``(labels int32 (H, W), n)``; 0 is background, 1..n objects.

    ``connectivity`` 4 (edge neighbours) or 8 (edge and corner neighbours). Objects are numbered in raster order
    of their first pixel (``scipy.ndimage.label``).
    """
    m = as_bool_mask(to_numpy(mask))
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    structure = _CROSS if connectivity == 4 else _SQUARE
    labels, n = ndimage.label(m, structure=structure, output=np.int32)
    return labels, int(n)


def _border_labels(labels: np.ndarray) -> np.ndarray:
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.unique(edge[edge > 0])


def fill_holes(mask: Any) -> np.ndarray:
    """Fill the holes of a 2-D mask: background regions (4-connected) that do not reach the image border."""
    # binary_fill_holes grows the background in from the border with its default cross: 4-connected background
    return ndimage.binary_fill_holes(as_bool_mask(to_numpy(mask)))


def closing(mask: Any, radius: int) -> np.ndarray:
    """Morphological closing (dilate, then erode): bridges gaps and notches narrower than about ``2 * radius``.

    The footprint is a disc-like octagon of ``radius`` pixels: ``radius // 2`` repetitions of a 5 x 5 octagon,
    grown by a 3 x 3 square when ``radius`` is odd. The mask is padded by ``radius`` first, so that objects at the
    image border are not eaten by the erosion.
    """
    m = as_bool_mask(to_numpy(mask))
    if radius <= 0:
        return m.copy()
    half, odd = divmod(radius, 2)
    p = np.pad(m, radius)
    # closing by (A repeated k times, then B) = erode by B (close by A, k times (dilate by B)); repeating a small
    # footprint is much faster than one large one
    if odd:
        p = ndimage.binary_dilation(p, _SQUARE)
    if half:  # iterations=0 would mean "until nothing changes"
        p = ndimage.binary_closing(p, _OCTAGON, iterations=half)
    if odd:
        p = ndimage.binary_erosion(p, _SQUARE)
    return p[radius:-radius, radius:-radius]


def _closing_in_box(mask: np.ndarray, radius: int) -> np.ndarray:
    """:func:`closing` computed only in the mask's bounding box grown by ``radius`` (same result, faster)."""
    out = np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return out
    h, w = mask.shape
    y0, y1 = max(ys.min() - radius, 0), min(ys.max() + radius + 1, h)
    x0, x1 = max(xs.min() - radius, 0), min(xs.max() + radius + 1, w)
    out[y0:y1, x0:x1] = closing(mask[y0:y1, x0:x1], radius)
    return out


# ----------------------------------------------------------------------------- lung field


@dataclass
class LungSteps:
    """Every intermediate result of :func:`lung_mask_steps`, in order, for figures (masks: bool ``(H, W)``)."""

    smoothed: np.ndarray  # float32 in [0, 1]: the box-filtered slice
    threshold: float  # Otsu's level on the smoothed slice
    dark: np.ndarray  # smoothed < threshold: air and lung (and some ground glass)
    body: np.ndarray  # everything but the dark components touching the image border (the air around the body)
    midline: float  # column of the body's centre: splits right lung (image left) from left lung
    candidates: np.ndarray  # dark components inside the body of at least `min_area`
    closed: np.ndarray  # candidates of each side united, closed and hole-filled
    lung: np.ndarray  # the image-only lung field: the big pieces of `closed`
    notes: list[str] = field(default_factory=list)  # what went wrong, if anything (e.g. no lung found)


def lung_mask_steps(
    image: Any,
    closing_radius: int | None = None,
    min_area: float = 0.001,
    min_component: float = 0.1,
    smooth: int = 5,
) -> LungSteps:
    """Estimate the lung field of one slice from the image alone; returns every step (module docstring, 1-6).

    Args:
        image: ``(H, W)`` or ``(1, H, W)``, uint8 or float in [0, 1] (display-windowed, not HU).
        closing_radius: pixels; default ``round(0.04 * min(H, W))`` (20 at 512 px).
        min_area: dark components inside the body smaller than this fraction of the image are ignored (noise).
        min_component: after closing, pieces smaller than this fraction of the largest piece are dropped.
        smooth: side of the box filter applied before thresholding (odd; 1 for none). At the image edge the
            window is mirrored about the edge (``uniform_filter``'s ``mode="reflect"``).
    """
    img = _to_image(image)
    h, w = img.shape
    if closing_radius is None:
        closing_radius = max(1, round(0.04 * min(h, w)))
    if smooth < 1 or smooth % 2 == 0:
        raise ValueError(f"smooth must be an odd positive box size, got {smooth}")
    sm = ndimage.uniform_filter(img, smooth, mode="reflect")
    t = otsu_threshold(sm)
    dark = sm < t  # (H, W)
    labels, n = label_components(dark, connectivity=8)
    body = ~np.isin(labels, _border_labels(labels))
    midline = float(np.nonzero(body)[1].mean()) if body.any() else w / 2
    sizes = np.bincount(labels[dark & body], minlength=n + 1)
    sizes[0] = 0
    keep = np.nonzero(sizes >= max(min_area * h * w, 1))[0]
    candidates = np.isin(labels, keep)
    # a component goes to the side of the midline its centre lies on; each side is closed on its own
    cols = np.bincount(labels[candidates], weights=np.nonzero(candidates)[1], minlength=n + 1)
    centre = cols / np.maximum(sizes, 1)
    closed = np.zeros_like(dark)
    for side in (keep[centre[keep] < midline], keep[centre[keep] >= midline]):
        if len(side):
            closed |= fill_holes(_closing_in_box(np.isin(labels, side), closing_radius))
    pieces, n_pieces = label_components(closed, connectivity=8)
    piece_sizes = np.bincount(pieces.ravel(), minlength=n_pieces + 1)
    piece_sizes[0] = 0
    big = np.nonzero(piece_sizes >= min_component * piece_sizes.max())[0] if n_pieces else np.array([], int)
    lung = np.isin(pieces, big[big > 0])
    notes = [] if lung.any() else ["no dark component inside the body: no lung found (do the lungs touch the border?)"]
    return LungSteps(sm, t, dark, body, midline, candidates, closed, lung, notes)


def lung_mask(image: Any, lesion: Any | None = None, **kwargs: Any) -> np.ndarray:
    """Estimated lung field of one slice as a bool ``(H, W)`` array (§3.4; see the module docstring).

    ``lesion``: an optional lesion mask ``(H, W)`` or ``(K, H, W)`` (ground truth or prediction) united with the
    field (step 7), so that every lesion pixel counts as lung. ``kwargs`` go to :func:`lung_mask_steps`.
    """
    lung = lung_mask_steps(image, **kwargs).lung
    return include_lesions(lung, lesion) if lesion is not None else lung


def include_lesions(lung: Any, lesion: Any) -> np.ndarray:
    """Unite a lung field ``(H, W)`` with a lesion mask ``(H, W)`` or ``(K, H, W)``, then fill holes."""
    lung_m, les = as_bool_mask(to_numpy(lung), "lung"), as_bool_mask(to_numpy(lesion), "lesion")
    if les.ndim == 3:
        les = les.any(0)
    if les.shape != lung_m.shape:
        raise ValueError(f"lesion mask {les.shape} and lung mask {lung_m.shape} differ in size")
    return fill_holes(lung_m | les)


# ----------------------------------------------------------------------------- ratios


def lesion_ratio(lesion: Any, lung: Any, empty: str = "raise") -> np.ndarray:
    """Lesion-area / lung-area ratio per class, ``|lesion_k ∩ lung| / |lung|``, of a ``(K, H, W)`` mask (§3.4).

    Returns float64 ``(K + 1,)`` when K > 1: one ratio per class, then the merged ``infection`` ratio (the union
    of the classes, not their sum: predicted classes may overlap); ``(1,)`` when K = 1 (or for an ``(H, W)``
    mask). Every ratio lies in [0, 1]. Lesion pixels outside the lung field do not count: unite them first
    with :func:`include_lesions` (or pass ``lesion=`` to :func:`lung_mask`).

    An empty lung mask has no ratio: ``empty="raise"`` (default) raises ``ValueError``, ``empty="nan"`` returns NaNs.
    """
    les, lung_m = as_bool_mask(to_numpy(lesion), "lesion"), as_bool_mask(to_numpy(lung), "lung")
    if les.ndim == 2:
        les = les[None]
    if les.ndim != 3 or les.shape[-2:] != lung_m.shape:
        raise ValueError(f"lesion must be (K, H, W) matching the lung mask {lung_m.shape}, got {les.shape}")
    if empty not in ("raise", "nan"):
        raise ValueError(f"empty must be 'raise' or 'nan', got {empty!r}")
    inside = les & lung_m
    if les.shape[0] > 1:
        inside = np.concatenate([inside, inside.any(0, keepdims=True)])
    area = int(lung_m.sum())
    if area == 0:
        if empty == "raise":
            raise ValueError("the lung mask is empty: no lesion/lung ratio (do the lungs touch the image border?)")
        return np.full(len(inside), np.nan)
    return inside.sum((1, 2)).astype(np.float64) / area


def burden_table(
    images: Any,
    lesions: Mapping[str, Any],
    class_names: Sequence[str],
    names: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Lesion/lung ratios of a set of slices, one row per slice.

    Args:
        images: ``(N, 1, H, W)`` or ``(N, H, W)`` slices.
        lesions: source name -> ``(N, K, H, W)`` masks, e.g. ``{"true": targets, "pred": predictions}``.
        class_names: the K channel names.
        names: slice names (default ``0..N-1``).
        kwargs: go to :func:`lung_mask_steps`.

    The image-only lung field is computed once per slice, then united with *each source's own* lesions (what
    that source would compute on its own: a prediction never sees the ground truth). Each row holds ``name``,
    ``lung_fraction_<source>`` (lung pixels / image pixels) and ``<source>_<class>`` ratios, with ``infection``
    (:data:`crlearn.data.folder.MERGED_CLASS`) when K > 1. An empty lung field gives NaN ratios and a ``note``.
    """
    n = len(images)
    names = [str(i) for i in range(n)] if names is None else list(names)
    k = len(class_names)
    cols = list(class_names) + ([MERGED_CLASS] if k > 1 else [])
    rows = []
    for i in range(n):
        steps = lung_mask_steps(images[i], **kwargs)
        row: dict[str, Any] = {"name": names[i]}
        for source, masks in lesions.items():
            les = as_bool_mask(to_numpy(masks[i]), source)
            if les.ndim != 3 or les.shape[0] != k:
                raise ValueError(f"lesions[{source!r}] must be (N, {k}, H, W), got a slice of shape {les.shape}")
            lung = include_lesions(steps.lung, les) if steps.lung.any() else steps.lung
            row[f"lung_fraction_{source}"] = float(lung.mean())
            for c, r in zip(cols, lesion_ratio(les, lung, empty="nan")):
                row[f"{source}_{c}"] = float(r)
        if steps.notes:
            row["note"] = "; ".join(steps.notes)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- what a ratio is used for

# A commonly used semi-quantitative CT severity score grades the involvement of each of the five lung lobes
# 0-5 by percentage (e.g. Pan F. et al., "Time course of lung changes on chest CT during recovery from 2019
# novel coronavirus (COVID-19) pneumonia", Radiology 295(3):715-721, 2020; total 0-25). Applied here to one
# slice it is an illustration of how a ratio becomes a grade, not that score.
CT_SCORE_BANDS: tuple[tuple[float, float, int, str], ...] = (
    # (lower bound, upper bound, score, label); a ratio r falls in the band with lower <= r < upper
    (0.0, 0.0, 0, "none"),
    (0.0, 0.05, 1, "< 5 %"),
    (0.05, 0.25, 2, "5-25 %"),
    (0.25, 0.50, 3, "25-50 %"),
    (0.50, 0.75, 4, "50-75 %"),
    (0.75, 1.0, 5, ">= 75 %"),
)


def ct_score_band(ratio: float) -> tuple[int, str]:
    """The band ``(score 0-5, label)`` of :data:`CT_SCORE_BANDS` a lesion/lung ratio falls in (illustration only).

    Score 0 only for no lesion at all; otherwise ``lower <= ratio < upper`` (the last band includes 1).
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating)) or not math.isfinite(ratio):
        raise ValueError(f"ratio must be a finite number in [0, 1], got {ratio!r}")
    if not 0 <= ratio <= 1:
        raise ValueError(f"ratio must lie in [0, 1], got {ratio!r}")
    if ratio == 0:
        return 0, CT_SCORE_BANDS[0][3]
    for lo, hi, score, label in CT_SCORE_BANDS[1:]:
        if ratio < hi or score == 5:
            return score, label
    raise AssertionError("unreachable")
