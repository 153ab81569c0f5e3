"""The config's defaults: what every section of a study config holds when the config leaves a key out.

Each job spec carries the merged values, so a new key here changes every spec (and its hash).
"""

from __future__ import annotations

from typing import Any

DEFAULT_TRAINING: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 64,
    "eval_batch_size": 256,
    "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9},
    "schedule": {"name": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1, "warmup_epochs": 0},
    "normalize": "dataset",
    "image_size": None,
    "resize_mode": "nearest",
    "augment": None,
    "select_on": "val_auc",
    "amp": "bf16",
    "channels_last": True,
    "deterministic": True,
    "num_workers": 2,
    "max_memory_mb": 4096,
    "checkpoint_minutes": 10.0,
}

DEFAULT_ANALYSIS: dict[str, Any] = {
    "probe_size": 512,
    "probe_split": "test",
    "probe_seed": 0,
    "pool": 4,
    "dtype": "float32",
    "measures": ["linear_cka_debiased", "linear_cka"],
    "pairs": [],
    # The feature-reuse analyses (docs/analyses.md, "Feature reuse"): each on by default, `false`
    # turns it off.
    # layer_knn's k / temperature / cap_k left None are the study's `knn:` settings; filters'
    # cell left None is the first target and architecture, the largest fraction, the first seed.
    # job: one job per run (parallel over GPUs) or per (dataset, arch, fraction) group (one process
    # start, ~4 s of imports, for all its runs: the cheaper choice for small models and CPUs).
    "weight_drift": {},
    "reinit": {"split": "test", "job": "run"},
    "layer_knn": {"k": None, "temperature": None, "cap_k": None, "states": ["init", "final"], "split": "test",
                  "max_memory_mb": 2048, "job": "run"},
    "filters": {"dataset": None, "arch": None, "fraction": None, "seed": None, "max_filters": 64},
    # cross-run feature-reuse analyses (medtransfer.analysis.fid / predictions / representation_gain);
    # each `false` in the config turns it off
    "fid": {"features": "inception_v3", "size": None, "split": "train", "max_images": 10000, "arch": None,
            "file": None, "batch_size": 100, "metric": "test_auc", "source_datasets": {}},
    "prediction_similarity": {"split": "test"},
    "representation_gain": {"metric": "test_auc", "include_ri": False},
    # Juodelyte et al.'s CCA protocol ({channels: 64, positions: 10000, repeats: 5}); null: off
    "cca_subsample": None,
}

# config `segmentation:` (how every segmentation target is fine-tuned): the decoder over the
# encoder's canonical blocks, its widths ("auto" or one per skip, deepest first), the
# best-validation criterion, and how many example masks per split predictions.h5 keeps
DEFAULT_SEGMENTATION: dict[str, Any] = {
    "decoder": "unet",
    "decoder_channels": "auto",
    "select_on": "val_dice",
    "examples": 8,
}

# Per-rule defaults; config `resources:` overrides them per rule name.
DEFAULT_RESOURCES: dict[str, dict[str, int]] = {
    "preprocess": {"threads": 2, "mem_mb": 4000, "runtime": 60},
    "pretrain": {"threads": 4, "mem_mb": 8000, "runtime": 240},
    "finetune": {"threads": 4, "mem_mb": 8000, "runtime": 240},
    "activations": {"threads": 2, "mem_mb": 8000, "runtime": 30},
    "similarity": {"threads": 2, "mem_mb": 8000, "runtime": 30},
    "features": {"threads": 2, "mem_mb": 8000, "runtime": 60},
    "probe": {"threads": 1, "mem_mb": 4000, "runtime": 30},
    "collect": {"threads": 1, "mem_mb": 2000, "runtime": 10},
    "figure": {"threads": 1, "mem_mb": 2000, "runtime": 10},
    "weight_drift": {"threads": 1, "mem_mb": 4000, "runtime": 30},
    "filters": {"threads": 1, "mem_mb": 4000, "runtime": 30},
    "reinit": {"threads": 2, "mem_mb": 8000, "runtime": 60},
    "layer_knn": {"threads": 2, "mem_mb": 8000, "runtime": 120},
    "fid_stats": {"threads": 2, "mem_mb": 8000, "runtime": 60},
    "domain": {"threads": 1, "mem_mb": 4000, "runtime": 20},
}
