"""Frozen features of an initialised network: computed once per (dataset, architecture, init[,
seed]) and shared by the linear and k-NN protocols (and the layer-wise analyses).

``features.h5``: per split ``features`` float32 [N, D] (the pooled feature in front of the
classifier, :func:`medtransfer.models.embedding.pooled_features`, in float32 and eval mode) and
``labels`` (as the cache stores them, in cache order); attributes ``init`` (the init record, as
init.json) and ``provenance`` (JSON).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np

from medtransfer import data
from medtransfer.atomic import atomic_path
from medtransfer.devices import select_device
from medtransfer.specs import spec_hash
from medtransfer.models.embedding import embed_loader
from medtransfer.provenance import git_commit, provenance
from medtransfer.training.stage import initialised_model, seed_everything, spec_loader

SPLITS = ("train", "val", "test")


def extract_features(spec: dict, *, device: str | None = None) -> dict:
    """Write ``spec["out"]`` (features.h5); return its summary (shapes, seconds)."""
    wall_start = time.monotonic()
    commit = git_commit()
    torch_device = select_device(device)
    seed_everything(spec["seed"], True)
    info = data.read_info(spec["cache"])
    model, record, _ = initialised_model(spec, max(1, info.num_classes))
    model.to(torch_device).eval()
    summary: dict = {"splits": {}}
    out = Path(spec["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w") as handle:
        for split in SPLITS:
            features, labels = embed_loader(model, spec_loader(spec, split, torch_device), torch_device)
            group = handle.create_group(split)
            group.create_dataset("features", data=features.numpy().astype(np.float32))
            group.create_dataset("labels", data=labels.numpy())
            summary["splits"][split] = list(features.shape)
        handle.attrs["init"] = json.dumps(record)
        handle.attrs["task"] = info.task
        handle.attrs["class_names"] = json.dumps(info.class_names)
        handle.attrs["provenance"] = json.dumps(provenance(
            spec_hash=spec_hash(spec), seed=spec["seed"], device=str(torch_device),
            wall_seconds=time.monotonic() - wall_start, commit=commit))
    summary["seconds"] = time.monotonic() - wall_start
    return summary


def read_features(path: str | Path) -> dict:
    """``{"train"|"val"|"test": (features [N, D] float32, labels), "task", "class_names", "init", "provenance"}``."""
    with h5py.File(path, "r") as handle:
        out: dict = {split: (handle[split]["features"][...], handle[split]["labels"][...]) for split in SPLITS}
        out["task"] = str(handle.attrs["task"])
        out["class_names"] = json.loads(handle.attrs["class_names"])
        out["init"] = json.loads(handle.attrs["init"])
        out["provenance"] = json.loads(handle.attrs["provenance"])
    return out
