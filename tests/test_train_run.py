"""crlearn.training.run.run on several data folders: one model, each folder split by its own groups, metrics per folder."""

import pytest

from crlearn.training.checkpoint import load_checkpoint
from crlearn.data.folder import DataError, SegmentationDataset
from crlearn.data.splits import split_by_group
from crlearn.training.run import data_folders, run

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = dict(profile="quick", epochs=1, size=64, device="cpu", progress=False, log=None)  # a few seconds


@pytest.fixture(scope="module")
def two_folder_run(small_data, lung_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "both"
    return run([small_data, lung_data], classes=["infection"], normalize="standardize", out=out, **QUICK)


def test_two_folders_give_one_model_and_metrics_per_folder(two_folder_run, small_data, lung_data):
    m = two_folder_run.metrics
    keys = [small_data.name, lung_data.name]
    assert m["data"] == [str(small_data.resolve()), str(lung_data.resolve())]
    assert m["class_names"] == ["infection"] and m["normalize"] == "standardize"
    for part in ("val", "test"):
        assert list(m[part]) == keys
        for key in keys:
            assert 0.0 <= m[part][key]["pooled"]["infection"]["dice"] <= 1.0
    assert two_folder_run.test is m["test"]
    assert m["test"][small_data.name]["n_slices"] == len(m["split"][small_data.name]["test"])
    assert [d.root for d in two_folder_run.dataset] == [small_data, lung_data]


def test_each_folder_is_split_by_its_own_groups(two_folder_run, small_data, lung_data):
    m = two_folder_run.metrics
    for folder, full in zip((small_data, lung_data), two_folder_run.dataset):
        split = m["split"][folder.name]
        assert split == split_by_group(full.groups, seed=0)  # the split a single-folder run makes
        parts = [{full.groups[i] for i in split[name]} for name in ("train", "val", "test")]
        assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert sorted(i for name in ("train", "val", "test") for i in split[name]) == list(range(len(full)))
    groups = m["split_groups"]
    assert all(g.startswith((f"{small_data.name}/", f"{lung_data.name}/")) for name in groups for g in groups[name])
    assert {g.split("/")[0] for g in groups["test"]} == {small_data.name, lung_data.name}


def test_the_datasets_and_the_checkpoint_keep_the_normalisation(two_folder_run):
    out = two_folder_run.out
    for name in ("best.pt", "last.pt", "metrics.json", "test_overlays.png"):
        assert (out / name).stat().st_size > 0, name
    _, ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["train_config"]["normalize"] == "standardize" and ckpt["class_names"] == ["infection"]
    for full in two_folder_run.dataset:
        assert full.normalize == "standardize"
        raw = SegmentationDataset(full.root, classes=["infection"])
        assert not raw.images.equal(full.images)


def test_one_folder_keeps_the_single_folder_layout(small_data):
    result = run([small_data], normalize=None, **QUICK)  # a list of one folder is that folder
    m = result.metrics
    assert m["data"] == str(small_data.resolve()) and set(m["split"]) == {"train", "val", "test"}
    assert "pooled" in m["test"] and "pooled" in m["val"] and "split_groups" not in m
    assert m["normalize"] == "none" and isinstance(result.dataset, SegmentationDataset)


def test_folders_whose_classes_differ_or_repeat_are_refused(small_data, lung_data):
    with pytest.raises(DataError, match=r"different classes.*ggo.*lung.*classes=\['infection'\]"):
        run([small_data, lung_data], merge=False, **QUICK)  # MedSeg's three lesions, the lung set's lung + infection
    with pytest.raises(ValueError, match="twice"):
        data_folders([small_data, small_data / ".." / small_data.name])
    with pytest.raises(ValueError, match="no folder"):
        data_folders([])
