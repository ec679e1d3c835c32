"""Benchmarks (run them with ``crlearn bench model`` and ``crlearn bench ssim``).

``bench_model`` times one training step (forward, backward, fused Adam) of each CR-Net variant (Table 7 rows) side
by side with ``segmentation_models_pytorch.Unet("resnet34", encoder_weights=None)`` when that package is installed,
eagerly and by the faster routes of :mod:`crlearn.training.fastpath` (a CUDA graph, ``torch.compile``), and reports steps per
second and achieved TFLOP/s beside the GPU's dense bf16 peak, so that "slower" can be told apart from "does more
work" and both from the hardware's limit. ``bench_ssim`` times forward + backward of crlearn's SSIM loss (§2.7,
Eq. 1) against ``pytorch_msssim.ssim`` on the same inputs.

Both interleave the things they compare (A, B, C, A, B, C, ...: ``bench_model`` the modes of one model) and report
the median time, so that other load on the machine hits every contestant alike. ``segmentation_models_pytorch`` and
``pytorch_msssim`` are optional dependencies (``pip install 'crlearn[bench]'``). Measured results are in the README
("Speed") and ``results/``. ``bench_gate`` times inference on a stack of slices with and without the classifier
gate (:mod:`crlearn.tasks.gate`), interleaved too, and reports the fastest run of each (whole-stack runs are long, and load
only slows them down).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from crlearn.training.fastpath import STEP_MODES, TrainStep, graph_safe_autocast
from crlearn.tasks.gate import check_images, gated_predict
from crlearn.inference import predict
from crlearn.losses import ssim_loss
from crlearn.metrics import segmentation_scores
from crlearn.nn.model import VARIANTS, CRNet, CRNetConfig
from crlearn.training.device import pick_device
from crlearn.training.engine import cudnn_benchmark
from crlearn.training.perf import cpu_ssim_blur
from crlearn.report import markdown_table, peak_note, peak_tflops

__all__ = ["SMP_LABEL", "bench_gate", "bench_model", "bench_ssim", "bench_table", "count_flops"]

SMP_LABEL = "SMP U-Net (ResNet34)"
TABLE_HEADER = ("model", "mode", "size", "batch", "params", "step (ms)", "steps/s", "GFLOP / step", "TFLOP/s",
                "of peak", "time / SMP", "x eager")


# ----------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved_times(fns: Sequence[Callable[[], None]], device: torch.device, steps: int, warmup: int,
                       reduce: Callable[[list[float]], float] = statistics.median) -> list[float]:
    """Run ``fns`` in turn ``warmup + steps`` times; the median (or ``reduce``) wall time of each one's last
    ``steps`` runs."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got {steps} and {warmup}")
    times: list[list[float]] = [[] for _ in fns]
    for i in range(warmup + steps):
        for fn, t in zip(fns, times):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                t.append(time.perf_counter() - start)
    return [reduce(t) for t in times]


# ----------------------------------------------------------------------------- model step


def count_flops(fn: Callable[[], Any]) -> float:
    """The FLOPs ``fn()`` performs, counted by ``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix
    products, forward and backward, 2 per multiply-add (norms, activations and the optimiser are not counted)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def _smp_unet() -> nn.Module | None:
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return None
    return smp.Unet("resnet34", encoder_weights=None, in_channels=1, classes=1)


def _outputs(out: Any) -> list[Tensor]:
    """The logit maps a training step supervises: one for SMP/U-Net rows, two for CR-Net."""
    if isinstance(out, Tensor):
        return [out]
    return [out.coarse] if out.final is out.coarse else [out.coarse, out.final]


def _bench_loss(model: nn.Module, amp: bool) -> Callable[[Tensor, Tensor], Tensor]:
    """BCE on every supervised output (the same loss for every model), under bf16 autocast when ``amp``."""

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        with graph_safe_autocast(x.device, torch.bfloat16 if amp else None):
            return sum(F.binary_cross_entropy_with_logits(o.float(), y) for o in _outputs(model(x)))

    return loss_fn


class _Case:
    """One model at one input and batch size: fused Adam (as ``fit``), a fixed batch, its FLOPs per step, and a
    :class:`~crlearn.training.fastpath.TrainStep` per mode on that model and optimiser, compiled or captured before timing."""

    def __init__(self, model: nn.Module, size: int, batch_size: int, device: torch.device, channels_last: bool,
                 modes: Sequence[str]):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device=device, memory_format=fmt).train()
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch_size, 1, size, size, generator=gen).to(device, memory_format=fmt)
        self.y = (torch.rand(batch_size, 1, size, size, generator=gen) > 0.9).float().to(device)
        loss_fn = _bench_loss(self.model, device.type == "cuda")
        self.flops = count_flops(lambda: loss_fn(self.x, self.y).backward())  # one step: forward + backward
        self.steps = {mode: TrainStep(loss_fn, self.opt, mode=mode, warmup=1) for mode in modes}
        for mode, step in self.steps.items():
            for _ in range(0 if mode == "eager" else 3):  # warm-up, then capture (graph) or compile and record
                step(self.x, self.y)

    def timer(self, mode: str) -> Callable[[], None]:
        return lambda: self.steps[mode](self.x, self.y)

    def row(self, mode: str, step_s: float, eager_s: float | None, smp_s: float | None) -> dict:
        device = self.x.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        peak = peak_tflops(name) if device.type == "cuda" else None
        tflops = self.flops / 1e12 / step_s
        return {"mode": mode, "batch_size": len(self.x), "device": str(device), "device_name": name,
                "params": sum(p.numel() for p in self.model.parameters()), "step_s": step_s,
                "steps_per_s": 1.0 / step_s, "gflop_per_step": self.flops / 1e9, "gflops_per_s": 1e3 * tflops,
                "tflops_per_s": tflops, "peak_tflops": peak, "fraction_of_peak": tflops / peak if peak else None,
                "ratio_to_smp": step_s / smp_s if smp_s else None,
                "speedup_vs_eager": eager_s / step_s if eager_s else None}


def _check_modes(modes: Sequence[str] | None, device: torch.device) -> tuple[str, ...]:
    """The modes to time: by default eager and graph on CUDA, eager elsewhere; graph and compile need CUDA."""
    if modes is None:
        return ("eager", "graph") if device.type == "cuda" else ("eager",)
    for m in modes:
        if m not in STEP_MODES:
            raise ValueError(f"modes must be among {list(STEP_MODES)}, got {m!r}")
        if m != "eager" and device.type != "cuda":
            raise ValueError(f"mode {m!r} needs a CUDA device, got {device}")
    return tuple(modes)


def bench_model(sizes: Sequence[int] = (128, 256, 512), batch_sizes: Sequence[int] = (8,), steps: int = 3,
                warmup: int = 1, device: str | torch.device | None = None,
                variants: Sequence[str] = tuple(VARIANTS), width: float = 1.0, channels_last: bool = True,
                modes: Sequence[str] | None = None, verbose: bool = True) -> list[dict]:
    """Time one training step (forward, backward, fused Adam) of each model at each input and batch size.

    Args:
        sizes: square input sizes in pixels (multiples of 32).
        batch_sizes: samples per step (one channel each), each timed.
        steps: timed steps per model, size, batch size and mode (median reported); at least 1.
        warmup: untimed steps first (cuDNN autotuning, allocator); use 3 or more on a GPU.
        device: e.g. ``"cuda"``; default CUDA if available, else CPU.
        variants: CR-Net variants (keys of :data:`crlearn.nn.model.VARIANTS`), each at ``width``.
        width: channel-width multiplier of the CR-Net variants (SMP's U-Net is always full width).
        channels_last: put every model, SMP's included, and its inputs in that memory layout (as
            :func:`crlearn.training.run.fit` trains); ``False``: the standard NCHW layout.
        modes: routes of the step (:class:`crlearn.training.fastpath.TrainStep`): ``"eager"`` (the teaching loop's),
            ``"graph"`` (the whole step replayed as one CUDA graph, as the full profile trains), ``"compile"``
            (``torch.compile``, reduce-overhead). Default: eager and graph on CUDA, eager elsewhere.
        verbose: print the table row by row as it is measured.

    On CUDA the models run under bf16 autocast with cuDNN autotuning on (restored after), as ``fit`` trains. The
    modes of one model are interleaved on the same model and optimiser; the models run one after another (each
    captured graph holds a step's activations). FLOPs are counted once per model and size (:func:`count_flops`), so
    TFLOP/s compares how well each network and route use the hardware; ``peak_tflops`` is the physical limit.

    Returns:
        One dict per (size, batch size, model, mode), SMP's first: model, variant (``"smp"`` for SMP's U-Net), mode,
        size, batch_size, device, device_name, params, step_s, steps_per_s, gflop_per_step, gflops_per_s,
        tflops_per_s, peak_tflops (the GPU's dense bf16 peak; None on a CPU or an unknown GPU), fraction_of_peak,
        ratio_to_smp (step time / SMP's in the same mode; None without segmentation_models_pytorch) and
        speedup_vs_eager (the model's eager step time / this mode's; None without an eager row).
    """
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"variants must be among {sorted(VARIANTS)}, got {v!r}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got {steps} and {warmup}")
    device = pick_device(device)
    modes = _check_modes(modes, device)
    models = _bench_models(variants, width, verbose)
    if verbose:
        print(f"device: {device} ({peak_note(device)}), torch threads: {torch.get_num_threads()}, batch sizes: "
              f"{list(batch_sizes)}, modes: {list(modes)}, channels_last: {channels_last}")
        print(bench_table([]), flush=True)
    with cudnn_benchmark(device):  # as fit() trains, every model alike; the caller's setting restored after
        return [row for size in sizes for batch_size in batch_sizes
                for row in _time_models(models, size, batch_size, device, channels_last, modes, steps, warmup, verbose)]


def _time_models(models: dict[str, tuple[str, nn.Module]], size: int, batch_size: int, device: torch.device,
                 channels_last: bool, modes: Sequence[str], steps: int, warmup: int, verbose: bool) -> list[dict]:
    """:func:`bench_model`'s rows for one input and batch size: every model, every mode, SMP's first."""
    rows: list[dict] = []
    smp_s: dict[str, float] = {}
    for key, (label, model) in models.items():
        case = _Case(model, size, batch_size, device, channels_last, modes)
        times = dict(zip(modes, _interleaved_times([case.timer(m) for m in modes], device, steps, warmup)))
        smp_s = times if key == "smp" else smp_s
        for mode, step_s in times.items():
            rows.append({"model": label, "variant": key, "size": size,
                         **case.row(mode, step_s, times.get("eager"), smp_s.get(mode))})
            if verbose:
                print(bench_table(rows[-1:]).splitlines()[-1], flush=True)
        del case  # free the optimiser state, the batch and the captured graphs before the next
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _bench_models(variants: Sequence[str], width: float, verbose: bool) -> dict[str, tuple[str, nn.Module]]:
    """SMP's U-Net (when installed) and each CR-Net variant at ``width``: key -> (label, model)."""
    models: dict[str, tuple[str, nn.Module]] = {}
    smp_model = _smp_unet()
    if smp_model is None:
        if verbose:
            print("note: segmentation_models_pytorch not installed; SMP U-Net baseline skipped")
    else:
        models["smp"] = (SMP_LABEL, smp_model)
    for v in variants:
        models[v] = (f"CR-Net {VARIANTS[v]}", CRNet(CRNetConfig.full(width=width, variant=v)))
    return models


def _table_cells(r: dict) -> list[str]:
    def opt(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    return [r["model"], r["mode"], str(r["size"]), str(r["batch_size"]), f"{r['params'] / 1e6:.1f} M",
            f"{1e3 * r['step_s']:.1f}", f"{r['steps_per_s']:.1f}", f"{r['gflop_per_step']:.1f}",
            f"{r['tflops_per_s']:.3g}", opt(r["fraction_of_peak"], ".1%"), opt(r["ratio_to_smp"], ".2f"),
            opt(r["speedup_vs_eager"], ".2f")]


def bench_table(rows: Sequence[dict]) -> str:
    """A markdown table of :func:`bench_model` rows: a header, then one line per row."""
    return markdown_table(TABLE_HEADER, [_table_cells(r) for r in rows])


# ----------------------------------------------------------------------------- SSIM loss


def bench_ssim(batch_size: int = 8, size: int = 512, repeats: int = 10, warmup: int = 2,
               device: str | torch.device | None = None, channels: int = 1, verbose: bool = True) -> dict:
    """Median time of SSIM-loss forward + backward, crlearn's :func:`~crlearn.losses.ssim_loss` vs.
    ``1 - pytorch_msssim.ssim``.

    Both get the same probabilities (``requires_grad=True``) and binary target, an 11x11 Gaussian window with
    sigma 1.5 and data range 1. ``pytorch_msssim`` filters in 'valid' mode, crlearn with zero 'same' padding
    (slightly more pixels).

    Args:
        batch_size, size, channels: input shape ``[batch_size, channels, size, size]``.
        repeats: timed runs per implementation (median reported); at least 1.
        warmup: untimed runs first.
        device: e.g. ``"cuda"``; default CUDA if available, else CPU.
        verbose: print a one-line summary.

    Returns:
        ``{"crlearn_s", "pytorch_msssim_s", "speedup", "shape", "device", "threads"}``;
        ``speedup`` = pytorch_msssim time / crlearn time (> 1: crlearn is faster).

    Raises:
        ImportError: without ``pytorch_msssim``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    try:
        from pytorch_msssim import ssim as msssim_ssim
    except ImportError as err:
        raise ImportError("bench_ssim needs pytorch_msssim: pip install 'crlearn[bench]'") from err

    device = pick_device(device)
    gen = torch.Generator().manual_seed(0)
    shape = (batch_size, channels, size, size)
    probs = torch.rand(shape, generator=gen).to(device).requires_grad_(True)
    target = (torch.rand(shape, generator=gen) > 0.5).float().to(device)

    def ours() -> None:  # as training computes it: on CPU with the banded blur (crlearn.training.perf, workaround 3)
        probs.grad = None
        with cpu_ssim_blur(device):
            ssim_loss(probs, target).backward()

    def theirs() -> None:
        probs.grad = None
        (1 - msssim_ssim(probs, target, data_range=1.0, win_size=11, win_sigma=1.5)).backward()

    t_ours, t_theirs = _interleaved_times([ours, theirs], device, repeats, warmup)
    result = {
        "crlearn_s": t_ours,
        "pytorch_msssim_s": t_theirs,
        "speedup": t_theirs / t_ours,
        "shape": list(shape),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if verbose:
        print(f"SSIM loss fwd+bwd {list(shape)} on {device} ({result['threads']} threads), median of {repeats}: "
              f"crlearn {1e3 * t_ours:.1f} ms | pytorch_msssim {1e3 * t_theirs:.1f} ms | "
              f"speed-up x{result['speedup']:.2f}")
    return result


# ----------------------------------------------------------------------------- gated segmentation


def _check_gate_inputs(images: Tensor, labels: Any, masks: Tensor | None, num_classes: int) -> Tensor:
    """Validate the stack, its slice labels (N,) in {0, 1} and optional masks (N, K, H, W); return labels as bool."""
    check_images(images)
    labels = torch.as_tensor(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels must hold one 0/1 value per slice, shape ({len(images)},), "
                         f"got shape {tuple(labels.shape)}")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError(f"labels must be 0 (no COVID-19) or 1 (COVID-19), got values {labels.unique().tolist()}")
    expected = (len(images), num_classes, *images.shape[-2:])
    if masks is not None and tuple(masks.shape) != expected:
        raise ValueError(f"masks must be (N, K, H, W) = {expected} like the images, got {tuple(masks.shape)}")
    return labels.bool()


def _skipped(skipped: Tensor, of: Tensor) -> float | None:
    """The fraction of the slices selected by ``of`` that were skipped; None when none is selected."""
    return float(skipped[of].float().mean()) if bool(of.any()) else None


def bench_gate(segmenter: nn.Module, classifier: nn.Module, images: Tensor, labels: Any, size: int,
               device: str | torch.device | None = None, tta: bool = True, repeats: int = 3, warmup: int = 1,
               masks: Tensor | None = None, threshold: float = 0.5, classifier_size: int | None = None,
               verbose: bool = True) -> dict:
    """Inference time on one stack of slices, ungated (:func:`~crlearn.inference.predict`) against gated
    (:func:`~crlearn.tasks.gate.gated_predict`): the two run interleaved, best of ``repeats`` after ``warmup`` runs.

    Args:
        segmenter, classifier, size, device, tta, threshold, classifier_size: as for ``gated_predict``.
        images: ``(N, 1, H, W)`` slices in [0, 1].
        labels: ``(N,)`` 0/1 per slice, 1 = COVID-19 lesion on the slice (the classifier's truth).
        repeats: timed runs of each (the fastest reported); at least 1.
        warmup: untimed runs of each first.
        masks: optional ground truth ``(N, K, H, W)`` (bool or {0, 1}) at the images' size: then the pooled Dice of
            both predictions is reported, and what gating lost.
        verbose: print a one-line summary.

    Returns:
        ``{"plain_s", "gated_s", "speedup", "n_slices", "n_segmented", "negatives_skipped", "positives_skipped",
        "tta", "size", "device", "threads"}`` and with ``masks`` ``"dice_plain"``, ``"dice_gated"``,
        ``"dice_lost"`` (lists, one per class). ``speedup`` = plain time / gated time; ``negatives_skipped`` is the
        fraction of label-0 slices the gate kept from the segmenter (the saving), ``positives_skipped`` that of
        label-1 slices (lesion slices lost); each None when the stack has no slice of that label.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    labels = _check_gate_inputs(images, labels, masks, segmenter.config.num_classes)
    device = pick_device(device)
    out: dict[str, Any] = {}

    def plain() -> None:
        out["plain"] = predict(segmenter, images, size, device, tta=tta)[1]

    def gated() -> None:
        out["gated"] = gated_predict(segmenter, classifier, images, size, device, tta, threshold, classifier_size)

    t_plain, t_gated = _interleaved_times([plain, gated], device, repeats, warmup, reduce=min)
    skipped = ~out["gated"].positive
    result = {
        "plain_s": t_plain, "gated_s": t_gated, "speedup": t_plain / t_gated,
        "n_slices": len(images), "n_segmented": out["gated"].n_segmented,
        "negatives_skipped": _skipped(skipped, ~labels), "positives_skipped": _skipped(skipped, labels),
        "tta": tta, "size": size, "device": str(device), "threads": torch.get_num_threads(),
    }
    if masks is not None:
        plain_dice = segmentation_scores(out["plain"], masks)["dice"]
        gated_dice = segmentation_scores(out["gated"].masks, masks)["dice"]
        result |= {"dice_plain": plain_dice.tolist(), "dice_gated": gated_dice.tolist(),
                   "dice_lost": (plain_dice - gated_dice).tolist()}
    if verbose:
        print(f"gate on {len(images)} slices at {size} px ({device}, {result['threads']} threads, tta={tta}), best "
              f"of {repeats}: plain {t_plain:.3f} s | gated {t_gated:.3f} s ({result['n_segmented']} segmented) | "
              f"speed-up x{result['speedup']:.2f}")
    return result
