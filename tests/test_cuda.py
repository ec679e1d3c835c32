"""The CUDA path (autocast, channels_last, pinned memory, loader workers, cuDNN autotuning).

Skipped where no GPU is present (CI); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

import pytest
import torch
from conftest import SAMPLE, TINY

from crlearn.bench import bench_model
from crlearn.data import SegmentationDataset
from crlearn.engine import fit, make_loader
from crlearn.inference import evaluate, predict_logits
from crlearn.model import CRNet, CRNetConfig
from crlearn.profiles import TrainConfig, autocast_dtype
from crlearn.splits import split_by_group

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")



@pytest.fixture(scope="module")
def sets():
    full = SegmentationDataset(SAMPLE, merge=True)
    split = split_by_group(full.groups, seed=0)
    train = full.subset(split["train"], size=64, augment=True)
    return train, full.subset(split["val"], size=64), full.subset(split["test"])


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
