"""The encoder as a COVID-19 slice classifier (§2.8, Table 6): data, split, frozen training, metrics, the run,
its checkpoint and the ``crlearn classify`` command. Tiny models and 32 px inputs: seconds."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, write_rows
from PIL import Image

from crlearn.data.errors import DataError
from crlearn.data.augment import apply_view
from crlearn.training.checkpoint import CheckpointError, OutputExistsError, save_checkpoint
from crlearn.data.slices import (
    LABELS,
    ClassificationDataset,
    classification_folds,
    classification_split,
    fit_square,
)
from crlearn.tasks.classifier import (
    classifier_from_checkpoint,
    evaluate_classifier,
    load_classifier,
    patient_metrics,
    predict_proba,
    scratch_classifier,
    slice_metrics,
)
from crlearn.tasks.classifier_run import (
    ClassifyConfig,
    encode_features,
    fit_classifier,
    run_classify,
)
from crlearn.cli.main import main
from crlearn.nn.model import CRNet, CRNetConfig
from crlearn.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
SARS = ROOT / "data_sample" / "sarscov2_ct"
INDEX_FIELDS = ["slice_id", "label", "pseudo_patient_group"]


def write_folder(root, rows, sizes=None):
    """A labelled folder: rows (slice_id, label, group) and a random grayscale PNG for each, ``sizes[i]`` = (w, h)."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (name, _, _) in enumerate(rows):
        w, h = sizes[i] if sizes else (40, 30)
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(INDEX_FIELDS)
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def tiny_sars(tmp_path_factory):
    """Real slices: the first three slices of three groups of each class, 18 in all."""
    with open(SARS / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    root = tmp_path_factory.mktemp("sars")
    (root / "images").mkdir()
    chosen, seen = [], {}
    for r in rows:
        g = r["pseudo_patient_group"]
        per_class = {h for h in seen if h.startswith(r["label"] + "_g")}
        if seen.get(g, 0) < 3 and (g in seen or len(per_class) < 3) and sum(1 for x in rows if x["pseudo_patient_group"] == g) >= 3:
            seen[g] = seen.get(g, 0) + 1
            chosen.append(r)
            shutil.copy(SARS / "images" / f"{r['slice_id']}.png", root / "images")
    write_rows(root / "index.csv", chosen, list(rows[0]))
    return root


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory):
    """A tiny, untrained segmentation checkpoint: its encoder is what the classifier takes."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("seg") / "best.pt"
    save_checkpoint(path, CRNet(CRNetConfig(**TINY)), ["infection"], TrainConfig(size=32))
    return path


# --------------------------------------------------------------------------- data


def test_pad_keeps_aspect_with_centred_zero_borders_and_stretch_fills():
    image = torch.ones(1, 20, 40)  # (1, H, W): twice as wide as high
    padded = fit_square(image, 32, "pad")
    assert padded.shape == (1, 32, 32)
    assert padded[:, :8].abs().sum() == 0 and padded[:, 24:].abs().sum() == 0  # 16 rows of image, centred
    torch.testing.assert_close(padded[:, 8:24], torch.ones(1, 16, 32))
    torch.testing.assert_close(fit_square(image, 32, "stretch"), torch.ones(1, 32, 32))
    with pytest.raises(ValueError, match="fit"):
        fit_square(image, 32, "crop")


def test_dataset_reads_labels_groups_and_sizes_varying_images(tmp_path):
    rows = [("a", "covid", "p1"), ("b", "non_covid", "p2"), ("c", "covid", "p1")]
    root = write_folder(tmp_path / "d", rows, sizes=[(40, 30), (25, 50), (64, 64)])
    for fit in ("pad", "stretch"):
        ds = ClassificationDataset(root, size=32, fit=fit)
        assert ds.images.shape == (3, 1, 32, 32) and ds.images.dtype == torch.float32
        assert ds.targets.tolist() == [1, 0, 1] and ds.targets.dtype == torch.long
        assert ds.groups == ["p1", "p2", "p1"] and ds.names == ["a", "b", "c"]
    pad = ClassificationDataset(root, size=32)
    assert pad.images[1, 0, :, :8].abs().sum() == 0  # the tall slice: zero columns left and right
    assert LABELS == {"non_covid": 0, "covid": 1}
    sub = pad.subset([2, 0])
    assert sub.names == ["c", "a"] and sub.targets.tolist() == [1, 1]
    torch.testing.assert_close(sub.images[0], pad.images[2])


def test_augmented_dataset_gives_the_five_views(tmp_path):
    root = write_folder(tmp_path / "d", [("a", "covid", "p1"), ("b", "non_covid", "p2")])
    ds = ClassificationDataset(root, size=32, augment=True)
    assert len(ds) == 10
    views = ["identity", "rot90", "rot180", "rot270", "hflip"]
    for k, view in enumerate(views):
        x, y = ds[5 + k]
        torch.testing.assert_close(x, apply_view(ds.images[1], view))
        assert int(y) == 0


def _rewrite_index(root, fields, rows):
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(rows)


@pytest.mark.parametrize("problem, match", [
    ("no index", "index.csv not found"),
    ("no label column", "no label column"),
    ("no group column", "no pseudo_patient_group"),
    ("unknown label", "line 3 \\(slice 'b'\\): unknown label 'maybe'"),
    ("missing image", "b.png: image file not found"),
    ("unreadable image", "b.png: not a readable image"),
])
def test_bad_input_is_one_line_naming_the_file(tmp_path, problem, match):
    root = write_folder(tmp_path / "d", [("a", "covid", "p1"), ("b", "non_covid", "p2")])
    if problem == "no index":
        (root / "index.csv").unlink()
    elif problem == "no label column":
        _rewrite_index(root, ["slice_id", "pseudo_patient_group"], [("a", "p1"), ("b", "p2")])
    elif problem == "no group column":
        _rewrite_index(root, ["slice_id", "label"], [("a", "covid"), ("b", "non_covid")])
    elif problem == "unknown label":
        _rewrite_index(root, INDEX_FIELDS, [("a", "covid", "p1"), ("b", "maybe", "p2")])
    elif problem == "missing image":
        (root / "images" / "b.png").unlink()
    else:
        (root / "images" / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=match) as info:
        ClassificationDataset(root, size=32)
    message = str(info.value)
    assert "\n" not in message
    assert str(root / ("images/b.png" if "image" in problem else "index.csv")) in message


# --------------------------------------------------------------------------- split


def test_split_is_group_disjoint_with_every_class_in_every_part():
    ds = ClassificationDataset(SARS, size=32)
    split = classification_split(ds, seed=0)
    assert sorted(i for idx in split.values() for i in idx) == list(range(len(ds)))
    groups = {p: {ds.groups[i] for i in idx} for p, idx in split.items()}
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    for idx in split.values():
        assert set(ds.targets[idx].tolist()) == {0, 1}
    assert split == classification_split(ds, seed=0) and split != classification_split(ds, seed=1)
    for fold in classification_folds(ds, n_folds=5):
        assert not {ds.groups[i] for i in fold["test"]} & {ds.groups[i] for i in fold["train"] + fold["val"]}
        assert all(set(ds.targets[idx].tolist()) == {0, 1} for idx in fold.values())


def test_split_refuses_a_class_too_small_to_reach_every_part(tmp_path):
    rows = [(f"c{i}", "covid", f"c{i}") for i in range(4)] + [("n0", "non_covid", "n0"), ("n1", "non_covid", "n1")]
    ds = ClassificationDataset(write_folder(tmp_path / "d", rows), size=32)
    with pytest.raises(DataError, match="index.csv: no non_covid slice in the (val|test) part"):
        classification_split(ds)


def test_a_group_with_both_labels_is_refused(tmp_path):
    ds = ClassificationDataset(write_folder(tmp_path / "d", [("a", "covid", "p1"), ("b", "non_covid", "p1")]), size=32)
    with pytest.raises(DataError, match="index.csv: group 'p1' has slices of both classes"):
        classification_split(ds)
    with pytest.raises(DataError, match="both classes"):
        patient_metrics([1, 0], [0.9, 0.1], ["p1", "p1"])


# --------------------------------------------------------------------------- model and training


def test_classifier_takes_the_checkpoints_encoder_with_a_two_logit_head(seg_ckpt):
    segmenter = CRNet(CRNetConfig(**TINY))
    segmenter.load_state_dict(torch.load(seg_ckpt, weights_only=True)["state_dict"])
    frozen = classifier_from_checkpoint(seg_ckpt, "frozen")
    for k, v in segmenter.coarse.encoder.state_dict().items():
        torch.testing.assert_close(frozen.encoder.state_dict()[k], v)
    assert frozen.head.out_features == 2 and frozen(torch.rand(3, 1, 32, 32)).shape == (3, 2)
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    assert all(p.requires_grad for p in classifier_from_checkpoint(seg_ckpt, "finetune").parameters())
    scratch = scratch_classifier(CRNetConfig(**TINY))
    assert scratch.encoder.out_channels == frozen.encoder.out_channels
    with pytest.raises(ValueError, match="mode"):
        classifier_from_checkpoint(seg_ckpt, "linear")


def test_frozen_training_changes_only_the_head(seg_ckpt, tiny_sars):
    ds = ClassificationDataset(tiny_sars, size=32)
    model = classifier_from_checkpoint(seg_ckpt, "frozen")
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}  # weights and BN statistics
    head_before = model.head.weight.detach().clone()
    fit_classifier(model, ds.subset(range(12), augment=True), ds.subset(range(12, 18)),
                   ClassifyConfig(size=32, epochs=2, batch_size=8, lr=1e-2))
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, encoder_before[k], rtol=0, atol=0)
    assert not torch.equal(model.head.weight, head_before)


def test_finetuning_changes_the_encoder(seg_ckpt, tiny_sars):
    ds = ClassificationDataset(tiny_sars, size=32)
    model = classifier_from_checkpoint(seg_ckpt, "finetune")
    before = model.encoder.stem[0].weight.detach().clone()
    rng = torch.get_rng_state()
    history = fit_classifier(model, ds.subset(range(12)), ds.subset(range(12, 18)),
                             ClassifyConfig(size=32, epochs=1, batch_size=8, lr=1e-3))
    assert torch.equal(torch.get_rng_state(), rng)  # seeded inside, the caller's generator left as it was
    assert not torch.equal(model.encoder.stem[0].weight, before)
    assert list(history) >= ["epoch", "train_loss", "val_loss"] and len(history["epoch"]) == 1


def test_cached_features_give_the_full_models_logits(seg_ckpt, tiny_sars):
    ds = ClassificationDataset(tiny_sars, size=32, augment=True)
    model = classifier_from_checkpoint(seg_ckpt, "frozen").train()  # a frozen encoder stays in eval mode
    cached = encode_features(model, ds, torch.device("cpu"), batch_size=7)
    feats, targets = cached.tensors
    assert feats.shape == (len(ds), model.encoder.out_channels[-1])
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        torch.testing.assert_close(model.head(feats), model(x), rtol=1e-4, atol=1e-5)
    assert targets.tolist() == [int(ds[i][1]) for i in range(len(ds))]


# --------------------------------------------------------------------------- metrics


def test_patient_rules_hand_computed():
    # p1 COVID: one confident slice among weak ones; p2 non-COVID: one false positive slice; p3 COVID: all high.
    y = [1, 1, 1, 0, 0, 0, 1, 1]
    probs = [0.9, 0.2, 0.1, 0.6, 0.1, 0.2, 0.7, 0.8]
    groups = ["p1", "p1", "p1", "p2", "p2", "p2", "p3", "p3"]
    result = patient_metrics(y, probs, groups)
    any_slice, mean = result["any_slice"], result["mean_probability"]
    # any slice: p1 +, p2 + (wrong), p3 + -> 2/3 right, sensitivity 1, specificity 0
    assert any_slice["accuracy"] == pytest.approx(2 / 3)
    assert (any_slice["sensitivity"], any_slice["specificity"], any_slice["n_groups"]) == (1.0, 0.0, 3)
    # mean probability: p1 0.4 -> - (wrong), p2 0.3 -> -, p3 0.75 -> + -> 2/3 right, sensitivity 1/2, specificity 1
    assert mean["accuracy"] == pytest.approx(2 / 3)
    assert (mean["sensitivity"], mean["specificity"]) == (0.5, 1.0)


def test_patient_rule_sweep_hand_computed():
    from crlearn.tasks.classifier import patient_rule_sweep

    y, probs, groups = [1, 1, 1, 0, 0, 0, 1, 1], [0.9, 0.2, 0.1, 0.6, 0.1, 0.2, 0.7, 0.8], list("aaabbbcc")
    sweep = patient_rule_sweep(y, probs, groups, thresholds=[0.5, 0.65, 0.95])
    # any slice: max P per group a 0.9, b 0.6, c 0.8; mean P: a 0.4, b 0.3, c 0.75
    assert sweep["any_slice"]["sensitivity"] == [1.0, 1.0, 0.0]
    assert sweep["any_slice"]["specificity"] == [0.0, 1.0, 1.0]
    assert sweep["mean_probability"]["sensitivity"] == [0.5, 0.5, 0.0]
    assert sweep["n_groups"] == 3 and len(patient_rule_sweep(y, probs, groups)["thresholds"]) == 19


def test_slice_metrics_match_sklearn():
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    probs = np.clip(0.35 * y + rng.random(50) * 0.65, 0, 1)
    pred = (probs >= 0.5).astype(int)
    m = slice_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))  # Eq. 6
    assert m["precision"] == pytest.approx(precision_score(y, pred))  # Eq. 7
    assert m["recall"] == m["sensitivity"] == pytest.approx(recall_score(y, pred))  # Eq. 8
    assert m["f1"] == pytest.approx(f1_score(y, pred))  # Eq. 9
    tn = int(((y == 0) & (pred == 0)).sum())
    assert m["specificity"] == pytest.approx(tn / int((y == 0).sum()))
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs))
    assert m["roc"]["fpr"][-1] == 1.0 and m["roc"]["thresholds"][0] is None  # sklearn's +inf, kept JSON-safe
    json.dumps(m)
    assert slice_metrics([1, 1], [0.3, 0.9])["auc"] is None  # one class: undefined


# --------------------------------------------------------------------------- the run and its checkpoint


def test_run_classify_writes_its_files_and_never_overwrites(seg_ckpt, tiny_sars, tmp_path):
    out = tmp_path / "run"
    result = run_classify(tiny_sars, encoder=seg_ckpt, out=out, size=32, epochs=1, log=None)
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "frozen" and metrics["encoder_checkpoint"] == str(seg_ckpt)
    assert set(metrics["test"]["patient"]) == {"any_slice", "mean_probability"}
    assert set(metrics["split_groups"]["train"]).isdisjoint(metrics["split_groups"]["test"])
    model, ckpt = load_classifier(out / "best.pt")
    assert ckpt["format"] != torch.load(seg_ckpt, weights_only=True)["format"]
    assert (ckpt["mode"], ckpt["size"], ckpt["fit"], ckpt["class_names"]) == ("frozen", 32, "pad", ["non_covid", "covid"])
    np.testing.assert_allclose(predict_proba(model, result.dataset.images), predict_proba(result.model, result.dataset.images),
                               rtol=1e-5, atol=1e-6)
    assert evaluate_classifier(model, result.dataset)["n_slices"] == 18
    with pytest.raises(OutputExistsError):
        run_classify(tiny_sars, encoder=seg_ckpt, out=out, size=32, epochs=1, log=None)
    run_classify(tiny_sars, encoder=seg_ckpt, out=out, force=True, size=32, epochs=1, log=None)


def test_run_classify_trains_the_segmenter_first_without_an_encoder(small_data, tiny_sars, tmp_path):
    lines = []
    result = run_classify(tiny_sars, profile="quick", out=tmp_path / "run", size=32, epochs=1, log=lines.append,
                          seg_overrides={"data": small_data, "epochs": 1, "size": 64})
    assert (tmp_path / "run" / "segmenter" / "best.pt").is_file()
    assert result.metrics["encoder_checkpoint"] == str(tmp_path / "run" / "segmenter" / "best.pt")
    assert lines[0].startswith("stage 1") and any(line.startswith("stage 2") for line in lines)


def test_load_classifier_refuses_a_segmentation_checkpoint(seg_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match=f"{seg_ckpt}: a segmentation checkpoint"):
        load_classifier(seg_ckpt)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pt: not a crlearn classifier checkpoint"):
        load_classifier(junk)


def test_cli_classify_train_and_evaluate(seg_ckpt, tiny_sars, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["classify", "train", "--data", str(tiny_sars), "--encoder", str(seg_ckpt), "--size", "32", "--epochs", "1",
            "--out", str(run), "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| patient (any slice) |" in out and "AUC" in out
    assert main(args) == 2 and "already exists" in capsys.readouterr().err

    report = tmp_path / "eval.json"
    assert main(["classify", "evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(tiny_sars),
                 "--split", "test", "--out", str(report)]) == 0
    metrics = json.loads(report.read_text())["metrics"]
    assert {"accuracy", "precision", "recall", "f1", "auc", "confusion_matrix"} <= set(metrics["slice"])
    for rule in ("any_slice", "mean_probability"):
        assert {"accuracy", "sensitivity", "specificity", "n_groups"} <= set(metrics["patient"][rule])
    assert metrics["n_slices"] == len(json.loads((run / "metrics.json").read_text())["split"]["test"])


def test_cli_classify_bad_input_exits_2_with_one_line(seg_ckpt, tiny_sars, tmp_path, capsys):
    assert main(["classify", "train", "--data", str(tmp_path), "--scratch", "--size", "32", "--epochs", "1",
                 "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["classify", "train", "--data", str(tiny_sars), "--scratch", "--encoder", str(seg_ckpt),
                 "--out", str(tmp_path / "r2")]) == 2
    assert main(["classify", "evaluate", "--checkpoint", str(seg_ckpt), "--data", str(tiny_sars)]) == 2
    assert "a segmentation checkpoint" in capsys.readouterr().err


def test_run_classify_on_a_fold_holds_out_that_folds_groups(seg_ckpt, tiny_sars):
    folds = classification_folds(ClassificationDataset(tiny_sars, size=32), n_folds=3, seed=0)
    tests = []
    for k in range(3):
        r = run_classify(tiny_sars, encoder=seg_ckpt, size=32, epochs=1, log=None, fold=k, n_folds=3)
        assert r.metrics["split"] == folds[k] and (r.metrics["fold"], r.metrics["n_folds"]) == (k, 3)
        tests.append(set(r.metrics["split_groups"]["test"]))
    assert set.union(*tests) == set(ClassificationDataset(tiny_sars, size=32).groups)  # every group tested once
    with pytest.raises(ValueError, match="fold must lie in 0..2"):
        run_classify(tiny_sars, encoder=seg_ckpt, size=32, epochs=1, log=None, fold=3, n_folds=3)


# --------------------------------------------------------------------------- occlusion


class RegionModel(torch.nn.Module):
    """logits (0, 8 * mean of the pixels in rows 4:8, columns 0:4): only that region matters."""

    def forward(self, x):
        return torch.stack([torch.zeros(len(x)), 8 * x[:, 0, 4:8, 0:4].mean((1, 2))], dim=1)


def test_occlusion_map_is_the_probability_drop_of_each_tile_and_zero_away_from_the_evidence():
    from crlearn.tasks.classifier import occlusion_map

    image = torch.rand(1, 16, 16)
    model = RegionModel()
    sal = occlusion_map(model, image, patch=4, stride=4)  # non-overlapping tiles: each pixel's value is its tile's
    assert sal.shape == (16, 16) and sal.dtype == torch.float32
    base = predict_proba(model, image[None])[0]
    hidden = image.clone()
    hidden[:, 4:8, 0:4] = 0
    assert sal[5, 1].item() == pytest.approx(base - predict_proba(model, hidden[None])[0], abs=1e-6)
    assert sal[5, 1] > 0  # hiding the evidence lowers P(COVID-19)
    mask = torch.ones(16, 16, dtype=torch.bool)
    mask[4:8, 0:4] = False
    assert sal[mask].abs().max() < 1e-6  # the rest of the slice does not matter to this model
    overlapping = occlusion_map(model, image, patch=6, stride=3)
    assert overlapping[15, 15].abs() < 1e-6 and overlapping[5, 1] > 0
    with pytest.raises(ValueError, match="patch must lie in 1..16"):
        occlusion_map(model, image, patch=17)
    with pytest.raises(ValueError, match="one slice"):
        occlusion_map(model, image[None])
