"""The data pipeline: the bundled sample, augmentation, patient-level splits and bad input."""

import csv
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE
from PIL import Image

from crlearn.data.augment import AUGMENTATIONS, apply_view, augment_pair
from crlearn.data.folder import (
    MEDSEG_LABELS,
    NORMALIZATIONS,
    DataError,
    SegmentationDataset,
    normalize_intensity,
    read_image,
    read_labels,
    resolve_classes,
)
from crlearn.training.config import TrainConfig
from crlearn.data.splits import group_folds, split_by_group

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
        write_index(tmp_path, "pseudo_patient_group", {f"s{k}": f"p{k // 2}" for k in range(n)})
    return tmp_path


def write_index(root: Path, group_column: str, groups: dict[str, str]) -> None:
    """An index.csv with a slice_id column and the given group column."""
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slice_id", group_column])
        w.writerows(groups.items())


LUNG_LABELS = {"background": 0, "lung": [1, 2], "infection": 2}  # lung = the whole lung field, lesion included


def make_labelled_folder(tmp_path: Path, labels: dict | None = None, n: int = 3, size: int = 16) -> Path:
    """A folder like the lung/infection set: masks 0 = outside, 1 = lung, 2 = infection, a labels.json with a union
    class, and an index.csv grouped by ``volume``."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(1)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(tmp_path / "images" / f"v{k}.png")
        Image.fromarray(rng.integers(0, 3, (size, size), dtype=np.uint8)).save(tmp_path / "masks" / f"v{k}.png")
    (tmp_path / "labels.json").write_text(json.dumps(LUNG_LABELS if labels is None else labels))
    write_index(tmp_path, "volume", {f"v{k}": f"vol{k // 2}" for k in range(n)})
    return tmp_path


def masks_on_disk(root: Path) -> torch.Tensor:
    """Every mask of a folder as read by PIL, ``(N, H, W)``, in file-name order."""
    return torch.stack([torch.from_numpy(np.array(Image.open(f))) for f in sorted((root / "masks").glob("*.png"))])


def test_sample_has_76_slices_with_index_pixel_counts(sample512):
    rows = index_rows()
    assert len(sample512) == 76
    assert sorted(r.name for r in sample512.records) == sorted(rows)
    masks = sample512.one_hot(sample512.labels)  # (N, 3, 512, 512)
    for k, rec in enumerate(sample512.records):
        for c, name in enumerate(sample512.class_names):
            assert int(masks[k, c].sum()) == int(rows[rec.name][INDEX_COLUMNS[name]]), (rec.name, name)
    totals = masks.sum(dim=(0, 2, 3)).long().tolist()
    assert totals == [837235, 394953, 26718]  # data_sample/medseg_covid100/README.md
    assert sample512.images.dtype == torch.float32
    assert 0.0 <= float(sample512.images.min()) and float(sample512.images.max()) <= 1.0


def test_sample_groups_come_from_index(sample512):
    rows = index_rows()
    assert all(r.group == rows[r.name]["pseudo_patient_group"] for r in sample512.records)
    assert len(set(sample512.groups)) == 44


def test_merge_gives_one_infection_channel_equal_to_union(sample512):
    idx = list(range(0, 76, 5))
    merged = SegmentationDataset(SAMPLE, merge=True, indices=idx)  # from disk, a few slices
    assert merged.class_names == ["infection"] and torch.equal(merged.labels, sample512.labels[idx])
    union = (sample512.labels > 0).float()[:, None]  # ggo, consolidation or effusion: (N, 1, H, W), every slice
    assert union.sum() > 0 and int(sample512.labels.max()) == 3
    assert torch.equal(merged.one_hot(sample512.labels), union)  # the merged mapping on the whole set
    for k, j in enumerate(idx):
        assert torch.equal(merged[k][1], union[j]), j


def test_class_subset_and_unknown_class():
    names, labels = resolve_classes(["consolidation", "ggo"])
    assert names == ["consolidation", "ggo"] and labels == [(2,), (1,)]
    assert resolve_classes(["ggo", "effusion"], merge=True) == (["infection"], [(1, 3)])
    with pytest.raises(DataError, match="fibrosis"):
        resolve_classes(["ggo", "fibrosis"])


def test_resize_gives_requested_size_and_binary_masks(sample512):
    ds = sample512.subset(range(len(sample512)), size=128)
    assert ds.images.shape == (76, 1, 128, 128) and ds.labels.shape == (76, 128, 128)
    image, mask = ds[0]
    assert image.shape == (1, 128, 128) and mask.shape == (3, 128, 128)
    masks = ds.one_hot(ds.labels)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    def present(labels):  # (N, 4): which of the values 0..3 each slice holds
        return torch.stack([(labels == v).flatten(1).any(1) for v in range(4)], 1)

    assert not (present(ds.labels) & ~present(sample512.labels)).any()  # nearest: no slice gains a label value it did not have
    assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0


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


def test_augmented_dataset_gives_every_view_of_every_slice(sample512):
    ds = sample512.subset(range(len(sample512)), size=64, augment=True)
    assert len(ds) == 5 * 76
    for j in range(76):
        img0, msk0 = ds[5 * j]  # identity
        assert torch.equal(img0, ds.images[j]) and torch.equal(msk0, ds.one_hot(ds.labels[j]))
        for v, kind in enumerate(AUGMENTATIONS):
            img, msk = ds[5 * j + v]
            want_img, want_msk = augment_pair(img0, msk0, kind)
            assert torch.equal(img, want_img) and torch.equal(msk, want_msk), (j, kind)
    img1, msk1 = ds[1]  # rot90 of slice 0, counter-clockwise like torch.rot90
    assert torch.equal(img1, torch.rot90(ds.images[0], 1, (1, 2)))
    with pytest.raises(IndexError):
        ds[len(ds)]


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
    with pytest.raises(DataError, match=r"s0\.png: label value\(s\) 255 not declared"):
        SegmentationDataset(root)


def test_mask_value_inside_the_range_but_not_in_labels_json_raises(tmp_path):
    """Labels with a gap (1 and 3): a mask holding 2 is refused, though 2 < 3, and the message names the mask."""
    root = make_labelled_folder(tmp_path, labels={"background": 0, "lung": [1, 3], "infection": 3})
    lab = np.asarray(Image.open(root / "masks" / "v0.png"))
    assert 2 in lab  # the helper's masks hold 0, 1, 2
    with pytest.raises(DataError) as err:
        SegmentationDataset(root)
    message = str(err.value)
    assert message.startswith(str(root / "masks" / "v0.png")) and "value(s) 2 not declared" in message
    assert "expected one of 0, 1, 3" in message and "\n" not in message


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
    """A hold-out in the same format (here: three copied slices) loads the same way."""
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        for name in ("medseg_z001.png", "medseg_z049.png", "medseg_z080.png"):
            shutil.copy(SAMPLE / sub / name, tmp_path / sub / name)
    with pytest.warns(UserWarning):
        ds = SegmentationDataset(tmp_path, merge=True, size=128)
    assert len(ds) == 3 and ds[1][1].sum() == 0  # z049 has no lesion
    assert ds[0][1].sum() > 0 and ds[2][1].sum() > 0


def test_slices_of_different_sizes_need_size(tmp_path):
    root = make_folder(tmp_path)
    Image.fromarray(np.zeros((24, 40), np.uint8)).save(root / "images" / "s1.png")
    Image.fromarray(np.zeros((24, 40), np.uint8)).save(root / "masks" / "s1.png")
    with pytest.raises(DataError, match=r"s1\.png: image size 40x24 differs from the first slice's 32x32"):
        SegmentationDataset(root)
    assert SegmentationDataset(root, size=16).images.shape == (3, 1, 16, 16)


# ----------------------------------------------------------------------------- load once, subset in memory


def assert_same_dataset(a: SegmentationDataset, b: SegmentationDataset) -> None:
    assert a.class_names == b.class_names and a.records == b.records and a.size == b.size and len(a) == len(b)
    assert a.images.dtype == b.images.dtype and a.labels.dtype == b.labels.dtype
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    for i in range(len(a)):
        (img_a, msk_a), (img_b, msk_b) = a[i], b[i]
        assert torch.equal(img_a, img_b) and torch.equal(msk_a, msk_b), i


def test_subset_equals_loading_the_split_from_disk(sample512):
    split = split_by_group(sample512.groups, seed=0)
    idx = split["test"][::-1] + split["val"][:1]  # any order, not only sorted
    direct = SegmentationDataset(SAMPLE, size=128, augment=True, indices=idx)
    assert_same_dataset(sample512.subset(idx, size=128, augment=True), direct)
    assert sample512.images.shape[-1] == 512  # the full set is left as it was


def test_subset_with_union_labels_classes_and_sizes(tmp_path):
    root = make_labelled_folder(tmp_path, size=24)
    full = SegmentationDataset(root, classes=["infection", "lung"])
    for idx, size, augment in (([2, 0], 10, True), ([1], None, False), ([0, 1, 2], 24, True), ([], 8, False)):
        direct = SegmentationDataset(root, classes=["infection", "lung"], size=size, augment=augment, indices=idx)
        assert_same_dataset(full.subset(idx, size=size, augment=augment), direct)


def test_subset_keeps_size_and_refuses_to_resample_twice(sample512):
    small = sample512.subset(range(4), size=64)
    assert small.subset([3, 1]).size == 64
    assert torch.equal(small.subset([3, 1], size=64).images, small.images[[3, 1]])
    with pytest.raises(ValueError, match="size=None"):
        small.subset([0], size=32)


# ----------------------------------------------------------------------------- labels.json


def test_labels_json_union_class_one_hot_pixel_by_pixel(tmp_path):
    root = make_labelled_folder(tmp_path)
    assert read_labels(root) == {"lung": (1, 2), "infection": (2,)}
    ds = SegmentationDataset(root)
    assert ds.class_names == ["lung", "infection"] and ds.groups == ["vol0", "vol0", "vol1"]
    labels = masks_on_disk(root)
    assert set(labels.unique().tolist()) == {0, 1, 2}
    assert torch.equal(ds.labels, labels)
    lung = (labels == 1) | (labels == 2)
    infection = labels == 2
    for k in range(len(ds)):
        image, mask = ds[k]
        assert mask.dtype == torch.float32 and mask.shape == (2, 16, 16)
        assert torch.equal(mask[0], lung[k].float()) and torch.equal(mask[1], infection[k].float()), k


def test_classes_infection_selects_a_declared_infection_class(tmp_path):
    root = make_labelled_folder(tmp_path)
    ds = SegmentationDataset(root, classes=["infection"])
    assert ds.class_names == ["infection"]
    assert torch.equal(ds.one_hot(ds.labels)[:, 0], (masks_on_disk(root) == 2).float())  # value 2 only, not 1 and 2
    with pytest.raises(DataError, match="declare a class of that name"):
        SegmentationDataset(root, merge=True)  # lung and infection united under the name of one of them
    assert resolve_classes(["infection"], labels=read_labels(root)) == (["infection"], [(2,)])
    assert resolve_classes(["infection"]) == (["infection"], [(1, 2, 3)])  # MedSeg: no such class, so merge all


def test_labels_json_plain_int_is_one_value(tmp_path):
    """The lung set's own file: ``"lung": 1`` is label 1 only (lung without lesion), not the lung field."""
    root = make_labelled_folder(tmp_path, labels={"background": 0, "lung": 1, "infection": 2})
    ds = SegmentationDataset(root)
    assert ds._channel_labels == [(1,), (2,)]
    assert torch.equal(ds.one_hot(ds.labels)[:, 0], (masks_on_disk(root) == 1).float())


def test_labels_default_to_medseg(tmp_path):
    medseg = {name: (value,) for name, value in MEDSEG_LABELS.items()}
    assert read_labels(make_folder(tmp_path)) == medseg  # no labels.json
    assert read_labels(SAMPLE) == medseg  # the sample's own labels.json says the same
    assert resolve_classes(["ggo", "consolidation"], merge=True, labels={"ggo": [1, 2], "consolidation": (2, 3)}) == (
        ["infection"], [(1, 2, 3)]
    )


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"lung": [1, 2', "not valid JSON"),
        ('{"lung": 1, "lung": 2}', "given more than once"),
        ("[1, 2]", "expected an object"),
        ('"lung"', "expected an object"),
        ('{"lung": "1"}', "has value '1'"),
        ('{"lung": 1.5}', "has value 1.5"),
        ('{"lung": true}', "has value True"),
        ('{"lung": -1}', "has value -1"),
        ('{"lung": 256}', "has value 256"),
        ('{"lung": [1, "2"]}', "has value [1, '2']"),
        ('{"lung": [[1]]}', "has value [[1]]"),
        ('{"lung": []}', "has value []"),
        ('{"lung": 0}', "covers value 0"),
        ('{"lung": [0, 1]}', "covers value 0"),
        ('{"background": 1, "lung": 2}', "'background' must be 0"),
        ('{"background": 0}', "declares no class"),
        ('{"lung": [1, 1]}', "lists a value twice"),
        ('{"lung": [1, 2], "infection": [2, 1]}', "cover the same value(s)"),
    ],
)
def test_bad_labels_json_raises_naming_the_file(tmp_path, text, problem):
    root = make_labelled_folder(tmp_path)
    (root / "labels.json").write_text(text)
    with pytest.raises(DataError) as err:
        SegmentationDataset(root)
    message = str(err.value)
    assert message.startswith(f"{root / 'labels.json'}: ") and problem in message and "\n" not in message
    with pytest.raises(DataError, match=re.escape(problem)):
        read_labels(root)


# ----------------------------------------------------------------------------- intensity normalisation


def test_normalize_none_is_the_identity():
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(normalize_intensity(x, "none"), x) and torch.equal(normalize_intensity(x[0], "none"), x[0])


def test_standardize_known_mean_and_std_and_the_clip():
    half = torch.tensor([0.2, 0.4]).repeat_interleave(32).reshape(1, 8, 8)  # mean 0.3, std 0.1: z = -1 and +1
    out = normalize_intensity(half, "standardize")
    assert out.shape == (1, 8, 8)
    assert torch.allclose(out, torch.where(half < 0.3, 1 / 3, 2 / 3), atol=1e-6)  # (z + 3) / 6
    outlier = torch.zeros(1, 1, 10, 10)
    outlier[0, 0, 0, 0] = 1.0  # mean 0.01, std sqrt(0.01 * 0.99): z = 9.95 (clipped to 3) and -0.1005
    z0 = -0.01 / np.sqrt(0.01 * 0.99)
    out = normalize_intensity(outlier, "standardize")
    assert float(out[0, 0, 0, 0]) == 1.0 and torch.allclose(out[0, 0, 1:], torch.tensor(float(z0 + 3) / 6), atol=1e-6)
    # per slice: a slice and a brighter, lower-contrast copy of it standardise alike
    x = torch.rand(1, 1, 16, 16)
    both = normalize_intensity(torch.cat([x, 0.3 + 0.5 * x]), "standardize")
    assert torch.allclose(both[0], both[1], atol=1e-5) and torch.allclose(both[0], normalize_intensity(x[0], "standardize"))


def test_equalize_is_monotone_and_flattens_the_histogram():
    ramp = (torch.linspace(0, 1, 256) ** 3)[torch.randperm(256, generator=torch.Generator().manual_seed(0))]
    out = normalize_intensity(ramp.reshape(1, 1, 16, 16), "equalize").reshape(-1)
    order = ramp.argsort()
    assert torch.allclose(out[order], torch.linspace(0, 1, 256), atol=1e-6)  # rank / (n - 1): exactly uniform
    assert torch.histc(out, bins=8, min=0, max=1).tolist() == [32.0] * 8  # the cubed ramp's histogram was skewed
    grey = torch.randint(0, 256, (2, 1, 32, 32), generator=torch.Generator().manual_seed(1)).float() ** 2 / 255**2
    eq = normalize_intensity(grey, "equalize")
    for g, e in zip(grey.reshape(2, -1), eq.reshape(2, -1)):
        i = g.argsort()
        assert (e[i].diff() >= 0).all() and float(e.min()) == 0.0 and float(e.max()) == 1.0
        assert torch.equal(e[g == g[0]], e[g == g[0]][:1].expand(int((g == g[0]).sum())))  # one grey in, one out


def test_constant_slice_becomes_mid_grey_and_bad_kinds_are_refused():
    flat = torch.full((2, 1, 4, 4), 0.7)
    for kind in ("standardize", "equalize"):
        assert torch.equal(normalize_intensity(flat, kind), torch.full_like(flat, 0.5))
    with pytest.raises(ValueError, match="'none', 'standardize', 'equalize'"):
        normalize_intensity(flat, "clahe")
    with pytest.raises(ValueError, match="shape"):
        normalize_intensity(flat[0, 0], "standardize")
    with pytest.raises(ValueError, match="standardize"):
        SegmentationDataset(SAMPLE, normalize="zscore")
    with pytest.raises(ValueError, match="normalize"):
        TrainConfig(normalize="zscore")
    assert TrainConfig().normalize == "none"


@pytest.mark.parametrize("kind", NORMALIZATIONS)
def test_dataset_normalize_equals_normalize_intensity_of_the_raw_images(kind, tmp_path):
    root = make_labelled_folder(tmp_path, n=4, size=40)
    raw = SegmentationDataset(root, classes=["infection"])
    full = SegmentationDataset(root, classes=["infection"], normalize=kind)
    assert full.normalize == kind and torch.equal(full.labels, raw.labels)
    assert torch.equal(full.images, normalize_intensity(raw.images, kind))
    assert 0.0 <= float(full.images.min()) and float(full.images.max()) <= 1.0
    part = full.subset([3, 1], size=32, augment=True)  # applied once, before resizing; subset keeps it
    direct = SegmentationDataset(root, classes=["infection"], normalize=kind, size=32, augment=True, indices=[3, 1])
    assert part.normalize == kind
    assert_same_dataset(part, direct)
