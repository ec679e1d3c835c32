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
import torch.nn.functional as F
from torch import Tensor, nn

from crlearn.tasks.ablation import paired_differences
from crlearn.data.augment import AUGMENTATIONS
from crlearn.nn.blocks import ASPP, SEBlock, effective_receptive_field
from crlearn.tasks.classifier import occlusion_map
from crlearn.tasks.burden import group_areas, percent
from crlearn.data.folder import SegmentationDataset, default_data_dir, scan_folder
from crlearn.nn.encoder import SEResNet34Encoder
from crlearn.losses import iou_loss
from crlearn.metrics import SEG_METRICS, hd95, ratios_from_counts
from crlearn.nn.model import CRNet, CRNetConfig
from crlearn.training.config import PROFILES
from crlearn.nn.refine import RefineModule
from crlearn.nn.unetpp import NestedNode
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


# ----------------------------------------------------------------------------- implement-it answers (functions)


def _function(answer: Any, signature: str) -> Callable[..., Any]:
    """The answer as a function; ``AssertionError`` if it is a number, a string, a class... rather than a function."""
    if not callable(answer) or isinstance(answer, type):
        raise AssertionError(f"expected a function {signature}, got {answer!r}")
    return answer


def _run(fn: Callable[..., Any], *args: Any, hint: str = "call it on the example in the notebook and read the "
         "traceback") -> Any:
    """Call the student's function without gradients; its exception becomes an ``AssertionError`` with ``hint``."""
    try:
        with torch.no_grad():
            return fn(*args)
    except Exception as err:  # noqa: BLE001 (any bug in the student's code is a wrong answer, explained)
        raise AssertionError(f"your function raised {type(err).__name__}: {err}. Hint: {hint}") from None


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    """``module`` in eval mode with every parameter drawn from a local generator (the global one is not used)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
    return module.eval()


def _randn(seed: int, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _same_tensor(out: Any, truth: Tensor, mistakes: dict[str, Tensor], shape_hint: str, hint: str) -> None:
    """Raise ``AssertionError`` unless ``out`` is a tensor of ``truth``'s shape and values (to float32 rounding).
    A wrong answer gets the hint of the first known mistake it reproduces, the factor it is off by, or ``hint``."""
    if not isinstance(out, Tensor):
        raise AssertionError(f"expected your function to return a tensor, got {type(out).__name__}")
    if tuple(out.shape) != tuple(truth.shape):
        raise AssertionError(f"the result has shape {tuple(out.shape)}, not {tuple(truth.shape)}. Hint: {shape_hint}")

    def close(a: Tensor, b: Tensor) -> bool:
        return tuple(a.shape) == tuple(b.shape) and torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-5)

    if close(out, truth):
        return
    known = next((h for h, wrong in mistakes.items() if close(out, wrong)), None)
    big = truth.abs() > 1e-3
    ratio = out.double()[big] / truth.double()[big]
    if known is None and big.any() and bool((ratio - ratio.mean()).abs().max() < 1e-4 * ratio.mean().abs()):
        known = f"the result is off by a constant factor of {float(ratio.mean()):.4g}; {hint}"
    raise AssertionError(f"not quite. Hint: {known or hint}")


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


def se_forward(answer: Any) -> None:
    """01.3: a function ``(x, w1, b1, w2, b2) -> SE output`` from the weights and biases of ``fc1`` and ``fc2``,
    compared with :class:`SEBlock` on random inputs and weights."""
    fn = _function(answer, "se_forward(x, w1, b1, w2, b2)")
    for seed, (b, c, r, h, w) in enumerate(((2, 16, 4, 5, 7), (1, 32, 8, 3, 3), (3, 8, 16, 4, 6))):
        se, x = _seeded(SEBlock(c, r), seed), _randn(100 + seed, b, c, h, w)
        with torch.no_grad():
            s = F.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1)
            truth = se(x)
            mistakes = {
                "the excitation ends with a sigmoid, so that every channel weight lies in (0, 1)":
                    x * se.fc2(F.relu(se.fc1(s))),
                "a ReLU sits between fc1 and fc2": x * torch.sigmoid(se.fc2(se.fc1(s))),
                "fc1 and fc2 add their biases b1 and b2":
                    x * torch.sigmoid(F.conv2d(F.relu(F.conv2d(s, se.fc1.weight)), se.fc2.weight)),
                "squeeze each channel to its mean (global average pooling), not its maximum":
                    x * torch.sigmoid(se.fc2(F.relu(se.fc1(x.amax((2, 3), keepdim=True))))),
            }
        weights = [t.detach().clone() for t in (se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias)]
        out = _run(fn, x.clone(), *weights)
        _same_tensor(out, truth, mistakes, "the block rescales x: the output has x's shape (B, C, H, W); the "
                     "weights (B, C, 1, 1) broadcast over H and W", "squeeze (mean over H, W), fc1, ReLU, fc2, "
                     "sigmoid, then multiply x by the result; w1 is (C/r, C, 1, 1): a 1x1 convolution on a 1x1 "
                     "map is a matrix product")


# ----------------------------------------------------------------------------- 02 ASPP


def _aspp_with(aspp: ASPP, x: Tensor, pooled: Tensor) -> Tensor:
    """The ASPP's output on ``x`` with ``pooled`` (B, Cb, 1, 1) or (B, Cb, H, W) in place of its image-pooling branch."""
    feats = [branch(x) for branch in aspp.branches] + [pooled.float().expand(-1, -1, *x.shape[-2:])]
    return aspp.project(torch.cat(feats, dim=1))


def aspp_image_pooling(answer: Any) -> None:
    """02.1: a function ``(x, pool_conv) -> (B, Cb, H, W)``, the image-pooling branch; right if :class:`ASPP`'s
    output is unchanged when the student's branch replaces its own."""
    fn = _function(answer, "image_pooling(x, pool_conv)")
    for seed, (b, c, h, w) in enumerate(((2, 6, 5, 7), (1, 8, 4, 4), (3, 4, 9, 6))):
        aspp, x = _seeded(ASPP(c, 5, rates=(1, 2), branch_channels=3), seed), _randn(200 + seed, b, c, h, w)
        out = _run(fn, x.clone(), aspp.pool_conv)
        if not isinstance(out, Tensor) or tuple(out.shape) != (b, 3, h, w):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise AssertionError(f"the branch returned {got}, not (B, Cb, H, W) = {(b, 3, h, w)}. Hint: one value "
                                 "per image and channel, copied to every pixel (expand the (B, Cb, 1, 1) map)")
        with torch.no_grad():
            truth, mine = aspp(x), _aspp_with(aspp, x, out)
            mistakes = {
                "the branch ends with a ReLU (and has no BatchNorm)":
                    _aspp_with(aspp, x, aspp.pool_conv(F.adaptive_avg_pool2d(x, 1))),
                "image pooling averages each channel over the whole map; it does not take the maximum":
                    _aspp_with(aspp, x, F.relu(aspp.pool_conv(x.amax((2, 3), keepdim=True)))),
            }
        _same_tensor(mine, truth, mistakes, "", "global average pool, the 1x1 convolution (with its bias), ReLU, "
                     "then copy to every pixel")


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


def _ratio_hint(name: str, value: float, counts: tuple[np.ndarray, ...]) -> str:
    """Why a pooled ratio ``name`` is wrong, judged from the value it has (06.3)."""
    per_slice = ratios_from_counts(*(torch.as_tensor(c) for c in counts))[name].mean()
    tp, fp, fn = (float(c.sum()) for c in counts)
    if not math.isfinite(value):
        return (f"{name} divides by zero here (nothing predicted, or nothing true); crlearn's rule scores 0 / 0 as 0, "
                "and 1 only when TP, FP and FN are all 0 (section 4)")
    if abs(value - float(per_slice)) <= 1e-6:
        return f"{name} is the mean of the slices' ratios: add each count over the slices first, then divide once"
    if name == "dice" and tp + fp + fn and abs(value - tp / (tp + fp + fn)) <= 1e-6:
        return "that is IoU; Dice counts TP twice: 2 TP / (2 TP + FP + FN)"
    if name in ("precision", "recall") and abs(value - tp / max(tp + (fn if name == "precision" else fp), 1)) <= 1e-6:
        return "precision divides TP by what was predicted (TP + FP), recall by what is true (TP + FN)"
    return f"{name} is off: Eq. 2-5 of the paper, on the counts summed over the slices"


def pooled_scores(answer: Any) -> None:
    """06.3: a function ``(tp, fp, fn) -> {"dice", "iou", "precision", "recall"}``, pooled over per-slice count
    arrays; compared with :func:`crlearn.metrics.ratios_from_counts`."""
    fn = _function(answer, "pooled_scores(tp, fp, fn)")
    rng = np.random.default_rng(6)
    cases = [tuple(rng.integers(0, 500, size=(3, n))) for n in (8, 3, 12)]
    cases.append((np.zeros(3, np.int64), np.zeros(3, np.int64), np.array([40, 0, 15])))  # nothing predicted
    for counts in cases:
        got = _run(fn, *(c.copy() for c in counts), hint="a denominator can be 0 (nothing predicted, or nothing "
                   "true): crlearn's rule scores 0 / 0 as 0, and 1 only when TP, FP and FN are all 0 (section 4)")
        if not isinstance(got, dict) or sorted(got) != sorted(SEG_METRICS):
            raise AssertionError(f"expected a dict with the keys {list(SEG_METRICS)}, got {got!r}")
        truth = ratios_from_counts(*(torch.as_tensor(c.sum()) for c in counts))
        for name in SEG_METRICS:
            value = _number(got[name])
            if not abs(value - float(truth[name])) <= 1e-6:
                raise AssertionError(f"not quite. Hint: {_ratio_hint(name, value, counts)}")


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


# ----------------------------------------------------------------------------- 12 Table 4's baselines


def nested_node(answer: Any) -> None:
    """12.1: a function ``(same_level, below, conv) -> X^{i,j}``, compared with :class:`NestedNode` given its
    weights (``conv`` is the node's ``DoubleConv``) on random features, for columns j = 1, 2, 3."""
    fn = _function(answer, "nested_node(same_level, below, conv)")
    for seed, (j, ci, cb, side) in enumerate(((1, 4, 8, 8), (2, 4, 8, 6), (3, 3, 6, 10))):
        node = _seeded(NestedNode(j, ci, cb), seed)
        feats = _randn(300 + seed, j + 1, 2, ci + cb, side, side)  # slices of it: the inputs
        same, below = [f[:, :ci] for f in feats[:j]], feats[j][:, :cb, ::2, ::2]  # (2, C_i, s, s), (2, C_i+1, s/2, s/2)
        with torch.no_grad():
            truth = node(same, below)
            up = F.interpolate(below, size=(side, side), mode="bilinear", align_corners=False)
            mistakes = {
                "same-level features first (X^{i,0} ... X^{i,j-1}), the up-sampled one last":
                    node.conv(torch.cat([up, *same], dim=1)),
                "up-sample bilinearly (F.interpolate(..., mode='bilinear', align_corners=False)), not to the "
                "nearest pixel": node.conv(torch.cat([*same, F.interpolate(below, size=(side, side))], dim=1)),
                "align_corners=False, as UpBlock does": node.conv(torch.cat([*same, F.interpolate(
                    below, size=(side, side), mode="bilinear", align_corners=True)], dim=1)),
            }
        out = _run(fn, [t.clone() for t in same], below.clone(), node.conv)
        _same_tensor(out, truth, mistakes, "the node writes C_i channels at the same-level size",
                     "concatenate the j same-level features and Up(below) along the channels, then apply conv")


# ----------------------------------------------------------------------------- 13 distributed


def pooled_dice_over_ranks(answer: Any) -> None:
    """13.1: a function ``(rank_counts) -> Dice``: each rank's ``[TP, FP, FN]`` (int64, what ``validate`` hands to
    ``sum_over_ranks``) added over the ranks, then one Dice, as :func:`crlearn.training.engine.validate` reports it."""
    fn = _function(answer, "pooled_dice(rank_counts)")
    rng = np.random.default_rng(13)
    cases = [[torch.tensor([900, 60, 40]), torch.tensor([0, 0, 0])],  # rank 1: no lesion, nothing predicted
             [torch.tensor([2, 30, 25]), torch.tensor([1200, 90, 110])]]  # a small lesion missed, a large one found
    cases += [list(torch.as_tensor(rng.integers(1, 1000, size=(n, 3)))) for n in (2, 3)]
    for counts in cases:
        truth = float(ratios_from_counts(*torch.stack(counts).sum(0))["dice"])
        mean = float(torch.stack([ratios_from_counts(*c)["dice"] for c in counts]).mean())
        value = _number(_run(fn, [c.clone() for c in counts]))
        if abs(value - mean) <= 1e-6 and abs(truth - mean) > 0.01:
            raise AssertionError("not quite. Hint: that is the mean of the ranks' Dice, a mean of ratios: add the "
                                 "counts over the ranks first (what sum_over_ranks does), then divide once")
        _expect(value, truth, "stack the ranks' counts, sum them, then 2 TP / (2 TP + FP + FN)", tol=1e-6)


EXERCISES: dict[str, Callable[[Any], None]] = {
    "00.1": augmented_epoch,
    "00.2": effusion_weight,
    "01.1": se_parameters,
    "01.2": shortcut_parameters,
    "01.3": se_forward,
    "02.1": aspp_image_pooling,
    "02.2": stacked_atrous_pixels,
    "03.1": skip_weights,
    "03.2": largest_side_accepted,
    "04.1": refine_bridge_at_512,
    "04.2": refine_extra_parameters,
    "05.1": partial_lesion_iou,
    "05.2": pixels_for_iou_loss,
    "06.1": per_slice_with_an_empty_slice,
    "06.2": hd95_of_a_shift,
    "06.3": pooled_scores,
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
    "12.1": nested_node,
    "13.1": pooled_dice_over_ranks,
}
"""Exercise id ("NN.k": notebook NN, question k) -> checker, which raises ``AssertionError`` with a hint when the
answer is wrong. One short function each."""
