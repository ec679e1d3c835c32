"""The Table 7 ablation: its classification column (each row's encoder as the slice classifier of §2.8), seeds, the rows' saved models. Few rows, one
epoch, tiny folders, no test-time augmentation: seconds."""

import numpy as np
import pytest
import torch
from test_classification import write_folder

from crlearn.tasks.ablation import TABLE7, ablation_markdown, run_ablation, summarise_row

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Random slices of three groups per class, two slices each: the smallest set every part of the split fits."""
    rows = [(f"{label}_{g}_{i}", label, f"{label}_g{g}") for label in ("covid", "non_covid") for g in range(3)
            for i in range(2)]
    return write_folder(tmp_path_factory.mktemp("labelled"), rows)


def test_ablation_with_classify_data_adds_the_accuracy_column(small_data, labelled):
    kwargs = dict(profile="quick", folds=2, epochs=1, rows=TABLE7[:1], device="cpu", progress=False, tta=False)
    result = run_ablation(small_data, classify_data=labelled, **kwargs)
    [row] = result["rows"]
    assert row["paper_accuracy"] == 0.933 and len(row["folds"]) == 2
    for fold in row["folds"]:
        assert 0.0 <= fold["cls_accuracy"] <= 1.0 and 0.0 <= fold["cls_auc"] <= 1.0
    assert row["cls_accuracy"] == pytest.approx(sum(f["cls_accuracy"] for f in row["folds"]) / 2)
    assert "cls_accuracy_std" in row and "cls_auc_std" in row
    assert result["classify"]["config"]["size"] == result["train_config"]["size"]  # the segmentation profile's
    assert result["classify"]["n_test_slices"] == 4  # one test group of each class, two slices each
    md = ablation_markdown(result)
    assert "| paper accuracy | this run accuracy | AUC |" in md and "| 0.933 |" in md and "4 test-group slices" in md

    plain = run_ablation(small_data, **kwargs)  # without classify_data: as before
    assert "classify" not in plain
    assert [f["dice"] for f in plain["rows"][0]["folds"]] == [f["dice"] for f in row["folds"]]
    assert not any(k.startswith("cls_") for k in plain["rows"][0]) and "cls_accuracy" not in plain["rows"][0]["folds"][0]
    assert "accuracy" not in ablation_markdown(plain)


def test_summarise_row_leaves_an_undefined_auc_out_of_its_mean():
    base = dict(dice=0.5, iou=0.4, precision=0.5, recall=0.5, boundary_f1=0.5, seconds=1.0, epochs=1)
    row = summarise_row(TABLE7[3], [{**base, "cls_accuracy": 0.5, "cls_auc": None},
                                    {**base, "cls_accuracy": 1.0, "cls_auc": 0.75}])
    assert row["cls_accuracy"] == 0.75 and "cls_accuracy_std" in row
    assert row["cls_auc"] == 0.75 and "cls_auc_std" not in row  # one defined value: no spread
    none = summarise_row(TABLE7[3], [{**base, "cls_accuracy": 1.0, "cls_auc": None}])
    assert none["cls_auc"] is None
    assert "| - |" in ablation_markdown({"folds": 1, "profile": "quick", "hardware": "cpu", "seed": 0, "rows": [none],
                                          "classify": {"data": "x", "n_test_slices": 2}})


def test_paired_differences_hand_computed():
    from crlearn.tasks.ablation import paired_differences, paired_markdown

    def row(label, dices):
        return {"label": label, "folds": [{"dice": d} for d in dices]}

    result = {"rows": [row("u", [0.5, 0.6, 0.7]), row("a", [0.6, 0.5, 0.7]), row("h", [0.8, 0.7, 0.9])]}
    pairs = paired_differences(result)
    assert [(p["a"], p["b"]) for p in pairs] == [("u", "a"), ("a", "h"), ("u", "h")]
    assert pairs[0]["diffs"] == pytest.approx([0.1, -0.1, 0.0]) and pairs[0]["wins"] == 1
    assert pairs[0]["mean"] == pytest.approx(0.0) and pairs[0]["std"] == pytest.approx(0.1)
    assert pairs[2]["diffs"] == pytest.approx([0.3, 0.1, 0.2]) and pairs[2]["wins"] == 3
    assert "u → h" in paired_markdown(result) and "+0.200 ± 0.100" in paired_markdown(result)


def test_ablation_over_seeds_keeps_the_folds_pools_patients_and_pairs_run_by_run(small_data):
    from crlearn.stats import dice_from_counts
    from crlearn.tasks.ablation import paired_differences, paired_markdown

    kwargs = dict(profile="quick", folds=2, epochs=1, rows=TABLE7[2:], device="cpu", progress=False, tta=False)
    two = run_ablation(small_data, seeds=2, **kwargs)
    one = run_ablation(small_data, **kwargs)
    assert two["seeds"] == 2 and one["seeds"] == 1
    for r2, r1 in zip(two["rows"], one["rows"]):
        assert [(f["seed"], f["fold"]) for f in r2["folds"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert [f["dice"] for f in r2["folds"][:2]] == [f["dice"] for f in r1["folds"]]  # seed 0 as alone
        tested = [set(f["patients"]) for f in r2["folds"]]
        assert tested[0] == tested[2] and tested[1] == tested[3] and not tested[0] & tested[1]  # same folds
        totals = {}
        for f in r2["folds"]:
            for g, c in zip(f["patients"], f["counts"]):
                totals[g] = [a + b for a, b in zip(totals.get(g, [0, 0, 0]), c)]
        assert r2["pooled_dice"]["value"] == pytest.approx(dice_from_counts(sum(map(np.array, totals.values()))))
        assert r2["pooled_dice"]["patients"] == len(totals)
        for f in r2["folds"]:  # the run's own Dice is its counts' Dice
            assert f["dice"] == pytest.approx(dice_from_counts(np.sum(f["counts"], axis=0)), abs=1e-6)
    [pair] = paired_differences(two)
    assert pair["folds"] == 4 and pair["low"] <= pair["mean"] <= pair["high"]
    assert "2 group folds x 2 seeds" in ablation_markdown(two) and "pooled Dice [95 % CI]" in ablation_markdown(two)
    assert "95 % CI of the mean" in paired_markdown(two)
    with pytest.raises(ValueError, match="seeds"):
        run_ablation(small_data, seeds=0, **kwargs)


def test_row_models_saved_in_half_precision_load_back_and_predict_alike(small_data, tmp_path):
    from crlearn.tasks.ablation import load_row_models, save_row_models
    from crlearn.training.checkpoint import CheckpointError, load_checkpoint

    result = run_ablation(small_data, profile="quick", epochs=1, rows=TABLE7[2:], device="cpu", progress=False,
                          tta=False)
    paths = save_row_models(result, tmp_path)
    assert [p.name for p in paths] == ["refine.pt", "hybrid.pt"]
    loaded = load_row_models(tmp_path, TABLE7[2:])
    x = torch.rand(2, 1, 128, 128)
    for key, model in loaded.items():
        assert not model.training and next(model.parameters()).dtype == torch.float32
        with torch.no_grad():
            torch.testing.assert_close(model(x).final, result["models"][key].eval()(x).final, atol=0.05, rtol=0.01)
    _, ckpt = load_checkpoint(paths[1])
    assert ckpt["weights_dtype"] == "float16" and ckpt["row"] == "hybrid" and ckpt["train_config"]["hybrid"]
    assert ckpt["split"] == result["splits"][-1] and ckpt["data"] == small_data.name
    params = sum(p.numel() for p in loaded["hybrid"].parameters())
    assert paths[1].stat().st_size < 2.2 * params + 200_000  # two bytes a weight, plus the file's bookkeeping
    with pytest.raises(CheckpointError, match="unet.pt"):
        load_row_models(tmp_path)  # the first two rows were not saved
    with pytest.raises(ValueError, match="no trained model"):
        save_row_models({**result, "models": {}}, tmp_path)
