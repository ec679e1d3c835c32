"""bf16 autocast of the CPU training step (TrainConfig.cpu_amp): on only where asked and where the CPU computes bf16,
the step in bf16, the loss, the weights and validation in float32; ``--no-amp`` turns it off."""

import pytest
import torch
from conftest import TINY

from crlearn.cli.cv import recipe_from_args
from crlearn.cli.main import build_parser
from crlearn.data.folder import SegmentationDataset
from crlearn.data.splits import split_by_group
from crlearn.nn.model import CRNet, CRNetConfig
from crlearn.training import device as device_mod
from crlearn.training.config import PROFILES, TrainConfig
from crlearn.training.device import autocast_dtype
from crlearn.training.engine import fit, validate, make_loader

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """Pretend the CPU computes bf16 natively (both branches run on any CPU; emulated bf16 is only slower)."""
    monkeypatch.setattr(device_mod, "cpu_computes_bf16", lambda: True)


def test_cpu_computes_bf16_reads_the_cpus_capabilities(monkeypatch):
    flags = torch.cpu.get_capabilities()
    native = bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))
    assert device_mod.cpu_computes_bf16() == (native and "AVX512" in torch.backends.cpu.get_cpu_capability())
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {**flags, "avx512_bf16": True})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    uncached = device_mod.cpu_computes_bf16.__wrapped__  # the process's answer is cached
    assert uncached()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert not uncached()


@pytest.mark.parametrize("native", [True, False])
def test_cpu_autocast_only_when_asked_and_native(monkeypatch, native):
    monkeypatch.setattr(device_mod, "cpu_computes_bf16", lambda: native)
    assert autocast_dtype(CPU) is None  # validation and inference: float32 on a CPU
    assert autocast_dtype(CPU, cpu=True) == (torch.bfloat16 if native else None)
    assert autocast_dtype(CPU, amp=False, cpu=True) is None  # --no-amp wins
    assert autocast_dtype(torch.device("meta"), cpu=True) is None  # neither CUDA nor CPU


@pytest.fixture(scope="module")
def sets(small_data):
    full = SegmentationDataset(small_data, merge=True)
    split = split_by_group(full.groups, seed=0)
    return full.subset(split["train"], size=64, augment=True), full.subset(split["val"], size=64)


def _record_stem_dtypes(model):
    """The dtype of the first convolution's output at every call."""
    seen = []
    model.coarse.encoder.stem[0].register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("cpu_amp", [True, False])
def test_training_step_in_bf16_only_with_cpu_amp(bf16_cpu, sets, cpu_amp):
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=1, **TINY))
    seen = _record_stem_dtypes(model)
    cfg = TrainConfig(size=64, epochs=1, batch_size=4, lr=1e-3, cpu_amp=cpu_amp)
    history = fit(model, *sets, cfg, ["infection"], device="cpu", progress=False)
    n_train = len(make_loader(sets[0], 4, True, CPU))
    train_dtypes, val_dtypes = set(seen[:n_train]), set(seen[n_train:])
    assert train_dtypes == {torch.bfloat16 if cpu_amp else torch.float32}
    assert val_dtypes == {torch.float32}  # validation stays float32
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights too
    assert all(torch.isfinite(torch.tensor(history[k])).all() for k in ("train_loss", "val_loss"))


def test_loss_under_cpu_bf16_is_float32_and_close_to_float32(bf16_cpu, sets):
    from crlearn.losses import deep_supervision_loss

    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=1, **TINY)).eval()
    x, y = next(iter(make_loader(sets[1], 4, False, CPU)))
    with torch.no_grad():
        ref = deep_supervision_loss(model(x), y)
        with torch.autocast("cpu", dtype=autocast_dtype(CPU, cpu=True)):
            low = deep_supervision_loss(model(x), y)
    assert low.dtype == torch.float32 and ref.dtype == torch.float32
    assert float(low) == pytest.approx(float(ref), rel=0.05)  # bf16 has 8 bits of mantissa
    loss, dice = validate(model, make_loader(sets[1], 4, False, CPU), TrainConfig(size=64, cpu_amp=True), "cpu")
    assert 0.0 <= dice <= 1.0 and loss > 0


def test_quick_profile_asks_for_cpu_amp_and_no_amp_turns_it_off():
    assert PROFILES["quick"].train["cpu_amp"] and not TrainConfig().cpu_amp  # the paper's defaults: not asked
    parser = build_parser()
    train = parser.parse_args(["train", "--no-amp"])
    assert train.amp is False and parser.parse_args(["train"]).amp is True
    cv = parser.parse_args(["cv", "--no-amp"])
    assert recipe_from_args(cv).overrides["amp"] is False
    assert "amp" not in recipe_from_args(parser.parse_args(["cv"])).overrides
