"""Classification metrics with the MedMNIST v2 conventions, computed by scikit-learn.

- AUC: binary = AUC of the class-1 score; multi-class and ordinal = mean of the one-vs-rest AUCs;
  multi-label = mean per-label AUC over the labelled (non-NaN) entries. A class (or label) whose
  one-vs-rest problem has only one label value in ``y_true`` has no AUC and is left out of the mean.
- ACC: argmax for single-label tasks; threshold 0.5 on the sigmoid for multi-label.
- kappa: quadratic-weighted Cohen's kappa of the argmax, for ordinal tasks.
- balanced_acc: mean per-class recall (Matsoukas et al.'s metric for ISIC), single-label tasks.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, roc_auc_score

TASKS = ("binary", "multiclass", "ordinal", "multilabel")


def scores_from_logits(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities [N, K]: softmax for single-label tasks, sigmoid for multi-label."""
    if task == "multilabel":
        return torch.sigmoid(logits.float())
    return torch.softmax(logits.float(), dim=1)


def loss_function(task: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for single-label tasks; BCE-with-logits for multi-label, NaN labels masked.

    Computed in float32 at least: autocast's bf16/fp16 logits are upcast, float64 ones (the
    linear probe's L-BFGS fit) stay float64."""
    if logits.dtype != torch.float64:
        logits = logits.float()
    if task == "multilabel":
        known = ~torch.isnan(labels)
        targets = torch.where(known, labels, torch.zeros_like(labels)).to(logits.dtype)
        per_entry = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return (per_entry * known).sum() / known.sum().clamp(min=1)
    return torch.nn.functional.cross_entropy(logits, labels)


def _mean_auc(columns: list[tuple[np.ndarray, np.ndarray]]) -> float:
    aucs = [roc_auc_score(truth, score) for truth, score in columns if len(np.unique(truth)) == 2]
    return float(np.mean(aucs)) if aucs else float("nan")


def classification_metrics(task: str, y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Metrics of one split.

    Args:
        task: one of TASKS.
        y_true: int [N] (or [N, 1]) class indices, or float [N, K] 0/1/NaN for multi-label.
        scores: float [N, K] probabilities (``scores_from_logits``).
    Returns:
        {"auc", "acc"} plus "balanced_acc" for single-label and "kappa" for ordinal tasks.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if task == "multilabel":
        known = ~np.isnan(y_true)
        columns = [(y_true[known[:, j], j], scores[known[:, j], j]) for j in range(y_true.shape[1])]
        predicted = scores >= 0.5
        acc = float((predicted[known] == (y_true[known] == 1)).mean()) if known.any() else float("nan")
        return {"auc": _mean_auc(columns), "acc": acc}
    if y_true.ndim == 2 and y_true.shape[1] == 1:
        y_true = y_true[:, 0]  # MedMNIST stores single labels as [N, 1]; [N] == [N, 1] would broadcast
    if y_true.ndim != 1:
        raise ValueError(f"single-label task {task!r} needs labels of shape [N] or [N, 1], got {y_true.shape}")
    y_true = y_true.astype(np.int64)
    predicted = scores.argmax(axis=1)
    if task == "binary":
        auc = _mean_auc([(y_true == 1, scores[:, 1])])
    else:
        auc = _mean_auc([(y_true == c, scores[:, c]) for c in range(scores.shape[1])])
    metrics = {
        "auc": auc,
        "acc": float((predicted == y_true).mean()),
        "balanced_acc": float(balanced_accuracy_score(y_true, predicted)),
    }
    if task == "ordinal":
        # labels= fixes the grade distances: without it, sklearn weights only the grades that occur,
        # and a grade absent from truth and predictions would shrink every distance across it
        metrics["kappa"] = float(cohen_kappa_score(y_true, predicted, weights="quadratic",
                                                   labels=np.arange(scores.shape[1])))
    return metrics
