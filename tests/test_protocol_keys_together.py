"""The keys of issue 26 in one study, run end to end: folds and an absolute training size, the
lpft protocol beside fine-tuning and k-NN, plateau + warm-up + early stopping + clipping + a
balanced-accuracy selection, every augmentation op, eval_crop with TenCrop, per-target and
per-architecture training, and a pretrained source with its own input transform. Each key has
its own tests against independent computations; this one checks that they compose in one plan
and that the tidy CSVs say what ran."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from conftest import run_snakemake

OFF = ("weight_drift", "reinit", "layer_knn", "filters", "fid", "prediction_similarity", "representation_gain")


def protocol_keys_study() -> dict:
    return {
        "datasets": {
            "lesions": {"format": "synthetic", "task": "lesion_presence", "n_train": 80, "n_val": 24, "n_test": 24,
                        "size": 16, "folds": {"k": 2}},
            "shapes": {"format": "synthetic", "task": "natural_shapes", "n_train": 64, "n_val": 16, "n_test": 16,
                       "size": 16},
        },
        "sources": {"natural": {"pretrain": {"dataset": "shapes", "training": {"epochs": 1}}, "preprocess": "unit"}},
        "architectures": {"cbr_tiny": {"width": 0.125}},
        "study": {"targets": ["lesions"], "architectures": ["cbr_tiny"], "inits": ["RI", {"WT": "natural"}],
                  "fractions": [0.5, 20], "seeds": [0], "folds": [0, 1], "protocols": ["finetune", "lpft", "knn"]},
        "train": {
            "epochs": 2, "batch_size": 16, "num_workers": 0,
            "schedule": {"name": "plateau", "monitor": "val_auc", "factor": 0.1, "patience": 1},
            "warmup_steps": 2, "early_stopping": {"monitor": "val_loss", "patience": 3}, "grad_clip": 1.0,
            "select_on": "val_balanced_acc",
            "augment": {"hflip": 0.5, "vflip": 0.5, "random_resized_crop": {"scale": [0.8, 1.0]}, "rotation": 10,
                        "affine": {"translate": 0.1, "shear": 0.1, "scale": 0.1},
                        "color_jitter": {"brightness": 0.2, "contrast": 0.2, "p": 0.2}, "grayscale": 0.2},
            "image_size": 14, "eval_crop": 0.875, "tta": "tencrop",
            "by_dataset": {"lesions": {"augment": {"hflip": 0}}},
            "by_arch": {"cbr_tiny": {"optimizer": {"lr": 2.0e-3}}},
        },
        "pretrain": {"early_stopping": None, "schedule": {"name": "constant"}, "select_on": "val_auc", "tta": None},
        "lpft": {"epochs": 1, "optimizer": {"name": "adam", "lr": 1.0e-2}},
        "knn": {"k": 5},
        "analysis": {"measures": [], "pairs": [], **{name: False for name in OFF}},
    }


@pytest.mark.slow
def test_the_protocol_keys_compose_in_one_study(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(protocol_keys_study()))
    result = run_snakemake(tmp_path, "--cores", "2", "--resources", "gpu=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = pd.read_csv(tmp_path / "results" / "analysis" / "metrics.csv")
    # protocols x inits x sizes x folds, each with its fold and its training size
    assert len(metrics) == 3 * 2 * 2 * 2
    assert set(metrics["protocol"]) == {"finetune", "lpft", "knn"} and set(metrics["fold"]) == {0, 1}
    counted = metrics[metrics["fraction"] == 20]
    assert len(counted) == 12 and (counted["n_train"] == 20).all()
    run = tmp_path / "results" / "runs" / "lesions" / "cbr_tiny" / "WT_natural" / "n20" / "s0_fold1"
    spec = json.loads((run / "metrics.json").read_text())["spec"]
    training = spec["training"]
    # the dataset's override beats the study's flip; the architecture's learning rate is merged in
    assert training["augment"]["hflip"] == 0 and training["augment"]["vflip"] == 0.5
    assert training["optimizer"]["lr"] == 2.0e-3 and "by_dataset" not in training and "by_arch" not in training
    assert spec["preprocess"] == "unit" and spec["fold"] == 1
    history = pd.read_csv(run / "history.csv")
    assert {"val_balanced_acc", "val_auc", "val_loss"} <= set(history.columns)
    lpft = pd.read_csv(tmp_path / "results" / "protocols" / "lpft" / "lesions" / "cbr_tiny" / "RI" / "n20" / "s0_fold0"
                       / "history.csv")
    assert list(lpft["phase"]) == ["lp", "ft", "ft"]
    summary = pd.read_csv(tmp_path / "results" / "tables" / "summary.csv")
    assert (summary["n_folds"] == 2).all()
