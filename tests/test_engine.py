"""The fit loop: determinism, early stopping, the weight EMA, resume, checkpoints and atomic files."""

import json
import math

import pytest
import torch
from conftest import TINY

from crlearn.training.checkpoint import (
    CheckpointError,
    OutputExistsError,
    atomic_write_json,
    fresh_path,
    load_checkpoint,
    save_checkpoint,
)
from crlearn.data.folder import SegmentationDataset
from crlearn.training.engine import WeightEMA, fit, make_loader, validate
from crlearn.nn.model import CRNet, CRNetConfig
from crlearn.training.config import TrainConfig, resolve_profile
from crlearn.data.splits import split_by_group

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_sets(data):
    full = SegmentationDataset(data, merge=True)
    split = split_by_group(full.groups, seed=0)
    return full.subset(split["train"], size=64, augment=True), full.subset(split["val"], size=64)


def tiny_run(data, epochs=2, run_dir=None, resume=None, seed=0, schedule="onecycle", ema=None, lr=1e-3, **kw):
    train, val = tiny_sets(data)
    torch.manual_seed(seed)
    model = CRNet(CRNetConfig(num_classes=1, **TINY))
    cfg = TrainConfig(size=64, epochs=epochs, batch_size=4, lr=lr, seed=seed, schedule=schedule, ema=ema, **kw)
    history = fit(model, train, val, cfg, ["infection"], run_dir=run_dir, resume=resume, device="cpu", progress=False)
    return model, history


def test_profile_resolution_order(monkeypatch):
    monkeypatch.delenv("CRLEARN_PROFILE", raising=False)
    assert resolve_profile("auto") == ("full" if torch.cuda.is_available() else "quick")
    monkeypatch.setenv("CRLEARN_PROFILE", "full")
    assert resolve_profile(None) == "full"
    assert resolve_profile("quick") == "quick"  # an explicit choice beats the environment
    with pytest.raises(ValueError, match="unknown profile"):
        resolve_profile("huge")


def test_same_seed_gives_same_history_and_training_lowers_the_loss(small_data):
    _, h1 = tiny_run(small_data, epochs=3)
    _, h2 = tiny_run(small_data, epochs=3)
    for key in ("train_loss", "val_loss", "val_dice"):
        assert h1[key] == h2[key], key
    assert h1["train_loss"][2] < h1["train_loss"][0]


def test_validate_reports_the_loss_and_pooled_dice_of_the_final_output(small_data):
    from crlearn.losses import deep_supervision_loss
    from crlearn.metrics import segmentation_scores

    _, val = tiny_sets(small_data)
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=1, **TINY)).eval()
    loss, dice = validate(model, make_loader(val, 3, False, torch.device("cpu")), TrainConfig(size=64), "cpu")
    x, y = val.images, val.one_hot(val.labels)
    with torch.no_grad():
        out = model(x)
    assert loss == pytest.approx(float(deep_supervision_loss(out, y)), rel=1e-5)
    assert dice == pytest.approx(float(segmentation_scores(out.final > 0, y > 0.5)["dice"][0]), abs=1e-12)


def test_early_stopping_stops_after_patience_epochs_without_improvement(small_data, monkeypatch):
    # Validation losses scripted (the loop's rule under test, not the training's numbers): improve, fail once,
    # improve, then fail twice: with patience 2 the run stops after epoch 6 (the best was epoch 4).
    from crlearn.training import engine

    scripted = iter([1.0, 0.8, 0.9, 0.7, 0.75, 0.72, 0.1, 0.1])
    monkeypatch.setattr(engine, "validate", lambda *a, **k: (next(scripted), 0.5))
    _, h = tiny_run(small_data, epochs=8, schedule="constant", patience=2)
    assert h["val_loss"] == [1.0, 0.8, 0.9, 0.7, 0.75, 0.72]
    assert h["stopped"] == [6] and len(h["epoch"]) == 6


def test_resume_continues_the_same_run(small_data, tmp_path):
    # A constant learning rate, so that a run stopped after 2 epochs is a prefix of a 3-epoch run.
    _, a = tiny_run(small_data, epochs=3, run_dir=tmp_path / "a", schedule="constant")
    tiny_run(small_data, epochs=2, run_dir=tmp_path / "b", schedule="constant")
    _, resumed = tiny_run(small_data, epochs=3, run_dir=tmp_path / "b", resume=tmp_path / "b" / "last.pt",
                          schedule="constant")
    assert len(resumed["epoch"]) == 3
    assert resumed["val_loss"][:2] == a["val_loss"][:2]
    assert resumed["val_loss"][2] == pytest.approx(a["val_loss"][2], rel=1e-6)
    assert json.loads((tmp_path / "b" / "history.json").read_text())["epoch"] == [1, 2, 3]


def test_weight_ema_matches_torch_averaged_model():
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=1, **TINY))
    ours = WeightEMA(model, 0.9)
    ref = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9), use_buffers=True
    )
    for _ in range(4):
        model.train()(torch.rand(2, 1, 64, 64))  # moves the BN running statistics
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ours.update()
        ref.update_parameters(model)
    theirs = ref.module.state_dict()
    floats = [k for k, v in ours.module.state_dict().items() if v.is_floating_point()]
    assert len(floats) > 100
    for k in floats:
        torch.testing.assert_close(ours.module.state_dict()[k], theirs[k], rtol=0, atol=1e-6)
    assert ours.updates == 4


def test_ema_model_is_validated_kept_and_resumed(small_data, tmp_path):
    _, a = tiny_run(small_data, epochs=3, run_dir=tmp_path / "a", schedule="constant", ema=0.9)
    _, plain = tiny_run(small_data, epochs=3, schedule="constant")
    assert a["train_loss"] == plain["train_loss"]  # the average never feeds back into training
    last = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    n_train = len(tiny_sets(small_data)[0]) // 5
    assert last["ema_updates"] == 3 * math.ceil(n_train * 5 / 4)  # one update per step: 3 epochs, batch 4
    params = [k for k, _ in CRNet(CRNetConfig(num_classes=1, **TINY)).named_parameters()]
    assert all(not torch.equal(last["state_dict"][k], last["train_state_dict"][k]) for k in params)
    ema_model, _ = load_checkpoint(tmp_path / "a" / "last.pt")  # what was validated in the last epoch
    val = tiny_sets(small_data)[1]
    loss, _ = validate(ema_model, make_loader(val, 4, False, torch.device("cpu")), TrainConfig(size=64), "cpu")
    assert loss == pytest.approx(a["val_loss"][-1], rel=1e-6)
    _, ckpt = load_checkpoint(tmp_path / "a" / "best.pt")
    assert ckpt["best_val_loss"] == min(a["val_loss"])
    tiny_run(small_data, epochs=2, run_dir=tmp_path / "b", schedule="constant", ema=0.9)
    _, resumed = tiny_run(small_data, epochs=3, run_dir=tmp_path / "b", resume=tmp_path / "b" / "last.pt",
                          schedule="constant", ema=0.9)
    assert resumed["val_loss"][2] == pytest.approx(a["val_loss"][2], rel=1e-6)
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.0)


def test_checkpoint_round_trip_and_atomic_write(tmp_path):
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=3, **TINY)).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, ["ggo", "consolidation", "effusion"], TrainConfig(size=64))
    assert not (tmp_path / "m.pt.tmp").exists()
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["class_names"] == ["ggo", "consolidation", "effusion"] and ckpt["crlearn_version"]
    x = torch.rand(1, 1, 64, 64)
    assert torch.equal(model(x).final, loaded(x).final)


def test_not_a_checkpoint_raises(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="not a crlearn checkpoint"):
        load_checkpoint(bad)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="format tag"):
        load_checkpoint(tmp_path / "other.pt")


def test_fresh_path_never_overwrites_without_force(tmp_path):
    (tmp_path / "run").mkdir()
    assert fresh_path(tmp_path / "run", explicit=False, is_dir=True) == tmp_path / "run"  # an empty folder is free
    atomic_write_json(tmp_path / "run" / "a.json", {"x": 1})
    assert json.loads((tmp_path / "run" / "a.json").read_text()) == {"x": 1}
    assert fresh_path(tmp_path / "run", explicit=False, is_dir=True) == tmp_path / "run-2"
    with pytest.raises(OutputExistsError, match="--force"):
        fresh_path(tmp_path / "run", explicit=True, is_dir=True)
    assert fresh_path(tmp_path / "run", explicit=True, force=True, is_dir=True) == tmp_path / "run"
    assert fresh_path(tmp_path / "run" / "a.json", explicit=False) == tmp_path / "run" / "a-2.json"
