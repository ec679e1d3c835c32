"""crlearn.training.fastpath on the CPU: the same batches and the same training as the teaching loop, without a read per step.

The CUDA-only parts (the CUDA graph, torch.compile) are covered by tests/test_cuda.py.
"""

import pytest
import torch
from conftest import TINY

from crlearn.training import fastpath
from crlearn.data.folder import SegmentationDataset
from crlearn.training.engine import WeightEMA, fit, make_loader, make_scheduler, train_one_epoch
from crlearn.nn.model import CRNet, CRNetConfig
from crlearn.training.config import PROFILES, TrainConfig
from crlearn.data.splits import split_by_group

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sets(small_data):
    full = SegmentationDataset(small_data, merge=True)
    split = split_by_group(full.groups, seed=0)
    return full.subset(split["train"], size=64, augment=True), full.subset(split["val"], size=64)


def _epochs(loader, seed, n=2):
    """The batches of ``n`` epochs, the generator reseeded before each as fit() does."""
    out = []
    for epoch in range(n):
        loader.generator.manual_seed(seed * 100_003 + epoch)
        out.append(list(loader))
    return out


def test_device_batches_are_the_dataloaders_batches_in_its_order(sets):
    train = sets[0]
    ours = fastpath.DeviceBatches(train, 4, True, CPU, seed=3)
    theirs = make_loader(train, 4, True, CPU, seed=3)
    assert len(ours) == len(theirs) and ours.n_samples == len(train)
    for ours_epoch, theirs_epoch in zip(_epochs(ours, 3), _epochs(theirs, 3)):
        assert len(ours_epoch) == len(theirs_epoch)
        for (x, y), (x_ref, y_ref) in zip(ours_epoch, theirs_epoch):
            assert x.dtype == x_ref.dtype and y.dtype == y_ref.dtype
            assert x.shape == x_ref.shape and y.shape == y_ref.shape and x.stride() == x_ref.stride()
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert len(ours_epoch[-1][0]) == (len(train) % 4 or 4)  # the last batch holds the rest


def test_device_batches_give_every_sample_once_per_epoch_in_a_seeded_order():
    numbered = [(torch.full((1, 4, 4), float(i)), torch.zeros(1, 4, 4)) for i in range(11)]  # sample i holds i

    def epoch(seed, shuffle=True):
        batches = fastpath.DeviceBatches(numbered, 4, shuffle, CPU)
        batches.generator.manual_seed(seed)
        xs = [x for x, _ in batches]
        assert [len(x) for x in xs] == [4, 4, 3] and all(x.shape[1:] == (1, 4, 4) for x in xs)
        return torch.cat(xs)[:, 0, 0, 0].long().tolist()

    assert sorted(epoch(1)) == list(range(11)) and epoch(1) == epoch(1) and epoch(1) != epoch(2)
    assert epoch(1, shuffle=False) == list(range(11))


def _tiny_fit(sets, **kw):
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=1, **TINY))
    cfg = TrainConfig(size=64, epochs=2, batch_size=4, lr=1e-3, schedule="onecycle", ema=0.9, **kw)
    return fit(model, *sets, cfg, ["infection"], device="cpu", progress=False)


def test_fast_route_trains_as_the_teaching_loop_on_cpu(sets):
    """Same batches, steps, scheduler and EMA: the same history (augmentation on, one-cycle, EMA)."""
    plain, fast = _tiny_fit(sets), _tiny_fit(sets, fast="eager")
    for key in ("train_loss", "val_loss", "val_dice", "lr"):
        assert fast[key] == pytest.approx(plain[key], rel=1e-9, abs=1e-12), key
    graph_on_cpu = _tiny_fit(sets, fast="graph")  # no CUDA: runs as "eager"
    assert graph_on_cpu["val_loss"] == fast["val_loss"]


def _epoch_parts(sets, cfg):
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=1, **TINY)).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    return model, opt, scaler


def _count_reads(monkeypatch):
    """Record the dtype of every tensor whose value is read on the host (item, float, int, bool, tolist)."""
    reads = []
    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads.append(self.dtype)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def test_every_route_reads_the_loss_once_per_epoch_not_per_step(sets, monkeypatch):
    cfg = TrainConfig(size=64, batch_size=4, lr=1e-3, schedule="onecycle", ema=0.9, fast="eager")
    model, opt, scaler = _epoch_parts(sets, cfg)
    batches = fastpath.DeviceBatches(sets[0], cfg.batch_size, True, CPU)
    sched, ema = make_scheduler(opt, cfg, len(batches)), WeightEMA(model, cfg.ema)
    step = fastpath.make_step(model, opt, scaler, cfg, CPU)
    assert len(batches) > 5 and step.mode == "eager"
    reads = _count_reads(monkeypatch)
    loss = train_one_epoch(model, batches, opt, sched, scaler, ema, cfg, CPU, "", False, step)
    assert loss > 0
    assert [d for d in reads if d.is_floating_point] == [torch.float64]  # the epoch's summed loss, once
    assert len(reads) <= 5  # + the index sampler's seed and order: int64 CPU tensors, drawn once per epoch
    reads.clear()
    train_one_epoch(model, make_loader(sets[0], 4, True, CPU), opt, sched, scaler, ema, cfg, CPU, "", False)
    assert [d for d in reads if d.is_floating_point] == [torch.float64]  # the eager step too: one read per epoch


def test_effective_mode_needs_cuda_and_graph_a_constant_rate_without_scaler():
    cuda, cfg = torch.device("cuda"), TrainConfig(fast="graph")
    assert fastpath.effective_mode(cfg, CPU, False) == "eager"
    assert fastpath.effective_mode(TrainConfig(fast="compile"), CPU, False) == "eager"
    assert fastpath.effective_mode(cfg, cuda, False) == "graph"
    with pytest.warns(UserWarning, match="runs as 'eager'"):
        assert fastpath.effective_mode(TrainConfig(fast="graph", schedule="onecycle"), cuda, False) == "eager"
    with pytest.warns(UserWarning, match="scaler"):
        assert fastpath.effective_mode(cfg, cuda, True) == "eager"


def test_train_step_refuses_what_a_capture_cannot_take():
    model = torch.nn.Linear(2, 1)
    plain = torch.optim.Adam(model.parameters())
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            fastpath.TrainStep(lambda x, y: model(x).sum(), plain, mode="graph")
    else:
        with pytest.raises(ValueError, match="fused"):
            fastpath.TrainStep(lambda x, y: model(x).sum(), plain, mode="graph")
    with pytest.raises(ValueError, match="mode"):
        fastpath.TrainStep(lambda x, y: model(x).sum(), plain, mode="fast")
    with pytest.raises(ValueError, match="batch_size"):
        fastpath.DeviceBatches([(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))], 0, True, CPU)


def test_both_profiles_take_the_teaching_loop_until_a_gpu_measures_the_fast_route():
    assert PROFILES["full"].train_config().fast == "off"
    assert PROFILES["quick"].train_config().fast == "off"
    with pytest.raises(ValueError, match="fast"):
        TrainConfig(fast="turbo")
