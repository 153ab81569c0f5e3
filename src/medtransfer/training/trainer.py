"""Supervised training (fine-tuning and supervised source pretraining) and evaluation.

:func:`fit` runs the shared epoch loop (:mod:`medtransfer.training.loop`: checkpoints, exact
resume, SIGTERM) with the supervised objective: the task's loss, validation after every epoch,
and the weights of the best validation epoch kept. :func:`evaluate` scores a split in float32.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtransfer.errors import ConfigError, DataError
from medtransfer.training.loop import Preempted, lr_factor, make_optimizer, train_epochs
from medtransfer.training.metrics import (DEFAULT_VALIDATION_METRICS, TASK_METRICS, VALIDATION_METRICS,
                                          loss_function, score_collector, scores_from_logits)
from medtransfer.training.precision import Precision, autocast, cpu_has_bf16_units, precision_for
from medtransfer.training.schedules import LOSS, monitored_metrics

__all__ = ["Evaluation", "FitResult", "Precision", "Preempted", "SupervisedObjective", "autocast",
           "cpu_has_bf16_units", "evaluate", "fit", "lr_factor", "make_optimizer", "precision_for"]

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    loss: float
    metrics: dict[str, float]
    scores: np.ndarray  # [N, K] probabilities (segmentation: per-image Dice per class)
    labels: np.ndarray  # (segmentation: per-image true pixels per class)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # segmentation: example masks and scores


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, task: str, device: torch.device, precision: Precision,
             examples: int = 0) -> Evaluation:
    """Loss, metrics, scores and labels of a whole split in the loader's order (what is kept per
    batch is the task's: :func:`medtransfer.training.metrics.score_collector`; ``examples``: the
    first images' masks and probabilities a segmentation evaluation keeps).

    Always in float32, also when training autocasts: bf16 logits have 8 mantissa bits, so scores
    tie and AUC moves in the 4th digit (and with it the best-validation epoch). Evaluation is a
    small part of the time, so the published protocols' float32 numbers are kept.
    """
    model.eval()
    losses, n = 0.0, 0
    # a multi-label cache may name the labels its metrics average over (CheXpert's eval_labels)
    collector = score_collector(task, examples, getattr(loader, "evaluated_columns", None))
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        views = x.shape[1] if x.ndim == 5 else 0  # test-time augmentation: [B, V, C, H, W]
        if views:
            x = x.flatten(0, 1)
        if precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        if views:
            logits = view_averaged_logits(task, logits.unflatten(0, (-1, views)))
        # the multi-label loss is a mean over known (non-NaN) entries: weight batches by those
        weight = int((~torch.isnan(y)).sum()) if task == "multilabel" else len(y)
        losses += float(loss_function(task, logits, y)) * weight
        n += weight
        collector.add(logits, y)
    scores, labels, metrics, extras = collector.result()
    return Evaluation(losses / max(n, 1), metrics, scores, labels, extras)


def view_averaged_logits(task: str, logits: torch.Tensor) -> torch.Tensor:
    """[B, V, K] logits of V views of each image -> [B, K] logits whose probabilities (softmax;
    sigmoid for multi-label) are the mean of the views' probabilities, as Hosseinzadeh Taher et
    al.'s ``test_classification`` averages its crops' outputs. The loss of a split evaluated this
    way is the loss of the averaged probabilities."""
    probabilities = scores_from_logits(task, logits.flatten(0, 1)).unflatten(0, logits.shape[:2]).mean(1)
    tiny = torch.finfo(probabilities.dtype).tiny  # a probability that underflowed to 0 stays finite
    if task == "multilabel":
        return torch.logit(probabilities.clamp(tiny, 1 - torch.finfo(probabilities.dtype).eps))
    return probabilities.clamp_min(tiny).log()


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    objective: Any = None  # the SupervisedObjective (or objective_class) that trained


def _selection_score(row: dict[str, Any], select_on: str) -> float:
    """How good epoch ``row`` is under ``select_on`` (higher is better): ``last`` prefers every
    epoch to the one before, ``val_loss`` lower losses, any other ``val_<metric>`` higher values."""
    if select_on == "last":
        return float(row["epoch"])
    if select_on == LOSS:
        return -row[LOSS]
    value = row[select_on]
    if math.isnan(value):
        # AUC, kappa, balanced accuracy are undefined only through the labels (one class, or every
        # label single-valued), so no epoch could ever be selected and the test would silently
        # score the init (Dice never is: an image with nothing to find scores 1)
        raise DataError(
            f"{select_on} (the validation {select_on.removeprefix('val_')}) is undefined at epoch {row['epoch']}: the validation "
            "split has a single class (or every label column a single value), so the best-"
            f"{select_on} checkpoint cannot be chosen. Fix: give the dataset a validation split with every "
            "class (its `val_fraction`, or the split files), or set train.select_on: val_loss (or last)."
        )
    return value


def check_monitors(task: str, training: dict, key: str = "train") -> list[str]:
    """The ``val_<metric>`` metrics (names without ``val_``) that ``training`` selects on or
    monitors beyond the task's defaults; ConfigError naming the key when ``task`` does not report
    one (e.g. ``val_kappa``, of ordinal tasks only, on a binary dataset), before any training."""
    reported = TASK_METRICS.get(task, ())
    named = {"select_on": training.get("select_on", "val_auc")}
    if (training.get("schedule") or {}).get("name") == "plateau":
        named["schedule.monitor"] = training["schedule"]["monitor"]
    if training.get("early_stopping"):
        named["early_stopping.monitor"] = training["early_stopping"]["monitor"]
    for where, name in named.items():
        if name in ("last", LOSS):
            continue
        if name.removeprefix("val_") not in reported:
            allowed = ", ".join([LOSS] + [f"val_{m}" for m in reported])
            raise ConfigError(f"config key {key}.{where}: {name} is not a metric of this {task} task; "
                              f"allowed: {allowed}{', last' if where == 'select_on' else ''}")
    defaults = VALIDATION_METRICS.get(task, DEFAULT_VALIDATION_METRICS)
    return [m for m in monitored_metrics(training) if m not in defaults]


class SupervisedObjective:
    """The supervised objective of :func:`fit`: the task's loss on labelled batches, validation
    after every epoch and the weights of the best validation epoch (part of the checkpoint)."""

    def __init__(self, model: torch.nn.Module, *, task: str, val_loader, device: torch.device,
                 precision: Precision, select_on: str, extra_metrics: tuple[str, ...] = ()) -> None:
        self.module, self.task, self.val_loader = model, task, val_loader
        self.device, self.precision, self.select_on = device, precision, select_on
        #: the history's val_<metric> columns: the task's, then those select_on and monitors add
        self.metric_names = tuple(VALIDATION_METRICS.get(task, DEFAULT_VALIDATION_METRICS)) + tuple(extra_metrics)
        self.best_state = copy.deepcopy(model.state_dict())
        self.best_epoch, self.best_score = 0, -math.inf

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        return self.module.parameters()

    def loss(self, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        with autocast(self.device, self.precision):
            logits = self.module(x)
        return loss_function(self.task, logits, y)

    def before_step(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass

    def end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        val = evaluate(self.module, self.val_loader, self.task, self.device, self.precision)
        names = self.metric_names
        row.update(val_loss=val.loss, **{f"val_{name}": val.metrics[name] for name in names})
        score = _selection_score({**row, "epoch": epoch + 1}, self.select_on)
        if score > self.best_score:
            self.best_score, self.best_epoch = score, epoch + 1
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
        log.info("epoch %d train_loss %.4f val_loss %.4f %s", epoch + 1, row["train_loss"], val.loss,
                 " ".join(f"val_{name} {val.metrics[name]:.4f}" for name in names))

    def state_dict(self) -> dict[str, Any]:
        return {"best_state": self.best_state, "best_epoch": self.best_epoch, "best_score": self.best_score}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_state, self.best_epoch, self.best_score = (state["best_state"], state["best_epoch"],
                                                             state["best_score"])


def fit(
    model: torch.nn.Module,
    train_loader,
    val_loader,
    *,
    task: str,
    training: dict,
    device: torch.device,
    checkpoint_path: str | Path,
    spec_hash: str,
    precision: Precision | None = None,
    progress: bool = True,
    world=None,
    config_key: str = "train",
    objective_class: type[SupervisedObjective] | None = None,
) -> FitResult:
    """Train ``model`` in place; return the best-validation weights and the per-epoch history.

    ``train_loader`` must offer ``set_epoch(epoch)`` and deterministic batches per epoch.
    ``checkpoint_path`` is where the resumable state lives; if it holds a checkpoint of the
    same ``spec_hash`` training continues from it. ``world``: this process's place in a
    multi-process job (:class:`medtransfer.training.distributed.World`; default one process).
    ``config_key`` names ``training``'s config section in errors; ``objective_class`` replaces
    :class:`SupervisedObjective` (the lpft protocol's frozen-backbone phase).
    """
    precision = precision or precision_for(device, training)
    extra = check_monitors(task, training, config_key)
    objective = (objective_class or SupervisedObjective)(
        model, task=task, val_loader=val_loader, device=device, precision=precision,
        select_on=training.get("select_on", "val_auc"), extra_metrics=tuple(extra))
    history, seconds = train_epochs(objective, train_loader, training=training, device=device,
                                    checkpoint_path=checkpoint_path, spec_hash=spec_hash, precision=precision,
                                    progress=progress, world=world)
    return FitResult(best_state=objective.best_state, best_epoch=objective.best_epoch, history=history,
                     train_seconds=seconds, objective=objective)
