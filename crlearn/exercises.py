"""The notebooks' check-yourself exercises: ``check("02.1", answer)`` says whether an answer is right.

Each notebook ends with a few exercises, in the style of d2l: experiments described in words, and check-yourself
questions whose answer cell starts as ``answer = None``. :func:`check` prints ``"<id>: not answered yet"`` for
``None`` (so the stored notebooks run unchanged), raises ``AssertionError`` with a hint for a wrong answer, and prints
``"<id>: correct"`` for a right one.

No expected value is written down, here or in a notebook: each checker in :data:`EXERCISES` recomputes it with the
library, from the inputs the notebook uses, so a reader cannot copy it and a change to the library moves it too.
Worked answers are in ``notebooks/solutions/``; the tests run them through the same checks, so a wrong solution fails.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from crlearn.tasks.ablation import paired_differences
from crlearn.data.augment import AUGMENTATIONS
from crlearn.nn.blocks import SEBlock, effective_receptive_field
from crlearn.tasks.classifier import occlusion_map
from crlearn.tasks.burden import group_areas, percent
from crlearn.data.folder import SegmentationDataset, default_data_dir, scan_folder
from crlearn.nn.encoder import SEResNet34Encoder
from crlearn.losses import iou_loss
from crlearn.metrics import hd95, ratios_from_counts
from crlearn.nn.model import CRNet, CRNetConfig
from crlearn.training.config import PROFILES
from crlearn.nn.refine import RefineModule
from crlearn.tasks.lung_field import ct_score_band, lesion_ratio
from crlearn.data.splits import split_by_group
from crlearn.data.volumes import Volume
from crlearn.data.windowing import LUNG, MEDIASTINAL, window


def check(exercise_id: str, answer: Any) -> None:
    """Check a notebook exercise's answer: ``None`` -> "not answered yet"; wrong -> ``AssertionError``; right ->
    "correct". ``exercise_id`` is ``"NN.k"``, the notebook's number and the question's (see :data:`EXERCISES`)."""
    if exercise_id not in EXERCISES:
        raise KeyError(f"no exercise {exercise_id!r}; the exercises are {sorted(EXERCISES)}")
    if answer is None:
        print(f"{exercise_id}: not answered yet")
        return
    with torch.random.fork_rng(devices=[]):  # a checker never moves the notebook's random numbers
        try:
            EXERCISES[exercise_id](answer)
        except AssertionError as err:
            raise AssertionError(f"{exercise_id}: {err}") from None
    print(f"{exercise_id}: correct")


# ----------------------------------------------------------------------------- comparing answers


def _number(answer: Any) -> float:
    """The answer as a float; ``AssertionError`` if it is not one number (a string, a bool, a list...)."""
    if isinstance(answer, (str, bytes, bool)):
        raise AssertionError(f"expected a number, got {answer!r}")
    try:
        return float(answer)
    except Exception:  # noqa: BLE001 (a list, a tensor of several values, ...)
        raise AssertionError(f"expected a number, got {answer!r}") from None


def _expect(answer: Any, truth: float, hint: str, tol: float = 0.0) -> None:
    """Raise ``AssertionError`` unless ``answer`` is a number within ``tol`` of ``truth``; the message gives ``hint``,
    never ``truth``. (An explicit raise, not ``assert``: ``python -O`` must not pass every answer.)"""
    if not abs(_number(answer) - truth) <= tol:
        raise AssertionError(f"not quite. Hint: {hint}")


def _pair(answer: Any, what: str) -> tuple[Any, Any]:
    """The two parts of an answer that is a pair, e.g. ``(ratio, score)``."""
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        raise AssertionError(f"expected a pair {what}, got {answer!r}")
    return answer[0], answer[1]


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _taps_inside(rate: int, side: int) -> int:
    """Taps of a 3x3 convolution at ``rate`` around the centre pixel ``side // 2`` that fall inside a square map."""
    conv = nn.Conv2d(1, 1, 3, padding=rate, dilation=rate, bias=False)
    nn.init.ones_(conv.weight)
    return int((effective_receptive_field(conv, torch.ones(1, 1, side, side)) > 0).sum())


def _largest_full_rate(side: int) -> int:
    """The largest atrous rate whose nine taps all fall inside a ``side`` x ``side`` map, around its centre pixel."""
    return max(r for r in range(1, side + 1) if _taps_inside(r, side) == 9)


def _augmented_samples(seed: int) -> int:
    """Samples in one training epoch on the bundled MedSeg set: the 70/10/20 split's training slices (``seed``)
    times the x5 views."""
    groups = [r.group for r in scan_folder(default_data_dir())]
    return len(split_by_group(groups, (0.7, 0.1, 0.2), seed=seed)["train"]) * len(AUGMENTATIONS)


# ----------------------------------------------------------------------------- 00 setup and data


def augmented_epoch(answer: Any) -> None:
    """00.1: samples in one epoch of the training part (70/10/20 split, seed 0) with the x5 augmentation."""
    _expect(answer, _augmented_samples(seed=0), "slices in the training part times the views of each slice")


def effusion_weight(answer: Any) -> None:
    """00.2: inverse-frequency weight of effusion relative to GGO: GGO pixels / effusion pixels (to +-0.5)."""
    ds = SegmentationDataset(default_data_dir())
    px = sum(ds.one_hot(ds.labels[i]).sum((1, 2)) for i in range(len(ds)))  # pixels per class
    ggo, effusion = (float(px[ds.class_names.index(c)]) for c in ("ggo", "effusion"))
    _expect(answer, ggo / effusion, "divide the GGO pixel count by the effusion pixel count (section 5)", tol=0.5)


# ----------------------------------------------------------------------------- 01 SE-res block


def se_parameters(answer: Any) -> None:
    """01.1: parameters of ``SEBlock(96, reduction=8)``."""
    _expect(answer, _n_params(SEBlock(96, reduction=8)),
            "fc1 is a 1x1 convolution from 96 to 96 / 8 channels with a bias, fc2 goes back to 96 with a bias")


def shortcut_parameters(answer: Any) -> None:
    """01.2: parameters of the down-sampling shortcut of ``encoder.layer2[0]`` at full width."""
    with torch.device("meta"):
        shortcut = SEResNet34Encoder(in_channels=1, width=1.0).layer2[0].downsample
    _expect(answer, _n_params(shortcut), "a 1x1 convolution from 64 to 128 channels without bias, then a "
            "BatchNorm with a weight and a bias per channel (running statistics are buffers, not parameters)")


# ----------------------------------------------------------------------------- 02 ASPP


def largest_rate_at_512(answer: Any) -> None:
    """02.1: the largest atrous rate whose nine taps all fit around the centre (8, 8) of the 16 x 16 map."""
    _expect(answer, _largest_full_rate(16), "the taps sit at 8 - r, 8 and 8 + r; all must lie in 0..15")


def stacked_atrous_pixels(answer: Any) -> None:
    """02.2: input pixels the centre output sees through a rate-3 then a rate-6 3x3 convolution."""
    convs = nn.Sequential(*(nn.Conv2d(1, 1, 3, padding=r, dilation=r, bias=False) for r in (3, 6)))
    for conv in convs:
        nn.init.ones_(conv.weight)
    seen = int((effective_receptive_field(convs, torch.ones(1, 1, 41, 41)) > 0).sum())
    _expect(answer, seen, "along one axis the first layer's offsets are -3, 0, 3 and the second adds -6, 0 or 6: "
            "list the distinct sums, then square their count")


# ----------------------------------------------------------------------------- 03 coarse module


def skip_weights(answer: Any) -> None:
    """03.1: weights of the full coarse module's ``decoder1`` first convolution that read the skip (the stem)."""
    with torch.device("meta"):
        coarse = CRNet(CRNetConfig.full(variant="unet_aspp")).coarse
    conv, c_skip = coarse.decoder1.convs[0][0], coarse.encoder.out_channels[0]
    reads_skip = conv.weight[:, conv.in_channels - c_skip:].numel()  # the skip is concatenated last
    _expect(answer, reads_skip, "output channels x skip channels x 3 x 3; the skip is the stem's feature")


def largest_side_accepted(answer: Any) -> None:
    """03.2: the largest square side of at most 630 px that ``CRNet`` accepts."""
    with torch.device("meta"):
        net = CRNet(CRNetConfig(width=0.125))

    def accepted(side: int) -> bool:
        try:
            net._check_input(torch.empty(1, 1, side, side, device="meta"))
        except ValueError:
            return False
        return True

    _expect(answer, max(s for s in range(1, 631) if accepted(s)), "the encoder halves the side five times")


# ----------------------------------------------------------------------------- 04 refinement module


def refine_bridge_at_512(answer: Any) -> None:
    """04.1: (side of the map the refinement module's ASPP sees at 512 px, largest rate whose taps all fit)."""
    side, rate = _pair(answer, "(side, rate)")
    module, seen = RefineModule(num_classes=1, channels=1).eval(), {}
    module.bridge.register_forward_hook(lambda m, i, out: seen.update(side=out.shape[-1]))
    with torch.no_grad():
        module(torch.zeros(1, 1, 512, 512))
    _expect(side, seen["side"], "each of the four encoder stages of the module halves the side")
    _expect(rate, _largest_full_rate(seen["side"]),
            "the centre pixel is side // 2; the taps at centre - r and centre + r must lie in 0..side - 1")


def refine_extra_parameters(answer: Any) -> None:
    """04.2: parameters the paper's refinement module (64 channels) gains for 3 classes instead of 1."""
    with torch.device("meta"):
        extra = _n_params(RefineModule(num_classes=3)) - _n_params(RefineModule(num_classes=1))
    _expect(answer, extra, "only conv_in (K -> 64, 3x3, bias) and conv_out (64 -> K, 3x3, bias) depend on K")


# ----------------------------------------------------------------------------- 05 hybrid loss


def partial_lesion_iou(answer: Any) -> None:
    """05.1: IoU loss (eps = 1) of a 4-pixel lesion predicted at probability 1 on 2 of its pixels, 0 elsewhere."""
    target, probs = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    target[..., 0, :] = 1.0  # the lesion: the top row, 4 pixels
    probs[..., 0, :2] = 1.0  # predicted: 2 of them
    _expect(answer, float(iou_loss(probs, target)), "I is the overlap; U counts every pixel that is predicted or "
            "true once; the loss is 1 - (I + 1) / (U + 1)", tol=1e-4)


def pixels_for_iou_loss(answer: Any) -> None:
    """05.2: false-positive pixels (probability 1) on an empty mask that make the IoU loss 0.9."""
    a = _number(answer)
    if not (math.isfinite(a) and a == int(a) and 0 <= a <= 256):
        raise AssertionError(f"expected a whole number of pixels between 0 and 256, got {answer!r}")
    probs = torch.zeros(1, 1, 16, 16)
    probs.view(-1)[: int(a)] = 1.0
    loss = float(iou_loss(probs, torch.zeros(1, 1, 16, 16)))
    _expect(loss, 0.9, "with an empty mask the loss is A / (A + 1); solve for A", tol=1e-5)


# ----------------------------------------------------------------------------- 06 metrics


def per_slice_with_an_empty_slice(answer: Any) -> None:
    """06.1: per-slice mean Dice of nine slices at Dice 0.9 and one lesion-free slice with one false-positive pixel."""
    tp, fp, fn = (torch.tensor([9.0] * 9 + [a]) for a in (0.0, 1.0, 0.0))  # Dice 18 / 20 = 0.9 on the nine
    fp[:9], fn[:9] = 1.0, 1.0
    dice = ratios_from_counts(tp, fp, fn)["dice"]
    _expect(answer, float(dice.mean()), "the empty slice with a false positive scores 0, not 1; then average the "
            "ten slice scores", tol=1e-3)


def hd95_of_a_shift(answer: Any) -> None:
    """06.2: HD95 (pixels) of a 10 x 10 square against the same square shifted 3 pixels to the right."""
    target = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    target[..., 10:20, 10:20] = True
    pred = torch.roll(target, 3, dims=-1)
    _expect(answer, float(hd95(pred, target).flatten()[0]), "every boundary pixel of one square lies within the "
            "shift of the other's boundary; which distances are the largest?", tol=1e-6)


# ----------------------------------------------------------------------------- 07 training


def one_cycle_steps(answer: Any) -> None:
    """07.1: optimiser steps the quick profile's one-cycle schedule spans (seed-0 split, x5 views, batch 8)."""
    cfg = PROFILES["quick"].train_config()
    samples = _augmented_samples(cfg.seed)
    _expect(answer, cfg.epochs * math.ceil(samples / cfg.batch_size), "epochs times the batches of one epoch; "
            "an epoch's last batch may be short but is still a step")


def pooled_two_slices(answer: Any) -> None:
    """07.2: pooled Dice of slice A (TP 900, FP 100, FN 100) and slice B (TP 0, FP 50, FN 150)."""
    dice = ratios_from_counts(torch.tensor(900.0 + 0), torch.tensor(100.0 + 50), torch.tensor(100.0 + 150))["dice"]
    _expect(answer, float(dice), "add the counts of both slices first, then take 2 TP / (2 TP + FP + FN) once",
            tol=1e-3)


# ----------------------------------------------------------------------------- 08 ablation


def aspp_at_128(answer: Any) -> None:
    """08.1: (side of the map the coarse ASPP sees at 128 px, taps of a rate-6 3x3 convolution inside it around
    its centre pixel)."""
    side, taps = _pair(answer, "(side, taps)")
    with torch.device("meta"):  # shapes only, no memory
        true_side = SEResNet34Encoder(in_channels=1, width=0.25)(torch.zeros(1, 1, 128, 128))[-1].shape[-1]
    _expect(side, true_side, "the encoder halves the side five times")
    _expect(taps, _taps_inside(6, true_side), "the taps sit at c - 6, c and c + 6 in each direction")


def paired_mean_and_wins(answer: Any) -> None:
    """08.2: (mean paired Dice difference b - a, folds where b wins) for a = 0.60, 0.70, 0.50; b = 0.62, 0.69, 0.56."""
    mean, wins = _pair(answer, "(mean difference, folds improved)")
    rows = [{"label": k, "folds": [{"dice": d} for d in v]} for k, v in
            (("a", (0.60, 0.70, 0.50)), ("b", (0.62, 0.69, 0.56)))]
    p = paired_differences({"rows": rows})[0]
    _expect(mean, p["mean"], "subtract fold by fold, then average the three differences", tol=1e-3)
    _expect(wins, p["wins"], "count the folds where b's Dice is higher than a's")


# ----------------------------------------------------------------------------- 10 classifier


def any_slice_false_alarm(answer: Any) -> None:
    """10.1: P(a healthy 30-slice patient is called positive by the any-slice rule), 2 % false positives per slice,
    independent slices."""
    _expect(answer, 1 - (1 - 0.02) ** 30, "the patient is negative only if every one of the 30 slices is", tol=1e-3)


def occlusion_forward_passes(answer: Any) -> None:
    """10.2: occluded copies ``occlusion_map`` evaluates for a 128 x 128 slice, patch 16, stride 8."""
    seen = []

    class Count(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(x))
            return torch.zeros(len(x), 2)

    occlusion_map(Count(), torch.zeros(1, 128, 128), patch=16, stride=8)
    _expect(answer, sum(seen) - 1, "positions 0, 8, ... up to 128 - 16 along each axis; one copy per position "
            "(the unoccluded slice is not a copy)")


# ----------------------------------------------------------------------------- 09 lesion burden


def union_ratio_and_band(answer: Any) -> None:
    """09.1: (infection ratio, illustrative score) of 3,000 GGO and 1,200 consolidation pixels, 200 shared, in a
    40,000-pixel lung field."""
    ratio, score = _pair(answer, "(ratio, score)")
    lung = torch.ones(200, 200, dtype=torch.bool)  # a 40,000-pixel lung field
    lesion = torch.zeros(2, 200, 200, dtype=torch.bool)
    lesion[0].view(-1)[:3000] = True  # 3,000 GGO pixels
    lesion[1].view(-1)[2800:4000] = True  # 1,200 consolidation pixels, 200 of them GGO too
    truth = float(lesion_ratio(lesion, lung)[-1])
    _expect(ratio, truth, "the infection is the union of the classes: count the shared pixels once", tol=1e-6)
    _expect(score, ct_score_band(truth)[0], "look the ratio up in CT_SCORE_BANDS (section 8)")


def pooled_patient_percent(answer: Any) -> None:
    """09.2: a patient's infection ratio in percent, pooled over slices (1,000 / 10,000 and 300 / 30,000 px)."""
    _, lesion_px, lung_px = group_areas([1000, 300], [10_000, 30_000], ["p", "p"])["p"]
    _expect(answer, float(percent(lesion_px, lung_px)), "crlearn.tasks.burden adds up the patient's pixels over its "
            "slices before it divides; it does not average the slice ratios", tol=0.005)


# ----------------------------------------------------------------------------- 11 CT volumes


def lesion_millilitres(answer: Any) -> None:
    """11.1: millilitres of 20,000 lesion voxels of 0.7 x 0.7 x 1.25 mm (rows, columns, slices)."""
    voxel_ml = Volume(np.zeros((1, 1, 1), np.float32), (1.25, 0.7, 0.7)).voxel_ml
    _expect(answer, 20_000 * voxel_ml, "a voxel's volume is the product of its three sides in mm³, and 1 mL is "
            "1,000 mm³", tol=1e-3)


def ground_glass_grey_levels(answer: Any) -> None:
    """11.2: the grey level in [0, 1] of ground glass at -450 HU in the lung window, then in the mediastinal window."""
    lung, mediastinal = _pair(answer, "(lung window, mediastinal window)")
    _expect(lung, float(window(-450.0, *LUNG)), "level - width / 2 maps to 0 and level + width / 2 to 1", tol=1e-3)
    _expect(mediastinal, float(window(-450.0, *MEDIASTINAL)), "the mediastinal window starts at 40 - 400 / 2 HU; "
            "anything below it is black", tol=1e-3)


EXERCISES: dict[str, Callable[[Any], None]] = {
    "00.1": augmented_epoch,
    "00.2": effusion_weight,
    "01.1": se_parameters,
    "01.2": shortcut_parameters,
    "02.1": largest_rate_at_512,
    "02.2": stacked_atrous_pixels,
    "03.1": skip_weights,
    "03.2": largest_side_accepted,
    "04.1": refine_bridge_at_512,
    "04.2": refine_extra_parameters,
    "05.1": partial_lesion_iou,
    "05.2": pixels_for_iou_loss,
    "06.1": per_slice_with_an_empty_slice,
    "06.2": hd95_of_a_shift,
    "07.1": one_cycle_steps,
    "07.2": pooled_two_slices,
    "08.1": aspp_at_128,
    "08.2": paired_mean_and_wins,
    "09.1": union_ratio_and_band,
    "09.2": pooled_patient_percent,
    "10.1": any_slice_false_alarm,
    "10.2": occlusion_forward_passes,
    "11.1": lesion_millilitres,
    "11.2": ground_glass_grey_levels,
}
"""Exercise id ("NN.k": notebook NN, question k) -> checker, which raises ``AssertionError`` with a hint when the
answer is wrong. One short function each."""
