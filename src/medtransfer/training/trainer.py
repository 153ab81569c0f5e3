"""The supervised training loop shared by fine-tuning and source pretraining.

One loop for CPU and CUDA. channels_last memory format applies on every device when the config
says so (oneDNN's CPU convolutions are faster in it too: BENCHMARKS.md); bf16 (or fp16) autocast
on CUDA, and on the CPU only when ``amp_on_cpu`` asks for it (worth it on CPUs with AMX-BF16)
or a test forces it to exercise that path.
It checkpoints at the end of every epoch and every ``checkpoint_minutes`` inside long epochs,
resumes from the last checkpoint, stops cleanly on SIGTERM (SLURM preemption or time limit)
after saving, and keeps the weights of the best validation epoch.
"""

from __future__ import annotations

import copy
import logging
import math
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from medtransfer.errors import DataError
from medtransfer.training.checkpoint import load_checkpoint, restore_rng_states, save_checkpoint
from medtransfer.training.metrics import classification_metrics, loss_function, scores_from_logits

log = logging.getLogger(__name__)


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; rerunning the job resumes it."""


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: autocast dtype (None = full float32) and memory format."""

    autocast_dtype: torch.dtype | None
    channels_last: bool

    def record(self) -> dict[str, Any]:
        """What ran, for metrics.json / meta.json: ``{"autocast": "bfloat16" | "float16" | "float32",
        "channels_last": bool}`` (``train.amp`` alone does not say it: the CPU ignores it by default)."""
        autocast = str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "float32"
        return {"autocast": autocast, "channels_last": self.channels_last}


def precision_for(device: torch.device, training: dict, force_on_cpu: bool = False) -> Precision:
    """The precision policy: ``amp`` autocast on CUDA; on the CPU with ``amp_on_cpu``; channels_last anywhere.

    CPU autocast is opt-in: bf16 convolutions and matmuls are several times faster than float32
    on CPUs with AMX-BF16 (2.2x for ResNet-18 (28) training here: benchmarks/train_throughput.py) but slower on
    CPUs without bf16 units, and a study's numbers should not change with the machine unasked.
    """
    # no entry in grid.DEFAULT_TRAINING on purpose: a new default key would change the spec hash
    # of every existing run and make Snakemake retrain it
    on_cpu = force_on_cpu or bool(training.get("amp_on_cpu", False))
    accelerated = device.type == "cuda" or on_cpu
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[training.get("amp", "none")]
    if device.type == "cpu" and on_cpu and dtype is torch.bfloat16 and not cpu_has_bf16_units():
        log.warning("train.amp_on_cpu: this CPU has no AMX/AVX512-BF16 units; bf16 autocast will "
                    "likely be slower than float32 here (set amp_on_cpu: false)")
    return Precision(
        autocast_dtype=dtype if accelerated else None,
        channels_last=bool(training.get("channels_last", False)),
    )


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16), as PyTorch detects it."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


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
    if name == "constant":
        return 1.0
    if name == "multistep":
        milestones = [m if m >= 1 else round(m * epochs) for m in schedule.get("milestones", [])]
        return float(schedule.get("gamma", 0.1)) ** sum(epoch >= m for m in milestones)
    if name == "cosine":
        progress = (epoch - warmup) / max(1, epochs - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {name!r}")


@dataclass
class Evaluation:
    loss: float
    metrics: dict[str, float]
    scores: np.ndarray  # [N, K] probabilities
    labels: np.ndarray


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, task: str, device: torch.device, precision: Precision) -> Evaluation:
    """Loss, metrics, scores and labels of a whole split in the loader's order.

    Always in float32, also when training autocasts: bf16 logits have 8 mantissa bits, so scores
    tie and AUC moves in the 4th digit (and with it the best-validation epoch). Evaluation is a
    small part of the time, so the published protocols' float32 numbers are kept.
    """
    model.eval()
    losses, all_scores, all_labels, n = 0.0, [], [], 0
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        # the multi-label loss is a mean over known (non-NaN) entries: weight batches by those
        weight = int((~torch.isnan(y)).sum()) if task == "multilabel" else len(y)
        losses += float(loss_function(task, logits, y)) * weight
        n += weight
        all_scores.append(scores_from_logits(task, logits).cpu())
        all_labels.append(y.cpu())
    scores = torch.cat(all_scores).numpy()
    labels = torch.cat(all_labels).numpy()
    return Evaluation(losses / max(n, 1), classification_metrics(task, labels, scores), scores, labels)


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0


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


def _selection_score(row: dict[str, Any], select_on: str) -> float:
    if select_on == "val_auc":
        if math.isnan(row["val_auc"]):
            # AUC is undefined only through the labels (one class, or every label single-valued),
            # so no epoch could ever be selected and the test would silently score the init
            raise DataError(
                f"validation AUC is undefined at epoch {row['epoch']}: the validation split has a single "
                "class (or every label column a single value), so the best-val-AUC checkpoint cannot be "
                "chosen. Fix: give the dataset a validation split with every class (its `val_fraction`, "
                "or the split files), or set train.select_on: val_loss (or last)."
            )
        return row["val_auc"]
    if select_on == "val_loss":
        return -row["val_loss"]
    return float(row["epoch"])  # "last": every epoch is better than the one before


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
) -> FitResult:
    """Train ``model`` in place; return the best-validation weights and the per-epoch history.

    ``train_loader`` must offer ``set_epoch(epoch)`` and deterministic batches per epoch.
    ``checkpoint_path`` is where the resumable state lives; if it holds a checkpoint of the
    same ``spec_hash`` training continues from it.
    """
    precision = precision or precision_for(device, training)
    epochs = int(training["epochs"])
    model.to(device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), training["optimizer"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, epochs, training["schedule"])
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision.autocast_dtype == torch.float16)
    checkpoint_every = float(training.get("checkpoint_minutes", 10.0)) * 60.0

    start_epoch, start_batch, history, elapsed = 0, 0, [], 0.0
    best_state, best_epoch, best_score = copy.deepcopy(model.state_dict()), 0, -math.inf
    resumed = load_checkpoint(checkpoint_path, spec_hash)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        start_epoch, start_batch = resumed["epoch"], resumed["batch"]
        history, elapsed = resumed["history"], resumed["elapsed"]
        best_state, best_epoch, best_score = resumed["best_state"], resumed["best_epoch"], resumed["best_score"]
        restore_rng_states(resumed["rng"])
        log.info("resumed from %s at epoch %d batch %d", checkpoint_path, start_epoch + 1, start_batch)

    def checkpoint(epoch: int, batch: int, running_loss: float, seen: int) -> None:
        save_checkpoint(checkpoint_path, {
            "spec_hash": spec_hash, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "epoch": epoch, "batch": batch, "running": (running_loss, seen), "history": history,
            "elapsed": elapsed + (time.monotonic() - clock), "best_state": best_state,
            "best_epoch": best_epoch, "best_score": best_score,
        })

    with _SigtermFlag() as sigterm:
        for epoch in range(start_epoch, epochs):
            clock = time.monotonic()
            last_save = clock
            model.train()
            epoch_lr = optimizer.param_groups[0]["lr"]
            train_loader.set_epoch(epoch)
            running_loss, seen = (resumed["running"] if resumed is not None and epoch == start_epoch
                                  and start_batch > 0 else (0.0, 0))
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not progress)
            for batch, (x, y) in enumerate(bar):
                if epoch == start_epoch and batch < start_batch:
                    continue  # replays the loader's deterministic order up to where we stopped
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if precision.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=precision.autocast_dtype or torch.float32,
                                    enabled=precision.autocast_dtype is not None):
                    logits = model(x)
                loss = loss_function(task, logits, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                running_loss += float(loss.detach()) * len(y)
                seen += len(y)
                now = time.monotonic()
                if sigterm.raised or now - last_save > checkpoint_every:
                    checkpoint(epoch, batch + 1, running_loss, seen)
                    last_save = now
                    if sigterm.raised:
                        raise Preempted(f"SIGTERM at epoch {epoch + 1}, batch {batch + 1}; "
                                        f"checkpoint saved to {checkpoint_path}; rerun to resume")
            scheduler.step()
            val = evaluate(model, val_loader, task, device, precision)
            row = {
                "epoch": epoch + 1,
                "train_loss": running_loss / max(seen, 1),
                "val_loss": val.loss,
                "val_auc": val.metrics["auc"],
                "val_acc": val.metrics["acc"],
                "lr": epoch_lr,
                "seconds": time.monotonic() - clock,
            }
            history.append(row)
            score = _selection_score(row, training.get("select_on", "val_auc"))
            if score > best_score:
                best_score, best_epoch = score, epoch + 1
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            log.info("epoch %d/%d train_loss %.4f val_loss %.4f val_auc %.4f val_acc %.4f (%.1fs)",
                     row["epoch"], epochs, row["train_loss"], row["val_loss"], row["val_auc"],
                     row["val_acc"], row["seconds"])
            elapsed += row["seconds"]
            clock = time.monotonic()
            checkpoint(epoch + 1, 0, 0.0, 0)
            if sigterm.raised:
                raise Preempted(f"SIGTERM after epoch {epoch + 1}; checkpoint saved to {checkpoint_path}")
    return FitResult(best_state=best_state, best_epoch=best_epoch, history=history, train_seconds=elapsed)
