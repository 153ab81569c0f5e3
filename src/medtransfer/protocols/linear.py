"""The linear protocol's classifier: an L2-regularised linear model on frozen features.

Why not SGD epochs as fine-tuning: on fixed features the problem is convex, so L-BFGS (full
batch, strong-Wolfe line search) reaches its unique optimum in seconds with nothing but the
penalty to choose; the penalty is picked on the validation split from a log-spaced grid (the
protocol of Kornblith et al. 2019 and SimCLR's linear evaluation). The objective per task is the
fine-tuning loss (:func:`medtransfer.training.metrics.loss_function`: cross-entropy for binary,
multi-class and ordinal tasks, masked BCE for multi-label) plus ``weight_decay / 2 * ||W||^2``
(bias not penalised), which for a multi-class task is scikit-learn's multinomial
``LogisticRegression(C = 1 / (weight_decay * n))``; ``tests/test_protocols.py`` checks that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medtransfer.models.fusion import usable_std
from medtransfer.training.metrics import classification_metrics, loss_function, scores_from_logits

#: Above this many feature entries the fit runs in float32 (a CheXpert-sized train split), else float64.
FLOAT64_MAX_ENTRIES = 50_000_000


class LinearProbe(nn.Module):
    """``(x - mean) / std`` then a linear layer: [N, D] features -> [N, K] logits."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_outputs: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.numel(), num_outputs, dtype=mean.dtype)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std)


def labels_tensor(task: str, labels, dtype: torch.dtype) -> torch.Tensor:
    """Labels as the task loss takes them: float [N, K] (NaN = unknown) for multi-label, else long [N]."""
    if task == "multilabel":
        return torch.as_tensor(labels, dtype=dtype)
    return torch.as_tensor(labels, dtype=torch.long).view(-1)


def standardisation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std of ``x`` [N, D] (a dimension constant on the training subset keeps
    std 1: :func:`medtransfer.models.fusion.usable_std`)."""
    return x.mean(0), usable_std(x.std(0, unbiased=False))


def penalised_loss(task: str, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                   weight_decay: float) -> torch.Tensor:
    """The probe's objective: the task loss + ``weight_decay / 2 * ||W||^2``."""
    return loss_function(task, logits, targets) + 0.5 * weight_decay * weight.pow(2).sum()


def fit_probe(x: np.ndarray, y: np.ndarray, *, task: str, num_outputs: int, weight_decay: float,
              max_iter: int = 500, standardize: bool = True) -> LinearProbe:
    """The minimiser of mean task loss + ``weight_decay / 2 * ||W||^2`` on features ``x`` [N, D]."""
    dtype = torch.float64 if x.size <= FLOAT64_MAX_ENTRIES else torch.float32
    features = torch.as_tensor(x, dtype=dtype)
    targets = labels_tensor(task, y, dtype)
    if standardize:
        mean, std = standardisation(features)
    else:
        mean, std = torch.zeros(features.shape[1], dtype=dtype), torch.ones(features.shape[1], dtype=dtype)
    probe = LinearProbe(mean, std, num_outputs)
    optimizer = torch.optim.LBFGS(probe.linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = penalised_loss(task, probe(features), targets, probe.linear.weight, weight_decay)
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


@torch.no_grad()
def probe_scores(probe: LinearProbe, x: np.ndarray, task: str) -> np.ndarray:
    """Class probabilities [N, K] (softmax; sigmoid per label for multi-label)."""
    logits = probe(torch.as_tensor(x, dtype=probe.mean.dtype))
    return scores_from_logits(task, logits).double().numpy()


@dataclass
class Selection:
    """The head a validation-chosen weight decay gave, and every candidate's validation AUC."""

    head: nn.Module
    weight_decay: float
    grid: list[dict]  # one row per weight decay: {"weight_decay", "val_auc"}


def select_on_val(weight_decays: list[float], fit: Callable[[float], nn.Module],
                  val_scores: Callable[[nn.Module], np.ndarray], val_labels: np.ndarray, task: str) -> Selection:
    """Fit one head per weight decay and keep the best validation AUC; candidates are tried from
    the strongest penalty down, so a tie keeps the more regularised head. Shared by the linear
    probe, its augmented variant and DVME."""
    rows, best = [], None
    for wd in sorted(weight_decays, reverse=True):
        head = fit(wd)
        auc = classification_metrics(task, val_labels, val_scores(head))["auc"]
        rows.append({"weight_decay": wd, "val_auc": auc})
        key = auc if np.isfinite(auc) else -np.inf
        if best is None or key > best[0]:
            best = (key, head, wd)
    return Selection(best[1], best[2], sorted(rows, key=lambda r: r["weight_decay"]))


def select_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], *, task: str,
                 num_outputs: int, weight_decays: list[float], max_iter: int = 500,
                 standardize: bool = True) -> Selection:
    """The L-BFGS probe of the validation-chosen weight decay (``.head``)."""
    return select_on_val(
        weight_decays,
        lambda wd: fit_probe(*train, task=task, num_outputs=num_outputs, weight_decay=wd, max_iter=max_iter,
                             standardize=standardize),
        lambda head: probe_scores(head, val[0], task), val[1], task)
