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

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medtransfer.training.metrics import classification_metrics, scores_from_logits

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


def _labels_tensor(task: str, labels: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    if task == "multilabel":
        return torch.as_tensor(labels, dtype=dtype)
    return torch.as_tensor(labels, dtype=torch.long).view(-1)


def fit_probe(x: np.ndarray, y: np.ndarray, *, task: str, num_outputs: int, weight_decay: float,
              max_iter: int = 500, standardize: bool = True) -> LinearProbe:
    """The minimiser of mean task loss + ``weight_decay / 2 * ||W||^2`` on features ``x`` [N, D]."""
    dtype = torch.float64 if x.size <= FLOAT64_MAX_ENTRIES else torch.float32
    features = torch.as_tensor(x, dtype=dtype)
    targets = _labels_tensor(task, y, dtype)
    if standardize:
        mean, std = features.mean(0), features.std(0, unbiased=False)
        # a dimension constant on the training subset (e.g. a ReLU unit silent on 5 images) is left
        # unscaled rather than divided by ~0
        std = torch.where(std > 1e-6 * std.max(), std, torch.ones_like(std))
    else:
        mean, std = torch.zeros(features.shape[1], dtype=dtype), torch.ones(features.shape[1], dtype=dtype)
    probe = LinearProbe(mean, std, num_outputs)
    optimizer = torch.optim.LBFGS(probe.linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = probe(features)
        loss = _loss(task, logits, targets) + 0.5 * weight_decay * probe.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


def _loss(task: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # medtransfer.training.metrics.loss_function in the probe's own dtype (it casts to float32)
    if task == "multilabel":
        known = ~torch.isnan(targets)
        per_entry = nn.functional.binary_cross_entropy_with_logits(
            logits, torch.where(known, targets, torch.zeros_like(targets)), reduction="none")
        return (per_entry * known).sum() / known.sum().clamp(min=1)
    return nn.functional.cross_entropy(logits, targets)


@torch.no_grad()
def probe_scores(probe: LinearProbe, x: np.ndarray, task: str) -> np.ndarray:
    """Class probabilities [N, K] (softmax; sigmoid per label for multi-label)."""
    logits = probe(torch.as_tensor(x, dtype=probe.mean.dtype))
    return scores_from_logits(task, logits).double().numpy()


@dataclass
class LinearResult:
    probe: LinearProbe
    weight_decay: float
    grid: list[dict]  # one row per weight decay: {"weight_decay", "val_auc", "val_loss"}


def select_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], *, task: str,
                 num_outputs: int, weight_decays: list[float], max_iter: int = 500,
                 standardize: bool = True) -> LinearResult:
    """Fit one probe per weight decay; keep the best validation AUC (ties: the stronger penalty)."""
    rows, best = [], None
    for wd in sorted(weight_decays, reverse=True):
        probe = fit_probe(*train, task=task, num_outputs=num_outputs, weight_decay=wd, max_iter=max_iter,
                          standardize=standardize)
        scores = probe_scores(probe, val[0], task)
        auc = classification_metrics(task, val[1], scores)["auc"]
        with torch.no_grad():
            val_loss = float(_loss(task, probe(torch.as_tensor(val[0], dtype=probe.mean.dtype)),
                                   _labels_tensor(task, val[1], probe.mean.dtype)))
        rows.append({"weight_decay": wd, "val_auc": auc, "val_loss": val_loss})
        key = (auc if np.isfinite(auc) else -np.inf, -val_loss)
        if best is None or key > best[0]:
            best = (key, probe, wd)
    return LinearResult(best[1], best[2], sorted(rows, key=lambda r: r["weight_decay"]))
