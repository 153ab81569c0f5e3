"""Segmentation targets: Dice/IoU and the loss against independent computations, the U-Net over
our encoders, inits on the encoder, the shared trainer (selection, exact resume), fine-tuning's
files, and the study grid (medtransfer.training.metrics, models.segmentation, grid)."""

from __future__ import annotations

import copy
import json
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, jaccard_score

from conftest import SCHEMA, tiny_config
from medtransfer import models
from medtransfer.analysis.activations import block_activations, load_state
from medtransfer.atomic import torch_save
from medtransfer.data import build_cache, make_loader
from medtransfer.errors import ConfigError
from medtransfer.specs import spec_hash
from medtransfer.study import DEFAULT_TRAINING, Study, deep_merge, validate_config
from medtransfer.models import segmentation
from medtransfer.training.finetune import finetune
from medtransfer.training.stage import segmentation_model
from medtransfer.training.metrics import (dice_iou, segmentation_counts, segmentation_loss, segmentation_metrics)
from medtransfer.training.trainer import Preempted, evaluate, fit, precision_for

CPU = torch.device("cpu")


# --------------------------------------------------------------------------- metrics


def random_masks(seed, n=12, k=3, size=9):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, (n, size, size))
    predicted = np.where(rng.random((n, size, size)) < 0.6, truth, rng.integers(0, k, (n, size, size)))
    truth[0] = 0  # an image with nothing to find ...
    predicted[0] = 0  # ... and nothing found: Dice 1 for every foreground class
    predicted[1][predicted[1] == 2] = 1  # class 2 present but never predicted in image 1
    return truth, predicted


def test_dice_and_iou_equal_scikit_learn_per_image_and_class():
    truth, predicted = random_masks(0)
    counts = segmentation_counts(torch.from_numpy(predicted), torch.from_numpy(truth), 3).numpy()
    dice, iou = dice_iou(counts)
    for i in range(len(truth)):
        for c in range(3):
            t, p = truth[i].ravel() == c, predicted[i].ravel() == c
            assert dice[i, c] == pytest.approx(f1_score(t, p, zero_division=1.0))
            assert iou[i, c] == pytest.approx(jaccard_score(t, p, zero_division=1.0))
    metrics = segmentation_metrics(counts)
    for c in range(3):
        expected = np.mean([f1_score(truth[i].ravel() == c, predicted[i].ravel() == c, zero_division=1.0)
                            for i in range(len(truth))])
        assert metrics[f"dice_{c}"] == pytest.approx(expected)
    assert metrics["dice"] == pytest.approx((metrics["dice_1"] + metrics["dice_2"]) / 2)
    assert metrics["iou"] == pytest.approx((metrics["iou_1"] + metrics["iou_2"]) / 2)
    assert metrics["pixel_acc"] == pytest.approx(accuracy_score(truth.ravel(), predicted.ravel()))
    # pooled Dice of the foreground classes = micro-averaged F1 over them
    assert metrics["dice_global"] == pytest.approx(
        f1_score(truth.ravel(), predicted.ravel(), labels=[1, 2], average="micro"))
    assert dice[0, 1] == dice[0, 2] == 1.0


def test_segmentation_loss_is_cross_entropy_plus_soft_dice():
    torch.manual_seed(0)
    logits, masks = torch.randn(4, 3, 6, 6), torch.randint(0, 3, (4, 6, 6))
    masks[:, :, :] = torch.where(masks == 2, 1, masks)  # class 2 absent from the batch: left out of Dice
    p = torch.softmax(logits, 1).numpy().astype(np.float64)
    onehot = np.eye(3)[masks.numpy()].transpose(0, 3, 1, 2)
    ce = -np.log(np.take_along_axis(p, masks.numpy()[:, None], 1)).mean()
    soft = (2 * (p * onehot).sum((0, 2, 3))) / np.maximum((p + onehot).sum((0, 2, 3)), 1e-7)
    present = onehot.sum((0, 2, 3)) > 0
    dice_loss = ((1 - soft) * present).mean()  # mean over all classes, absent ones contributing 0
    assert float(segmentation_loss(logits, masks)) == pytest.approx(ce + dice_loss, rel=1e-5)
    # two classes: cross-entropy is the binary cross-entropy of the logit difference (BCE + Dice)
    two, binary = torch.randn(5, 2, 4, 4), torch.randint(0, 2, (5, 4, 4))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(two[:, 1] - two[:, 0], binary.float())
    assert float(torch.nn.functional.cross_entropy(two, binary)) == pytest.approx(float(bce), rel=1e-5)


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("arch,options,size,skips", [
    ("cbr_tiny", {"width": 0.25}, 32, ["block1", "block2", "block3", "block4"]),
    ("resnet18_28", {"width": 0.125}, 28, ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]),
    ("resnet18", {}, 32, ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]),  # timm, ImageNet stem
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}, 32, ["blocks.11"]),  # tokens: one resolution
])
def test_unet_over_every_encoder_family(arch, options, size, skips):
    encoder = models.create(arch, 1, **options)
    names = [name for name, _ in models.blocks(encoder)][:-1]
    shapes = {}  # independent of the skip rule: each block's output size, by plain hooks
    handles = [module.register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, o.shape))
               for name, module in models.blocks(encoder)[:-1]]
    encoder.eval()(torch.zeros(1, 3, size, size))
    for handle in handles:
        handle.remove()
    net = segmentation.build(encoder, 3, size)
    assert net.config["skips"] == skips
    x = torch.randn(2, 3, size, size, requires_grad=True)
    logits = net.train()(x)
    assert logits.shape == (2, 3, size, size)
    logits.sum().backward()
    first = next(p for p in net.encoder.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0, "gradients reach the encoder through the skips"
    blocks = models.blocks(net)
    assert [n for n, _ in blocks] == names + ["head"] and blocks[-1][1] is net.decoder
    keys = models.block_keys(net)
    assert sorted(k for ks in keys.values() for k in ks) == sorted(net.state_dict())
    assert all(k.startswith("decoder.") for k in keys["head"])
    if arch == "cbr_tiny":  # all four blocks halve: the skips are every block (1/2 ... 1/16)
        assert [tuple(shapes[n][2:]) for n in skips] == [(16, 16), (8, 8), (4, 4), (2, 2)]


def write_source(tmp_path, arch="cbr_tiny", options=None):
    torch.manual_seed(123)
    source = models.create(arch, 12, **(options or {"width": 0.25}))
    path = tmp_path / "source.pt"
    torch_save({"state_dict": source.state_dict(), "arch": arch, "num_classes": 12}, path)
    return source.state_dict(), {"kind": "pretrain", "path": str(path)}


@pytest.fixture(scope="module")
def seg_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "seg.h5"
    build_cache("seg", {"format": "synthetic", "task": "lesion_segmentation", "n_train": 96, "n_val": 32,
                        "n_test": 40, "size": 16}, path, progress=False)
    return path


def seg_spec(tmp_path, cache, init="RI", source=None, seed=0, **training):
    return {"run": "seg/cbr_tiny/x/f1/s0", "run_dir": str(tmp_path / "run"), "dataset": "seg", "cache": str(cache),
            "arch": "cbr_tiny", "arch_options": {"width": 0.25},
            "init": {"name": init, "source": "natural" if source else None, "k": None, "slim": None, "label": init},
            "source": source, "fraction": 1.0, "seed": seed,
            "training": deep_merge(DEFAULT_TRAINING, {"epochs": 2, "batch_size": 32, "num_workers": 0,
                                                      "select_on": "val_dice", **training}),
            "segmentation": {"decoder": "unet", "decoder_channels": "auto", "select_on": "val_dice", "examples": 4}}


def test_every_init_applies_to_the_encoder_and_the_decoder_starts_random(tmp_path, seg_cache):
    source, weights = write_source(tmp_path)
    wt, wt_record, _ = segmentation_model(seg_spec(tmp_path, seg_cache, "WT", weights), 2)
    ri, _, _ = segmentation_model(seg_spec(tmp_path, seg_cache, "RI"), 2)
    st, _, _ = segmentation_model(seg_spec(tmp_path, seg_cache, "ST", weights), 2)
    body = [k for k in source if not k.startswith("head.")]
    for key in body:
        torch.testing.assert_close(wt.encoder.state_dict()[key], source[key], rtol=0, atol=0)
    conv = "block2.conv.weight"
    assert not torch.equal(ri.encoder.state_dict()[conv], source[conv])
    # ST: drawn from the source tensor's statistics, not copied
    assert not torch.equal(st.encoder.state_dict()[conv], source[conv])
    assert st.encoder.state_dict()[conv].std().item() == pytest.approx(source[conv].std().item(), rel=0.1)
    for key, value in ri.decoder.state_dict().items():  # the same random decoder under the same seed
        assert torch.equal(value, wt.decoder.state_dict()[key]), key
    assert not any(k.startswith("encoder.head.") for k in wt.state_dict()), "the classifier is removed"
    head = wt_record["blocks"][-1]
    assert head["block"] == "head" and head["origin"] == "random" and "decoder" in head["module"]
    assert wt_record["segmentation"]["decoder_origin"] == "random"
    assert [b["origin"] for b in wt_record["blocks"][:-1]] == ["source"] * 4


# --------------------------------------------------------------------------- training


def loaders(cache, batch_size=32, augment=None):
    common = dict(normalize="dataset", channels=3, num_workers=0, max_memory_mb=64)
    return (make_loader(cache, "train", batch_size=batch_size, shuffle=True, seed=0, augment=augment, **common),
            make_loader(cache, "val", batch_size=64, shuffle=False, **common))


def test_evaluation_equals_scikit_learn_on_the_whole_split_whatever_the_batching(tmp_path, seg_cache):
    net, _, _ = segmentation_model(seg_spec(tmp_path, seg_cache), 2)
    net.eval()
    precision = precision_for(CPU, DEFAULT_TRAINING)
    results = [evaluate(net, make_loader(seg_cache, "test", batch_size=b, shuffle=False, channels=3,
                                         num_workers=0), "segmentation", CPU, precision, examples=5)
               for b in (3, 40)]
    assert results[0].metrics == pytest.approx(results[1].metrics)
    xs, ys = zip(*make_loader(seg_cache, "test", batch_size=40, shuffle=False, channels=3, num_workers=0))
    with torch.no_grad():
        predicted = net(xs[0]).argmax(1).numpy()
    truth = ys[0].numpy()
    expected = np.mean([f1_score(truth[i].ravel() == 1, predicted[i].ravel() == 1, zero_division=1.0)
                        for i in range(len(truth))])
    assert results[0].metrics["dice"] == pytest.approx(expected)
    assert results[0].scores.shape == (40, 2) and results[0].labels.shape == (40, 2)
    np.testing.assert_array_equal(results[0].labels[:, 1], (truth == 1).reshape(40, -1).sum(1))
    assert results[0].extras["example_masks"].shape == (5, 16, 16)
    assert results[0].extras["example_scores"].shape == (5, 2, 16, 16)
    np.testing.assert_array_equal(results[0].extras["example_masks"], truth[:5])


class Interrupting:
    """A loader that sends SIGTERM to this process at one (epoch, batch)."""

    def __init__(self, loader, at=None):
        self.loader, self.at = loader, at

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.loader.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch, item in enumerate(self.loader):
            if (self.epoch, batch) == self.at:
                os.kill(os.getpid(), signal.SIGTERM)
            yield item


def test_segmentation_trains_in_the_shared_loop_selects_on_val_dice_and_resumes_exactly(tmp_path, seg_cache):
    def run(folder, at=None):
        net, _, _ = segmentation_model(seg_spec(tmp_path, seg_cache), 2)
        train, val = loaders(seg_cache, augment={"hflip": True, "crop_padding": 2})
        training = deep_merge(DEFAULT_TRAINING, {"epochs": 3, "select_on": "val_dice"})  # SIGTERM saves
        result = fit(net, Interrupting(train, at), val, task="segmentation", training=training, device=CPU,
                     checkpoint_path=folder / "ckpt.pt", spec_hash="seg", progress=False)
        return net, result

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    reference_net, reference = run(tmp_path / "a")
    assert {"val_loss", "val_dice", "val_iou"} <= set(reference.history[0]) and "val_auc" not in reference.history[0]
    best = max(reference.history, key=lambda row: row["val_dice"])
    assert reference.best_epoch == best["epoch"]
    with pytest.raises(Preempted):
        run(tmp_path / "b", at=(1, 1))
    resumed_net, resumed = run(tmp_path / "b")
    for key, value in reference_net.state_dict().items():
        assert torch.equal(value, resumed_net.state_dict()[key]), key
    for key, value in reference.best_state.items():
        assert torch.equal(value, resumed.best_state[key]), key


def test_finetune_writes_a_segmentation_run_the_analyses_can_read(tmp_path, seg_cache):
    source, weights = write_source(tmp_path)
    spec = seg_spec(tmp_path, seg_cache, "WT", weights)
    metrics = finetune(spec, device="cpu", progress=False)
    run_dir = tmp_path / "run"
    assert metrics["task"] == "segmentation" and metrics["class_names"] == ["background", "lesion"]
    assert {"dice", "iou", "dice_1", "iou_1", "dice_global", "pixel_acc"} <= set(metrics["test"])
    history = pd.read_csv(run_dir / "history.csv")
    assert metrics["best_epoch"] == int(history.loc[history["val_dice"].idxmax(), "epoch"])
    assert json.loads((run_dir / "init.json").read_text())["blocks"][-1]["origin"] == "random"
    import h5py

    with h5py.File(run_dir / "predictions.h5") as handle:
        assert handle.attrs["task"] == "segmentation"
        assert handle["test/scores"].shape == (40, 2) and handle["test/example_masks"].shape == (4, 16, 16)
        per_image = handle["test/scores"][:, 1]
    assert per_image.mean() == pytest.approx(metrics["test"]["dice"], rel=1e-5)
    # final.pt rebuilds (through the analyses' loader) to the network that was tested
    model = load_state(run_dir / "final.pt")
    assert isinstance(model, segmentation.SegmentationNetwork)
    test = make_loader(seg_cache, "test", batch_size=40, shuffle=False, channels=3, num_workers=0)
    again = evaluate(model, test, "segmentation", CPU, precision_for(CPU, spec["training"]))
    assert again.metrics["dice"] == pytest.approx(metrics["test"]["dice"])
    acts = block_activations(model, test, pool=2, device=CPU)
    assert list(acts) == ["block1", "block2", "block3", "block4", "head"]
    assert acts["block1"].shape[:2] == (40, 16) and acts["head"].shape == (40, 2, 2, 2)
    init_model = load_state(run_dir / "init.pt")
    torch.testing.assert_close(init_model.encoder.state_dict()["block1.conv.weight"], source["block1.conv.weight"])


# --------------------------------------------------------------------------- study grid


def seg_config():
    config = tiny_config()
    config["datasets"]["masks"] = {"format": "synthetic", "task": "lesion_segmentation", "n_train": 96,
                                   "n_val": 32, "n_test": 32, "size": 16}
    config["study"]["targets"] = ["lesions", "masks"]
    return config


def test_segmentation_targets_sit_in_the_same_grid():
    plain, mixed = Study(tiny_config()), Study(seg_config())
    assert len(mixed.runs) == 2 * len(plain.runs) and mixed.segmentation_targets == ["masks"]
    seg_run = next(run for run in mixed.runs if run.dataset == "masks")
    spec = mixed.run_spec(seg_run)
    assert spec["segmentation"] == {"decoder": "unet", "decoder_channels": "auto", "select_on": "val_dice",
                                    "examples": 8}
    assert spec["training"]["select_on"] == "val_dice"
    # a classification run's spec (and with it its hash and results) is what it was without the target
    for run in plain.runs:
        assert spec_hash(mixed.run_spec(run)) == spec_hash(plain.run_spec(run))
    assert "segmentation" not in mixed.run_spec(plain.runs[0])
    names = mixed.figure_names()
    assert {"test_auc", "convergence", "test_dice", "convergence_dice"} <= set(names)
    only = seg_config()
    only["study"]["targets"] = ["masks"]
    names = Study(only).figure_names()
    assert "test_dice" in names and "test_auc" not in names and "convergence" not in names
    assert "similarity_init_final" in names, "the similarity analyses run on the encoder blocks"
    assert [r.dataset for r in Study(only).classification_runs()] == []


def test_frozen_protocols_and_fusions_skip_segmentation_targets():
    config = seg_config()
    config["study"]["protocols"] = ["finetune", "linear", "knn"]
    config["sources"]["other"] = {"pretrain": {"dataset": "shapes"}}
    config["study"]["inits"] = ["RI", {"WT": "natural"}, {"DVME": ["natural", "other"], "finetune": True}]
    study = Study(config)
    assert {run.dataset for _, run in study.probe_runs} == {"lesions"}
    assert not [run for run in study.runs if run.dataset == "masks" and run.init.startswith("DVME")]
    assert [run for run in study.runs if run.dataset == "lesions" and run.init.startswith("DVME")]


@pytest.mark.parametrize("mutate,message", [
    (lambda c: c.update(segmentation={"decoder": "fpn"}), r"segmentation\.decoder: 'fpn'; allowed: unet"),
    (lambda c: c.update(segmentation={"select_on": "val_auc"}), r"segmentation\.select_on.*val_dice, val_loss, last"),
    (lambda c: c.update(segmentation={"decoder_channels": [64, -1]}), r"segmentation\.decoder_channels"),
    (lambda c: c.update(segmentation={"examples": -1}), r"segmentation\.examples"),
    (lambda c: c["sources"].update(natural={"pretrain": {"dataset": "masks"}}),
     r"sources\.natural\.pretrain\.dataset: 'masks' is a segmentation dataset"),
])
def test_bad_segmentation_config_is_a_config_error_naming_the_key(mutate, message):
    config = seg_config()
    mutate(config)
    with pytest.raises(ConfigError, match=message):
        Study(config)


def test_schema_knows_the_segmentation_block():
    config = seg_config()
    config["segmentation"] = {"decoder": "unet", "decoder_channels": [32, 16, 16, 8], "examples": 2}
    validate_config(config, SCHEMA)
    config["segmentation"] = {"decoder": "unet", "depth": 3}
    with pytest.raises(ConfigError, match="segmentation"):
        validate_config(config, SCHEMA)


def test_grid_names_match_the_data_and_model_registries():
    from medtransfer.data import FORMATS
    from medtransfer.data.formats.synthetic import TASKS
    from medtransfer.study import SEGMENTATION_DECODERS, SEGMENTATION_FORMATS, SEGMENTATION_SYNTHETIC_TASKS

    assert SEGMENTATION_DECODERS == segmentation.DECODERS
    assert set(SEGMENTATION_FORMATS) <= set(FORMATS.names())
    assert set(SEGMENTATION_SYNTHETIC_TASKS) == {t for t, (_, kind, _) in TASKS.items() if kind == "segmentation"}


# --------------------------------------------------------------------------- tables and figures


def test_a_mixed_metrics_csv_gives_dice_to_segmentation_and_auc_to_classification(tmp_path):
    from medtransfer.analysis.collect import collect_metrics
    from medtransfer.figures.performance import _read_metrics
    from medtransfer.figures.tables import summary_table

    study = Study(seg_config())
    files = []
    rng = np.random.default_rng(0)
    truth = {}
    for run in study.runs:
        spec = study.run_spec(run)
        seg = run.dataset == "masks"
        value = float(rng.uniform(0.3, 0.9))
        truth[(run.init, run.seed, run.dataset)] = value
        test = {"dice": value, "iou": value / 2, "dice_global": value} if seg else {"auc": value, "acc": 0.5}
        val = {"dice": value} if seg else {"auc": value, "acc": 0.5}
        path = tmp_path / f"{len(files)}.json"
        path.write_text(json.dumps({"spec": spec, "task": "segmentation" if seg else "binary", "test": test,
                                    "val": val, "num_train": 10, "provenance": {"config_hash": "h",
                                                                                "git_commit": "c"}}))
        files.append(str(path))
    frame = collect_metrics(files)
    frame.to_csv(tmp_path / "metrics.csv", index=False)
    dice = _read_metrics(tmp_path / "metrics.csv", "test_dice")
    auc = _read_metrics(tmp_path / "metrics.csv", "test_auc")
    assert set(dice["dataset"]) == {"masks"} and set(auc["dataset"]) == {"lesions"}
    table = summary_table(tmp_path / "metrics.csv", tmp_path / "s.csv", tmp_path / "s.md")
    for init in ("RI", "WT_natural"):
        row = table[(table["dataset"] == "masks") & (table["init"] == init)].iloc[0]
        values = [truth[(init, s, "masks")] for s in (0, 1)]
        assert row["test_dice_mean"] == pytest.approx(np.mean(values))
        assert row["test_dice_sd"] == pytest.approx(np.std(values, ddof=1))
        assert np.isnan(row["test_auc_mean"])
    assert "test Dice" in (tmp_path / "s.md").read_text()
