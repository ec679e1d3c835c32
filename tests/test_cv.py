"""Patient-level cross-validation (crlearn.tasks.cv), the fold ensemble (crlearn.nn.ensemble), training on every
patient (run(split="all")), the jitter beside the paper's views (crlearn.data.augment) and scripts/cv_grid.py."""

import argparse
import json

import numpy as np
import pytest
import torch

from conftest import LUNG_SET, ROOT, SAMPLE, TINY, copy_first_slices
from crlearn.data.augment import intensity_jitter, jittered, random_crop, scale_jitter
from crlearn.data.folder import SegmentationDataset, scan_folder
from crlearn.inference import predict, predict_logits
from crlearn.metrics import SegmentationMeter
from crlearn.nn.ensemble import CRNetEnsemble
from crlearn.nn.model import CRNet, CRNetConfig
from crlearn.tasks.cv import Recipe, cross_validate, cv_markdown, patient_folds, score_part, summarise_folder
from crlearn.training.checkpoint import ENSEMBLE_FORMAT, load_checkpoint, save_checkpoint
from crlearn.training.config import TrainConfig
from crlearn.training.run import run

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(epochs=1, size=64)


@pytest.fixture(scope="module")
def lung6(tmp_path_factory):
    """One slice of each of the lung set's six volumes: six patients with lung masks."""
    return copy_first_slices(LUNG_SET, tmp_path_factory.mktemp("lung6"), "volume", groups=6, per_group=1)


def _medseg_groups() -> list[str]:
    return [r.group for r in scan_folder(SAMPLE)]


# ----------------------------------------------------------------------------- the splitter


@pytest.mark.parametrize("n_folds", [3, 5])
def test_every_patient_is_tested_once_and_never_in_two_parts_of_a_fold(n_folds):
    groups = _medseg_groups()
    folds = patient_folds(groups, n_folds, seed=0)
    tested = [groups[i] for f in folds for i in f["test"]]
    assert sorted(tested) == sorted(groups)  # every slice, so every patient, tested exactly once
    assert len({g for f in folds for g in {groups[i] for i in f["test"]}}) == len(set(groups))
    for f in folds:
        parts = [{groups[i] for i in f[name]} for name in ("train", "val", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert sorted(f["train"] + f["val"] + f["test"]) == list(range(len(groups)))
        assert f["val"]  # an inner validation part for early stopping


def test_stratified_folds_hold_both_classes_in_every_part():
    groups = [f"c{i // 2}" for i in range(24)] + [f"h{i // 3}" for i in range(36)]  # 12 + 12 patients
    strata = ["covid"] * 24 + ["healthy"] * 36
    folds = patient_folds(groups, 3, seed=1, strata=strata)
    for f in folds:
        for name in ("train", "val", "test"):
            assert {strata[i] for i in f[name]} == {"covid", "healthy"}, name
    assert sorted(i for f in folds for i in f["test"]) == list(range(60))
    with pytest.raises(ValueError, match="two strata"):
        patient_folds(["a", "a", "b", "b", "c", "c"], 2, strata=[0, 1, 0, 0, 1, 1])


def test_no_inner_validation_leaves_the_val_part_empty():
    groups = _medseg_groups()
    for f in patient_folds(groups, 3, val_fraction=0.0):
        assert f["val"] == [] and sorted(f["train"] + f["test"]) == list(range(len(groups)))


# ----------------------------------------------------------------------------- pooled out-of-fold metrics


def test_pooled_out_of_fold_dice_equals_dice_of_the_concatenated_predictions(small_data):
    ds = SegmentationDataset(small_data, merge=True)
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=1, prior=0.4, **TINY)).eval()  # untrained: predicts a mixed mask
    first = sorted(set(ds.groups))[:3]
    halves = [[i for i, g in enumerate(ds.groups) if (g in first) == side] for side in (True, False)]  # whole groups
    folds = [{"fold": k, "folders": {"m": score_part(model, ds.subset(idx), 64, "cpu", tta=False)}}
             for k, idx in enumerate(halves)]
    pooled = summarise_folder("m", folds, n_boot=200)["classes"]["infection"]["pooled_dice"]
    pred = predict(model, ds.images, 64, "cpu", tta=False)[1]
    meter = SegmentationMeter(["infection"])
    meter.update(pred, ds.one_hot(ds.labels) > 0.5)
    reference = meter.compute()["pooled"]["infection"]["dice"]
    assert 0.0 < reference < 1.0  # a non-trivial check
    assert pooled["value"] == pytest.approx(reference, abs=1e-12)
    assert pooled["patients"] == len(set(ds.groups)) and pooled["low"] <= pooled["value"] <= pooled["high"]
    overlapping = [{"fold": k, "folders": {"m": score_part(model, ds.subset(idx), 64, "cpu", tta=False)}}
                   for k, idx in enumerate([halves[0] + halves[1][:1], halves[1]])]  # one group in both
    with pytest.raises(ValueError, match="tested in two folds"):
        summarise_folder("m", overlapping)


def test_the_ratio_error_comes_from_the_patients_summed_pixels(lung6):
    ds = SegmentationDataset(lung6, classes=["lung", "infection"])
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=2, prior=0.5, **TINY)).eval()
    part = score_part(model, ds, 64, "cpu", tta=False)
    ratio = summarise_folder("l", [{"fold": 0, "folders": {"l": part}}], n_boot=200).get("ratio_error")
    assert ratio is not None and len(part["patients"]) == 6
    for g, p in part["patients"].items():
        pl, pg, tl, tg = p["areas"]
        assert tl <= tg and tg > 0  # every true lesion pixel lies in the true lung field
        if g in ratio["per_patient"]:
            assert ratio["per_patient"][g]["error_pp"] == pytest.approx(100 * pl / pg - 100 * tl / tg)


# ----------------------------------------------------------------------------- the ensemble


def test_the_ensemble_output_is_the_mean_of_its_members_logits(tmp_path):
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(CRNet(CRNetConfig(num_classes=2, **TINY)).eval())
    ens = CRNetEnsemble(members).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        out, outs = ens(x), [m(x) for m in members]
    torch.testing.assert_close(out.final, sum(o.final for o in outs) / 3)
    torch.testing.assert_close(out.coarse, sum(o.coarse for o in outs) / 3)
    save_checkpoint(tmp_path / "e.pt", ens, ["lung", "infection"], TrainConfig(size=64))
    loaded, ckpt = load_checkpoint(tmp_path / "e.pt")
    assert ckpt["format"] == ENSEMBLE_FORMAT and isinstance(loaded, CRNetEnsemble) and len(loaded) == 3
    images = torch.rand(3, 1, 80, 72)  # predict resizes to the model's size and back, with five-view TTA
    ref = torch.stack([predict_logits(m, images, 64, "cpu") for m in members]).mean(0)
    torch.testing.assert_close(predict_logits(loaded, images, 64, "cpu"), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="same CRNetConfig"):
        CRNetEnsemble([members[0], CRNet(CRNetConfig(num_classes=1, **TINY))])


# ----------------------------------------------------------------------------- end to end


def test_a_tiny_cross_validation_tests_every_patient_and_keeps_its_fold_models(lung6, tmp_path):
    recipe = Recipe("tiny", data=[str(lung6)], classes=["lung", "infection"], overrides=FAST, model=TINY)
    res = cross_validate(recipe, n_folds=2, tta=False, out=tmp_path, save_models=True)
    s = res.summary
    json.dumps(s)  # JSON-able
    tested = [g for f in s["folds"] for g in f["test_groups"][lung6.name]]
    assert sorted(tested) == sorted({r.group for r in SegmentationDataset(lung6).records})  # each once
    assert len(res.models) == 2 and s["best_epoch"] == [1, 1] and s["chosen_epochs"] == 1
    folder = s["folders"][lung6.name]
    assert set(folder["classes"]) == {"lung", "infection"} and folder["patients"] == 6
    assert folder["classes"]["lung"]["fold_dice"]["folds"] and "ratio_error" in folder
    assert (tmp_path / "cv.json").exists() and (tmp_path / "fold1.pt").exists()
    assert isinstance(load_checkpoint(tmp_path / "ensemble.pt")[0], CRNetEnsemble)
    assert "pooled out-of-fold Dice" in cv_markdown(s)


def test_training_on_every_patient_has_no_test_part_and_keeps_the_last_epoch(small_data, tmp_path):
    res = run(small_data, profile="quick", split="all", out=tmp_path / "r", log=None, progress=False, tta=False,
              epochs=2, size=64)
    m = res.metrics
    assert m["test"] is None and m["val"] is None and m["split_mode"] == "all"
    assert sorted(m["split"]["train"]) == list(range(len(res.dataset))) and m["split"]["val"] == m["split"]["test"] == []
    assert all(np.isnan(res.history["val_loss"])) and len(res.history["epoch"]) == 2
    assert load_checkpoint(tmp_path / "r" / "best.pt")[1]["epoch"] == 1  # the last epoch (0-based) is the model


# ----------------------------------------------------------------------------- jitter beside the paper's views


def test_intensity_jitter_is_seeded_stays_in_range_and_leaves_the_mask():
    image = torch.rand(1, 32, 32)
    a = intensity_jitter(image, torch.Generator().manual_seed(3))
    b = intensity_jitter(image, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, image) and 0 <= a.min() and a.max() <= 1
    mask = torch.zeros(2, 32, 32)
    mask[:, 8:20, 10:24] = 1
    img2, mask2 = scale_jitter(image, mask, torch.Generator().manual_seed(0))
    assert img2.shape == image.shape and set(mask2.unique().tolist()) <= {0.0, 1.0}  # nearest: no mixed values
    ds = [(image, mask)] * 3
    assert jittered(ds, False, False) is ds and len(jittered(ds, True, True)) == 3
    with pytest.raises(ValueError, match="fast='off'"):
        TrainConfig(intensity_augment=True, fast="graph")


def test_random_crop_cuts_the_same_seeded_window_from_image_and_mask():
    image = torch.arange(64 * 64, dtype=torch.float32).reshape(1, 64, 64)
    mask = torch.cat([image, -image])  # each pixel's value names where it came from
    a_img, a_mask = random_crop(image, mask, 32, torch.Generator().manual_seed(5))
    b_img, _ = random_crop(image, mask, 32, torch.Generator().manual_seed(5))
    assert a_img.shape == (1, 32, 32) and a_mask.shape == (2, 32, 32) and torch.equal(a_img, b_img)
    top, left = divmod(int(a_img[0, 0, 0]), 64)
    assert torch.equal(a_img, image[:, top:top + 32, left:left + 32])  # one contiguous window of the slice
    assert torch.equal(a_mask[0], a_img[0]) and torch.equal(a_mask[1], -a_img[0])  # the mask's window is the image's
    corners = {random_crop(image, mask, 32, torch.Generator().manual_seed(s))[0][0, 0, 0].item() for s in range(20)}
    assert len(corners) > 10  # the window moves
    ds = jittered([(image, mask)] * 2, False, False, crop=32)
    assert ds[0][0].shape == (1, 32, 32) and ds[1][1].shape == (2, 32, 32)
    with pytest.raises(ValueError, match="crop side"):
        random_crop(image, mask, 96, torch.Generator())
    for bad in (48, 160):  # not a multiple of 32; larger than the slices
        with pytest.raises(ValueError, match="crop must be 0 or a multiple of 32"):
            TrainConfig(size=128, crop=bad)
    with pytest.raises(ValueError, match="fast='off'"):
        TrainConfig(size=128, crop=96, fast="eager")


# ----------------------------------------------------------------------------- the CLI and the grid script


def test_crlearn_cv_hands_a_recipe_to_cross_validate(small_data, tmp_path, monkeypatch):
    from crlearn.cli.main import main
    from crlearn.tasks import cv

    seen = {}

    def fake(recipe, **kw):
        seen.update(recipe=recipe, **kw)
        raise SystemExit(0)

    monkeypatch.setattr(cv, "cross_validate", fake)
    with pytest.raises(SystemExit):
        main(["cv", "--data", str(small_data), "--profile", "quick", "--folds", "3", "--size", "64",
              "--crop", "32", "--intensity-augment", "--no-val", "--out", str(tmp_path / "cv")])
    r = seen["recipe"]
    assert seen["n_folds"] == 3 and r.data == [str(small_data)] and r.profile == "quick"
    assert r.overrides == {"size": 64, "crop": 32, "intensity_augment": True} and r.val_fraction == 0.0


def _grid_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cv_grid", ROOT / "scripts" / "cv_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_grid_starts_longest_first_and_skips_what_would_not_fit_the_budget():
    grid = _grid_script()
    entries = {e["name"]: e for e in grid.builtin_grid()}
    started = []

    class Pool:  # records what would run
        def submit(self, fn, recipe, k, *rest):
            started.append((recipe["name"], k))
            return object()

    sched = grid.Scheduler(Pool(), 2, 100.0, argparse.Namespace(tta=False, device="cpu"))
    sched.add([("choice", entries[n], k, 3, 0) for n in ("ms_epochs10", "lung_256", "ms_baseline") for k in (0, 1)])
    sched.fill()  # no rate known yet: the first round starts, longest first
    assert started == [("lung_256", 0), ("lung_256", 1)] and len(sched.queue) == 4
    sched.running.clear()
    sched.observe(("choice", entries["lung_256"], 0, 3, 0), seconds=688.0)  # cost 5.74: 120 s per unit of cost
    sched.fill()  # ms_baseline (cost 1) would take ~120 s > 100 s: skipped; ms_epochs10 (cost 0.59) ~70 s: starts
    assert started[2:] == [("ms_epochs10", 0), ("ms_epochs10", 1)] and not sched.queue
    assert len(sched.skipped) == 2 and all("ms_baseline" in line for line in sched.skipped)


def test_the_grid_chooses_per_task_on_the_pooled_out_of_fold_dice():
    grid = _grid_script()
    entries = grid.builtin_grid()

    def fake(dice):
        return {"n_folds": 3, "seed": 0,
                "folders": {"medseg_covid100": {"classes": {"infection": {"pooled_dice": {"value": dice}}}}}}

    results = {"ms_baseline": fake(0.70), "ms_intensity": fake(0.74), "ms_standardize": fake(0.69)}
    c = grid.choose("medseg_infection", results, entries)
    assert c["chosen"] == "ms_intensity" and "3 choice folds" in c["chosen_on"]
    assert "ms_epochs10" in c["not_finished"] and c["scores"]["ms_baseline"] == 0.70
