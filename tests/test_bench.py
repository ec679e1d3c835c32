"""crlearn.bench: the model-step and SSIM benchmarks, at tiny sizes (what they return, not how fast it is)."""

import contextlib
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from crlearn.bench import SMP_LABEL, bench_model, bench_ssim, bench_table, count_flops
from crlearn.nn.model import CRNet, CRNetConfig
from crlearn.report import PEAK_TFLOPS, peak_note, peak_tflops

SIZE, BATCH, WIDTH = 64, 2, 0.125
VARIANTS = ("unet", "crnet")


@pytest.fixture(scope="module")
def run(one_thread):
    """One tiny benchmark, shared by the tests below: its rows and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rows = bench_model(sizes=(SIZE,), batch_sizes=(BATCH,), steps=1, warmup=0, device="cpu", variants=VARIANTS,
                           width=WIDTH, channels_last=False)
    return rows, printed.getvalue()


@pytest.fixture(scope="module")
def rows(run):
    return run[0]


def _flops_of_one_step(variant: str) -> float:
    """FLOPs of forward + backward of the BCE loss on every supervised output, counted here, apart from bench."""
    model = CRNet(CRNetConfig.full(width=WIDTH, variant=variant)).train()
    x = torch.randn(BATCH, 1, SIZE, SIZE)
    y = (torch.rand(BATCH, 1, SIZE, SIZE) > 0.9).float()
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x)
        outputs = [out.coarse] if variant == "unet" else [out.coarse, out.final]
        sum(F.binary_cross_entropy_with_logits(o, y) for o in outputs).backward()
    return float(counter.get_total_flops())


def test_bench_model_one_row_per_model(rows):
    variants = [r["variant"] for r in rows]
    assert [v for v in variants if v != "smp"] == list(VARIANTS)
    assert variants.count("smp") <= 1
    for r in rows:
        assert r["size"] == SIZE and r["batch_size"] == BATCH and r["device"] == "cpu" and r["mode"] == "eager"
        assert r["step_s"] > 0 and r["gflop_per_step"] > 0 and r["params"] > 0
        assert math.isclose(r["gflops_per_s"], r["gflop_per_step"] / r["step_s"])
        assert math.isclose(r["tflops_per_s"], r["gflops_per_s"] / 1e3)
        assert math.isclose(r["steps_per_s"] * r["step_s"], 1)
        assert r["device_name"] == "CPU" and r["peak_tflops"] is None and r["fraction_of_peak"] is None
        assert r["speedup_vs_eager"] == 1.0


def test_bench_model_flops_match_an_independent_count(rows, one_thread):
    by_variant = {r["variant"]: r for r in rows}
    for v in VARIANTS:
        assert by_variant[v]["gflop_per_step"] * 1e9 == pytest.approx(_flops_of_one_step(v), rel=1e-9)
    assert by_variant["crnet"]["gflop_per_step"] > by_variant["unet"]["gflop_per_step"]  # the refinement's work


def test_bench_model_ratio_to_smp(rows):
    pytest.importorskip("segmentation_models_pytorch")
    smp = rows[0]
    assert smp["variant"] == "smp" and smp["model"] == SMP_LABEL and smp["ratio_to_smp"] == 1.0
    for r in rows:
        assert r["ratio_to_smp"] == pytest.approx(r["step_s"] / smp["step_s"])


@pytest.mark.parametrize("kwargs", [dict(variants=("resnet",)), dict(steps=0), dict(warmup=-1), dict(modes=("fast",)),
                                    dict(modes=("eager", "graph"))])  # graph needs CUDA
def test_bench_model_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        bench_model(sizes=(SIZE,), device="cpu", verbose=False, **kwargs)


def test_bench_table_has_a_header_and_one_line_per_row(rows):
    lines = bench_table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[0].startswith("| model | mode | size | batch |") and "TFLOP/s | of peak |" in lines[0]
    assert set(lines[1]) <= {"|", "-"} and all(line.count("|") == lines[0].count("|") for line in lines)
    for line, r in zip(lines[2:], rows):
        assert line.startswith(f"| {r['model']} | eager | {SIZE} | {BATCH} |") and "| - |" in line  # no peak on CPU
    assert bench_table([]).count("\n") == 1


def test_bench_model_verbose_prints_the_table_row_by_row(run):
    rows, printed = run
    assert "channels_last: False" in printed and "CPU, peak unknown" in printed and "modes: ['eager']" in printed
    assert bench_table(rows) in printed  # the header first, then each row as it is measured


def test_count_flops_of_a_convolution_step_is_twice_its_forward(one_thread):
    """A 3x3 convolution, 'same' padding: 2 * B*H*W * Cout * Cin*9 FLOPs forward; backward computes the weight
    gradient (as many again) and, when the input needs one, the input gradient (as many again)."""
    conv = torch.nn.Conv2d(3, 5, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 8, 8)
    forward = 2 * 2 * 8 * 8 * 5 * 3 * 9
    assert count_flops(lambda: conv(x)) == forward
    assert count_flops(lambda: conv(x).sum().backward()) == 2 * forward
    assert count_flops(lambda: conv(x.requires_grad_()).sum().backward()) == 3 * forward


def test_peak_table_matches_gpu_names_and_knows_no_cpu():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H200") == 989.0 and peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA L4") == 121.0 and peak_tflops("Tesla T4") == 65.0
    assert peak_tflops("NVIDIA L40S") is None and peak_tflops("NVIDIA GH200 480GB") is None  # whole words only
    assert all(isinstance(name, str) and peak > 0 for name, peak in PEAK_TFLOPS)
    assert peak_note(torch.device("cpu")) == "CPU, peak unknown"


def test_bench_ssim_tiny(capsys, one_thread):
    pytest.importorskip("pytorch_msssim")
    result = bench_ssim(batch_size=1, size=32, repeats=1, warmup=0, device="cpu")
    assert set(result) == {"crlearn_s", "pytorch_msssim_s", "speedup", "shape", "device", "threads"}
    assert result["shape"] == [1, 1, 32, 32] and result["device"] == "cpu"
    assert result["crlearn_s"] > 0 and result["pytorch_msssim_s"] > 0 and result["speedup"] > 0
    assert "speed-up x" in capsys.readouterr().out
    with pytest.raises(ValueError):
        bench_ssim(repeats=0, device="cpu")
