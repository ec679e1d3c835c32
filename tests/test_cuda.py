"""The CUDA path (autocast, channels_last, pinned memory, loader workers, cuDNN autotuning).

Skipped where no GPU is present (CI); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from pathlib import Path

import pytest
import torch

from crlearn.bench import bench_model
from crlearn.data import SegmentationDataset, scan_folder, split_by_group
from crlearn.model import CRNet, CRNetConfig
from crlearn.train import TrainConfig, autocast_dtype, evaluate, fit, make_loader, predict_logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SAMPLE = Path(__file__).resolve().parents[1] / "data_sample"
TINY = dict(width=0.125, aspp_channels=8, refine_channels=8)


@pytest.fixture(scope="module")
def sets():
    split = split_by_group([r.group for r in scan_folder(SAMPLE)], seed=0)  # groups without loading the images
    train = SegmentationDataset(SAMPLE, merge=True, size=64, augment=True, indices=split["train"][:12])
    val = SegmentationDataset(SAMPLE, merge=True, size=64, indices=split["val"])
    test = SegmentationDataset(SAMPLE, merge=True, indices=split["test"][:4])
    return train, val, test


def test_autocast_dtype_on_cuda():
    want = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert autocast_dtype(torch.device("cuda")) == want
    assert autocast_dtype(torch.device("cuda"), amp=False) is None


def test_cuda_loader_pins_memory_and_uses_workers(sets):
    loader = make_loader(sets[0], 4, True, torch.device("cuda"))
    assert loader.pin_memory and loader.num_workers >= 1
    x, _ = next(iter(loader))
    assert x.is_pinned()


def test_fit_on_cuda_amp_channels_last(sets):
    train, val, test = sets
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=1, **TINY))
    cfg = TrainConfig(size=64, epochs=3, batch_size=4, lr=3e-3, schedule="onecycle", ema=0.9)
    history = fit(model, train, val, cfg, ["infection"], device="cuda", progress=False)
    assert torch.backends.cudnn.benchmark  # fixed input size: cuDNN picks its fastest kernels
    assert all(torch.isfinite(torch.tensor(history[k])).all() for k in ("train_loss", "val_loss", "val_dice"))
    assert history["train_loss"][-1] < history["train_loss"][0]
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] == 3)
    assert conv.weight.is_cuda and conv.weight.is_contiguous(memory_format=torch.channels_last)
    metrics = evaluate(model, test, 64, device="cuda")
    assert 0.0 <= metrics["pooled"]["infection"]["dice"] <= 1.0


def test_cuda_prediction_matches_cpu(sets):
    """bf16 autocast on the GPU and fp32 on the CPU give nearly the same probabilities."""
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=1, **TINY)).eval()
    images = sets[2].images
    cpu = torch.sigmoid(predict_logits(model, images, 64, device="cpu"))
    gpu = torch.sigmoid(predict_logits(model, images, 64, device="cuda"))
    assert gpu.device.type == "cpu" and gpu.shape == cpu.shape
    assert (gpu - cpu).abs().max() < 0.05


def test_bench_runs_on_cuda():
    rows = bench_model(sizes=(64,), steps=1, device="cuda", width=0.125, verbose=False)
    assert {r["device"] for r in rows} == {"cuda"}
    assert all(r["step_s"] > 0 and r["gflop_per_step"] > 0 for r in rows)
