"""crlearn.bench: the model-step and SSIM benchmarks, at tiny sizes (what they return, not how fast it is)."""

import contextlib
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from crlearn.bench import SMP_LABEL, bench_model, bench_ssim, bench_table
from crlearn.model import CRNet, CRNetConfig

SIZE, BATCH, WIDTH = 64, 2, 0.125
VARIANTS = ("unet", "crnet")


@pytest.fixture(scope="module")
def run(one_thread):
    """One tiny benchmark, shared by the tests below: its rows and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rows = bench_model(sizes=(SIZE,), batch_size=BATCH, steps=1, warmup=0, device="cpu", variants=VARIANTS,
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
        assert r["size"] == SIZE and r["batch_size"] == BATCH and r["device"] == "cpu"
        assert r["step_s"] > 0 and r["gflop_per_step"] > 0 and r["params"] > 0
        assert math.isclose(r["gflops_per_s"], r["gflop_per_step"] / r["step_s"])


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


@pytest.mark.parametrize("kwargs", [dict(variants=("resnet",)), dict(steps=0), dict(warmup=-1)])
def test_bench_model_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        bench_model(sizes=(SIZE,), device="cpu", verbose=False, **kwargs)


def test_bench_table_has_a_header_and_one_line_per_row(rows):
    lines = bench_table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[0].startswith("| model | size |") and set(lines[1]) <= {"|", "-"}
    for line, r in zip(lines[2:], rows):
        assert line.startswith(f"| {r['model']} | {SIZE} |")
    assert bench_table([]).count("\n") == 1


def test_bench_model_verbose_prints_the_table_row_by_row(run):
    rows, printed = run
    assert "channels_last: False" in printed
    assert bench_table(rows) in printed  # the header first, then each row as it is measured


def test_bench_ssim_tiny(capsys, one_thread):
    pytest.importorskip("pytorch_msssim")
    result = bench_ssim(batch_size=1, size=32, repeats=1, warmup=0, device="cpu")
    assert set(result) == {"crlearn_s", "pytorch_msssim_s", "speedup", "shape", "device", "threads"}
    assert result["shape"] == [1, 1, 32, 32] and result["device"] == "cpu"
    assert result["crlearn_s"] > 0 and result["pytorch_msssim_s"] > 0 and result["speedup"] > 0
    assert "speed-up x" in capsys.readouterr().out
    with pytest.raises(ValueError):
        bench_ssim(repeats=0, device="cpu")
