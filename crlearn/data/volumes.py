"""Real CT as it comes: a NIfTI file or a DICOM series read into one volume in Hounsfield units.

Huang et al. 2022 work on axial slices (§2.2), and their severity estimate (§3.4, Table 5) is per patient, on whole
scans. Scans come as **volumes**: a NIfTI file (``.nii``/``.nii.gz``, common in public challenges) or a folder of
DICOM files, one per slice (a PACS export). :func:`read_volume` reads either into a :class:`Volume`:

- ``hu``: float32 ``(slices, H, W)`` in Hounsfield units (:mod:`crlearn.data.windowing` explains them). DICOM
  stores raw integers: ``HU = raw * RescaleSlope + RescaleIntercept`` is applied slice by slice; nibabel applies
  NIfTI's ``scl_slope``/``scl_inter`` the same way.
- ``spacing``: ``(z, y, x)`` in mm, between slices, rows and columns; a voxel holds ``z * y * x / 1000`` mL.
- ``affine``: the source's voxel grid -> world (RAS+ mm, NIfTI's convention; DICOM's LPS is converted), so that a
  label volume can be written back over the input (:meth:`Volume.to_source`, :func:`label_nifti`).
- ``labels``: an optional label volume (a NIfTI mask) of the same grid, uint8.

**Orientation.** Files store their voxels in any axis order and direction. Every volume is turned to one canonical
axial order with nibabel's orientation codes (:data:`DISPLAY_AXES` = ``("S", "P", "L")``: each index increases
toward the patient's superior, posterior, left): slice 0 is the lowest (feet side), row 0 the front of the body,
column 0 the patient's **right** -- the radiological view, as the bundled PNG sets are stored (anterior up,
patient's right on the image left). Two files of one scan stored differently give the same array.

**DICOM slices are sorted by position**, not by file name: each slice's ImagePositionPatient projected on the
slice normal (the cross product of the two ImageOrientationPatient directions). File names of an export often sort
wrongly (``IM10`` before ``IM2``) or say nothing.

Every bad input is refused with one line naming the file (:class:`~crlearn.data.errors.DataError`): not a volume,
a modality other than CT, values that are not HU, missing spacing or position, a mask of another shape or grid, two
series mixed in one folder, slices at one position or with gaps, a truncated or corrupt file.

nibabel and pydicom are an optional extra (``pip install "crlearn[ct]"``), imported only when a file is read.
"""

from __future__ import annotations

import gzip
import importlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crlearn.data.errors import DataError
from crlearn.data.windowing import window

DISPLAY_AXES = ("S", "P", "L")  # the canonical order: slices from the feet up, rows front to back, columns R to L
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MIN_AIR_HU = -500.0  # a chest CT in HU holds air (about -1000 HU); a volume whose minimum is above this is not HU
SPACING_TOLERANCE = 0.01  # slice gaps may differ by 1 % (+ 0.01 mm) before a series is called uneven

__all__ = [
    "DISPLAY_AXES",
    "MissingExtraError",
    "Volume",
    "is_volume_path",
    "label_nifti",
    "nifti_bytes",
    "png_slices",
    "read_volume",
]


class MissingExtraError(ImportError, ValueError):
    """nibabel or pydicom is not installed (a ``ValueError`` too, so the CLI prints it as one line)."""


def _require(module: str) -> Any:
    """Import an optional dependency of the ``ct`` extra, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"reading CT volumes needs {module}: pip install \"crlearn[ct]\"") from None


def display_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """The affine of an array already in :data:`DISPLAY_AXES` order with ``spacing`` (z, y, x) mm, origin 0."""
    z, y, x = spacing
    return np.array([[0, 0, -x, 0], [0, -y, 0, 0], [z, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


@dataclass(frozen=True)
class Volume:
    """A CT volume in Hounsfield units, in the canonical axial order (module docstring).

    ``Volume(hu, spacing)`` wraps an array made in memory (already in display order); :func:`read_volume` reads
    files.
    """

    hu: np.ndarray  # (S, H, W) float32, Hounsfield units; slice 0 inferior, row 0 anterior, column 0 patient's right
    spacing: tuple[float, float, float]  # (z, y, x) mm between slices, rows, columns
    affine: np.ndarray | None = None  # 4x4: the *source's* voxel indices -> RAS+ mm; None: display_affine(spacing)
    labels: np.ndarray | None = None  # (S, H, W) uint8 label volume on the same grid, or None
    source: str = "array"  # the file or folder read
    back_ornt: np.ndarray | None = field(default=None, repr=False)  # nibabel orientation display -> source axes

    def __post_init__(self) -> None:
        if np.ndim(self.hu) != 3 or 0 in np.shape(self.hu):
            raise DataError(f"{self.source}: not a volume: array of shape {np.shape(self.hu)}, expected "
                            f"(slices, H, W)")
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise DataError(f"{self.source}: missing or invalid voxel spacing {self.spacing!r} (mm, z/y/x)")
        object.__setattr__(self, "spacing", spacing)
        if self.affine is None:
            object.__setattr__(self, "affine", display_affine(spacing))
        if self.labels is not None and np.shape(self.labels) != np.shape(self.hu):
            raise DataError(f"{self.source}: label volume of shape {np.shape(self.labels)}, the scan is "
                            f"{np.shape(self.hu)}")

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in mL (1 mL = 1000 mm³)."""
        return float(np.prod(self.spacing)) / 1000.0

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """An ``(S, H, W)`` array (e.g. predicted labels) in the source file's voxel order, to save with
        :attr:`affine` over the input."""
        if np.shape(array) != np.shape(self.hu):
            raise ValueError(f"array of shape {np.shape(array)} does not fit the volume {np.shape(self.hu)}")
        if self.back_ornt is None:
            return np.asarray(array)
        nib = _require("nibabel")
        return np.ascontiguousarray(nib.orientations.apply_orientation(np.asarray(array), self.back_ornt))


# ----------------------------------------------------------------------------- reorientation (nibabel's codes)


def _reorient(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(data in DISPLAY_AXES order, its affine, the orientation back to the source)``."""
    ornt = _require("nibabel").orientations
    source, target = ornt.io_orientation(affine), ornt.axcodes2ornt(DISPLAY_AXES)
    forward = ornt.ornt_transform(source, target)
    out = np.ascontiguousarray(ornt.apply_orientation(data, forward))
    return out, affine @ ornt.inv_ornt_aff(forward, data.shape), ornt.ornt_transform(target, source)


def _spacing(affine: np.ndarray, where: Path) -> tuple[float, float, float]:
    """(z, y, x) mm from a display-order affine's columns; zero or non-finite: no spacing."""
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise DataError(f"{where}: missing voxel spacing (header gives {np.round(spacing, 4).tolist()} mm): volumes "
                        "in mL would be meaningless")
    return tuple(float(s) for s in spacing)  # type: ignore[return-value]


def _check_hu(hu: np.ndarray, where: Path) -> None:
    if not np.isfinite(hu).all():
        raise DataError(f"{where}: the volume holds NaN or infinite values")
    lo, hi = float(hu.min()), float(hu.max())
    if lo > MIN_AIR_HU:
        raise DataError(f"{where}: values {lo:g} to {hi:g} do not look like Hounsfield units (a chest CT has air near "
                        f"-1000 HU): not CT, or stored without its rescale intercept?")


# ----------------------------------------------------------------------------- NIfTI


def is_volume_path(path: str | Path) -> bool:
    """Whether ``path`` names a volume: a ``.nii``/``.nii.gz`` file or a folder (a DICOM series)."""
    p = Path(path)
    return p.is_dir() or p.name.lower().endswith(NIFTI_SUFFIXES)


def _check_header_spacing(path: Path, img: Any) -> None:
    """Refuse a header without voxel sizes: nibabel replaces zero ``pixdim`` with 1 mm as it loads (silently wrong
    volumes), so the header is read again unchecked. An ``sform`` carries its own spacing and is trusted."""
    opener = _require("nibabel").openers.ImageOpener
    with opener(str(path)) as f:
        raw = type(img.header).from_fileobj(f, check=False)
    if int(raw["sform_code"]) == 0 and np.any(np.asarray(raw["pixdim"][1:4]) <= 0):
        raise DataError(f"{path}: missing voxel spacing (pixdim {np.asarray(raw['pixdim'][1:4]).tolist()} mm, no "
                        f"sform): volumes in mL would be meaningless")


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data (x, y, z) float32, affine)`` of a NIfTI file, checked: readable, complete, one 3-D volume."""
    nib = _require("nibabel")
    try:
        img = nib.load(str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise DataError(f"{path}: not a NIfTI volume ({type(exc).__name__}: {exc})") from None
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except (EOFError, OSError, zlib.error, ValueError) as exc:  # gzip stream or data block cut short
        raise DataError(f"{path}: truncated or corrupt file ({type(exc).__name__}: {exc})") from None
    _check_header_spacing(path, img)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3 or 1 in data.shape[:2]:
        raise DataError(f"{path}: not a volume: data of shape {data.shape}, expected three axes (x, y, slices)")
    return data, np.asarray(img.affine, dtype=np.float64)


# ----------------------------------------------------------------------------- DICOM


def _dicom_images(folder: Path) -> list[tuple[Path, Any]]:
    """Every DICOM file with pixel data in ``folder`` (not its sub-folders), with its dataset. Files that are not
    DICOM, and DICOM files without pixels (DICOMDIR, reports), are passed over."""
    pydicom = _require("pydicom")
    from pydicom.errors import InvalidDicomError

    out = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            continue
        except Exception as exc:  # a DICOM file cut short, or a broken element
            raise DataError(f"{path}: unreadable DICOM file ({type(exc).__name__}: {exc})") from None
        if "PixelData" in ds:
            out.append((path, ds))
    if not out:
        raise DataError(f"{folder}: no DICOM image files (expected one file per slice of a CT series)")
    return out


def _check_series(folder: Path, files: list[tuple[Path, Any]]) -> None:
    """One CT series, single-frame slices of one size and orientation, each placed and with a pixel spacing."""
    series = {}
    for path, ds in files:
        series.setdefault(str(ds.get("SeriesInstanceUID", "?")), path)
    if len(series) > 1:
        raise DataError(f"{folder}: {len(series)} series mixed in one folder (e.g. {', '.join(p.name for p in series.values())}"
                        f"); put each series in its own folder")
    first = files[0][1]
    for path, ds in files:
        if str(ds.get("Modality", "")).upper() != "CT":
            raise DataError(f"{path}: modality {ds.get('Modality', 'missing')!r}, not CT: only CT is in Hounsfield units")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DataError(f"{path}: a multi-frame file; export the series as one file per slice")
        for tag in ("PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient"):
            if tag not in ds:
                raise DataError(f"{path}: no {tag}: the voxel spacing and position of the slice are unknown")
        for tag in ("Rows", "Columns", "PixelSpacing", "ImageOrientationPatient"):
            if not np.allclose(np.asarray(ds.get(tag), float), np.asarray(first.get(tag), float), atol=1e-4):
                raise DataError(f"{path}: {tag} differs from {files[0][0].name}'s: not one series")


def _sorted_positions(folder: Path, files: list[tuple[Path, Any]]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """``(order, positions, step)``: slice order by ImagePositionPatient along the normal, the sorted positions
    (LPS mm) and the vector from one slice to the next. Duplicates and uneven gaps are refused."""
    iop = np.asarray(files[0][1].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    pos = np.array([np.asarray(ds.ImagePositionPatient, float) for _, ds in files])
    order = np.argsort(pos @ normal, kind="stable").tolist()
    pos = pos[order]
    if len(pos) == 1:
        thick = float(files[0][1].get("SliceThickness", 0) or 0)
        if thick <= 0:
            raise DataError(f"{files[0][0]}: one slice without SliceThickness: the slice spacing is unknown")
        return order, pos, normal * thick
    gaps = np.diff(pos @ normal)
    if gaps.min() < 1e-3:
        k = int(np.argmin(gaps))
        raise DataError(f"{folder}: {files[order[k]][0].name} and {files[order[k + 1]][0].name} lie at the same "
                        f"position: two series (or a repeat) in one folder?")
    if gaps.max() - gaps.min() > SPACING_TOLERANCE * np.median(gaps) + 0.01:
        raise DataError(f"{folder}: uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm): missing slices?")
    return order, pos, (pos[-1] - pos[0]) / (len(pos) - 1)


def _hu_slice(path: Path, ds: Any) -> np.ndarray:
    """One slice in HU, ``(rows, columns)`` float32: ``raw * RescaleSlope + RescaleIntercept``."""
    try:
        raw = ds.pixel_array.astype(np.float32)
    except Exception as exc:  # truncated pixel data, an unsupported compression
        raise DataError(f"{path}: pixel data unreadable ({type(exc).__name__}: {exc})") from None
    return raw * np.float32(ds.get("RescaleSlope", 1) or 1) + np.float32(ds.get("RescaleIntercept", 0) or 0)


def _load_dicom(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data (columns, rows, slices) float32 in HU, RAS affine)`` of a DICOM series folder."""
    files = _dicom_images(folder)
    _check_series(folder, files)
    order, pos, step = _sorted_positions(folder, files)
    ds0 = files[order[0]][1]
    iop = np.asarray(ds0.ImageOrientationPatient, float)
    d_row, d_col = (float(v) for v in ds0.PixelSpacing)  # between rows, between columns
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = iop[:3] * d_col, iop[3:] * d_row, step, pos[0]
    stack = np.stack([_hu_slice(*files[k]) for k in order])  # (slices, rows, columns)
    return stack.transpose(2, 1, 0), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS


# ----------------------------------------------------------------------------- reading


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.is_dir():
        return _load_dicom(path)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return _load_nifti(path)
    raise DataError(f"{path}: not a volume: expected a .nii or .nii.gz file, or a folder holding a DICOM series")


def _read_labels(path: Path, affine: np.ndarray, shape: tuple[int, ...], scan: Path) -> np.ndarray:
    """A NIfTI label volume on the scan's grid (display order, uint8), or a :class:`DataError` naming it."""
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise DataError(f"{path}: a mask must be a .nii or .nii.gz label volume")
    data, lab_affine = _load_nifti(path)
    data, lab_affine, _ = _reorient(data, lab_affine)
    if data.shape != shape:
        raise DataError(f"{path}: mask of shape {data.shape} (slices, H, W), the scan {scan.name} is {shape}")
    if not np.allclose(lab_affine, affine, atol=1e-3 * max(1.0, float(np.abs(affine).max()))):
        raise DataError(f"{path}: the mask lies on another voxel grid than {scan.name} (their affines differ)")
    if not np.isfinite(data).all() or (data != np.round(data)).any() or data.min() < 0 or data.max() > 255:
        raise DataError(f"{path}: a mask holds integer labels 0..255; found other values")
    return data.astype(np.uint8)


def read_volume(path: str | Path, labels: str | Path | None = None) -> Volume:
    """Read a NIfTI file or a DICOM series folder (and optionally a NIfTI label volume) into a :class:`Volume` in
    HU, canonical axial order (module docstring). Bad input: a :class:`DataError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file or folder not found")
    data, affine = _load(path)
    hu, disp_affine, back = _reorient(data, affine)
    spacing = _spacing(disp_affine, path)
    _check_hu(hu, path)
    lab = None if labels is None else _read_labels(Path(labels), disp_affine, hu.shape, path)
    return Volume(hu.astype(np.float32, copy=False), spacing, affine, lab, str(path), back)


# ----------------------------------------------------------------------------- writing and converting


def label_nifti(volume: Volume, labels: np.ndarray) -> Any:
    """A ``nibabel.Nifti1Image`` of an ``(S, H, W)`` label volume (uint8) in the source's voxel order with the
    source's affine: it lies exactly over the scan in any viewer."""
    nib = _require("nibabel")
    img = nib.Nifti1Image(volume.to_source(np.asarray(labels, dtype=np.uint8)), volume.affine)
    img.set_qform(volume.affine, code=1)  # scanner coordinates
    img.set_sform(volume.affine, code=1)
    return img


def nifti_bytes(image: Any, gz: bool = True) -> bytes:
    """A NIfTI image as the bytes of a ``.nii.gz`` file (``gz``) or a ``.nii`` file, for an atomic write."""
    data = image.to_bytes()
    return gzip.compress(data, compresslevel=6) if gz else data


def png_slices(volume: Volume, level: float, width: float, every: int = 1,
               labelled_only: bool = False) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """``(slice index, 8-bit image (H, W), uint8 mask or None)`` for every ``every``-th slice, windowed at
    ``level``/``width`` (:func:`crlearn.data.windowing.window`) and scaled to 0..255; with ``labelled_only``, only
    slices whose mask is not empty. What ``crlearn convert`` writes as PNGs."""
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    for k in range(0, len(volume.hu), every):
        mask = None if volume.labels is None else volume.labels[k]
        if labelled_only and (mask is None or not mask.any()):
            continue
        yield k, np.round(window(volume.hu[k], level, width) * 255.0).astype(np.uint8), mask
