"""The classifier as the paper means it (§2.8): the logistic head folded into the torch head, the any-slice
threshold chosen for a specificity, and group cross-validation of the whole recipe with patient intervals."""

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from test_classification import SARS, seg_ckpt, tiny_sars  # noqa: F401 (fixtures)

from crlearn.cli.main import main
from crlearn.data.errors import DataError
from crlearn.data.slices import ClassificationDataset, classification_folds
from crlearn.tasks.classifier import (
    checkpoint_threshold,
    classifier_from_checkpoint,
    head_from_logistic,
    load_classifier,
    patient_metrics,
    predict_proba,
    threshold_for_specificity,
)
from crlearn.tasks.classifier_cv import cross_validate_classifier, summarize, write_cv
from crlearn.tasks.classifier_run import (
    ClassifyConfig,
    encode_features,
    fit_logistic_classifier,
    run_classify,
)
from crlearn.tasks.logistic_head import fit_logistic, inner_splits

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- the folded head


def test_folded_head_gives_the_sklearn_pipelines_probabilities():
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 1.0, (80, 12)) * rng.uniform(0.1, 20, 12)  # offsets and scales for the scaler to undo
    y = (X[:, 0] / X[:, 0].std() + rng.normal(0, 1, 80) > X[:, 0].mean() / X[:, 0].std()).astype(int)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=5000)).fit(X, y)
    head = head_from_logistic(torch.nn.Linear(12, 2), pipe)
    with torch.no_grad():
        p_torch = torch.softmax(head(torch.from_numpy(X).float()).double(), dim=1)[:, 1].numpy()
    np.testing.assert_allclose(p_torch, pipe.predict_proba(X)[:, 1], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="two-logit head"):
        head_from_logistic(torch.nn.Linear(11, 2), pipe)


def test_logistic_classifier_predicts_what_its_pipeline_predicts(seg_ckpt, tiny_sars):  # noqa: F811
    ds = ClassificationDataset(tiny_sars, size=32)
    model = classifier_from_checkpoint(seg_ckpt, "frozen")
    info = fit_logistic_classifier(model, ds, ClassifyConfig(size=32, views="augment"), "cpu")
    feats = encode_features(model, ds.subset(range(len(ds)), augment=True), torch.device("cpu")).tensors[0]
    pipe, again = fit_logistic(feats.view(len(ds), 5, -1).double().numpy(), ds.targets.numpy(), ds.groups)
    np.testing.assert_allclose(predict_proba(model, ds.images), pipe.predict_proba(
        encode_features(model, ds, torch.device("cpu")).tensors[0].double().numpy())[:, 1], rtol=0, atol=1e-5)
    assert info["C"] == again["C"] and 0 < info["threshold"]["threshold"] <= 1 and info["inner_folds"] == 3


# --------------------------------------------------------------------------- the threshold for a specificity


def hand_example():
    """10 negative pseudo-patients whose largest slice probabilities are 0.05, 0.15, ..., 0.95 (each with a lower
    second slice), and 3 positive ones with maxima 0.52, 0.92, 0.99."""
    y, p, g = [], [], []
    for i, m in enumerate(np.arange(0.05, 1.0, 0.1)):
        y += [0, 0]
        p += [float(m), float(m) / 2]
        g += [f"n{i}", f"n{i}"]
    for i, m in enumerate([0.52, 0.92, 0.99]):
        y += [1, 1]
        p += [0.1, m]
        g += [f"p{i}", f"p{i}"]
    return y, p, g


@pytest.mark.parametrize("target, threshold, sensitivity", [(0.9, 0.90, 2 / 3), (0.8, 0.80, 2 / 3),
                                                            (0.5, 0.50, 1.0), (1.0, 0.975, 1 / 3)])
def test_threshold_gives_exactly_the_stated_specificity_on_a_hand_example(target, threshold, sensitivity):
    y, p, g = hand_example()
    chosen = threshold_for_specificity(y, p, g, target)
    assert chosen["threshold"] == pytest.approx(threshold)
    assert chosen["specificity"] == pytest.approx(target) and chosen["sensitivity"] == pytest.approx(sensitivity)
    assert (chosen["n_negative_groups"], chosen["n_positive_groups"]) == (10, 3)
    rule = patient_metrics(y, p, g, chosen["threshold"])["any_slice"]  # the rule itself agrees
    assert rule["specificity"] == pytest.approx(target)


def test_tied_maxima_push_the_threshold_above_the_tie_and_no_negative_is_refused():
    y, p, g = [0, 0, 0, 0, 1], [0.4, 0.4, 0.4, 0.2, 0.9], ["a", "b", "c", "d", "e"]
    chosen = threshold_for_specificity(y, p, g, 0.5)  # k = 2 lands inside the tie at 0.4: all three stay negative
    assert 0.4 < chosen["threshold"] <= 0.9 and chosen["specificity"] == 1.0
    with pytest.raises(DataError, match="no non-COVID group"):
        threshold_for_specificity([1, 1], [0.2, 0.3], ["a", "b"])
    with pytest.raises(ValueError, match="specificity"):
        threshold_for_specificity(y, p, g, 0.0)


# --------------------------------------------------------------------------- folds and intervals


def test_cv_folds_are_group_disjoint_with_both_classes_in_every_part():
    ds = ClassificationDataset(SARS, size=32)
    folds = classification_folds(ds, n_folds=5, seed=0)
    tested = []
    for fold in folds:
        parts = {name: {ds.groups[i] for i in idx} for name, idx in fold.items()}
        assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"])
        assert not (parts["val"] & parts["test"])
        for idx in fold.values():
            assert {int(ds.targets[i]) for i in idx} == {0, 1}
        tested += sorted(parts["test"])
    assert sorted(tested) == sorted(set(ds.groups))  # every pseudo-patient tested exactly once
    y, groups = ds.targets.numpy(), np.array(ds.groups)
    held = []
    for tr, te in inner_splits(y, groups, seed=0):  # the logistic head's inner folds, on every slice here
        assert not set(groups[tr]) & set(groups[te]) and set(y[te].tolist()) == {0, 1}
        held += te.tolist()
    assert sorted(held) == list(range(len(y)))


def fold_record(fold, seed):
    rng = np.random.default_rng(seed)
    y, p, g = [], [], []
    for k in range(6):
        label = k % 2
        n = 3 + k
        y += [label] * n
        p += np.clip(rng.normal(0.35 + 0.3 * label, 0.2, n), 0, 1).tolist()
        g += [f"f{fold}g{k}"] * n
    return {"variant": "v", "fold": fold, "y": y, "probs": p, "groups": g, "threshold": {"threshold": 0.7}}


def test_pooled_metrics_are_those_of_the_concatenated_predictions_and_intervals_contain_them():
    records = [fold_record(0, 1), fold_record(1, 2)]
    s = summarize(records)
    y = np.concatenate([r["y"] for r in records])
    p = np.concatenate([r["probs"] for r in records])
    assert s["pooled"]["slice_auc"]["value"] == pytest.approx(roc_auc_score(y, p))
    assert s["pooled"]["slice_accuracy"]["value"] == pytest.approx(((p >= 0.5) == y).mean())
    calls = {}
    for r in records:
        for yy, pp, gg in zip(r["y"], r["probs"], r["groups"]):
            calls.setdefault(gg, [yy, 0])[1] |= pp >= 0.7
    assert s["pooled"]["any_slice_accuracy"]["value"] == pytest.approx(np.mean([a == b for a, b in calls.values()]))
    assert s["n_patients"] == 12 and s["per_fold"]["threshold"] == [0.7, 0.7]
    for name, ci in s["pooled"].items():
        assert ci["low"] <= ci["value"] <= ci["high"], name
        assert ci["patients"] == 12


def test_cross_validation_tests_every_group_once_and_writes_its_report(seg_ckpt, tiny_sars, tmp_path):  # noqa: F811
    result = cross_validate_classifier(3, tiny_sars, variants=("frozen-logistic", "frozen-torch"), encoder=seg_ckpt,
                                       log=None, size=32, epochs=1)
    ds = ClassificationDataset(tiny_sars, size=32)
    for variant, summary in result["variants"].items():
        folds = [r for r in result["folds"] if r["variant"] == variant]
        assert sorted(g for r in folds for g in set(r["groups"])) == sorted(set(ds.groups))
        assert summary["n_slices"] == len(ds) and summary["n_folds"] == 3
    assert not result["stage1"]["trained"] and result["folds"][0]["logistic"]["inner_folds"] == 2
    paths = write_cv(result, tmp_path / "cv")
    assert json.loads(paths[0].read_text())["n_folds"] == 3 and "| frozen-logistic |" in paths[1].read_text()


def test_cli_classify_cv_and_the_checkpoints_threshold_by_default(seg_ckpt, tiny_sars, tmp_path, capsys):  # noqa: F811
    assert main(["classify", "cv", "--data", str(tiny_sars), "--encoder", str(seg_ckpt), "--folds", "3", "--size",
                 "32", "--out", str(tmp_path / "cv")]) == 0
    assert "slice AUC" in capsys.readouterr().out and (tmp_path / "cv" / "cv.md").is_file()
    run = run_classify(tiny_sars, encoder=seg_ckpt, out=tmp_path / "run", size=32, log=None, specificity=0.5)
    _, ckpt = load_classifier(tmp_path / "run" / "best.pt")
    assert checkpoint_threshold(ckpt) == ckpt["threshold"] == run.metrics["threshold"]["threshold"]
    assert run.metrics["test"]["patient_threshold"] == ckpt["threshold"]
    assert main(["classify", "evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data",
                 str(tiny_sars), "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["patient_threshold"] == ckpt["threshold"]
    assert checkpoint_threshold({}) == 0.5  # a checkpoint from before the choice: the paper's 0.5


def test_rank_auc_is_sklearns_auc_with_ties():
    from crlearn.tasks.classifier_cv import rank_auc

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    p = np.round(rng.uniform(0, 1, 200) + 0.3 * y, 1)  # rounded: many ties
    assert rank_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert np.isnan(rank_auc(np.ones(3, dtype=int), np.array([0.1, 0.2, 0.3])))
