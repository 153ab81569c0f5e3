"""Supervised pretraining of a source model (the workflow's own stand-in for ImageNet weights).

Writes ``model.pt`` ({"state_dict", "arch", "num_classes", "arch_options", "class_names",
"dataset"}, the format ``medtransfer.models.load_source_state_dict`` reads as kind "pretrain")
and ``meta.json`` (source-test metrics, history, provenance). Resumable like fine-tuning.
"""

from __future__ import annotations

import time
from pathlib import Path


from medtransfer import data, init, models
from medtransfer.atomic import torch_save, write_json
from medtransfer.devices import select_device
from medtransfer.grid import spec_hash
from medtransfer.provenance import git_commit, provenance
from medtransfer.training.finetune import make_loaders, seed_everything
from medtransfer.training.trainer import evaluate, fit, precision_for


def pretrain(spec: dict, *, device: str | None = None, progress: bool = True) -> dict:
    """Train ``spec["arch"]`` from random init on ``spec["cache"]``; return meta.json's content."""
    wall_start = time.monotonic()
    commit = git_commit()  # now, not when training ends hours later on a checkout that moved on
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    training = spec["training"]
    job_hash = spec_hash(spec)
    torch_device = select_device(device)
    seed_everything(spec["seed"], training["deterministic"])

    info = data.read_info(spec["cache"])
    model = models.create(spec["arch"], info.num_classes, in_chans=3, **spec["arch_options"])
    init.apply(model, "RI", seed=spec["seed"])
    loaders = make_loaders(spec, torch_device, train_indices=None)
    precision = precision_for(torch_device, training)
    result = fit(model, loaders["train"], loaders["val"], task=info.task, training=training,
                 device=torch_device, checkpoint_path=out_dir / "checkpoint.pt", spec_hash=job_hash,
                 precision=precision, progress=progress)
    model.load_state_dict(result.best_state)
    test = evaluate(model, loaders["test"], info.task, torch_device, precision)
    meta = {
        "source": spec["source"],
        "arch": spec["arch"],
        "dataset": spec["dataset"],
        "test": test.metrics,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "train_seconds": result.train_seconds,
        "precision": precision.record(),
        "provenance": provenance(spec_hash=job_hash, seed=spec["seed"], device=str(torch_device),
                                 wall_seconds=time.monotonic() - wall_start, commit=commit),
        "spec": spec,
    }
    torch_save({"state_dict": {k: v.cpu() for k, v in result.best_state.items()}, "arch": spec["arch"],
                "num_classes": info.num_classes, "arch_options": spec["arch_options"],
                "class_names": info.class_names, "dataset": spec["dataset"]}, out_dir / "model.pt")
    write_json(out_dir / "meta.json", meta)
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)
    return meta
