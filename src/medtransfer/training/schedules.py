"""The optimisation-loop controls beyond the epoch schedule (``train.schedule`` in
:func:`medtransfer.training.loop.lr_factor`): a plateau schedule stepped on a validation value,
a linear warm-up in optimizer steps, early stopping and the best-epoch criterion.

The learning rate of optimizer step ``s`` in epoch ``e`` is

    lr × lr_factor(e) × plateau factor × warm-up(s)

where ``lr_factor`` is the epoch schedule (1 for ``plateau``), the plateau factor is the product
of the reductions so far (1 for every other schedule) and warm-up(s) = min(1, (s + 1) / N) for
``train.warmup_steps: N`` (1 without it). A study that sets none of these keys runs exactly the
loop it ran before (no key of :class:`Controls` is read or written then).

- ``plateau`` (``train.schedule: {name: plateau, monitor: val_auc, factor: 0.1, patience: 3}``):
  PyTorch's :class:`torch.optim.lr_scheduler.ReduceLROnPlateau` semantics (mode ``min`` for
  ``val_loss``, ``max`` for every other metric; ``threshold`` relative, ``cooldown``,
  ``min_lr``), stepped once per epoch on the monitored value of that epoch's validation. The
  scheduler itself runs on a one-parameter optimizer whose lr is the factor (``min_lr`` and
  ``eps`` scaled by the base lr), so the factor multiplies the epoch schedule and the warm-up
  instead of fighting them over the optimizer's lr.
- early stopping (``train.early_stopping: {monitor, patience, min_delta}``): Keras'
  ``EarlyStopping``: an epoch improves when its value beats the best so far by more than
  ``min_delta`` (lower for ``val_loss``, higher otherwise); training stops after ``patience``
  epochs in a row without improvement.
"""

from __future__ import annotations

import math
from typing import Any

import torch

#: The validation values a monitor or ``select_on`` may name, besides the task's metrics: the loss.
LOSS = "val_loss"


def monitor_mode(monitor: str) -> str:
    """``min`` for the validation loss, ``max`` for every metric (AUC, accuracy, kappa, Dice...)."""
    return "min" if monitor == LOSS else "max"


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The warm-up multiplier of 0-based optimizer ``step``: (step + 1) / N for the first N steps,
    then 1 (the first step at lr / N, the full lr from step N - 1 on); 1 when N is 0."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


def monitored_metrics(training: dict) -> list[str]:
    """The ``val_<metric>`` names (without ``val_``, the loss left out) that ``training`` selects
    on or monitors: what every epoch's validation must compute beyond the task's defaults."""
    names = [training.get("select_on", "val_auc")]
    schedule = training.get("schedule") or {}
    if schedule.get("name") == "plateau":
        names.append(schedule["monitor"])
    if training.get("early_stopping"):
        names.append(training["early_stopping"]["monitor"])
    out: list[str] = []
    for name in names:
        metric = name.removeprefix("val_")
        if name.startswith("val_") and name != LOSS and metric not in out:
            out.append(metric)
    return out


class Plateau:
    """The plateau factor of ``schedule`` (see the module docstring) for an optimizer of base lr
    ``base_lr``; :meth:`step` once per epoch with the monitored value."""

    def __init__(self, schedule: dict, base_lr: float) -> None:
        self.monitor = schedule["monitor"]
        self._shadow = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self._shadow, mode=monitor_mode(self.monitor), factor=float(schedule.get("factor", 0.1)),
            patience=int(schedule.get("patience", 10)), threshold=float(schedule.get("threshold", 1e-4)),
            threshold_mode="rel", cooldown=int(schedule.get("cooldown", 0)),
            min_lr=float(schedule.get("min_lr", 0.0)) / base_lr, eps=1e-8 / base_lr)

    @property
    def factor(self) -> float:
        return float(self._shadow.param_groups[0]["lr"])

    def step(self, value: float) -> None:
        self.scheduler.step(value)

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(), "factor": self.factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self._shadow.param_groups[0]["lr"] = state["factor"]


class EarlyStopping:
    """Keras' ``EarlyStopping`` on ``monitor`` (see the module docstring)."""

    def __init__(self, options: dict) -> None:
        self.monitor = options["monitor"]
        self.patience = int(options["patience"])
        self.min_delta = float(options.get("min_delta", 0.0))
        self.sign = -1.0 if monitor_mode(self.monitor) == "min" else 1.0
        self.best, self.wait, self.stopped_epoch = -math.inf, 0, 0

    def step(self, epoch: int, value: float) -> bool:
        """Record 1-based ``epoch``'s ``value``; whether training stops after it. NaN never improves."""
        score = self.sign * value
        if not math.isnan(score) and score - self.min_delta > self.best:
            self.best, self.wait = score, 0
        else:
            self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
        return self.stopped_epoch > 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait, self.stopped_epoch = state["best"], state["wait"], state["stopped_epoch"]


class Controls:
    """What the loop does beyond its epoch schedule (plateau, warm-up, gradient clipping, early
    stopping) for ``training``; :attr:`active` is False when the study sets none of them, and then
    the loop neither calls nor checkpoints this."""

    def __init__(self, training: dict, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        schedule = training.get("schedule") or {}
        self.optimizer, self.scheduler = optimizer, scheduler
        base_lr = float(optimizer.param_groups[0]["initial_lr"])
        self.plateau = Plateau(schedule, base_lr) if schedule.get("name") == "plateau" else None
        self.warmup_steps = int(training.get("warmup_steps") or 0)
        self.grad_clip = float(training.get("grad_clip") or 0.0)
        stopping = training.get("early_stopping")
        self.stopping = EarlyStopping(stopping) if stopping else None
        self.active = bool(self.plateau or self.warmup_steps or self.grad_clip or self.stopping)
        self.sets_lr = bool(self.plateau or self.warmup_steps)

    def lrs(self, step: int) -> list[float]:
        """The lr of every parameter group at 0-based optimizer ``step``: the epoch schedule's
        (the LambdaLR's last value) times the plateau factor times the warm-up."""
        factor = (self.plateau.factor if self.plateau else 1.0) * warmup_factor(step, self.warmup_steps)
        return [lr * factor for lr in self.scheduler.get_last_lr()]

    def set_lr(self, step: int) -> None:
        """Before optimizer step ``step``: the lr of :meth:`lrs` into the optimizer."""
        if self.sets_lr:
            for group, lr in zip(self.optimizer.param_groups, self.lrs(step)):
                group["lr"] = lr

    def clip(self, scaler: torch.amp.GradScaler) -> None:
        """After backward: the gradients unscaled (fp16) and clipped to a global L2 norm of
        ``grad_clip`` over every parameter the optimizer updates (``clip_grad_norm_``)."""
        if self.grad_clip:
            scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)

    def end_epoch(self, row: dict[str, Any]) -> bool:
        """After epoch ``row["epoch"]``'s validation: the plateau stepped on its monitored value;
        whether early stopping ends training after it."""
        if self.plateau is not None:
            self.plateau.step(float(row[self.plateau.monitor]))
        if self.stopping is not None:
            return self.stopping.step(int(row["epoch"]), float(row[self.stopping.monitor]))
        return False

    @property
    def stopped_epoch(self) -> int:
        """The epoch after which early stopping ended training (0: it did not)."""
        return self.stopping.stopped_epoch if self.stopping is not None else 0

    def state_dict(self) -> dict[str, Any]:
        return {"plateau": self.plateau.state_dict() if self.plateau else None,
                "early_stopping": self.stopping.state_dict() if self.stopping else None}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not state:
            return
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])
        if self.stopping is not None and state.get("early_stopping"):
            self.stopping.load_state_dict(state["early_stopping"])
