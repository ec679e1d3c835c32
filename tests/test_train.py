"""Training engine and CLI: profiles, determinism, resume, atomic checkpoints, clear errors."""

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from crlearn.cli import main
from crlearn.data import AUGMENTATIONS, SegmentationDataset, apply_view, split_by_group
from crlearn.model import CRNet, CRNetConfig
from crlearn.train import (
    CheckpointError,
    TrainConfig,
    WeightEMA,
    evaluate,
    fit,
    keep_freed_memory,
    load_checkpoint,
    predict,
    predict_logits,
    resolve_profile,
    save_checkpoint,
)

SAMPLE = Path(__file__).resolve().parents[1] / "data_sample"
TINY = dict(width=0.125, aspp_channels=8, refine_channels=8)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """Twelve real slices from six pseudo-patient groups, in the dataset format."""
    root = tmp_path_factory.mktemp("small")
    with open(SAMPLE / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    chosen, seen = [], {}
    for row in rows:
        g = row["pseudo_patient_group"]
        if seen.get(g, 0) < 2 and len(seen) <= 6:
            seen[g] = seen.get(g, 0) + 1
            chosen.append(row)
        if len(chosen) == 12:
            break
    for sub in ("images", "masks"):
        (root / sub).mkdir()
        for row in chosen:
            shutil.copy(SAMPLE / sub / f"{row['slice_id']}.png", root / sub)
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(chosen)
    return root


def tiny_run(data: Path, epochs: int = 2, run_dir=None, resume=None, seed: int = 0, schedule: str = "onecycle",
             ema: float | None = None):
    full = SegmentationDataset(data, merge=True)
    split = split_by_group(full.groups, seed=0)
    train = SegmentationDataset(data, merge=True, size=64, augment=True, indices=split["train"])
    val = SegmentationDataset(data, merge=True, size=64, indices=split["val"])
    torch.manual_seed(seed)
    model = CRNet(CRNetConfig(num_classes=1, **TINY))
    cfg = TrainConfig(size=64, epochs=epochs, batch_size=4, lr=1e-3, seed=seed, schedule=schedule, ema=ema)
    history = fit(model, train, val, cfg, ["infection"], run_dir=run_dir, resume=resume, device="cpu", progress=False)
    return model, history


def test_keep_freed_memory_on_glibc_and_a_no_op_elsewhere(monkeypatch):
    import platform
    import sys

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc
    assert keep_freed_memory() is glibc  # calling it again is harmless
    monkeypatch.setattr(sys, "platform", "darwin")
    assert keep_freed_memory() is False


def test_profile_resolution_order(monkeypatch):
    monkeypatch.delenv("CRLEARN_PROFILE", raising=False)
    assert resolve_profile("auto") == ("full" if torch.cuda.is_available() else "quick")
    monkeypatch.setenv("CRLEARN_PROFILE", "full")
    assert resolve_profile(None) == "full"
    assert resolve_profile("quick") == "quick"  # an explicit choice beats the environment
    with pytest.raises(ValueError, match="unknown profile"):
        resolve_profile("huge")


def test_same_seed_gives_same_history_on_cpu(small_data):
    _, h1 = tiny_run(small_data)
    _, h2 = tiny_run(small_data)
    for key in ("train_loss", "val_loss", "val_dice"):
        assert h1[key] == h2[key], key
    assert h1["train_loss"][-1] < h1["train_loss"][0] or h1["val_loss"][-1] < h1["val_loss"][0]


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
    for k, v in ours.module.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, theirs[k], atol=1e-6), k
    assert ours.updates == 4


def test_ema_model_is_validated_kept_and_resumed(small_data, tmp_path):
    _, a = tiny_run(small_data, epochs=3, run_dir=tmp_path / "a", schedule="constant", ema=0.9)
    _, plain = tiny_run(small_data, epochs=3, schedule="constant")
    assert a["train_loss"] == plain["train_loss"]  # the average never feeds back into training
    assert a["val_loss"] != plain["val_loss"]  # ... but it is what gets validated
    last = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    n_train = len(split_by_group(SegmentationDataset(small_data, merge=True).groups, seed=0)["train"])
    assert last["ema_updates"] == 3 * math.ceil(n_train * 5 / 4)  # one update per step: 3 epochs, batch 4
    for k, v in last["state_dict"].items():  # the averaged weights differ from the raw ones being trained
        if v.is_floating_point() and "running" not in k and v.numel() > 1:
            assert not torch.equal(v, last["train_state_dict"][k]), k
            break
    best, ckpt = load_checkpoint(tmp_path / "a" / "best.pt")
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


def test_predict_returns_probabilities_at_the_input_size():
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=2, **TINY))
    probs, labels = predict(model, torch.rand(3, 1, 100, 90), size=64, device="cpu")
    assert probs.shape == (3, 2, 100, 90) and labels.dtype == torch.bool
    assert 0 <= float(probs.min()) and float(probs.max()) <= 1


def test_tta_averages_the_five_views_mapped_back():
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=1, **TINY)).eval()
    x = torch.rand(2, 1, 64, 64)
    single = predict_logits(model, x, size=64, device="cpu", tta=False)
    with torch.no_grad():
        by_hand = sum(apply_view(model(apply_view(x, v)).final, v, inverse=True) for v in AUGMENTATIONS) / 5
        assert torch.allclose(single, model(x).final, atol=1e-5)
    assert torch.allclose(predict_logits(model, x, size=64, device="cpu"), by_hand, atol=1e-5)


def test_evaluate_reports_each_class_and_the_merged_infection(small_data):
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=3, **TINY))
    ds = SegmentationDataset(small_data, indices=[0, 1, 2])
    m = evaluate(model, ds, size=64, device="cpu")
    assert set(m["pooled"]) == {"ggo", "consolidation", "effusion", "infection"}
    for scores in m["pooled"].values():
        assert {"dice", "iou", "precision", "recall", "boundary_f1"} <= set(scores)
        assert all(0.0 <= v <= 1.0 for v in scores.values())


# ----------------------------------------------------------------------------- the command line


def test_cli_train_evaluate_predict(small_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(small_data), "--profile", "quick", "--epochs", "1", "--size", "64",
            "--out", str(run), "--quiet"]
    assert main(args) == 0
    for name in ("best.pt", "last.pt", "history.json", "metrics.json", "learning_curve.png", "test_overlays.png"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["profile"] == "quick" and metrics["class_names"] == ["infection"]  # the quick profile's task
    assert set(metrics["test"]["pooled"]) == {"infection"}
    assert main(args) == 2  # the run folder exists: nothing is overwritten without --force
    assert "already exists" in capsys.readouterr().err

    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(small_data)]) == 0
    out = capsys.readouterr().out
    assert "| infection |" in out and "Dice" in out
    assert (run / f"eval-{small_data.name}.json").exists()
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(small_data)]) == 0
    assert (run / f"eval-{small_data.name}-2.json").exists()  # a default name never overwrites

    image = next((small_data / "images").iterdir())
    assert main(["predict", "--checkpoint", str(run / "best.pt"), str(image), "--out", str(tmp_path / "pred")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "pred" / "areas.csv")))
    assert [r["class"] for r in rows] == ["infection"]
    assert 0.0 <= float(rows[0]["fraction"]) <= 1.0
    assert (tmp_path / "pred" / f"{image.stem}_overlay.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "/no/such/folder"], "data folder not found"),
        (["evaluate", "--checkpoint", "/no/such.pt"], "checkpoint file not found"),
        (["train", "--classes", "fibrosis"], "unknown class name"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_rejects_a_checkpoint_whose_classes_do_not_fit_the_data(tmp_path, small_data, capsys):
    model = CRNet(CRNetConfig(num_classes=1, **TINY))
    save_checkpoint(tmp_path / "f.pt", model, ["fibrosis"], TrainConfig(size=64))
    assert main(["evaluate", "--checkpoint", str(tmp_path / "f.pt"), "--data", str(small_data)]) == 2
    assert "do not fit" in capsys.readouterr().err


def test_cli_ablate_two_folds_writes_table_json_and_chart(small_data, tmp_path, capsys):
    out = tmp_path / "abl"
    argv = ["ablate", "--data", str(small_data), "--profile", "quick", "--folds", "2", "--epochs", "1",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    result = json.loads((out / "ablation.json").read_text())
    assert [r["key"] for r in result["rows"]] == ["unet", "aspp", "refine", "hybrid"]
    assert [r["paper_dice"] for r in result["rows"]] == [0.793, 0.817, 0.850, 0.870]
    assert result["folds"] == 2 and result["tta"] is True and result["train_config"]["epochs"] == 1
    for row in result["rows"]:
        assert len(row["folds"]) == 2 and "dice_std" in row and 0.0 <= row["dice"] <= 1.0
        assert row["dice"] == pytest.approx(sum(f["dice"] for f in row["folds"]) / 2)
    assert [r["hybrid"] for r in result["rows"]] == [False, False, False, True]
    assert (out / "ablation.png").stat().st_size > 0 and "mean ± std over 2 group folds" in (out / "ablation.md").read_text()
    assert main(argv) == 2  # the same --out again, without --force
    assert "exists" in capsys.readouterr().err
