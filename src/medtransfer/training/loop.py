"""The epoch loop every training job shares: fine-tuning, supervised and self-supervised pretraining.

What a job trains is an *objective* (:class:`Objective`): the module whose state is
checkpointed, the loss of one batch, what happens after each optimizer step (e.g. the EMA of a
teacher) and at the end of each epoch (validation, a k-NN monitor). The loop owns the rest, once:
optimizer and learning-rate schedule, autocast and channels_last, tqdm progress, an atomic
checkpoint at the end of every epoch and every ``checkpoint_minutes`` inside long epochs, exact
resume from it (model, optimizer, schedule, scaler, objective state, RNG, position in the
epoch), and a clean stop on SIGTERM (SLURM preemption or time limit) after saving.

A job of several processes (torchrun, :mod:`medtransfer.training.distributed`) runs this same
loop in every process: the loss goes through DistributedDataParallel, the processes agree once
per step on the global loss and on whether to checkpoint or stop, and rank 0 alone writes the
checkpoint, which every process loads on resume. With one process none of that runs.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from medtransfer.training.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from medtransfer.training.distributed import World, wrap_loss
from medtransfer.training.precision import Precision
from medtransfer.training.schedules import Controls

log = logging.getLogger(__name__)


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; rerunning the job resumes it."""


class Objective(Protocol):
    """What one training job optimises (supervised: ``trainer.SupervisedObjective``; SSL:
    ``medtransfer.training.ssl.SSLObjective``)."""

    module: torch.nn.Module  # its state_dict is checkpointed; train() is called every epoch

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        """The parameters the optimizer updates."""

    def loss(self, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """The scalar loss of batch ``x`` [B, C, H, W] (labels ``y``) at global ``step``."""

    def before_step(self, step: int) -> None:
        """After backward, before the optimizer step (e.g. cancel a frozen layer's gradients)."""

    def after_step(self, step: int) -> None:
        """After the optimizer step ``step`` (0-based, global over epochs; e.g. an EMA update)."""

    def end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """Add this epoch's measurements to its history ``row`` (0-based ``epoch``)."""

    def state_dict(self) -> dict[str, Any]:
        """State outside ``module`` that resuming needs (best weights so far, ...)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def make_optimizer(params: Iterable[torch.nn.Parameter], config: dict) -> torch.optim.Optimizer:
    name = config["name"]
    lr, wd = float(config["lr"]), float(config.get("weight_decay", 0.0))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(config.get("momentum", 0.9)))
    raise ValueError(f"unknown optimizer {name!r}")


def lr_factor(epoch: int, epochs: int, schedule: dict) -> float:
    """Learning-rate multiplier for a 0-based ``epoch`` of ``epochs``.

    multistep milestones are epochs (>= 1) or fractions of the run (< 1): MedMNIST's
    "×0.1 at 50 and 75 of 100" is ``milestones: [50, 75]`` or ``[0.5, 0.75]``.
    """
    warmup = int(schedule.get("warmup_epochs", 0))
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    name = schedule["name"]
    if name in ("constant", "plateau"):  # plateau: its factor is training.schedules.Plateau's
        return 1.0
    if name == "multistep":
        milestones = [m if m >= 1 else round(m * epochs) for m in schedule.get("milestones", [])]
        return float(schedule.get("gamma", 0.1)) ** sum(epoch >= m for m in milestones)
    if name == "cosine":
        progress = (epoch - warmup) / max(1, epochs - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {name!r}")


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks between batches (restores the old handler)."""

    def __init__(self) -> None:
        self.raised = False

    def __enter__(self) -> "_SigtermFlag":
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. inside some test runners): no handler
            self._old = None
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.raised = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def train_epochs(objective: Objective, train_loader, *, training: dict, device: torch.device,
                 checkpoint_path: str | Path, spec_hash: str, precision: Precision,
                 progress: bool = True, world: World | None = None) -> tuple[list[dict[str, Any]], float]:
    """Run ``training["epochs"]`` epochs of ``objective`` on ``train_loader``; return the history
    (one dict per epoch: ``epoch``, ``train_loss``, the objective's columns, ``lr``, ``seconds``)
    and the training seconds summed over every attempt.

    ``train_loader`` must offer ``set_epoch(epoch)`` and the same batches for the same epoch, so a
    resumed run replays its order; ``checkpoint_path`` holds the resumable state, used when its
    ``spec_hash`` matches.

    ``world``: this process's place in a multi-process job (default: the only process);
    ``train_loader`` then yields this process's share of each global batch, and
    ``training["sync_batchnorm"]`` (default true) synchronises BatchNorm across processes.

    ``training``'s ``schedule: {name: plateau}``, ``warmup_steps``, ``grad_clip`` and
    ``early_stopping`` (:mod:`medtransfer.training.schedules`) act on the history row of each
    epoch (its validation); early stopping ends the history before ``epochs``. An objective with
    a ``train_mode()`` method sets its module's training mode itself each epoch (a frozen
    backbone keeps its BatchNorm statistics).
    """
    epochs = int(training["epochs"])
    world = world or World()
    module = objective.module
    module.to(device)
    if precision.channels_last:
        module.to(memory_format=torch.channels_last)
    batch_loss = wrap_loss(objective, world, device, sync_bn=bool(training.get("sync_batchnorm", True)),
                           find_unused_parameters=bool(getattr(objective, "find_unused_parameters", False)))
    world.seed_streams()
    optimizer = make_optimizer([p for p in objective.parameters() if p.requires_grad], training["optimizer"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, epochs, training["schedule"]))
    # plateau, warm-up, clipping, early stopping: none of it runs (or is checkpointed) unless asked
    controls = Controls(training, optimizer, scheduler)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.autocast_dtype == torch.float16)
    checkpoint_every = float(training.get("checkpoint_minutes", 10.0)) * 60.0
    steps_per_epoch = len(train_loader)

    start_epoch, start_batch, history, elapsed = 0, 0, [], 0.0
    # rank 0 reads first and alone sets a corrupt file aside; the others then read what it left
    resumed = load_checkpoint(checkpoint_path, spec_hash) if world.is_main else None
    world.barrier()
    if not world.is_main:
        resumed = load_checkpoint(checkpoint_path, spec_hash)
    if resumed is not None:
        module.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        objective.load_state_dict(resumed["objective"])
        controls.load_state_dict(resumed.get("controls"))
        start_epoch, start_batch = resumed["epoch"], resumed["batch"]
        history, elapsed = resumed["history"], resumed["elapsed"]
        # each process continues its own streams (one process: the only one, under "rng")
        streams = resumed.get("rng_ranks")
        restore_rng_states(streams[world.rank] if world.distributed and streams and len(streams) == world.size
                           else resumed["rng"])
        log.info("resumed from %s at epoch %d batch %d", checkpoint_path, start_epoch + 1, start_batch)

    def checkpoint(epoch: int, batch: int, running_loss: float, seen: int) -> None:
        streams = world.gather(rng_states()) if world.distributed else None
        if not world.is_main:  # the processes hold the same weights and state; one writes them
            world.barrier()
            return
        save_checkpoint(checkpoint_path, {
            **({"rng_ranks": streams} if streams is not None else {}),
            "spec_hash": spec_hash, "model": module.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            **({"controls": controls.state_dict()} if controls.active else {}),
            "objective": objective.state_dict(), "epoch": epoch, "batch": batch,
            "running": (running_loss, seen), "history": history,
            "elapsed": elapsed + (time.monotonic() - clock),
        })
        world.barrier()  # no process stops (SIGTERM) before the checkpoint is on disk

    with _SigtermFlag() as sigterm:
        # a run that early stopping ended (resumed from its last checkpoint) trains no further
        end_epoch = start_epoch if controls.stopped_epoch else epochs
        train_mode = getattr(objective, "train_mode", None)  # e.g. BatchNorm of a frozen backbone in eval
        for epoch in range(start_epoch, end_epoch):
            clock = time.monotonic()
            last_save = clock
            if train_mode is not None:
                train_mode()
            else:
                module.train()
            epoch_lr = (controls.lrs(epoch * steps_per_epoch)[0] if controls.sets_lr
                        else optimizer.param_groups[0]["lr"])
            train_loader.set_epoch(epoch)
            running_loss, seen = (resumed["running"] if resumed is not None and epoch == start_epoch
                                  and start_batch > 0 else (0.0, 0))
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                       disable=not progress or not world.is_main)
            for batch, (x, y) in enumerate(bar):
                if epoch == start_epoch and batch < start_batch:
                    continue  # replays the loader's deterministic order up to where we stopped
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if precision.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                step = epoch * steps_per_epoch + batch
                loss = batch_loss(x, y, step)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                objective.before_step(step)
                controls.clip(scaler)
                controls.set_lr(step)
                scaler.step(optimizer)
                scaler.update()
                objective.after_step(step)
                now = time.monotonic()
                stopping, due = sigterm.raised, now - last_save > checkpoint_every
                if world.distributed:  # the global loss, and one decision for every process
                    total, count, stopping, due = world.sum(
                        [float(loss.detach()) * len(x), len(x), float(stopping), float(due)], device)
                    running_loss += total
                    seen += int(count)
                else:
                    running_loss += float(loss.detach()) * len(x)
                    seen += len(x)
                if stopping or due:
                    checkpoint(epoch, batch + 1, running_loss, seen)
                    last_save = now
                    if stopping:
                        raise Preempted(f"SIGTERM at epoch {epoch + 1}, batch {batch + 1}; "
                                        f"checkpoint saved to {checkpoint_path}; rerun to resume")
            scheduler.step()
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": running_loss / max(seen, 1)}
            objective.end_epoch(epoch, row)
            stop = controls.end_epoch(row) if controls.active else False
            if world.distributed and controls.stopping is not None:  # one decision for every process
                stop = bool(world.sum([float(stop)], device)[0])
            row.update(lr=epoch_lr, seconds=time.monotonic() - clock)
            history.append(row)
            elapsed += row["seconds"]
            clock = time.monotonic()
            checkpoint(epoch + 1, 0, 0.0, 0)
            if world.sum([float(sigterm.raised)], device)[0]:
                raise Preempted(f"SIGTERM after epoch {epoch + 1}; checkpoint saved to {checkpoint_path}")
            if stop:
                log.info("early stopping after epoch %d: %s did not improve for %d epochs", epoch + 1,
                         controls.stopping.monitor, controls.stopping.patience)
                break
    return history, elapsed
