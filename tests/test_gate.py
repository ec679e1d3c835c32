"""Gated segmentation (§2.8): only the slices the classifier flags are segmented; the rest stay zero."""

import pytest
import torch
from conftest import TINY
from torch import nn

from crlearn.bench import bench_gate
from crlearn.data.folder import normalize_intensity
from crlearn.nn.encoder import EncoderClassifier
from crlearn.tasks.gate import GatedPrediction, gated_predict
from crlearn.inference import predict
from crlearn.nn.model import CRNet, CRNetConfig

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")

SIZE = 64


class BrightIsCovid(nn.Module):
    """A stand-in classifier that knows the answer: a slice is COVID-19 when its mean intensity is above 0.5."""

    def __init__(self):
        super().__init__()
        self.sizes = []  # input sizes seen

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        score = 20 * (x.mean(dim=(1, 2, 3)) - 0.5)  # (B,)
        return torch.stack([torch.zeros_like(score), score], dim=1)  # (B, 2) logits


def stack(pattern):
    """Slices of 64 x 48 px: bright (COVID-19 for BrightIsCovid) where pattern is 1, dark where 0."""
    return torch.stack([torch.rand(1, 64, 48) * 0.3 + (0.7 if p else 0.0) for p in pattern])


def record_inputs(model):
    """Every batch ``model`` is called on, cloned, via a forward pre-hook."""
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    return seen


def test_negative_slices_are_never_segmented_and_stay_exactly_zero():
    segmenter = CRNet(CRNetConfig(num_classes=2, **TINY))
    seen = record_inputs(segmenter)
    images = stack([1, 0, 0, 1, 0])
    out = gated_predict(segmenter, BrightIsCovid(), images, SIZE, "cpu", tta=False)
    assert out.positive.tolist() == [True, False, False, True, False]
    assert (out.n_segmented, out.n_skipped) == (2, 3)
    seen = torch.cat(seen)
    assert len(seen) == 2 and float(seen.mean()) > 0.5  # only the two bright slices reached the segmenter
    assert torch.count_nonzero(out.probs[~out.positive]) == 0 and not out.masks[~out.positive].any()


def test_positive_slices_equal_plain_inference_exactly():
    segmenter = CRNet(CRNetConfig(num_classes=1, **TINY))
    images = stack([0, 1, 1, 0, 1])
    for tta in (False, True):
        out = gated_predict(segmenter, BrightIsCovid(), images, SIZE, "cpu", tta=tta)
        probs, masks = predict(segmenter, images[out.positive], SIZE, "cpu", tta=tta)
        assert torch.equal(out.probs[out.positive], probs) and torch.equal(out.masks[out.positive], masks)


def test_outputs_are_at_the_input_resolution():
    segmenter = CRNet(CRNetConfig(num_classes=3, **TINY))
    out = gated_predict(segmenter, BrightIsCovid(), stack([1, 0, 1]), SIZE, "cpu", tta=False)
    assert isinstance(out, GatedPrediction)
    assert out.probs.shape == out.masks.shape == (3, 3, 64, 48) and out.masks.dtype == torch.bool
    assert out.p_covid.shape == out.positive.shape == (3,) and out.positive.dtype == torch.bool
    assert 0 <= float(out.p_covid.min()) and float(out.p_covid.max()) <= 1


def test_threshold_zero_segments_everything_and_above_one_nothing():
    segmenter = CRNet(CRNetConfig(num_classes=1, **TINY))
    classifier = EncoderClassifier(segmenter.coarse.encoder)  # the paper's classifier: the segmenter's encoder
    images = stack([1, 0, 1, 0])
    everything = gated_predict(segmenter, classifier, images, SIZE, "cpu", tta=False, threshold=0.0)
    probs, masks = predict(segmenter, images, SIZE, "cpu", tta=False)
    assert everything.positive.all()
    assert torch.equal(everything.probs, probs) and torch.equal(everything.masks, masks)

    seen = record_inputs(segmenter.refine)  # the segmenter's own tail: the encoder also runs in the classifier
    nothing = gated_predict(segmenter, classifier, images, SIZE, "cpu", tta=False, threshold=1.01)
    assert not seen and not nothing.positive.any() and nothing.n_skipped == 4
    assert torch.count_nonzero(nothing.probs) == 0 and nothing.probs.shape == (4, 1, 64, 48)


def test_the_classifier_reads_its_own_input_size():
    classifier = BrightIsCovid()
    gated_predict(CRNet(CRNetConfig(**TINY)), classifier, stack([1, 0]), SIZE, "cpu", tta=False, classifier_size=32)
    assert classifier.sizes == [(32, 32)]


@pytest.mark.parametrize("images", [torch.rand(2, 64, 64), torch.rand(2, 3, 64, 64), torch.rand(0, 1, 64, 64)])
def test_images_not_a_stack_of_one_channel_slices_are_refused(images):
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        gated_predict(CRNet(CRNetConfig(**TINY)), BrightIsCovid(), images, SIZE, "cpu")


def test_a_classifier_without_two_logits_is_refused():
    one_logit = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 1))
    with pytest.raises(ValueError, match="C >= 2"):
        gated_predict(CRNet(CRNetConfig(**TINY)), one_logit, stack([1]), SIZE, "cpu")


def test_bench_gate_reports_times_skips_and_the_dice_gating_lost():
    segmenter = CRNet(CRNetConfig(num_classes=1, **TINY))
    images = stack([1, 0, 1, 0])
    masks = torch.ones(4, 1, 64, 48, dtype=torch.bool)  # lesion everywhere: the gate can only lose Dice
    with torch.no_grad():
        segmenter.coarse.head.bias.fill_(5.0)  # predicts lesion almost everywhere
    r = bench_gate(segmenter, BrightIsCovid(), images, [1, 1, 0, 0], SIZE, "cpu", tta=False, repeats=1, warmup=0,
                   masks=masks, verbose=False)
    assert r["plain_s"] > 0 and r["gated_s"] > 0 and r["speedup"] == pytest.approx(r["plain_s"] / r["gated_s"])
    assert (r["n_slices"], r["n_segmented"]) == (4, 2)
    assert r["negatives_skipped"] == 0.5 and r["positives_skipped"] == 0.5  # slices 1 (a lesion slice) and 3
    assert r["dice_plain"][0] > r["dice_gated"][0] and r["dice_lost"][0] == pytest.approx(
        r["dice_plain"][0] - r["dice_gated"][0])
    no_negatives = bench_gate(segmenter, BrightIsCovid(), images, [1, 1, 1, 1], SIZE, "cpu", tta=False, repeats=1,
                              warmup=0, verbose=False)
    assert no_negatives["negatives_skipped"] is None and "dice_plain" not in no_negatives


@pytest.mark.parametrize("labels, masks, message", [
    ([1, 0, 1], None, "one 0/1 value per slice"),
    ([1, 0, 2, 1], None, "0 .* or 1"),
    ([1, 0, 1, 0], torch.ones(4, 1, 32, 32), "masks must be"),
])
def test_bench_gate_refuses_labels_or_masks_that_do_not_fit_the_stack(labels, masks, message):
    with pytest.raises(ValueError, match=message):
        bench_gate(CRNet(CRNetConfig(**TINY)), BrightIsCovid(), stack([1, 0, 1, 0]), labels, SIZE, "cpu",
                   masks=masks, verbose=False)


@pytest.mark.parametrize("threshold", ["0.5", float("nan"), True])
def test_a_threshold_that_is_not_a_number_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold must be a number"):
        gated_predict(CRNet(CRNetConfig(**TINY)), BrightIsCovid(), stack([1]), SIZE, "cpu", threshold=threshold)


def test_predict_files_shows_the_classifier_each_slice_as_its_training_set_read_it(tmp_path):
    import numpy as np
    from conftest import write_rows
    from PIL import Image

    from crlearn.data.slices import ClassificationDataset
    from crlearn.tasks.gate import area_rows, predict_files

    (tmp_path / "images").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "images" / "s1.png")  # 40 x 30: pad and stretch differ
    write_rows(tmp_path / "index.csv", [{"slice_id": "s1", "label": "covid", "group": "g"}],
               ["slice_id", "label", "group"])
    read_as = dict(size=32, fit="pad", normalize="equalize")
    classifier = BrightIsCovid()
    seen = record_inputs(classifier)
    segmenter = CRNet(CRNetConfig(num_classes=1, **TINY))
    [pred] = predict_files([tmp_path / "images" / "s1.png"], segmenter, SIZE, "standardize", classifier, read_as,
                           threshold=1.01, device="cpu", tta=False)  # above 1: no slice is segmented
    assert torch.equal(seen[0], ClassificationDataset(tmp_path, **read_as).images)  # (1, 1, 32, 32), padded
    assert not pred.segmented and not pred.masks.any() and pred.masks.shape == (1, 1, 30, 40)
    assert pred.title == f"s1, not segmented (P(COVID)={pred.p_covid:.2f})"
    [row] = area_rows([pred], ["infection"])
    assert (row["pixels"], row["segmented"], row["p_covid"]) == (0, False, round(pred.p_covid, 4))

    [plain] = predict_files([tmp_path / "images" / "s1.png"], segmenter, SIZE, "standardize", device="cpu", tta=False)
    expected = predict(segmenter, normalize_intensity(plain.image, "standardize"), SIZE, "cpu", tta=False)[1]
    assert plain.p_covid is None and plain.segmented and torch.equal(plain.masks, expected)
    assert "p_covid" not in area_rows([plain], ["infection"])[0] and plain.title == "s1"
    with pytest.raises(ValueError, match="needs its checkpoint"):
        predict_files([tmp_path / "images" / "s1.png"], segmenter, SIZE, classifier=classifier)


def test_classifier_images_of_another_length_are_refused():
    with pytest.raises(ValueError, match="same 2 slices"):
        gated_predict(CRNet(CRNetConfig(**TINY)), BrightIsCovid(), stack([1, 0]), SIZE, "cpu",
                      classifier_images=stack([1]))


def test_cli_predict_gates_at_the_classifiers_chosen_threshold_unless_told(tmp_path, capsys):
    import copy
    import math

    import numpy as np
    from PIL import Image

    from crlearn.cli.main import main
    from crlearn.tasks.classifier import save_classifier
    from crlearn.training.checkpoint import save_checkpoint
    from crlearn.training.config import TrainConfig

    segmenter = CRNet(CRNetConfig(num_classes=1, **TINY))
    save_checkpoint(tmp_path / "seg.pt", segmenter, ["infection"], TrainConfig(size=SIZE))
    classifier = EncoderClassifier(copy.deepcopy(segmenter.coarse.encoder))
    with torch.no_grad():  # P(COVID) = 0.6 on every slice
        classifier.head.weight.zero_()
        classifier.head.bias.copy_(torch.tensor([0.0, math.log(0.6 / 0.4)]))
    save_classifier(tmp_path / "cls.pt", classifier, "frozen", size=32, fit="pad", normalize="none", threshold=0.7)
    image = tmp_path / "s1.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(image)
    for extra, expected in (([], "at P(COVID) >= 0.7: 0 segmented"), (["--threshold", "0.5"], ">= 0.5: 1 segmented")):
        out = tmp_path / f"pred{len(extra)}"
        assert main(["predict", "--checkpoint", str(tmp_path / "seg.pt"), str(image), "--no-tta", "--classifier",
                     str(tmp_path / "cls.pt"), "--out", str(out), *extra]) == 0
        assert expected in capsys.readouterr().out
