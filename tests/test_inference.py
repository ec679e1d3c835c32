"""Inference: logits at the input size, test-time augmentation, evaluation through crlearn.metrics."""

import pytest
import torch
from conftest import TINY

from crlearn.data.augment import AUGMENTATIONS, apply_view
from crlearn.data.folder import SegmentationDataset
from crlearn.inference import evaluate, predict, predict_logits
from crlearn.metrics import boundary_f1, segmentation_scores
from crlearn.nn.model import CRNet, CRNetConfig

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


def test_predict_returns_probabilities_at_the_input_size():
    model = CRNet(CRNetConfig(num_classes=2, **TINY))
    probs, labels = predict(model, torch.rand(3, 1, 100, 90), size=64, device="cpu")
    assert probs.shape == (3, 2, 100, 90) and labels.dtype == torch.bool
    assert torch.equal(labels, probs > 0.5)
    assert 0 <= float(probs.min()) and float(probs.max()) <= 1


def test_tta_averages_the_five_views_mapped_back():
    model = CRNet(CRNetConfig(num_classes=1, **TINY)).eval()
    x = torch.rand(2, 1, 64, 64)
    single = predict_logits(model, x, size=64, device="cpu", tta=False)
    with torch.no_grad():
        by_hand = sum(apply_view(model(apply_view(x, v)).final, v, inverse=True) for v in AUGMENTATIONS) / 5
        assert torch.allclose(single, model(x).final, atol=1e-5)
    assert torch.allclose(predict_logits(model, x, size=64, device="cpu"), by_hand, atol=1e-5)


def test_evaluate_equals_metrics_on_the_predictions_with_the_merged_infection(small_data):
    model = CRNet(CRNetConfig(num_classes=3, **TINY))
    with torch.no_grad():  # untrained, but not empty: output biases that make each class predict some pixels
        model.coarse.head.bias.copy_(torch.tensor([0.5, 0.0, -0.5]))
    ds = SegmentationDataset(small_data)
    m = evaluate(model, ds, size=64, device="cpu", tta=False)
    _, pred = predict(model, ds.images, 64, "cpu", tta=False)
    target = ds.one_hot(ds.labels) > 0.5
    pred = torch.cat([pred, pred.any(1, keepdim=True)], 1)
    target = torch.cat([target, target.any(1, keepdim=True)], 1)
    names = ["ggo", "consolidation", "effusion", "infection"]
    assert list(m["pooled"]) == names
    pooled, per_slice = segmentation_scores(pred, target), segmentation_scores(pred, target, pooled=False)
    bf = boundary_f1(pred, target, tolerance=2)
    for k, name in enumerate(names):
        for metric in ("dice", "iou", "precision", "recall"):
            assert m["pooled"][name][metric] == pytest.approx(float(pooled[metric][k]), abs=1e-9), (name, metric)
            assert m["per_slice"][name][metric] == pytest.approx(float(per_slice[metric][k]), abs=1e-9)
        assert m["pooled"][name]["boundary_f1"] == pytest.approx(float(bf[k]), abs=1e-9)


def test_evaluate_adds_no_merged_class_when_infection_is_a_declared_class(tmp_path, small_data):
    import json
    import shutil

    shutil.copytree(small_data, tmp_path / "d")
    (tmp_path / "d" / "labels.json").write_text(json.dumps({"background": 0, "lung": [1, 2, 3], "infection": [2]}))
    ds = SegmentationDataset(tmp_path / "d", classes=["lung", "infection"])
    m = evaluate(CRNet(CRNetConfig(num_classes=2, **TINY)), ds, size=64, device="cpu", tta=False)
    assert list(m["pooled"]) == ["lung", "infection"]
