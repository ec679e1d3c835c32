"""Lesion burden (§3.4): slice and patient ratios from pooled pixels, their agreement, and burden() end to end."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from crlearn.tasks.burden import (
    agreement,
    bland_altman,
    burden,
    burden_channels,
    burden_from_areas,
    burden_markdown,
    burden_summary,
    group_areas,
    pearson,
    percent,
    slice_areas,
)
from crlearn.data.folder import SegmentationDataset
from crlearn.nn.model import CRNet, CRNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")

# (volume, lung pixels incl. infection, infection pixels) of the tiny lung folder's slices
LUNG_SLICES = [("v1", 400, 100), ("v1", 200, 0), ("v2", 300, 30)]


def make_lung_folder(root, slices=LUNG_SLICES, side=32):
    """A folder like data_sample/covid19_ct_lung_infection: mask 1 = lung without lesion, 2 = infection."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, (vol, lung, inf) in enumerate(slices):
        mask = np.zeros(side * side, np.uint8)
        mask[:lung] = 1
        mask[:inf] = 2
        image = (rng.random((side, side)) * 80 + 40 + 100 * (mask.reshape(side, side) == 0)).astype(np.uint8)
        name = f"ma_{vol}_{i:04d}"
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(mask.reshape(side, side)).save(root / "masks" / f"{name}.png")
        rows.append({"slice_id": name, "volume": vol})
    (root / "labels.json").write_text(json.dumps({"background": 0, "lung": [1, 2], "infection": 2}))
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["slice_id", "volume"])
        w.writeheader()
        w.writerows(rows)
    return root


def _masks(counts, side=10):
    """(N, side, side) bool masks whose first `count` pixels (raster order) are set."""
    out = np.zeros((len(counts), side * side), bool)
    for i, c in enumerate(counts):
        out[i, :c] = True
    return out.reshape(len(counts), side, side)


# ----------------------------------------------------------------------------- hand-computed aggregation


def test_group_ratio_pools_pixels_not_slice_ratios():
    groups, names = ["A", "A", "B"], ["s1", "s2", "s3"]
    true_lung = _masks([50, 10, 20])
    true_inf = _masks([25, 0, 28])  # s3: 20 infection pixels in the lung, 8 outside it (not counted)
    pred_inf = _masks([25, 5, 28])  # s2 predicted 5 lesion pixels: 50 % of its small lung
    true, pred = slice_areas(true_inf, true_lung), slice_areas(pred_inf, true_lung)
    assert true[0].tolist() == [25, 0, 20] and true[1].tolist() == [50, 10, 20]
    assert {g: v.tolist() for g, v in group_areas(*true, groups).items()} == {"A": [2, 25, 60], "B": [1, 20, 20]}

    r = burden_from_areas(names, groups, pred, true)
    assert [s["true_percent"] for s in r["slices"]] == [50.0, 0.0, 100.0]
    assert [s["pred_percent"] for s in r["slices"]] == [50.0, 50.0, 100.0]
    a, b = r["groups"]
    assert a["group"] == "A" and a["n_slices"] == 2 and (a["true_lesion_px"], a["true_lung_px"]) == (25, 60)
    assert a["true_percent"] == pytest.approx(100 * 25 / 60)  # pooled: 41.67 %, not the slices' mean 25 %
    assert a["pred_percent"] == pytest.approx(100 * 30 / 60)
    assert a["error_pp"] == pytest.approx(50 - 100 * 25 / 60) and b["error_pp"] == 0.0
    assert r["mae_percentage_points"] == pytest.approx((50 - 100 * 25 / 60) / 2)  # per group, at the top
    assert r["mae_percentage_points_per_slice"] == pytest.approx(50 / 3)
    assert r["agreement"]["per_group"]["n"] == 2 and r["agreement"]["per_slice"]["n"] == 3
    assert r["agreement"]["per_group"]["pearson_r"] is None  # two points: no correlation
    assert (r["n_slices"], r["n_groups"]) == (3, 2)
    json.dumps(r, allow_nan=False)


def test_an_empty_lung_field_has_no_ratio_and_is_left_out_of_the_agreement():
    assert math.isnan(percent(3, 0)) and percent(1, 4) == 25.0
    lung, inf = _masks([0, 10, 10, 10]), _masks([0, 5, 1, 2])
    r = burden_from_areas("abcd", ["g", "h", "i", "j"], slice_areas(inf, lung), slice_areas(inf, lung))
    assert r["slices"][0]["true_percent"] is None and r["slices"][0]["error_pp"] is None
    assert r["agreement"]["per_slice"]["n"] == 3 and r["mae_percentage_points_per_slice"] == 0.0
    json.dumps(r, allow_nan=False)


def test_bland_altman_and_mae_on_known_numbers():
    pred, true = [1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 2.0, 6.0]  # differences 1, 0, 1, -2
    ba = bland_altman(pred, true)
    assert ba["bias"] == pytest.approx(0.0)
    assert ba["sd"] == pytest.approx(math.sqrt(2.0))  # sum of squares 6, n - 1 = 3
    assert ba["lower"] == pytest.approx(-1.96 * math.sqrt(2.0)) and ba["upper"] == pytest.approx(1.96 * math.sqrt(2.0))
    a = agreement(pred, true)
    assert a["n"] == 4 and a["mae_percentage_points"] == pytest.approx(1.0)
    assert bland_altman([5.0], [3.0]) == {"bias": 2.0, "sd": None, "lower": None, "upper": None}
    assert agreement([], [])["mae_percentage_points"] is None


def test_pearson_matches_numpy_and_is_none_where_undefined():
    rng = np.random.default_rng(1)
    x = rng.random(20)
    y = 0.5 * x + 0.3 * rng.random(20)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert pearson([1.0, 2.0], [2.0, 1.0]) is None  # fewer than 3 points
    assert pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # zero variance
    xs, ys = [1.0, 2.0, float("nan"), 4.0, 5.0], [1.0, 3.0, 2.0, 4.0, 4.5]
    assert pearson(xs, ys) == pytest.approx(np.corrcoef([1, 2, 4, 5], [1, 3, 4, 4.5])[0, 1])


def test_the_model_needs_an_infection_channel():
    assert burden_channels(["infection"]) == (0, None)
    assert burden_channels(["lung", "infection"]) == (1, 0)
    assert burden_channels(["lung", "infection"], lung="classical") == (1, None)
    with pytest.raises(ValueError, match="no 'infection' channel"):
        burden_channels(["ggo", "consolidation"])
    with pytest.raises(ValueError, match="no 'lung' channel"):
        burden_channels(["infection"], lung="model")
    with pytest.raises(ValueError, match="lung must be"):
        burden_channels(["infection"], lung="masks")


# ----------------------------------------------------------------------------- burden() on real folders


def _check_result(r, n_slices, n_groups):
    assert r["n_slices"] == n_slices and r["n_groups"] == n_groups and len(r["slices"]) == n_slices
    for row in r["slices"] + r["groups"]:
        for key in ("true_percent", "pred_percent"):
            assert row[key] is None or 0.0 <= row[key] <= 100.0
        assert 0 <= row["pred_lesion_px"] <= row["pred_lung_px"] or row["pred_lung_px"] == 0
    mae = r["mae_percentage_points"]
    assert mae is None or 0.0 <= mae <= 100.0
    assert set(r["agreement"]["per_slice"]) == {"n", "mae_percentage_points", "pearson_r", "bland_altman"}
    json.dumps(r, allow_nan=False)


def test_burden_with_a_lung_and_infection_model_uses_its_lung_channel(tmp_path):
    torch.manual_seed(0)
    ds = SegmentationDataset(make_lung_folder(tmp_path / "lungs"))
    model = CRNet(CRNetConfig(num_classes=2, **TINY))
    r = burden(model, ds, 32, "cpu", tta=False, class_names=["lung", "infection"])
    assert (r["lung_source"], r["true_lung_source"]) == ("model", "masks")
    _check_result(r, 3, 2)
    assert [s["true_percent"] for s in r["slices"]] == [25.0, 0.0, 10.0]
    assert [g["true_percent"] for g in r["groups"]] == [pytest.approx(100 * 100 / 600), 10.0]
    assert "| v1 | 2 | 16.67 |" in burden_markdown(r)
    assert "the folder's lung masks" in burden_summary(r)

    forced = burden(model, ds, 32, "cpu", tta=False, class_names=["lung", "infection"], lung="classical")
    assert (forced["lung_source"], forced["true_lung_source"]) == ("classical", "masks")

    from crlearn.viz import plot_burden

    fig = plot_burden(r)
    assert "not a diagnosis" in fig._suptitle.get_text()


def test_burden_with_an_infection_only_model_on_medseg_uses_the_classical_field(small_data):
    torch.manual_seed(0)
    ds = SegmentationDataset(small_data)  # ggo, consolidation, effusion: no lung masks
    model = CRNet(CRNetConfig(num_classes=1, **TINY))
    r = burden(model, ds, 64, "cpu", tta=False, class_names=["infection"], normalize="standardize")
    assert (r["lung_source"], r["true_lung_source"]) == ("classical", "classical")
    _check_result(r, len(ds), len(set(ds.groups)))
    assert "no lung masks in this folder" in burden_summary(r)
    with pytest.raises(ValueError, match="output channels"):
        burden(model, ds, 64, "cpu", tta=False, class_names=["lung", "infection"])


def test_burden_refuses_a_folder_without_patient_groups(tmp_path, small_data):
    import shutil
    import warnings

    from crlearn.tasks.burden import burden
    from crlearn.data.folder import DataError, SegmentationDataset
    from crlearn.nn.model import CRNet, CRNetConfig

    shutil.copytree(small_data, tmp_path / "d")
    (tmp_path / "d" / "index.csv").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dataset warns that each slice is its own group
        ds = SegmentationDataset(tmp_path / "d", classes=["infection"])
    model = CRNet(CRNetConfig(num_classes=1, width=0.125, aspp_channels=8, refine_channels=8))
    with pytest.raises(DataError, match="index.csv: no patient group column"):
        burden(model, ds, 64, device="cpu", tta=False)
