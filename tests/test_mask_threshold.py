"""The mask threshold: a CR-Net's ``config.mask_threshold`` decides which pixels predict, evaluate, the gate, the
training monitor and the checkpoint call a class; the quick profile's value is the one its CV chose."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY

from crlearn.data.folder import SegmentationDataset
from crlearn.inference import evaluate, predict
from crlearn.metrics import segmentation_scores
from crlearn.nn.ensemble import CRNetEnsemble
from crlearn.nn.model import CRNet, CRNetConfig, mask_threshold
from crlearn.tasks.gate import gated_predict
from crlearn.training.checkpoint import load_checkpoint, save_checkpoint
from crlearn.training.config import PROFILES, TrainConfig
from crlearn.training.engine import make_loader, validate

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")

ROOT = Path(__file__).resolve().parents[1]


def net(t: float = 0.5, k: int = 1) -> CRNet:
    return CRNet(CRNetConfig(num_classes=k, mask_threshold=t, **TINY)).eval()


def cut_inside(model: CRNet, x: torch.Tensor, q: float = 0.5) -> CRNet:
    """``model`` with its threshold at the ``q``-quantile of its probabilities on ``x`` (kept away from 0.5), so that
    the cut changes the masks and a test of it can fail."""
    with torch.no_grad():
        probs = torch.sigmoid(model(x).final)
    t = min(max(float(probs.quantile(q)), 0.02), 0.98)
    t = t if abs(t - 0.5) > 0.02 else 0.45
    assert (probs > t).float().mean() != (probs > 0.5).float().mean()
    model.config = dataclasses.replace(model.config, mask_threshold=t)
    return model


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, -0.1, 1.5, True, "0.3", float("nan")])
def test_a_threshold_outside_the_open_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match="mask_threshold"):
        CRNetConfig(mask_threshold=bad)


def test_older_configs_and_other_models_read_half():
    old = {k: v for k, v in CRNetConfig().to_dict().items() if k != "mask_threshold"}  # a checkpoint before it
    assert CRNetConfig.from_dict(old).mask_threshold == 0.5
    assert mask_threshold(torch.nn.Conv2d(1, 1, 1)) == 0.5  # no config: e.g. an SMP model in crlearn compare


def test_predict_cuts_at_the_models_threshold_unless_told_otherwise():
    x = torch.rand(2, 1, 64, 64)
    model = cut_inside(net(), x)
    t = model.config.mask_threshold
    probs, masks = predict(model, x, 64, "cpu", tta=False)
    assert torch.equal(masks, probs > t) and not torch.equal(masks, probs > 0.5)
    assert torch.equal(predict(model, x, 64, "cpu", tta=False, threshold=0.5)[1], probs > 0.5)


def test_evaluate_and_the_gate_use_the_same_cut(small_data):
    ds = SegmentationDataset(small_data)
    model = cut_inside(net(k=3), ds.images[:, :, :64, :64].contiguous())
    t = model.config.mask_threshold
    m = evaluate(model, ds, 64, "cpu", tta=False)
    probs, _ = predict(model, ds.images, 64, "cpu", tta=False)
    dice = segmentation_scores(probs > t, ds.one_hot(ds.labels) > 0.5)["dice"]
    for k, name in enumerate(["ggo", "consolidation", "effusion"]):
        assert m["pooled"][name]["dice"] == pytest.approx(float(dice[k]), abs=1e-9)

    class AllCovid(torch.nn.Module):
        def forward(self, x):
            return torch.stack([torch.zeros(len(x)), torch.ones(len(x))], 1)

    out = gated_predict(model, AllCovid(), ds.images, 64, "cpu", tta=False, classifier_size=64)
    assert out.positive.all() and torch.equal(out.masks, out.probs > t)


def test_the_training_monitor_counts_at_the_models_threshold(small_data):
    ds = SegmentationDataset(small_data, merge=True).subset(list(range(4)), size=64)
    x, y = ds.images, ds.one_hot(ds.labels) > 0.5
    model = cut_inside(net(), x, q=0.9)
    _, dice = validate(model, make_loader(ds, 4, False, torch.device("cpu")), TrainConfig(size=64), "cpu")
    with torch.no_grad():
        probs = torch.sigmoid(model(x).final)
    assert dice == pytest.approx(float(segmentation_scores(probs > model.config.mask_threshold, y)["dice"][0]),
                                 abs=1e-6)
    assert dice != pytest.approx(float(segmentation_scores(probs > 0.5, y)["dice"][0]), abs=1e-6)


@pytest.mark.parametrize("ensemble", [False, True])
def test_the_checkpoint_keeps_the_threshold(tmp_path, ensemble):
    model = CRNetEnsemble([net(0.35), net(0.35)]) if ensemble else net(0.35)
    save_checkpoint(tmp_path / "m.pt", model, ["infection"], TrainConfig(size=64))
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    assert mask_threshold(loaded) == 0.35


def test_the_quick_profiles_threshold_is_the_one_its_cv_chose():
    chosen = json.loads((ROOT / "results" / "cv_threshold" / "choice.json").read_text())
    assert PROFILES["quick"].model_config().mask_threshold == chosen["mask_threshold"]
    assert PROFILES["full"].model_config().mask_threshold == 0.5  # not measured at full scale: the usual cut
    assert dataclasses.replace(CRNetConfig.quick()).mask_threshold == 0.5  # the architecture preset leaves it


def test_one_cut_per_channel():
    config = CRNetConfig(num_classes=2, mask_threshold=[0.5, 0.15], **TINY)  # a checkpoint gives a list back
    assert config.mask_threshold == (0.5, 0.15)
    with pytest.raises(ValueError, match="2 cuts for 3 channels"):
        CRNetConfig(num_classes=3, mask_threshold=(0.5, 0.15))
    with pytest.raises(ValueError, match="mask_threshold"):
        CRNetConfig(num_classes=2, mask_threshold=(0.5, 1.0))
    x = torch.rand(2, 1, 64, 64)
    model = CRNet(config).eval()
    probs, masks = predict(model, x, 64, "cpu", tta=False)
    assert torch.equal(masks[:, 0], probs[:, 0] > 0.5) and torch.equal(masks[:, 1], probs[:, 1] > 0.15)


def test_the_lung_field_keeps_its_own_cut_and_the_checkpoint_keeps_both(tmp_path):
    quick = PROFILES["quick"]
    t = quick.model_config().mask_threshold
    config = quick.model_config(["lung", "infection"], num_classes=2)
    assert config.mask_threshold == (quick.class_thresholds["lung"], t) == (0.5, t)
    assert quick.model_config(["ggo", "consolidation", "effusion"], num_classes=3).mask_threshold == t
    assert quick.model_config(["lung", "infection"], num_classes=2, mask_threshold=0.3).mask_threshold == 0.3
    save_checkpoint(tmp_path / "m.pt", CRNet(dataclasses.replace(config, **TINY)), ["lung", "infection"],
                    TrainConfig(size=64))
    assert mask_threshold(load_checkpoint(tmp_path / "m.pt")[0]) == (0.5, t)
