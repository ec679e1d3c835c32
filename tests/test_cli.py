"""The crlearn command: it parses, calls the library and prints; bad input ends with one line and exit code 2."""

import csv
import json

import pytest
import torch
from conftest import TINY

from crlearn.checkpoint import save_checkpoint
from crlearn.cli import build_parser, main
from crlearn.model import CRNet, CRNetConfig
from crlearn.profiles import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


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
        (["train", "--size", "100"], "multiple of 32"),
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


def test_cli_train_is_the_library_run(small_data, tmp_path, monkeypatch):
    """cmd_train builds no data set itself: it hands its arguments to crlearn.train.run."""
    from crlearn import train

    seen = {}

    def fake_run(data, **kwargs):
        seen.update(kwargs, data=data)
        raise SystemExit(0)

    monkeypatch.setattr(train, "run", fake_run)
    with pytest.raises(SystemExit):
        main(["train", "--data", str(small_data), "--profile", "quick", "--epochs", "3", "--bce-only", "--no-tta",
              "--device", "cpu", "--out", str(tmp_path / "r")])
    assert seen["data"] == str(small_data) and seen["profile"] == "quick" and seen["device"] == "cpu"
    assert seen["epochs"] == 3 and seen["hybrid"] is False and seen["tta"] is False


def test_every_model_command_takes_device_and_profile_has_choices():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("train", "evaluate", "predict", "ablate"):
        assert "--device" in sub[name]._option_string_actions, name
    for name in ("train", "ablate"):
        assert sub[name]._option_string_actions["--profile"].choices == ["auto", "quick", "full"]
    bench = next(a for a in sub["bench"]._actions if a.dest == "what").choices
    for kind in ("model", "ssim"):
        assert "--device" in bench[kind]._option_string_actions
    assert "--sizes" not in bench["ssim"]._option_string_actions  # only flags it honours


def test_cli_bench_model_passes_every_flag(capsys, monkeypatch):
    from crlearn import bench

    calls = []

    def spy(**kwargs):
        calls.append(kwargs)
        return []

    monkeypatch.setattr(bench, "bench_model", spy)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append({"threads": n}))
    assert main(["bench", "model", "--sizes", "64", "96", "--batch-size", "1", "--steps", "2", "--warmup", "0",
                 "--width", "0.25", "--no-channels-last", "--variants", "unet", "--device", "cpu",
                 "--threads", "1"]) == 0
    assert calls[0] == {"threads": 1}
    assert calls[1] == dict(sizes=(64, 96), batch_size=1, steps=2, warmup=0, device="cpu", variants=("unet",),
                            width=0.25, verbose=False, channels_last=False)


def test_cli_bench_ssim_passes_every_flag(monkeypatch):
    from crlearn import bench

    calls = []
    monkeypatch.setattr(bench, "bench_ssim", lambda **kw: calls.append(kw))
    assert main(["bench", "ssim", "--size", "32", "--batch-size", "2", "--steps", "3", "--warmup", "1",
                 "--device", "cpu"]) == 0
    assert calls == [dict(batch_size=2, size=32, repeats=3, warmup=1, device="cpu")]
