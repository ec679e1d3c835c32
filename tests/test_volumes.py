"""CT volumes: NIfTI and DICOM read into HU with spacing and orientation, windowing, bad input refused in one line,
and ``crlearn convert`` to a training folder. The phantom (crlearn.data.phantom) is written here with nibabel and
pydicom; its volumes are known in closed form."""

import csv
import json
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from crlearn.cli.main import main
from crlearn.data.errors import DataError
from crlearn.data.folder import SegmentationDataset
from crlearn.data.phantom import (
    LABELS,
    chest_phantom,
    dicom_series,
    save_dicom_series,
    save_nifti,
)
from crlearn.data.volumes import label_nifti, nifti_bytes, read_volume
from crlearn.data.windowing import (
    LUNG,
    MEDIASTINAL,
    checkpoint_window,
    folders_window,
    parse_window,
    read_window,
    window,
)

SAMPLE_PNG = Path(__file__).resolve().parents[1] / "data_sample" / "covid19_ct_lung_infection" / "images"


@pytest.fixture(scope="module")
def phantom():
    return chest_phantom()


@pytest.fixture(scope="module")
def nifti_pair(phantom, tmp_path_factory):
    """The phantom and its label volume as RAS+ NIfTI files."""
    d = tmp_path_factory.mktemp("nifti")
    save_nifti(phantom.hu, phantom.spacing, d / "scan.nii.gz")
    save_nifti(phantom.labels, phantom.spacing, d / "mask.nii.gz", dtype=np.uint8)
    return d / "scan.nii.gz", d / "mask.nii.gz"


def _measured_ml(labels, hu, voxel_ml):
    return {"lung": (labels > 0).sum() * voxel_ml, "ggo": (labels == 2).sum() * voxel_ml,
            "consolidation": (labels == 3).sum() * voxel_ml,
            "ggo_by_hu": ((hu > -600) & (hu < -400)).sum() * voxel_ml}  # ground glass is the only -500 HU tissue


# ----------------------------------------------------------------------------- windowing


def test_window_maps_level_minus_half_width_to_zero_and_plus_half_width_to_one():
    hu = np.array([-1350.0, -600.0, 150.0, -3000.0, 3000.0])
    assert np.allclose(window(hu, *LUNG), [0.0, 0.5, 1.0, 0.0, 1.0])
    assert np.allclose(window(np.array([-160.0, 40.0, 240.0]), *MEDIASTINAL), [0.0, 0.5, 1.0])
    assert window(hu, *LUNG).dtype == np.float32
    assert parse_window("lung") == ("lung", -600.0, 1500.0) and parse_window("40,400")[1:] == (40.0, 400.0)
    for bad in ("bone", "40", "40,0", "40,-5"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_lung_window_separates_lung_and_ground_glass_that_the_mediastinal_window_blacks_out(phantom):
    lung, ggo = phantom.hu[phantom.labels == 1], phantom.hu[phantom.labels == 2]
    lung_gap = np.median(window(ggo, *LUNG)) - np.median(window(lung, *LUNG))
    assert lung_gap > 0.15  # (−500 − −850) / 1500 ≈ 0.23 in the lung window
    assert np.median(window(ggo, *MEDIASTINAL)) == 0 and np.median(window(lung, *MEDIASTINAL)) == 0


def test_checkpoint_window_uses_the_recorded_window_and_falls_back_to_lung_for_older_checkpoints():
    rec = {"name": "mediastinal", "level": 40.0, "width": 400.0, "units": "HU", "note": ""}
    assert checkpoint_window({"data_window": rec})[0]["level"] == 40.0
    fallback, why = checkpoint_window({"train_config": {}})  # an older checkpoint: no field
    assert (fallback["level"], fallback["width"]) == LUNG and "older checkpoint" in why
    unknown = {"name": None, "level": None, "width": None, "note": "unknown, 8-bit PNG as distributed"}
    assert "8-bit PNG" in checkpoint_window({"data_window": unknown})[1]


def test_bundled_png_folders_record_an_unknown_window():
    folders = [SAMPLE_PNG.parents[1] / "medseg_covid100", SAMPLE_PNG.parent]
    for folder in folders:
        rec = read_window(folder)
        assert rec["level"] is None and "8-bit PNG as distributed" in rec["note"]
    assert folders_window(folders)["level"] is None


# ----------------------------------------------------------------------------- reading


def test_nifti_phantom_volumes_within_two_percent_of_truth(phantom, nifti_pair):
    vol = read_volume(*nifti_pair)
    assert vol.hu.shape == phantom.hu.shape and vol.spacing == phantom.spacing
    assert np.isclose(vol.voxel_ml, 2.5 * 1.5 * 1.5 / 1000)
    got = _measured_ml(vol.labels, vol.hu, vol.voxel_ml)
    for key, truth in (("lung", "lung"), ("ggo", "ggo"), ("consolidation", "consolidation"), ("ggo_by_hu", "ggo")):
        assert got[key] == pytest.approx(phantom.truth_ml[truth], rel=0.02), key


@pytest.mark.parametrize("slope, intercept", [(1.0, -1024.0), (2.0, -2048.0), (0.5, -1000.0)])
def test_dicom_series_applies_rescale_slope_and_intercept(phantom, tmp_path, slope, intercept):
    save_dicom_series(dicom_series(phantom.hu, phantom.spacing, slope, intercept), tmp_path)
    vol = read_volume(tmp_path)
    assert vol.spacing == phantom.spacing
    assert np.abs(vol.hu - phantom.hu).max() <= slope / 2 + 1e-3  # stored values are rounded to integers
    got = _measured_ml(phantom.labels, vol.hu, vol.voxel_ml)
    assert got["ggo_by_hu"] == pytest.approx(phantom.truth_ml["ggo"], rel=0.02)


def test_dicom_slices_are_sorted_by_position_not_by_file_name(phantom, tmp_path):
    datasets = dicom_series(phantom.hu, phantom.spacing)
    names = [f"IM{k}.dcm" for k in range(len(datasets))]  # IM10 sorts before IM2
    random.Random(0).shuffle(names)
    save_dicom_series(datasets, tmp_path, names)
    vol = read_volume(tmp_path)
    assert np.abs(vol.hu - phantom.hu).max() <= 0.5 + 1e-3
    (tmp_path / "notes.txt").write_text("not DICOM")  # other files in an export are passed over
    assert read_volume(tmp_path).hu.shape == phantom.hu.shape


@pytest.mark.parametrize("axcodes", [("L", "P", "S"), ("R", "A", "I"), ("S", "P", "L"), ("A", "I", "R")])
def test_any_stored_orientation_reads_as_the_one_canonical_array(phantom, tmp_path, axcodes):
    save_nifti(phantom.hu, phantom.spacing, tmp_path / "scan.nii", axcodes)
    save_nifti(phantom.labels, phantom.spacing, tmp_path / "mask.nii", axcodes, dtype=np.uint8)
    stored = nib.load(tmp_path / "scan.nii")
    assert nib.aff2axcodes(stored.affine) == axcodes
    vol = read_volume(tmp_path / "scan.nii", tmp_path / "mask.nii")
    assert np.array_equal(vol.hu, np.round(phantom.hu)) and np.array_equal(vol.labels, phantom.labels)
    assert vol.spacing == phantom.spacing
    _, _, cols = np.nonzero(vol.labels == 3)  # the consolidation: right upper lung
    assert cols.mean() < vol.hu.shape[2] / 2  # the patient's right on the image left (radiological view)
    assert np.nonzero(vol.labels == 3)[0].mean() > vol.hu.shape[0] / 2  # upper: slice 0 is the lowest
    assert np.nonzero(vol.hu > 500)[1].mean() > vol.hu.shape[1] / 2  # the spine is posterior: image bottom


def test_label_volume_written_back_lies_on_the_input_grid(phantom, tmp_path):
    affine = save_nifti(phantom.hu, phantom.spacing, tmp_path / "scan.nii.gz", ("L", "A", "S"), origin=(10, -20, 30))
    vol = read_volume(tmp_path / "scan.nii.gz")
    (tmp_path / "labels.nii.gz").write_bytes(nifti_bytes(label_nifti(vol, phantom.labels)))
    back = nib.load(tmp_path / "labels.nii.gz")
    assert np.allclose(back.affine, affine)
    assert back.shape == nib.load(tmp_path / "scan.nii.gz").shape
    again = read_volume(tmp_path / "scan.nii.gz", tmp_path / "labels.nii.gz")
    assert np.array_equal(again.labels, phantom.labels)


def test_dicom_affine_places_the_first_voxel_at_image_position_patient(phantom, tmp_path):
    save_dicom_series(dicom_series(phantom.hu, phantom.spacing, origin=(-95.0, -80.0, 400.0)), tmp_path)
    vol = read_volume(tmp_path)
    first = vol.affine @ np.array([0, 0, 0, 1.0])  # source voxel 0: row 0, column 0 of the lowest slice
    assert np.allclose(first[:3], [95.0, 80.0, 400.0])  # LPS (-95, -80, 400) in RAS
    lab = label_nifti(vol, phantom.labels)
    assert np.allclose(lab.affine, vol.affine) and np.array_equal(lab.get_fdata()[:, :, 0].T, phantom.labels[0])


# ----------------------------------------------------------------------------- bad input: one line naming the file


def _bad_inputs(phantom, d):
    """(volume path, mask path or None, the file the message must name, words it must hold) for each bad input."""
    small = phantom.hu[:6]
    cases = {}
    png = sorted(SAMPLE_PNG.glob("*.png"))[0]
    cases["png"] = (png, None, png.name, "not a volume")
    img2d = d / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16) - 1000, np.eye(4)), img2d)
    cases["2d"] = (img2d, None, "flat.nii.gz", "not a volume")
    mr = dicom_series(small, phantom.spacing, modality="MR")
    save_dicom_series(mr, d / "mr")
    cases["modality"] = (d / "mr", None, "IM0001.dcm", "not CT")
    nospace = dicom_series(small, phantom.spacing)
    for ds in nospace:
        del ds.PixelSpacing
    save_dicom_series(nospace, d / "nospacing")
    cases["dicom_spacing"] = (d / "nospacing", None, "IM0001.dcm", "PixelSpacing")
    zero = nib.Nifti1Image(np.round(small).astype(np.int16).transpose(2, 1, 0), None)
    zero.header.set_zooms((0.0, 0.0, 0.0))
    nib.save(zero, d / "nospacing.nii.gz")
    cases["nifti_spacing"] = (d / "nospacing.nii.gz", None, "nospacing.nii.gz", "missing voxel spacing")
    save_nifti(small, phantom.spacing, d / "small.nii.gz")
    save_nifti(phantom.labels[:5], phantom.spacing, d / "short_mask.nii.gz", dtype=np.uint8)
    cases["mask_shape"] = (d / "small.nii.gz", d / "short_mask.nii.gz", "short_mask.nii.gz", "shape")
    save_dicom_series(dicom_series(small, phantom.spacing), d / "mixed", [f"a{k}.dcm" for k in range(6)])
    save_dicom_series(dicom_series(small, phantom.spacing, origin=(0, 0, 200)), d / "mixed",
                      [f"b{k}.dcm" for k in range(6)])
    cases["mixed"] = (d / "mixed", None, "mixed", "2 series")
    save_dicom_series(dicom_series(small, phantom.spacing), d / "repeat")
    (d / "repeat" / "IM0003_copy.dcm").write_bytes((d / "repeat" / "IM0003.dcm").read_bytes())
    cases["repeat"] = (d / "repeat", None, "IM0003", "same position")
    whole = (d / "small.nii.gz").read_bytes()
    (d / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    cases["truncated"] = (d / "cut.nii.gz", None, "cut.nii.gz", "truncated")
    save_nifti(window(small, *LUNG) * 255, phantom.spacing, d / "png_like.nii.gz")
    cases["not_hu"] = (d / "png_like.nii.gz", None, "png_like.nii.gz", "Hounsfield")
    (d / "empty").mkdir()
    cases["empty"] = (d / "empty", None, "empty", "no DICOM")
    return cases


BAD = ["png", "2d", "modality", "dicom_spacing", "nifti_spacing", "mask_shape", "mixed", "repeat", "truncated",
       "not_hu", "empty"]


@pytest.fixture(scope="module")
def bad_inputs(phantom, tmp_path_factory):
    return _bad_inputs(phantom, tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", BAD)
def test_every_bad_input_is_refused_with_one_line_naming_the_file(bad_inputs, case, tmp_path, capsys):
    path, mask, name, words = bad_inputs[case]
    with pytest.raises(DataError) as err:
        read_volume(path, mask)
    msg = str(err.value)
    assert "\n" not in msg and name in msg and words in msg, msg
    args = ["convert", str(path), "--out", str(tmp_path / "out")] + (["--masks", str(mask)] if mask else [])
    assert main(args) == 2  # the command: exit 2, one line
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and lines[0].startswith("crlearn convert: error:")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_mask_on_another_grid_is_refused(phantom, tmp_path):
    save_nifti(phantom.hu, phantom.spacing, tmp_path / "scan.nii.gz")
    save_nifti(phantom.labels, (2.5, 1.4, 1.5), tmp_path / "mask.nii.gz", dtype=np.uint8)
    with pytest.raises(DataError, match="mask.nii.gz: the mask lies on another voxel grid"):
        read_volume(tmp_path / "scan.nii.gz", tmp_path / "mask.nii.gz")


# ----------------------------------------------------------------------------- crlearn convert


def test_convert_writes_a_folder_the_training_commands_read(phantom, nifti_pair, tmp_path, capsys):
    out = tmp_path / "converted"
    args = ["convert", str(nifti_pair[0]), "--masks", str(nifti_pair[1]), "--out", str(out), "--every", "3",
            "--labels", json.dumps(LABELS), "--window", "lung"]
    assert main(args) == 0
    ds = SegmentationDataset(out, classes=["lung", "infection"])
    assert len(ds) == 16 and ds.images.shape[-2:] == (128, 128)  # 48 slices, every 3rd
    rows = list(csv.DictReader(open(out / "index.csv")))
    assert {r["patient"] for r in rows} == {"scan"} and rows[1]["slice_index"] == "3"
    k = 15  # slice 45 of the volume
    expected = np.round(window(np.round(phantom.hu[45]), *LUNG) * 255) / 255
    assert np.allclose(ds.images[k, 0].numpy(), expected, atol=1e-6)
    assert np.array_equal(ds.labels[k].numpy(), phantom.labels[45])
    rec = read_window(out)
    assert (rec["name"], rec["level"], rec["width"]) == ("lung", -600.0, 1500.0)
    assert "level -600 HU, width 1500 HU" in (out / "README.md").read_text()
    assert main(args) == 2 and "already exists" in capsys.readouterr().err  # never overwritten without --force


def test_convert_refuses_mask_values_the_labels_do_not_declare(nifti_pair, tmp_path, capsys):
    args = ["convert", str(nifti_pair[0]), "--masks", str(nifti_pair[1]), "--out", str(tmp_path / "o"),
            "--labels", '{"infection": 2}']
    assert main(args) == 2
    assert "mask value(s) [1, 3] not declared" in capsys.readouterr().err
