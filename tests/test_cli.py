"""The crlearn command: it parses, calls the library and prints; bad input ends with one line and exit code 2."""

import csv
import json

import pytest
import torch
from conftest import TINY

from crlearn.training.checkpoint import load_checkpoint, save_checkpoint
from crlearn.cli.main import build_parser, main
from crlearn.nn.model import CRNet, CRNetConfig
from crlearn.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def spy_run(monkeypatch) -> dict:
    """Replace crlearn.training.run.run by a spy that records its arguments and stops the command."""
    from crlearn.training import run as train

    seen = {}

    def fake_run(data, **kwargs):
        seen.update(kwargs, data=data)
        raise SystemExit(0)

    monkeypatch.setattr(train, "run", fake_run)
    return seen


def test_cli_train_evaluate_predict(small_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(small_data), "--profile", "quick", "--epochs", "1", "--size", "64",
            "--split", "holdout", "--out", str(run), "--quiet"]
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

    # the burden of the patients this run held out (its metrics.json holds the split)
    assert main(["burden", "--checkpoint", str(run / "best.pt"), "--data", str(small_data), "--split", "held-out",
                 "--out", str(tmp_path / "b.json")]) == 0
    held = metrics["split"]["val"] + metrics["split"]["test"]
    assert json.loads((tmp_path / "b.json").read_text())["n_slices"] == len(held)
    assert main(["burden", "--checkpoint", str(run / "best.pt"), "--data", str(tmp_path / "pred"), "--split",
                 "test"]) == 2  # another folder than the run's
    assert "was split on" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "/no/such/folder"], "data folder not found"),
        (["evaluate", "--checkpoint", "/no/such.pt"], "checkpoint file not found"),
        (["train", "--classes", "fibrosis"], "unknown class name"),
        (["train", "--size", "100"], "multiple of 32"),
        (["train", "--classes", "lung"], "labels.json: unknown class name(s) ['lung']"),  # MedSeg has no lung label
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
    """cmd_train builds no data set itself: it hands its arguments to crlearn.training.run.run."""
    seen = spy_run(monkeypatch)
    with pytest.raises(SystemExit):
        main(["train", "--data", str(small_data), "--profile", "quick", "--epochs", "3", "--bce-only", "--no-tta",
              "--device", "cpu", "--out", str(tmp_path / "r")])
    assert seen["data"] == str(small_data) and seen["profile"] == "quick" and str(seen["device"]) == "cpu"
    assert seen["split"] == "all"  # the shipped model learns from every patient
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
    assert main(["bench", "model", "--sizes", "64", "96", "--batch-sizes", "1", "2", "--steps", "2", "--warmup", "0",
                 "--width", "0.25", "--no-channels-last", "--variants", "unet", "--device", "cpu",
                 "--threads", "1", "--modes", "eager"]) == 0
    assert calls[0] == {"threads": 1}
    assert calls[1] == dict(sizes=(64, 96), batch_sizes=(1, 2), steps=2, warmup=0, device="cpu", variants=("unet",),
                            width=0.25, verbose=True, channels_last=False, modes=("eager",))
    assert main(["bench", "model", "--batch-size", "4", "--device", "cpu"]) == 0  # the old flag still works
    assert calls[2]["batch_sizes"] == (4,) and calls[2]["modes"] is None


def test_cli_bench_ssim_passes_every_flag(monkeypatch):
    from crlearn import bench

    calls = []
    monkeypatch.setattr(bench, "bench_ssim", lambda **kw: calls.append(kw))
    assert main(["bench", "ssim", "--size", "32", "--batch-size", "2", "--steps", "3", "--warmup", "1",
                 "--device", "cpu"]) == 0
    assert calls == [dict(batch_size=2, size=32, repeats=3, warmup=1, device="cpu")]


def _lung_checkpoint(tmp_path, names=("lung", "infection")):
    torch.manual_seed(0)
    model = CRNet(CRNetConfig(num_classes=len(names), prior=0.7, **TINY))  # untrained, predicts most pixels
    save_checkpoint(tmp_path / "best.pt", model, list(names), TrainConfig(size=64))
    return tmp_path / "best.pt"


def test_cli_burden_writes_json_and_figure_and_never_overwrites(tmp_path, capsys):
    from test_burden import make_lung_folder

    data = make_lung_folder(tmp_path / "lungs")
    ckpt = _lung_checkpoint(tmp_path)
    argv = ["burden", "--checkpoint", str(ckpt), "--data", str(data), "--no-tta", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| v1 | 2 | 16.67 |" in out and "per patient group (n=2): MAE" in out and "not a diagnosis" in out
    result = json.loads((tmp_path / "burden-lungs.json").read_text())
    assert result["lung_source"] == "model" and result["true_lung_source"] == "masks"
    assert 0.0 <= result["mae_percentage_points"] <= 100.0
    assert [g["group"] for g in result["groups"]] == ["v1", "v2"] and result["groups"][0]["n_slices"] == 2
    assert (tmp_path / "burden-lungs.png").stat().st_size > 0
    assert main(argv) == 0  # a default name never overwrites
    assert (tmp_path / "burden-lungs-2.json").exists() and (tmp_path / "burden-lungs-2.png").exists()


def test_cli_burden_on_medseg_says_the_lung_field_is_classical(tmp_path, small_data, capsys):
    ckpt = _lung_checkpoint(tmp_path, ["infection"])
    out = tmp_path / "b.json"
    assert main(["burden", "--checkpoint", str(ckpt), "--data", str(small_data), "--no-tta", "--out", str(out)]) == 0
    assert "classical image-only lung field (no lung masks in this folder)" in capsys.readouterr().out
    assert json.loads(out.read_text())["true_lung_source"] == "classical" and out.with_suffix(".png").exists()


def test_cli_burden_refuses_a_checkpoint_without_infection(tmp_path, small_data, capsys):
    ckpt = _lung_checkpoint(tmp_path, ["ggo", "consolidation"])
    assert main(["burden", "--checkpoint", str(ckpt), "--data", str(small_data)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(ckpt) in err and "'infection'" in err


def test_cli_evaluate_a_lung_and_infection_model(tmp_path, capsys):
    from test_burden import make_lung_folder

    data = make_lung_folder(tmp_path / "lungs")
    ckpt = _lung_checkpoint(tmp_path)
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--no-tta", "--out", str(out)]) == 0
    pooled = json.loads(out.read_text())["metrics"]["pooled"]
    assert set(pooled) == {"lung", "infection"}  # infection is declared: no second, merged infection row
    assert 0.0 <= pooled["lung"]["dice"] <= 1.0 and 0.0 <= pooled["infection"]["dice"] <= 1.0


def test_cli_evaluate_and_predict_apply_the_checkpoints_normalisation(tmp_path, small_data, monkeypatch):
    from crlearn.data import folder as data_mod
    from crlearn.tasks import gate

    seen = []
    real = data_mod.normalize_intensity
    spy = lambda x, kind="none": seen.append(kind) or real(x, kind)  # noqa: E731
    monkeypatch.setattr(data_mod, "normalize_intensity", spy)
    monkeypatch.setattr(gate, "normalize_intensity", spy)  # predict reads its files through crlearn.tasks.gate
    model = CRNet(CRNetConfig(num_classes=1, **TINY))
    save_checkpoint(tmp_path / "n.pt", model, ["infection"], TrainConfig(size=64, normalize="equalize"))
    image = next((small_data / "images").iterdir())
    assert main(["predict", "--checkpoint", str(tmp_path / "n.pt"), str(image), "--no-tta",
                 "--out", str(tmp_path / "p")]) == 0
    assert seen == ["equalize"]
    assert main(["evaluate", "--checkpoint", str(tmp_path / "n.pt"), "--data", str(small_data), "--no-tta",
                 "--out", str(tmp_path / "e.json")]) == 0
    assert seen[1:] and set(seen[1:]) == {"equalize"}  # every slice, as SegmentationDataset reads it


def test_cli_train_takes_several_folders_and_a_normalisation(small_data, tmp_path, monkeypatch):
    seen = spy_run(monkeypatch)
    with pytest.raises(SystemExit):
        main(["train", "--data", str(small_data), str(tmp_path), "--normalize", "standardize",
              "--out", str(tmp_path / "r")])
    assert seen["data"] == [str(small_data), str(tmp_path)] and seen["normalize"] == "standardize"
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "r")])
    assert isinstance(seen["data"], str) and seen["normalize"] == "none"  # the default folder, as a path


def _classifier_checkpoint(path, segmenter, p_covid):
    """A classifier checkpoint on ``segmenter``'s encoder whose head says ``p_covid`` for every slice."""
    from crlearn.tasks.classifier import classifier_from_segmenter, save_classifier

    clf = classifier_from_segmenter(segmenter, "frozen")
    with torch.no_grad():
        clf.head.weight.zero_()
        clf.head.bias.copy_(torch.tensor([0.0, float(torch.logit(torch.tensor(p_covid)))]))
    save_classifier(path, clf, "frozen", size=32, fit="pad", normalize="none")
    return path


def test_cli_predict_gated_by_a_classifier_skips_the_slices_it_calls_negative(tmp_path, small_data, capsys):
    ckpt = _lung_checkpoint(tmp_path, ["infection"])  # predicts lesion on most pixels
    segmenter, _ = load_checkpoint(ckpt)
    yes, no = (_classifier_checkpoint(tmp_path / f"{name}.pt", segmenter, p) for name, p in (("yes", 0.9), ("no", 0.2)))
    images = [str(p) for p in sorted((small_data / "images").iterdir())[:2]]

    def areas(*extra):
        out = tmp_path / f"pred{len(list(tmp_path.glob('pred*')))}"
        assert main(["predict", "--checkpoint", str(ckpt), *images, "--no-tta", "--out", str(out), *extra]) == 0
        return list(csv.DictReader(open(out / "areas.csv")))

    plain = areas()
    assert list(plain[0]) == ["image", "class", "pixels", "fraction"]  # no classifier: the columns of old
    assert all(int(r["pixels"]) > 0 for r in plain)
    gated = areas("--classifier", str(yes))
    assert list(gated[0]) == ["image", "class", "pixels", "fraction", "p_covid", "segmented"]
    assert [(r["image"], r["pixels"]) for r in gated] == [(r["image"], r["pixels"]) for r in plain]
    assert {(r["p_covid"], r["segmented"]) for r in gated} == {("0.9", "True")}
    skipped = areas("--classifier", str(no))
    assert {(r["pixels"], r["fraction"], r["p_covid"], r["segmented"]) for r in skipped} == {("0", "0.0", "0.2", "False")}
    assert "0 segmented, 2 not segmented" in capsys.readouterr().out
    assert [r["pixels"] for r in areas("--classifier", str(no), "--threshold", "0.1")] == [r["pixels"] for r in plain]


def test_cli_predict_refuses_swapped_checkpoints_with_one_line_naming_the_file(tmp_path, small_data, capsys):
    ckpt = _lung_checkpoint(tmp_path, ["infection"])
    cls = _classifier_checkpoint(tmp_path / "cls.pt", load_checkpoint(ckpt)[0], 0.5)
    image = str(next((small_data / "images").iterdir()))
    for argv, message in ((["--checkpoint", str(ckpt), "--classifier", str(ckpt)], f"{ckpt}: a segmentation checkpoint"),
                          (["--checkpoint", str(cls)], f"{cls}: a classifier checkpoint")):
        assert main(["predict", *argv, image, "--out", str(tmp_path / "p")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_cli_ablate_classify_defaults_to_the_bundled_labelled_set(tmp_path, monkeypatch):
    from crlearn.tasks import ablation
    from crlearn.data.slices import default_classification_dir

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["classify_data"])
        raise SystemExit(0)

    monkeypatch.setattr(ablation, "run_ablation", spy)
    for extra, expected in (([], None), (["--classify"], str(default_classification_dir())),
                            (["--classify", str(tmp_path)], str(tmp_path))):
        with pytest.raises(SystemExit):
            main(["ablate", "--profile", "quick", *extra, "--out", str(tmp_path / "a")])
        assert seen[-1] == expected


def test_help_imports_no_torch_and_the_cli_choices_match_the_library():
    import subprocess
    import sys

    code = ("import sys\nfrom crlearn.cli import main\nfor c in ([], ['train'], ['classify', 'train'], ['bench', 'model']):\n"
            "    try:\n        main([*c, '--help'])\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, 'torch imported for --help'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    from crlearn.cli import choices
    from crlearn.data.folder import NORMALIZATIONS
    from crlearn.data.slices import FITS
    from crlearn.nn.model import VARIANTS
    from crlearn.tasks.classifier import THRESHOLD
    from crlearn.training.config import PROFILES

    assert choices.NORMALIZATIONS == NORMALIZATIONS and choices.FITS == FITS and choices.THRESHOLD == THRESHOLD
    assert list(choices.VARIANTS) == list(VARIANTS) and list(choices.PROFILES) == ["auto", *PROFILES]


@pytest.mark.parametrize("argv, says", [
    (["train", "--device", "gpu"], "unknown device 'gpu'"),
    (["evaluate", "--checkpoint", "x.pt", "--device", "cuda:x"], "unknown device"),
])
def test_a_misspelt_device_is_one_line_and_exit_2(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and says in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda_is_one_line_and_exit_2(small_data, capsys):
    assert main(["evaluate", "--checkpoint", "missing.pt", "--data", str(small_data), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no CUDA device" in err and len(err.splitlines()) == 1
