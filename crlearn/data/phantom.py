"""A synthetic chest CT in Hounsfield units with known volumes, and writers for it as NIfTI and as a DICOM series.

No download is needed to try :mod:`crlearn.data.volumes` and ``crlearn predict SCAN.nii.gz``: :func:`chest_phantom`
draws a chest (an elliptic body of soft tissue in air, two ellipsoid lungs near -850 HU, a spine, ground-glass blobs
near -500 HU and a consolidation near 0 HU) whose true volumes are known in closed form (ellipsoids and spheres,
:attr:`Phantom.truth_ml`). Mild noise makes the histogram look like a scan's. It is not anatomy: the lungs are
ellipsoids and nothing moves. The lesions lie in different thirds of the lungs (upper/middle/lower, as
:mod:`crlearn.tasks.scan` reports them) and on one side each, so a flipped axis changes the numbers.

:func:`save_nifti` writes an array in any axis order (orientation codes, e.g. ``("L", "P", "S")``);
:func:`dicom_series` builds one pydicom dataset per slice (CT, RescaleSlope/Intercept, ImagePositionPatient,
PixelSpacing, SliceThickness) and :func:`save_dicom_series` writes them. Both need the ``ct`` extra.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crlearn.data.volumes import DISPLAY_AXES, _require, display_affine

AIR, LUNG, SOFT_TISSUE, GGO, CONSOLIDATION, BONE = -1000.0, -850.0, 40.0, -500.0, 0.0, 700.0  # HU
LABELS = {"background": 0, "lung": [1, 2, 3], "infection": [2, 3]}  # the phantom's labels.json (lung set's style)
LABEL_NAMES = {1: "lung without lesion", 2: "ground glass", 3: "consolidation"}

__all__ = ["LABELS", "Phantom", "chest_phantom", "dicom_series", "save_dicom_series", "save_nifti"]


@dataclass(frozen=True)
class Phantom:
    """A synthetic scan in display order (slice 0 inferior, row 0 anterior, column 0 the patient's right)."""

    hu: np.ndarray  # (S, H, W) float32, Hounsfield units
    labels: np.ndarray  # (S, H, W) uint8: 0 outside the lungs, 1 lung, 2 ground glass, 3 consolidation
    spacing: tuple[float, float, float]  # (z, y, x) mm
    truth_ml: dict[str, float]  # closed-form volumes: lung (lesions included), ggo, consolidation, lesion
    lesion_thirds: dict[str, float]  # closed-form lesion mL per third of the lungs' height: lower, middle, upper


def _grid(shape: Sequence[int], spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel centres in mm, centred on the volume: (z, y, x), each broadcastable to ``shape``."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * d for n, d in zip(shape, spacing)]
    return np.ix_(*axes)  # type: ignore[return-value]


def _inside(z: np.ndarray, y: np.ndarray, x: np.ndarray, centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Voxels whose centre lies in the ellipsoid (z, y, x order)."""
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2 <= 1


def _sphere_ml(radius_mm: float) -> float:
    return 4.0 / 3.0 * math.pi * radius_mm ** 3 / 1000.0


def chest_phantom(shape: Sequence[int] = (48, 128, 128), spacing: Sequence[float] = (2.5, 1.5, 1.5),
                  noise_hu: float = 20.0, seed: int = 0) -> Phantom:
    """A chest phantom of ``shape`` (slices, H, W) voxels of ``spacing`` (z, y, x) mm; the anatomy is sized in mm
    for the default field of view (192 mm x 192 mm x 120 mm) and scales with it.

    Right lung on the image left, left lung on the image right; ground glass in the right lower and the left
    middle lung, consolidation in the right upper lung. ``noise_hu``: Gaussian noise (a ``torch``-free numpy
    ``Generator(seed)``), applied inside the body only.
    """
    shape, spacing = tuple(int(n) for n in shape), tuple(float(d) for d in spacing)
    z, y, x = _grid(shape, spacing)
    s = min(shape[1] * spacing[1], shape[2] * spacing[2]) / 192.0  # in-plane scale
    h = shape[0] * spacing[0] / 120.0  # height scale
    body = np.broadcast_to((y / (62 * s)) ** 2 + (x / (85 * s)) ** 2 <= 1, shape)  # elliptic cylinder
    spine = np.broadcast_to(((y - 45 * s) / (9 * s)) ** 2 + (x / (9 * s)) ** 2 <= 1, shape)
    radii = (45 * h, 40 * s, 26 * s)  # each lung's semi-axes (z, y, x) mm
    right, left = (0, -5 * s, -40 * s), (0, -5 * s, 40 * s)  # patient's right = image left = negative x here
    lungs = _inside(z, y, x, right, radii) | _inside(z, y, x, left, radii)
    r = min(h, s)
    ggo = [((-30 * h, 0, -40 * s), 12 * r), ((0, -10 * s, 38 * s), 10 * r)]  # right lower, left middle
    cons = [((30 * h, 5 * s, -42 * s), 10 * r)]  # right upper
    hu = np.full(shape, AIR, np.float32)
    hu[body] = SOFT_TISSUE
    hu[spine] = BONE
    labels = np.zeros(shape, np.uint8)
    labels[lungs] = 1
    for blobs, value, level in ((ggo, 2, GGO), (cons, 3, CONSOLIDATION)):
        for centre, rad in blobs:
            labels[_inside(z, y, x, centre, (rad, rad, rad))] = value
    hu[labels == 1], hu[labels == 2], hu[labels == 3] = LUNG, GGO, CONSOLIDATION
    rng = np.random.default_rng(seed)
    hu[body] += rng.normal(0.0, noise_hu, int(body.sum())).astype(np.float32)
    truth = {"lung": 2 * 4.0 / 3.0 * math.pi * math.prod(radii) / 1000.0,
             "ggo": sum(_sphere_ml(r) for _, r in ggo), "consolidation": sum(_sphere_ml(r) for _, r in cons)}
    truth["lesion"] = truth["ggo"] + truth["consolidation"]
    thirds = {"lower": _sphere_ml(ggo[0][1]), "middle": _sphere_ml(ggo[1][1]), "upper": _sphere_ml(cons[0][1])}
    return Phantom(hu, labels, spacing, truth, thirds)


def _source_affine(shape: Sequence[int], spacing: Sequence[float], axcodes: Sequence[str],
                   origin: Sequence[float]) -> tuple[Any, np.ndarray]:
    """The nibabel orientation transform display -> ``axcodes`` and the affine of the array so stored."""
    ornt = _require("nibabel").orientations
    transform = ornt.ornt_transform(ornt.axcodes2ornt(DISPLAY_AXES), ornt.axcodes2ornt(tuple(axcodes)))
    affine = display_affine(tuple(spacing))
    affine[:3, 3] = origin
    return transform, affine @ ornt.inv_ornt_aff(transform, tuple(shape))


def save_nifti(array: np.ndarray, spacing: Sequence[float], path: str | Path, axcodes: Sequence[str] = ("R", "A", "S"),
               origin: Sequence[float] = (0.0, 0.0, 0.0), dtype: Any = np.int16) -> np.ndarray:
    """Write a display-order ``(S, H, W)`` array as a NIfTI file whose voxel axes point to ``axcodes`` (default
    RAS+, the canonical NIfTI order), with its true affine; returns the affine. ``dtype`` int16 rounds HU."""
    nib = _require("nibabel")
    transform, affine = _source_affine(array.shape, spacing, axcodes, origin)
    data = nib.orientations.apply_orientation(np.asarray(array), transform)
    data = np.round(data).astype(dtype) if np.issubdtype(dtype, np.integer) else data.astype(dtype)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(path))
    return affine


def _slice_dataset(pixels: np.ndarray, k: int, meta: dict[str, Any]) -> Any:
    """One CT slice as a pydicom FileDataset (uncompressed, little endian, signed 16-bit stored values)."""
    pydicom = _require("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID, file_meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(f"slice{k}", {}, file_meta=file_meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = meta["modality"], meta["series"], meta["study"]
    ds.PatientID, ds.InstanceNumber = meta["patient"], k + 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # rows run to the patient's left, columns to posterior (LPS)
    ds.ImagePositionPatient = [float(v) for v in meta["positions"][k]]
    ds.PixelSpacing = [meta["spacing"][1], meta["spacing"][2]]  # between rows, between columns
    ds.SliceThickness = meta["spacing"][0]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = meta["slope"], meta["intercept"]
    ds.PixelData = pixels.astype("<i2").tobytes()
    if int(pydicom.__version__.split(".")[0]) < 3:
        ds.is_little_endian, ds.is_implicit_VR = True, False  # pydicom 2.x writes with these
    return ds


def dicom_series(hu: np.ndarray, spacing: Sequence[float], slope: float = 1.0, intercept: float = -1024.0,
                 modality: str = "CT", origin: Sequence[float] = (0.0, 0.0, 0.0), series_uid: str | None = None) -> list[Any]:
    """One pydicom dataset per slice of a display-order volume in HU (slice 0 inferior), stored as
    ``(HU - intercept) / slope`` in signed 16 bits, axial (ImageOrientationPatient 1/0/0/0/1/0, LPS), slice k at
    ``origin + k * spacing_z`` along the feet-head axis. Bottom slice first; save them under any names."""
    from pydicom.uid import generate_uid

    spacing = [float(d) for d in spacing]
    positions = [(origin[0], origin[1], origin[2] + k * spacing[0]) for k in range(len(hu))]
    meta = {"modality": modality, "series": series_uid or generate_uid(), "study": generate_uid(),
            "patient": "PHANTOM", "positions": positions, "spacing": spacing, "slope": slope, "intercept": intercept}
    # DICOM rows run anterior -> posterior and columns right -> left (LPS): the display order of one slice
    return [_slice_dataset(np.round((hu[k] - intercept) / slope), k, meta) for k in range(len(hu))]


def save_dicom_series(datasets: Sequence[Any], folder: str | Path, names: Sequence[str] | None = None) -> list[Path]:
    """Write the datasets into ``folder`` (created), as ``names`` or ``IM0001.dcm``...; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / n for n in (names or [f"IM{k + 1:04d}.dcm" for k in range(len(datasets))])]
    for ds, path in zip(datasets, paths):
        try:
            ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
        except TypeError:
            ds.save_as(path, write_like_original=False)  # pydicom 2.x
    return paths
