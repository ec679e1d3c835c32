"""Table 4's comparison (crlearn.tasks.compare): pooling, intervals and pairing, on made-up counts (no training)."""

import numpy as np
import pytest

from crlearn.tasks.compare import (LESIONS, PAPER_TABLE4, TABLE4, compare_markdown, precision_from_counts,
                                   recall_from_counts, summarise)


def _run(row, fold, seed, patients, counts):
    return {"row": row, "fold": fold, "seed": seed, "seconds": 1.0, "epochs": 2, "parameters": 10,
            "patients": patients, "counts": counts}


def _counts(tp, fp, fn):
    """(K, 3) counts: the same [TP, FP, FN] for every lesion class but effusion, which has none."""
    return [[tp, fp, fn], [tp, fp, fn], [0, 0, 0]]


def _runs():
    runs = []
    for seed in (0, 1):
        for row, good in (("unet", 5), ("unetpp", 6), ("crnet", 8)):
            runs.append(_run(row, 0, seed, ["a", "b"], [_counts(good, 2, 3), _counts(good + seed, 1, 1)]))
            runs.append(_run(row, 1, seed, ["c"], [_counts(good, 4, 2)]))
    return runs


@pytest.fixture(scope="module")
def result():
    return summarise(_runs())  # 9 rows x 3 metrics x 2,000 resamples: about a second


def test_precision_and_recall_from_counts():
    assert precision_from_counts(np.array([3, 1, 2])) == 0.75
    assert recall_from_counts(np.array([3, 1, 2])) == 0.6
    assert np.isnan(precision_from_counts(np.array([0, 0, 5]))) and np.isnan(recall_from_counts(np.array([0, 4, 0])))


def test_pooled_out_of_fold_values_sum_each_patient_over_the_seeds(result):
    row = next(r for r in result["rows"] if r["key"] == "crnet" and r["lesion"] == "ggo")
    tp = 8 + 8 + 8 + 9 + 8 + 8  # patients a, b, c over seeds 0 and 1
    fp, fn = 2 + 1 + 4 + 2 + 1 + 4, 3 + 1 + 2 + 3 + 1 + 2
    assert row["dice"]["value"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert row["precision"]["value"] == pytest.approx(tp / (tp + fp))
    assert row["recall"]["value"] == pytest.approx(tp / (tp + fn))
    assert row["dice"]["low"] <= row["dice"]["value"] <= row["dice"]["high"] and row["dice"]["patients"] == 3
    assert row["runs"] == 4 and row["runs_defined"] == 4 and row["dice_std"] is not None
    assert row["paper"] == dict(zip(("dice", "precision", "recall"), PAPER_TABLE4["crnet"]["ggo"]))


def test_a_lesion_absent_and_never_predicted_has_no_dice_and_no_pairs(result):
    eff = [r for r in result["rows"] if r["lesion"] == "effusion"]
    assert all(r["runs_defined"] == 0 and r["dice_mean"] is None and r["paper"] is None for r in eff)
    assert eff[0]["dice"]["value"] is None and eff[0]["recall"]["low"] is None
    assert {p["lesion"] for p in result["paired"]} == {"ggo", "consolidation"}


def test_paired_comparison_is_crnet_minus_each_baseline_run_by_run(result):
    pairs = {(p["lesion"], p["a"]): p for p in result["paired"]}
    assert set(pairs) == {(lesion, base) for lesion in ("ggo", "consolidation") for base in ("unet", "unetpp")}
    p = pairs["ggo", "unet"]
    assert p["runs"] == 4 and p["wins"] == 4 and p["mean"] > 0 and p["low"] <= p["mean"] <= p["high"]
    assert p["pairs"] == [[0, 0], [0, 1], [1, 0], [1, 1]] and p["runs_dropped"] == 0


def test_markdown_lays_out_table4_with_the_paper_beside(result):
    md = compare_markdown({"data": "data_sample/medseg_covid100", "profile": "quick", "folds": 2, "seeds": 2,
                           "hardware": "CPU", "device": "cpu", "jobs": 1, "wall_seconds": 3.0, **result})
    assert md.count("\n| U-Net |") == len(LESIONS) and "| CR-Net | ggo |" in md
    assert "0.860" in md and "0.892" in md  # the paper's CR-Net GGO Dice and precision ("892")
    assert "CR-Net − U-Net++" in md and "4/4" in md


def test_table4_rows_are_unet_unetpp_and_crnet():
    assert [r.key for r in TABLE4] == ["unet", "unetpp", "crnet"]
    assert next(r for r in TABLE4 if r.key == "unetpp").options == {"deep_supervision": True}


def test_compare_command_never_overwrites_and_refuses_bad_counts(tmp_path, capsys):
    from crlearn.cli.main import main

    out = tmp_path / "table4"
    out.mkdir()
    (out / "compare.json").write_text("{}")
    assert main(["compare", "--profile", "quick", "--out", str(out), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err and (out / "compare.json").read_text() == "{}"
    assert main(["compare", "--profile", "quick", "--folds", "1", "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "n_folds must be at least 2" in capsys.readouterr().err
    assert main(["compare", "--profile", "quick", "--seeds", "0", "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "seeds and jobs must be at least 1" in capsys.readouterr().err
