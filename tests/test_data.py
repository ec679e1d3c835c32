"""The data pipeline: the bundled sample, augmentation, patient-level splits and bad input."""

import csv
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crlearn.data import (
    AUGMENTATIONS,
    DataError,
    SegmentationDataset,
    apply_view,
    augment_pair,
    group_folds,
    read_image,
    resolve_classes,
    split_by_group,
)

SAMPLE = Path(__file__).resolve().parents[1] / "data_sample"
INDEX_COLUMNS = {"ggo": "px_ggo", "consolidation": "px_consolidation", "effusion": "px_pleural_effusion"}


@pytest.fixture(scope="module")
def sample512():
    return SegmentationDataset(SAMPLE)


def index_rows():
    with open(SAMPLE / "index.csv", newline="") as f:
        return {row["slice_id"]: row for row in csv.DictReader(f)}


def make_folder(tmp_path: Path, n: int = 3, size: int = 32, with_index: bool = True) -> Path:
    """A small valid folder in the dataset format."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(tmp_path / "images" / f"s{k}.png")
        lab = np.zeros((size, size), np.uint8)
        lab[4:10, 4:10] = 1 + k % 3
        Image.fromarray(lab).save(tmp_path / "masks" / f"s{k}.png")
    if with_index:
        with open(tmp_path / "index.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["slice_id", "pseudo_patient_group"])
            for k in range(n):
                w.writerow([f"s{k}", f"p{k // 2}"])
    return tmp_path


def test_sample_has_76_slices_with_index_pixel_counts(sample512):
    rows = index_rows()
    assert len(sample512) == 76
    assert sorted(r.name for r in sample512.records) == sorted(rows)
    masks = sample512.one_hot(sample512.labels)  # (N, 3, 512, 512)
    for k, rec in enumerate(sample512.records):
        for c, name in enumerate(sample512.class_names):
            assert int(masks[k, c].sum()) == int(rows[rec.name][INDEX_COLUMNS[name]]), (rec.name, name)
    totals = masks.sum(dim=(0, 2, 3)).long().tolist()
    assert totals == [837235, 394953, 26718]  # data_sample/README.md
    assert sample512.images.dtype == torch.float32
    assert 0.0 <= float(sample512.images.min()) and float(sample512.images.max()) <= 1.0


def test_sample_groups_come_from_index(sample512):
    rows = index_rows()
    assert all(r.group == rows[r.name]["pseudo_patient_group"] for r in sample512.records)
    assert len(set(sample512.groups)) == 44


def test_merge_gives_one_infection_channel_equal_to_union(sample512):
    merged = SegmentationDataset(SAMPLE, merge=True, indices=range(5))
    assert merged.class_names == ["infection"]
    for k in range(5):
        union = sample512.one_hot(sample512.labels[k]).amax(0)
        assert torch.equal(merged[k][1][0], union)


def test_class_subset_and_unknown_class():
    names, labels = resolve_classes(["consolidation", "ggo"])
    assert names == ["consolidation", "ggo"] and labels == [(2,), (1,)]
    assert resolve_classes(["ggo", "effusion"], merge=True) == (["infection"], [(1, 3)])
    with pytest.raises(DataError, match="fibrosis"):
        resolve_classes(["ggo", "fibrosis"])


def test_resize_gives_requested_size_and_binary_masks():
    ds = SegmentationDataset(SAMPLE, size=128, indices=[0, 1])
    image, mask = ds[0]
    assert image.shape == (1, 128, 128) and mask.shape == (3, 128, 128)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_augmentation_multiplies_by_five_and_keeps_image_and_mask_aligned():
    image = torch.zeros(1, 16, 16)
    mask = torch.zeros(2, 16, 16)
    image[0, 2, 5] = 1.0  # one marked pixel, off every symmetry axis
    mask[1, 2, 5] = 1.0
    seen = set()
    for kind in AUGMENTATIONS:
        img, msk = augment_pair(image, mask, kind)
        where_img = tuple(torch.nonzero(img[0])[0].tolist())
        where_msk = tuple(torch.nonzero(msk[1])[0].tolist())
        assert where_img == where_msk, kind
        assert msk[0].sum() == 0
        seen.add(where_img)
    assert len(seen) == 5  # five distinct views
    ds = SegmentationDataset(SAMPLE, size=64, augment=True, indices=[0, 1, 2])
    assert len(ds) == 15
    img0, msk0 = ds[0]
    img1, msk1 = ds[1]  # rot90 of slice 0
    assert torch.equal(img1, torch.rot90(img0, 1, (1, 2))) and torch.equal(msk1, torch.rot90(msk0, 1, (1, 2)))


@pytest.mark.parametrize("kind", AUGMENTATIONS)
def test_apply_view_moves_pixels_like_augment_pair_and_inverts(kind):
    x = torch.rand(2, 3, 8, 8)  # a batch: views act on the last two dims
    for b in range(2):
        _, expected = augment_pair(x[b, :1], x[b], kind)
        assert torch.equal(apply_view(x, kind)[b], expected)
    assert torch.equal(apply_view(apply_view(x, kind), kind, inverse=True), x)
    with pytest.raises(ValueError, match="unknown augmentation"):
        apply_view(x, "rot45")


def test_train_val_test_split_is_group_disjoint_and_deterministic(sample512):
    groups = sample512.groups
    split = split_by_group(groups, seed=3)
    assert split == split_by_group(groups, seed=3)
    assert sorted(split["train"] + split["val"] + split["test"]) == list(range(76))
    sides = {k: {groups[i] for i in v} for k, v in split.items()}
    assert not (sides["train"] & sides["val"]) and not (sides["train"] & sides["test"]) and not (sides["val"] & sides["test"])
    n = {k: len(v) for k, v in split.items()}
    assert abs(n["train"] - 53) <= 4 and abs(n["val"] - 8) <= 3 and abs(n["test"] - 15) <= 4


def test_five_folds_are_group_disjoint_and_cover_every_slice_once(sample512):
    groups = sample512.groups
    folds = group_folds(groups, n_folds=5, seed=0)
    assert folds == group_folds(groups, n_folds=5, seed=0)
    tested = sorted(i for f in folds for i in f["test"])
    assert tested == list(range(76))
    for f in folds:
        sides = [{groups[i] for i in f[k]} for k in ("train", "val", "test")]
        assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
        assert len(f["val"]) > 0 and len(f["train"]) > len(f["test"])


def test_folder_without_groups_warns_and_uses_one_group_per_slice(tmp_path):
    root = make_folder(tmp_path, with_index=False)
    with pytest.warns(UserWarning, match="own patient group"):
        ds = SegmentationDataset(root)
    assert ds.groups == ["s0", "s1", "s2"]


def test_valid_small_folder_loads(tmp_path):
    root = make_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = SegmentationDataset(root)
    assert len(ds) == 3 and ds.groups == ["p0", "p0", "p1"]
    assert ds[1][1][1].sum() == 36  # consolidation square of slice s1


# ----------------------------------------------------------------------------- bad input


def test_missing_folder_raises(tmp_path):
    with pytest.raises(DataError, match="not found"):
        SegmentationDataset(tmp_path / "nope")


def test_empty_folder_raises(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no .png images"):
        SegmentationDataset(tmp_path)


def test_missing_mask_raises_naming_the_image(tmp_path):
    root = make_folder(tmp_path)
    (root / "masks" / "s1.png").unlink()
    with pytest.raises(DataError, match=r"s1\.png: no matching mask"):
        SegmentationDataset(root)


def test_size_mismatch_raises_naming_the_mask(tmp_path):
    root = make_folder(tmp_path)
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(root / "masks" / "s2.png")
    with pytest.raises(DataError, match=r"s2\.png: mask size 32x16 does not match"):
        SegmentationDataset(root)


def test_unknown_label_value_raises_naming_the_mask(tmp_path):
    root = make_folder(tmp_path)
    lab = np.zeros((32, 32), np.uint8)
    lab[0, 0] = 255
    Image.fromarray(lab).save(root / "masks" / "s0.png")
    with pytest.raises(DataError, match=r"s0\.png: unknown label value\(s\) 255"):
        SegmentationDataset(root)


def test_colour_image_raises_naming_the_file(tmp_path):
    root = make_folder(tmp_path)
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(root / "images" / "s1.png")
    with pytest.raises(DataError, match=r"s1\.png: image is colour"):
        SegmentationDataset(root)


def test_grey_image_saved_as_rgb_is_accepted(tmp_path):
    root = make_folder(tmp_path)
    grey = np.asarray(Image.open(root / "images" / "s0.png"))
    Image.fromarray(np.stack([grey] * 3, -1)).save(root / "images" / "s0.png")
    assert np.allclose(read_image(root / "images" / "s0.png"), grey / 255.0)


def test_corrupt_image_raises_naming_the_file(tmp_path):
    root = make_folder(tmp_path)
    (root / "images" / "s2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=r"s2\.png: not a readable image"):
        SegmentationDataset(root)


def test_nan_in_float_image_raises_naming_the_file(tmp_path):
    bad = np.zeros((8, 8), np.float32)
    bad[1, 1] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(bad, mode="F").save(path)
    with pytest.raises(DataError, match=r"nan\.tif: image contains NaN"):
        read_image(path)


def test_sample_folder_copy_behaves_like_the_original(tmp_path):
    """A hold-out in the same format (here: five copied slices) loads the same way."""
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        for name in ("medseg_z001.png", "medseg_z049.png", "medseg_z080.png"):
            shutil.copy(SAMPLE / sub / name, tmp_path / sub / name)
    with pytest.warns(UserWarning):
        ds = SegmentationDataset(tmp_path, merge=True, size=128)
    assert len(ds) == 3 and ds[1][1].sum() == 0  # z049 has no lesion
