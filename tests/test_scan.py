"""Whole scans: ``crlearn predict`` on a NIfTI file or a DICOM folder writes a label volume over the input, a report
in mL and a montage; a scan stacked from the lung set's PNGs gets the very predictions the PNGs get; the burden
maths against the phantom's closed-form volumes."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY

from crlearn.cli.main import main
from crlearn.data.folder import read_image
from crlearn.data.phantom import (
    LABELS,
    chest_phantom,
    dicom_series,
    save_dicom_series,
    save_nifti,
)
from crlearn.data.volumes import Volume, read_volume
from crlearn.data.windowing import LUNG, window_record
from crlearn.inference import predict, predict_logits
from crlearn.nn.encoder import EncoderClassifier, SEResNet34Encoder
from crlearn.nn.model import CRNet, CRNetConfig
from crlearn.tasks.scan import (
    THIRDS,
    plot_scan_montage,
    scan_report,
    scan_summary,
    segment_scan,
)
from crlearn.training.checkpoint import load_checkpoint, save_checkpoint
from crlearn.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

LUNG_SET = Path(__file__).resolve().parents[1] / "data_sample" / "covid19_ct_lung_infection"
PNG_WINDOW = (-1024 + 127.5, 255.0)  # HU = PNG value - 1024 windows back to exactly value / 255 (read_image)


@pytest.fixture(scope="module")
def phantom():
    return chest_phantom()


def _model(num_classes: int, seed: int = 0) -> CRNet:
    torch.manual_seed(seed)
    return CRNet(CRNetConfig.quick(num_classes=num_classes, **TINY)).eval()


def _checkpoint(path: Path, model: CRNet, names: list[str], data_window: dict | None) -> Path:
    extra = {} if data_window is None else {"data_window": data_window}
    save_checkpoint(path, model, names, TrainConfig(size=64), **extra)
    return path


def _oracle_labels(phantom) -> np.ndarray:
    """The phantom's truth as a scan label volume: 1 lung, 2 lesion (ground glass or consolidation)."""
    return np.where(phantom.labels >= 2, 2, np.where(phantom.labels == 1, 1, 0)).astype(np.uint8)


def test_scan_report_volumes_within_two_percent_of_the_phantom_truth(phantom):
    vol = Volume(phantom.hu, phantom.spacing)
    report = scan_report(vol, _oracle_labels(phantom))
    assert report["lesion_ml"] == pytest.approx(phantom.truth_ml["lesion"], rel=0.02)
    assert report["lung_ml"] == pytest.approx(phantom.truth_ml["lung"], rel=0.02)
    assert report["ratio_percent"] == pytest.approx(100 * phantom.truth_ml["lesion"] / phantom.truth_ml["lung"],
                                                    rel=0.02)
    for third in THIRDS:  # each third holds one lesion of the phantom
        assert report["thirds"][third]["lesion_ml"] == pytest.approx(phantom.lesion_thirds[third], rel=0.02), third
    assert sum(report["thirds"][t]["lung_ml"] for t in THIRDS) == pytest.approx(report["lung_ml"])
    assert sum(report["lesion_ml_per_slice"]) == pytest.approx(report["lesion_ml"], abs=1e-2)
    top = report["top_slices"]
    assert report["lesion_ml_per_slice"][top[0]] == max(report["lesion_ml_per_slice"])


def test_flipping_the_slice_order_swaps_upper_and_lower_thirds(phantom):
    vol, flipped = Volume(phantom.hu, phantom.spacing), Volume(phantom.hu[::-1].copy(), phantom.spacing)
    up = scan_report(vol, _oracle_labels(phantom))["thirds"]
    down = scan_report(flipped, _oracle_labels(phantom)[::-1])["thirds"]
    assert up["upper"]["lesion_ml"] == down["lower"]["lesion_ml"] and up["lower"] != up["upper"]


def test_scan_of_stacked_png_slices_gives_the_predictions_of_predict_on_the_pngs(tmp_path):
    rows = list(csv.DictReader(open(LUNG_SET / "index.csv")))
    patient = min({r["volume"] for r in rows}, key=lambda v: sum(r["volume"] == v for r in rows))
    names = sorted(r["slice_id"] for r in rows if r["volume"] == patient)
    pngs = np.stack([read_image(LUNG_SET / "images" / f"{n}.png") for n in names])  # (S, 256, 256) in [0, 1]
    save_nifti(np.round(pngs * 255) - 1024, (5.0, 0.8, 0.8), tmp_path / "stacked.nii.gz", ("L", "P", "S"))
    images = torch.from_numpy(pngs)[:, None]
    model = _model(2)
    with torch.no_grad():  # untrained logits are all negative: centre them (final = coarse + refinement residual)
        model.refine.conv_out.bias -= predict_logits(model, images, 64).transpose(0, 1).flatten(1).median(1).values
    ckpt = _checkpoint(tmp_path / "best.pt", model, ["lung", "infection"], window_record("png", *PNG_WINDOW))
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "stacked.nii.gz"), "--out",
                 str(tmp_path / "out")]) == 0
    got = read_volume(tmp_path / "stacked.nii.gz", tmp_path / "out" / "labels.nii.gz").labels  # on the input grid
    _, masks = predict(model, images, 64)  # (S, 2, 256, 256): lung, infection
    lung, lesion = masks[:, 0].numpy(), (masks[:, 1] & masks[:, 0]).numpy()
    assert 0.1 < lung.mean() < 0.9 and 0.05 < lesion.mean() < 0.9  # a test that can fail
    assert np.array_equal(got >= 1, lung) and np.array_equal(got == 2, lesion)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["window"]["level"] == PNG_WINDOW[0] and "training window" in report["window_note"]
    assert report["lung_source"] == "model" and report["shape"] == list(pngs.shape)
    assert (tmp_path / "out" / "montage.png").stat().st_size > 1000


def test_predict_on_a_dicom_folder_writes_labels_report_and_montage(phantom, tmp_path, capsys):
    save_dicom_series(dicom_series(phantom.hu, phantom.spacing, origin=(-95.0, -95.0, -300.0)), tmp_path / "dicom")
    ckpt = _checkpoint(tmp_path / "best.pt", _model(2), ["lung", "infection"], None)  # an older checkpoint: no window
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "dicom"), "--out", str(tmp_path / "out"),
                 "--no-tta"]) == 0
    text = capsys.readouterr().out
    assert "lung window" in text and "mL" in text and "labels.nii.gz" in text
    labels = nib.load(tmp_path / "out" / "labels.nii.gz")
    assert np.allclose(labels.affine, read_volume(tmp_path / "dicom").affine) and labels.shape == (128, 128, 48)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["spacing_mm"] == list(phantom.spacing) and set(report["thirds"]) == set(THIRDS)
    assert report["window"]["level"] == LUNG[0] and report["tta"] is False
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "dicom"), "x.png"]) == 2  # one volume alone


def test_model_without_a_lung_class_uses_the_classical_field_and_says_so(phantom):
    vol = Volume(phantom.hu, phantom.spacing)
    pred = segment_scan(_model(1), vol, 64, ["infection"], *LUNG, tta=False, progress=False)
    report = scan_report(vol, pred)
    assert pred.lung_source == "classical" and "classical" in report["lung_note"]
    assert "classical" in scan_summary(report)
    assert report["lung_ml"] == pytest.approx(phantom.truth_ml["lung"], rel=0.10)  # image-only, on HU phantom


def test_gate_segments_only_positive_slices_and_calls_the_scan_by_the_any_slice_rule(phantom):
    vol = Volume(phantom.hu[20:28], phantom.spacing)
    torch.manual_seed(0)
    classifier = EncoderClassifier(SEResNet34Encoder(1, TINY["width"], 16), num_classes=2).eval()
    ckpt = {"size": 64, "fit": "pad", "normalize": "none"}
    args = dict(tta=False, progress=False, classifier=classifier, classifier_ckpt=ckpt)
    none = segment_scan(_model(2), vol, 64, ["lung", "infection"], *LUNG, threshold=1.1, **args)
    every = segment_scan(_model(2), vol, 64, ["lung", "infection"], *LUNG, threshold=0.0, **args)
    assert not none.segmented.any() and (none.labels != 2).all() and none.lung_source == "model+classical"
    assert every.segmented.all() and every.lung_source == "model"
    assert np.allclose(none.p_covid, every.p_covid)
    assert scan_report(vol, none, threshold=1.1)["gate"]["scan_positive"] is False
    assert scan_report(vol, every, threshold=0.0)["gate"]["scan_positive"] is True
    plain = segment_scan(_model(2), vol, 64, ["lung", "infection"], *LUNG, tta=False, progress=False)
    assert np.array_equal(plain.labels, every.labels)  # threshold 0: the gate changes nothing


def test_montage_shows_the_slices_with_most_lesion(phantom):
    vol = Volume(phantom.hu, phantom.spacing)
    report = scan_report(vol, _oracle_labels(phantom))
    fig = plot_scan_montage(vol, _oracle_labels(phantom), report, *LUNG)
    assert len([ax for ax in fig.axes if ax.images]) == len(report["top_slices"]) == 6
    assert f"slice {report['top_slices'][0]} " in fig.axes[0].get_title()


def test_a_model_trained_on_a_converted_folder_records_its_window(phantom, tmp_path):
    from crlearn.training.run import run

    save_nifti(phantom.hu, phantom.spacing, tmp_path / "p1.nii.gz")
    save_nifti(phantom.labels, phantom.spacing, tmp_path / "m1.nii.gz", dtype=np.uint8)
    folder = tmp_path / "data"
    assert main(["convert", str(tmp_path / "p1.nii.gz"), "--masks", str(tmp_path / "m1.nii.gz"), "--out",
                 str(folder), "--labels", json.dumps(LABELS), "--window", "mediastinal", "--every", "6"]) == 0
    rows = list(csv.DictReader(open(folder / "index.csv")))
    for i, row in enumerate(rows):  # three pseudo-patients, so the split has train, val and test parts
        row["patient"] = f"p{i % 3}"
    with open(folder / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = run(folder, profile="quick", classes=["lung", "infection"], epochs=1, size=32, augment=False,
                 out=tmp_path / "run", progress=False, log=None, tta=False)
    assert result.out is not None
    _, ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert (ckpt["data_window"]["name"], ckpt["data_window"]["level"]) == ("mediastinal", 40.0)
