"""Pretraining of a source model: supervised (the workflow's stand-in for ImageNet weights) or
self-supervised (SimCLR, MoCo v2, BYOL, DINO, SwAV, Barlow Twins), from random init or, for
continual pretraining, from another source's weights (``from``). Supervised pretraining trains on
single labels (cross-entropy) or on multi-label data (BCE over the known labels, best epoch by the
mean per-label validation AUC: Hosseinzadeh Taher et al.'s domain-adapted CheXpert / ChestX-ray14
models) through :func:`medtransfer.training.trainer.fit`, as fine-tuning does.

Writes ``model.pt`` ({"state_dict", "arch", "num_classes", "arch_options", "class_names",
"dataset", "method"}, the format ``medtransfer.models.load_source_state_dict`` reads as kind
"pretrain") and ``meta.json`` (history, the k-NN evaluation, provenance). For a self-supervised
source the classifier in ``state_dict`` is the architecture's untrained init (WT never takes a
head). Both kinds run the shared epoch loop, so they checkpoint, resume exactly and stop on
SIGTERM like fine-tuning.

Every source is evaluated the same way: a weighted k-NN (k = 200, T = 0.07; Wu et al. 2018, as
DINO) on the pooled features of the test split with the whole train split as memory, for the
trained backbone and for the same architecture at its random init (and at its starting weights
when continuing from another source), so meta.json says how much the pretraining gave: top-1
accuracy (``acc``) for single labels, the mean per-label AUC of the k-NN scores (``auc``) for
multi-label data.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtransfer import data, init, models
from medtransfer.atomic import torch_save, write_json
from medtransfer.errors import ConfigError
from medtransfer.specs import spec_hash
from medtransfer.models.embedding import embed_loader, embedding_spread, knn_accuracy, knn_scores
from medtransfer.provenance import git_commit, provenance
from medtransfer.training import distributed
from medtransfer.training.metrics import classification_metrics
from medtransfer.training.stage import input_size, make_loaders, seed_everything, spec_loader, spec_normalize
from medtransfer.training.loop import train_epochs
from medtransfer.training.precision import precision_for
from medtransfer.training.ssl.objective import COLLAPSE_SPREAD
from medtransfer.training.trainer import evaluate, fit

log = logging.getLogger(__name__)

#: The evaluation k-NN (meta.json ``knn``); the per-epoch monitor uses k = 20.
EVAL_K, EVAL_TEMPERATURE = 200, 0.07
#: Training images the per-epoch monitor uses as memory (a fixed, seeded subset).
MONITOR_MEMORY = 5000


def _labelled(info) -> bool:
    """Single-label classes: what the k-NN accuracy (and the SSL monitor) scores."""
    return info.task in ("binary", "multiclass", "ordinal")


def _supervisable(info) -> bool:
    """Labels a supervised pretraining trains on: single-label, or multi-label (BCE over the known
    labels, :func:`medtransfer.training.metrics.loss_function`; Hosseinzadeh Taher et al.'s
    domain-adapted ChestX-ray14 / CheXpert models)."""
    return _labelled(info) or info.task == "multilabel"


def _knn_test(backbone: torch.nn.Module, spec: dict, info, device: torch.device, channels_last: bool) -> float:
    """The evaluation k-NN of a backbone: top-1 accuracy for single labels; for multi-label data
    the mean per-label AUC of the k-NN's per-label scores (the share of known positive neighbours)."""
    memory, memory_labels = embed_loader(backbone, spec_loader(spec, "train", device), device, channels_last)
    queries, query_labels = embed_loader(backbone, spec_loader(spec, "test", device), device, channels_last)
    if info.task == "multilabel":
        scores = knn_scores(memory, memory_labels, queries, num_classes=info.num_classes, k=EVAL_K,
                            temperature=EVAL_TEMPERATURE)
        return classification_metrics("multilabel", query_labels.numpy(), scores.numpy())["auc"]
    return knn_accuracy(memory, memory_labels, queries, query_labels, num_classes=info.num_classes, k=EVAL_K,
                        temperature=EVAL_TEMPERATURE)


def _starting_model(spec: dict, info) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model at its starting point: random init, or the ``from`` source's weights (new head)."""
    model = models.create(spec["arch"], max(1, info.num_classes), in_chans=3, **spec["arch_options"])
    if spec.get("from"):
        source = models.read_source(spec["from"])
        record = init.apply(model, "WT", source=source.state, seed=spec["seed"])
        return model, {"from": spec["from"], **record, "source_weights": source.origin}
    return model, init.apply(model, "RI", seed=spec["seed"])


def _check_batches(spec: dict, info, method: str) -> None:
    n, batch = info.split_sizes["train"], int(spec["training"]["batch_size"])
    if method != "supervised" and n < batch:
        raise ConfigError(
            f"config key sources.{spec['source']}.pretrain.training.batch_size (or pretrain.batch_size): "
            f"{method} trains on full batches of {batch} images, but dataset {spec['dataset']!r} has only {n} "
            f"training images; lower the batch size below {n} or pretrain on a larger dataset")
    if method == "supervised" and not _supervisable(info):
        raise ConfigError(
            f"config key sources.{spec['source']}.pretrain.method: supervised pretraining needs labels, but "
            f"dataset {spec['dataset']!r} is {info.task}; choose a self-supervised method "
            "(simclr, mocov2, byol, dino, swav, barlowtwins)")


def pretrain(spec: dict, *, device: str | None = None, progress: bool = True) -> dict:
    """Pretrain ``spec["arch"]`` on ``spec["cache"]`` with ``spec["method"]``; return meta.json's content.

    Under torchrun (``gpus_per_job`` > 1) every process trains its share of each batch (the SSL
    losses gather what they need across processes); rank 0 evaluates and writes, the others
    return ``{}``.
    """
    from medtransfer.training import ssl

    wall_start = time.monotonic()
    commit = git_commit()  # now, not when training ends hours later on a checkout that moved on
    method = spec.get("method", "supervised")
    out_dir = Path(spec["out_dir"])
    training = spec["training"]
    job_hash = spec_hash(spec)
    world, torch_device = distributed.start(device)
    info = data.read_info(spec["cache"])
    _check_batches(spec, info, method)
    options = ssl.resolve_options(method, spec.get("options"), f"sources.{spec['source']}.pretrain")
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(spec["seed"], training["deterministic"])
    model, start_record = _starting_model(spec, info)
    precision = precision_for(torch_device, training)
    extra: dict[str, Any] = {}

    if method == "supervised":
        loaders = make_loaders(spec, torch_device, train_indices=None, world=world)
        result = fit(model, loaders["train"], loaders["val"], task=info.task, training=training,
                     device=torch_device, checkpoint_path=out_dir / "checkpoint.pt", spec_hash=job_hash,
                     precision=precision, progress=progress, world=world)
        distributed.stop(world)  # from here rank 0 alone evaluates and writes
        if not world.is_main:
            return {}
        model.load_state_dict(result.best_state)
        history, train_seconds = result.history, result.train_seconds
        backbone = model
        extra = {"test": evaluate(model, loaders["test"], info.task, torch_device, precision).metrics,
                 "best_epoch": result.best_epoch}
    else:
        train_loader = spec_loader(spec, "train", torch_device, batch_size=training["batch_size"], shuffle=True,
                                   drop_last=True, normalize={"mean": 0.0, "std": 1.0},
                                   world=(world.rank, world.size))
        mean, std, bgr = data.input_transform(spec_normalize(spec), info, 3)
        views = ssl.Views(options, size=input_size(spec) or info.image_size, gray=info.channels == 1,
                          mean=mean, std=std, bgr=bgr)
        monitor = None
        if _labelled(info):
            rows = np.random.default_rng(spec["seed"]).permutation(info.split_sizes["train"])[:MONITOR_MEMORY]
            monitor = (spec_loader(spec, "train", torch_device, indices=np.sort(rows)),
                       spec_loader(spec, "val", torch_device), info.num_classes)
        method_module = ssl.build(method, model, options, steps_per_epoch=len(train_loader),
                                  epochs=int(training["epochs"]))
        objective = ssl.SSLObjective(method_module, views, device=torch_device, precision=precision, monitor=monitor)
        history, train_seconds = train_epochs(objective, train_loader, training=training, device=torch_device,
                                              checkpoint_path=out_dir / "checkpoint.pt", spec_hash=job_hash,
                                              precision=precision, progress=progress, world=world)
        distributed.stop(world)
        if not world.is_main:
            return {}
        backbone = method_module.export_backbone()
        extra = {"options": options, "views": views.describe(), "uses": method_module.uses,
                 "collapsed_epochs": objective.collapsed_epochs}
        if objective.collapsed_epochs:
            log.warning("COLLAPSE: the embedding spread fell below %.2f in epochs %s; see history.csv",
                        COLLAPSE_SPREAD, objective.collapsed_epochs)

    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    knn: dict[str, Any] = {"k": EVAL_K, "temperature": EVAL_TEMPERATURE, "memory": "train", "query": "test"}
    if _supervisable(info):
        score = "auc" if info.task == "multilabel" else "acc"  # mean per-label AUC: no top-1 for many labels
        backbone.to(torch_device)
        knn[score] = _knn_test(backbone, spec, info, torch_device, precision.channels_last)
        random_model = models.rebuild(model, spec["seed"]).to(torch_device)
        knn[f"random_init_{score}"] = _knn_test(random_model, spec, info, torch_device, False)
        if spec.get("from"):
            start, _ = _starting_model(spec, info)
            knn[f"start_{score}"] = _knn_test(start.to(torch_device), spec, info, torch_device, False)
        test_features, _ = embed_loader(backbone, spec_loader(spec, "test", torch_device), torch_device)
        knn["embedding_spread"] = embedding_spread(test_features)
    meta = {
        "source": spec["source"],
        "arch": spec["arch"],
        "dataset": spec["dataset"],
        "method": method,
        "from": spec.get("from"),
        **extra,
        "knn": knn,
        "start": {"from": start_record.get("from"), "init": start_record["init"]},
        **({"start_weights": start_record["source_weights"]} if spec.get("from") else {}),
        "history": history,
        "train_seconds": train_seconds,
        "precision": precision.record(),
        "provenance": provenance(spec_hash=job_hash, seed=spec["seed"], device=str(torch_device),
                                 wall_seconds=time.monotonic() - wall_start, commit=commit, **world.record()),
        "spec": spec,
    }
    torch_save({"state_dict": state, "arch": spec["arch"], "num_classes": max(1, info.num_classes),
                "arch_options": spec["arch_options"], "class_names": info.class_names, "dataset": spec["dataset"],
                "method": method}, out_dir / "model.pt")
    write_json(out_dir / "meta.json", meta)
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)
    return meta

