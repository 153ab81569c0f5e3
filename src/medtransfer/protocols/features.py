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
import torch

from medtransfer import data, init, models
from medtransfer.atomic import atomic_path
from medtransfer.devices import select_device
from medtransfer.grid import spec_hash
from medtransfer.models.embedding import embed_loader
from medtransfer.provenance import git_commit, provenance
from medtransfer.training.finetune import input_size, seed_everything

SPLITS = ("train", "val", "test")


def initialised_model(spec: dict, num_classes: int) -> tuple[torch.nn.Module, dict]:
    """The model of ``spec["init"]`` as fine-tuning would start it (same create and init calls)."""
    init_spec = spec["init"]
    create_kwargs = {**spec["arch_options"],
                     **init.create_kwargs(init_spec["name"], k=init_spec["k"], slim=init_spec.get("slim"))}
    model = models.create(spec["arch"], max(1, num_classes), in_chans=3, **create_kwargs)
    source = models.load_source_state_dict(spec["source"]) if spec.get("source") else None
    record = init.apply(model, init_spec["name"], source=source, k=init_spec["k"], seed=spec["seed"],
                        **({"slim": init_spec["slim"]} if init_spec.get("slim") else {}))
    return model, record


def extract_features(spec: dict, *, device: str | None = None) -> dict:
    """Write ``spec["out"]`` (features.h5); return its summary (shapes, seconds)."""
    wall_start = time.monotonic()
    commit = git_commit()
    torch_device = select_device(device)
    seed_everything(spec["seed"], True)
    info = data.read_info(spec["cache"])
    model, record = initialised_model(spec, info.num_classes)
    model.to(torch_device).eval()
    training = spec["training"]
    summary: dict = {"splits": {}}
    out = Path(spec["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w") as handle:
        for split in SPLITS:
            loader = data.make_loader(
                spec["cache"], split, batch_size=training["eval_batch_size"], shuffle=False, device=torch_device,
                channels=3, normalize=training["normalize"], image_size=input_size(spec),
                resize_mode=training["resize_mode"], max_memory_mb=training["max_memory_mb"],
                num_workers=training["num_workers"], seed=spec["seed"])
            features, labels = embed_loader(model, loader, torch_device)
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
