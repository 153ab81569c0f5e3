"""Fine-tune one cell of the study grid and write the run's files (docs/DESIGN.md, "Run files").

``finetune(spec)`` takes the JSON spec the workflow built for the run (medtransfer.study
``Study.run_spec``) and writes, in the run directory: ``init.pt`` + ``init.json`` (the weights
right after initialisation and where each block's came from), ``history.csv`` (one row per
epoch), ``final.pt`` (the weights of the best validation epoch), ``predictions.h5`` (val and
test scores) and ``metrics.json`` (test metrics with provenance). Training state lives in
``checkpoint.pt`` until the run finishes, so a killed job resumes where it stopped.

An lpft run (the spec's ``protocol: lpft``, its first phase's training under ``lpft``) first
trains the head alone on the frozen backbone (:mod:`medtransfer.protocols.lpft`, resumable from
``checkpoint_lp.pt``), then fine-tunes every layer from the weights it selected; its
``history.csv`` holds both phases (column ``phase``: ``lp``, ``ft``) and its metrics.json the
first phase under ``lpft``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from medtransfer import data
from medtransfer.models import segmentation
from medtransfer.atomic import atomic_path, torch_save, write_json
from medtransfer.data.folds import run_rows
from medtransfer.specs import spec_hash
from medtransfer.models.fusion import FusionNetwork, calibrate
from medtransfer.provenance import git_commit, provenance
from medtransfer.training import distributed
from medtransfer.training.stage import initialised_model, make_loaders, seed_everything, spec_loader, write_predictions
from medtransfer.training.trainer import evaluate, fit, precision_for

log = logging.getLogger(__name__)


def finetune(spec: dict, *, device: str | None = None, progress: bool = True) -> dict:
    """Run one fine-tuning job; return the metrics dict written to metrics.json.

    Under torchrun (``train.gpus_per_job`` > 1) every process trains its share of each batch;
    rank 0 writes every file and returns the metrics, the other ranks return ``{}``.
    """
    wall_start = time.monotonic()
    commit = git_commit()  # now, not when training ends hours later on a checkout that moved on
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    training = spec["training"]
    job_hash = spec_hash(spec)
    world, torch_device = distributed.start(device)
    seed_everything(spec["seed"], training["deterministic"])

    info = data.read_info(spec["cache"])
    model, record, create_kwargs = initialised_model(spec, info.num_classes)
    # the training subset (a fraction or a count of images), of the fold's training rows for a fold run
    rows = run_rows(spec["cache"], info.task, spec["fraction"], spec["seed"], spec.get("fold"),
                    num_classes=info.num_classes, dataset=spec["dataset"])
    train_indices = rows["train"]
    loaders = make_loaders(spec, torch_device, train_indices, world, rows=rows)
    if isinstance(model, FusionNetwork):  # the linear protocol's standardisation, from the start weights
        calibrate(model.to(torch_device), spec_loader(spec, rows["split"], torch_device, indices=train_indices),
                  torch_device)
    saved = {"arch": spec["arch"], "num_classes": info.num_classes, "create_kwargs": create_kwargs,
             "init": spec["init"], **({"fusion": True} if isinstance(model, FusionNetwork) else {}),
             **({"segmentation": model.config} if isinstance(model, segmentation.SegmentationNetwork) else {})}
    if world.is_main:
        torch_save({"state_dict": model.state_dict(), **saved}, run_dir / "init.pt")
        write_json(run_dir / "init.json", {"run": spec["run"], **record})

    precision = precision_for(torch_device, training)
    probe = None
    if spec.get("lpft"):  # LP-FT: the head on the frozen backbone first, from its own checkpoint
        from medtransfer.protocols.lpft import HeadOnlyObjective

        probe = fit(model, loaders["train"], loaders["val"], task=info.task, training=spec["lpft"],
                    device=torch_device, checkpoint_path=run_dir / "checkpoint_lp.pt", spec_hash=job_hash,
                    precision=precision, progress=progress, world=world, config_key="lpft",
                    objective_class=HeadOnlyObjective)
        model.load_state_dict(probe.best_state)
        probe.objective.unfreeze()
    result = fit(model, loaders["train"], loaders["val"], task=info.task, training=training,
                 device=torch_device, checkpoint_path=run_dir / "checkpoint.pt", spec_hash=job_hash,
                 precision=precision, progress=progress, world=world)
    distributed.stop(world)  # from here rank 0 alone evaluates and writes
    if not world.is_main:
        return {}

    model.load_state_dict(result.best_state)
    examples = (spec.get("segmentation") or {}).get("examples", 0)
    evaluations = {split: evaluate(model, loaders[split], info.task, torch_device, precision, examples=examples)
                   for split in ("val", "test")}
    history = pd.DataFrame(result.history)
    if probe is not None:
        history = pd.concat([pd.DataFrame(probe.history).assign(phase="lp"), history.assign(phase="ft")],
                            ignore_index=True)
    with atomic_path(run_dir / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    write_predictions(run_dir / "predictions.h5", evaluations, info.task, info.class_names)
    torch_save({"state_dict": result.best_state, **saved, "best_epoch": result.best_epoch}, run_dir / "final.pt")
    metrics = {
        "run": spec["run"],
        "task": info.task,
        **({"class_names": info.class_names} if info.task == "segmentation" else {}),
        "test": evaluations["test"].metrics,
        "val": evaluations["val"].metrics,
        "best_epoch": result.best_epoch,
        "epochs": len(result.history),
        "num_train": int(len(train_indices)),
        "n_train": int(len(train_indices)),
        "train_seconds": result.train_seconds + (probe.train_seconds if probe is not None else 0.0),
        **({"early_stopped": len(result.history) < int(training["epochs"])} if training.get("early_stopping") else {}),
        **({"protocol": "lpft", "lpft": _phase_record(probe, spec["lpft"])} if probe is not None else {}),
        "precision": precision.record(),
        "provenance": provenance(spec_hash=job_hash, seed=spec["seed"], device=str(torch_device),
                                 wall_seconds=time.monotonic() - wall_start, commit=commit, **world.record()),
        "spec": spec,
    }
    # metrics.json last: its presence means the run is complete.
    write_json(run_dir / "metrics.json", metrics)
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    (run_dir / "checkpoint_lp.pt").unlink(missing_ok=True)
    return metrics


def _phase_record(probe, training: dict) -> dict:
    """metrics.json's ``lpft``: what the frozen-backbone phase ran and where it ended."""
    last = probe.history[-1] if probe.history else {}
    return {"epochs": len(probe.history), "best_epoch": probe.best_epoch, "train_seconds": probe.train_seconds,
            "select_on": training.get("select_on"),
            **({"early_stopped": len(probe.history) < int(training["epochs"])} if training.get("early_stopping")
               else {}),
            "last_val": {k: v for k, v in last.items() if k.startswith("val_")}}
