"""The CUDA path (autocast, channels_last, pinned memory, loader workers, cuDNN autotuning, crlearn.training.fastpath's
device-resident batches, whole-step CUDA graph and torch.compile route).

Skipped where no GPU is present (CI); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

import pytest
import torch
from conftest import SAMPLE, TINY

from crlearn.training import fastpath
from crlearn.bench import bench_model
from crlearn.data.folder import SegmentationDataset
from crlearn.training.engine import fit, make_loader, train_one_epoch
from crlearn.inference import evaluate, predict_logits
from crlearn.nn.model import CRNet, CRNetConfig
from crlearn.training.config import TrainConfig
from crlearn.training.device import autocast_dtype, to_device
from crlearn.data.splits import split_by_group

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
    assert not torch.backends.cudnn.benchmark  # on inside the run (fixed input size), the caller's setting after it
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


def test_bench_runs_on_cuda_eager_and_graph():
    rows = bench_model(sizes=(64,), batch_sizes=(2, 4), steps=1, device="cuda", width=0.125, verbose=False)
    assert {r["device"] for r in rows} == {"cuda"} and {r["mode"] for r in rows} == {"eager", "graph"}
    assert {r["batch_size"] for r in rows} == {2, 4}
    assert all(r["step_s"] > 0 and r["gflop_per_step"] > 0 and r["tflops_per_s"] > 0 for r in rows)
    assert all(r["speedup_vs_eager"] > 0 for r in rows)


def _twin_steps(mode, size=128, n=3, **kw):
    """Losses of ``n`` steps on the same random batches: eager on one copy of a tiny CR-Net, ``mode`` on another."""
    losses = {}
    for name in ("eager", mode):
        torch.manual_seed(0)
        model = CRNet(CRNetConfig(num_classes=1, **TINY)).cuda().to(memory_format=torch.channels_last).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        step = fastpath.TrainStep(fastpath.segmentation_loss(model, TrainConfig(size=size), torch.device("cuda")),
                                  opt, mode=name, **kw)
        gen = torch.Generator().manual_seed(1)
        batches = [(torch.rand(4, 1, size, size, generator=gen), (torch.rand(4, 1, size, size, generator=gen) > 0.8))
                   for _ in range(n)]
        losses[name] = [float(step(to_device(x, torch.device("cuda")), to_device(y.float(), torch.device("cuda"))))
                        for x, y in batches]
        if name == "graph":
            assert step.graph is not None  # captured after one warm-up step
    return losses["eager"], losses[mode]


def test_graph_step_trains_as_the_eager_step_within_bf16_tolerance():
    eager, graph = _twin_steps("graph", warmup=1)  # step 1 eager (warm-up), step 2 captured and replayed, step 3
    assert all(torch.isfinite(torch.tensor(graph)))
    assert graph == pytest.approx(eager, rel=2e-2)


def test_compile_step_runs_and_trains_as_the_eager_step():
    eager, compiled = _twin_steps("compile", n=2)
    assert all(torch.isfinite(torch.tensor(compiled)))
    assert compiled == pytest.approx(eager, rel=2e-2)


def test_device_batches_on_cuda_are_the_loaders_batches(sets):
    ours = fastpath.DeviceBatches(sets[0], 8, True, "cuda", seed=2)
    theirs = make_loader(sets[0], 8, True, torch.device("cpu"), seed=2)
    for (x, y), (x_ref, y_ref) in zip(ours, theirs):
        assert x.is_cuda and torch.equal(x.cpu(), x_ref) and torch.equal(y.cpu(), y_ref)


def test_fit_fast_graph_captures_once_and_matches_the_teaching_loop(sets, monkeypatch):
    train, val, _ = sets
    records = []
    original = fastpath.TrainStep._record
    monkeypatch.setattr(fastpath.TrainStep, "_record", lambda self, x, y: (records.append(1), original(self, x, y)))
    histories = {}
    for fast in ("off", "graph"):
        torch.manual_seed(0)
        model = CRNet(CRNetConfig(num_classes=1, **TINY))
        cfg = TrainConfig(size=64, epochs=3, batch_size=8, lr=3e-3, fast=fast)
        histories[fast] = fit(model, train, val, cfg, ["infection"], device="cuda", progress=False)
    assert records == [1]  # one capture for the whole run
    off, graph = histories["off"], histories["graph"]
    assert all(torch.isfinite(torch.tensor(graph[k])).all() for k in ("train_loss", "val_loss", "val_dice"))
    assert graph["train_loss"][0] == pytest.approx(off["train_loss"][0], rel=5e-2)  # same batches, bf16 rounding
    assert graph["train_loss"][-1] < graph["train_loss"][0]


def test_fast_epoch_takes_no_host_sync_per_step(sets):
    train = sets[0]
    cuda, cfg = torch.device("cuda"), TrainConfig(size=64, batch_size=8, lr=1e-3, fast="graph")
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=1, **TINY)).to(cuda, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    batches, step = fastpath.DeviceBatches(train, 8, True, cuda), fastpath.make_step(model, opt, scaler, cfg, cuda)
    train_one_epoch(model, batches, opt, None, scaler, None, cfg, cuda, "", False, step)  # warm-up, capture, last batch
    assert step.mode == "graph" and step.graph is not None
    gathered = list(batches)  # the epoch's order copied over (one copy per epoch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising CUDA call raises
    try:
        total = torch.zeros((), dtype=torch.float64, device=cuda)
        for x, y in gathered:
            total.add_(step(x, y).detach().double(), alpha=len(x))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(total)
