"""Classification metrics with the MedMNIST v2 conventions, computed by scikit-learn.

- AUC: binary = AUC of the class-1 score; multi-class and ordinal = mean of the one-vs-rest AUCs;
  multi-label = mean per-label AUC over the labelled (non-NaN) entries. A class (or label) whose
  one-vs-rest problem has only one label value in ``y_true`` has no AUC and is left out of the mean.
- ACC: argmax for single-label tasks; threshold 0.5 on the sigmoid for multi-label.
- kappa: quadratic-weighted Cohen's kappa of the argmax, for ordinal tasks.
- balanced_acc: mean per-class recall (Matsoukas et al.'s metric for ISIC), single-label tasks.

Segmentation (task ``segmentation``: logits [B, K, H, W], masks [B, H, W] of class ids; the
prediction is the argmax class of each pixel):

- per image and class c, Dice = 2|P∩T| / (|P| + |T|) and IoU = |P∩T| / |P∪T|; an image where
  class c is neither predicted nor present scores 1 (the SIIM-ACR challenge's convention for
  empty masks), so every image counts.
- ``dice_<c>`` / ``iou_<c>``: the mean over images for class id c (0 = background);
  ``dice`` / ``iou``: the mean of those over the foreground classes (c >= 1);
  ``dice_global``: Dice of the foreground pixels pooled over the whole split (no image mean, so
  images without foreground do not dominate it); ``pixel_acc``: correct pixels / all pixels.
- loss: cross-entropy per pixel + soft Dice loss (segmentation_models_pytorch's ``DiceLoss``,
  multiclass: Dice of the softmax over the batch per class, classes absent from the batch left
  out), weighted 1 : 1 as nnU-Net does. For two classes this cross-entropy is exactly the binary
  cross-entropy of the logit difference, so binary masks are trained with BCE + Dice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, roc_auc_score

TASKS = ("binary", "multiclass", "ordinal", "multilabel", "segmentation")
CLASSIFICATION_TASKS = TASKS[:4]


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
    if task == "segmentation":
        return segmentation_loss(logits, labels)
    if task == "multilabel":
        known = ~torch.isnan(labels)
        targets = torch.where(known, labels, torch.zeros_like(labels)).to(logits.dtype)
        per_entry = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return (per_entry * known).sum() / known.sum().clamp(min=1)
    return torch.nn.functional.cross_entropy(logits, labels)


def _mean_auc(columns: list[tuple[np.ndarray, np.ndarray]]) -> float:
    aucs = [roc_auc_score(truth, score) for truth, score in columns if len(np.unique(truth)) == 2]
    return float(np.mean(aucs)) if aucs else float("nan")


def classification_metrics(task: str, y_true: np.ndarray, scores: np.ndarray,
                           evaluated: Sequence[int] | None = None) -> dict[str, float]:
    """Metrics of one split.

    Args:
        task: one of TASKS.
        y_true: int [N] (or [N, 1]) class indices, or float [N, K] 0/1/NaN for multi-label.
        scores: float [N, K] probabilities (``scores_from_logits``).
        evaluated: multi-label only: the label columns the metrics average over (default all), e.g.
            CheXpert's 5 competition labels of a model trained on 14 (the cache's
            ``evaluated_labels``, :func:`medtransfer.data.loader.evaluated_columns`).
    Returns:
        {"auc", "acc"} plus "balanced_acc" for single-label and "kappa" for ordinal tasks.
    """
    if task not in CLASSIFICATION_TASKS:
        raise ValueError(f"task must be one of {CLASSIFICATION_TASKS}, not {task!r}")
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if task == "multilabel" and evaluated is not None:
        columns = np.asarray(evaluated, np.int64)
        y_true, scores = y_true[:, columns], scores[:, columns]
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


# --- segmentation ------------------------------------------------------------------------------------

def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + soft Dice loss of logits [B, K, H, W] against class ids [B, H, W]."""
    from segmentation_models_pytorch.losses import DiceLoss  # imports in seconds: only where segmenting

    dice = DiceLoss("multiclass", from_logits=True)
    return torch.nn.functional.cross_entropy(logits, masks) + dice(logits, masks)


def segmentation_counts(predicted: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per image and class: (|P∩T|, |P|, |T|) in pixels, int64 [B, K, 3], of predicted and true
    class ids [B, H, W]; one bincount of the per-image confusion matrices."""
    b, k = truth.shape[0], int(num_classes)
    index = (torch.arange(b, device=truth.device)[:, None] * k + truth.reshape(b, -1)) * k + predicted.reshape(b, -1)
    confusion = torch.bincount(index.reshape(-1), minlength=b * k * k).reshape(b, k, k)  # [image, true, predicted]
    return torch.stack([confusion.diagonal(dim1=1, dim2=2), confusion.sum(1), confusion.sum(2)], dim=2)


def dice_iou(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU float64 [N, K] from :func:`segmentation_counts` [N, K, 3]; 1 where a class is
    neither predicted nor present in an image."""
    counts = np.asarray(counts, np.float64)
    intersection, predicted, true = counts[..., 0], counts[..., 1], counts[..., 2]
    total, union = predicted + true, predicted + true - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(total > 0, 2 * intersection / total, 1.0)
        iou = np.where(union > 0, intersection / union, 1.0)
    return dice, iou


def segmentation_metrics(counts: np.ndarray) -> dict[str, float]:
    """Metrics of one split from per-image counts [N, K, 3] (see the module docstring): ``dice``,
    ``iou``, ``dice_global``, ``pixel_acc`` and ``dice_<c>``, ``iou_<c>`` for every class id c."""
    counts = np.asarray(counts, np.int64)
    if counts.ndim != 3 or counts.shape[2] != 3 or counts.shape[1] < 2:
        raise ValueError(f"counts must be [N, K >= 2, 3], got {counts.shape}")
    dice, iou = dice_iou(counts)
    per_class_dice, per_class_iou = dice.mean(axis=0), iou.mean(axis=0)
    pooled = counts[:, 1:].sum(axis=(0, 1))
    pixels = counts[:, :, 2].sum()
    metrics = {
        "dice": float(per_class_dice[1:].mean()),
        "iou": float(per_class_iou[1:].mean()),
        "dice_global": float(2 * pooled[0] / (pooled[1] + pooled[2])) if pooled[1] + pooled[2] else 1.0,
        "pixel_acc": float(counts[:, :, 0].sum() / pixels) if pixels else float("nan"),
    }
    for c in range(counts.shape[1]):
        metrics[f"dice_{c}"] = float(per_class_dice[c])
        metrics[f"iou_{c}"] = float(per_class_iou[c])
    return metrics


# --- what an evaluation keeps of a split, per task -----------------------------------------------------

class ClassificationScores:
    """Keeps the class probabilities [N, K] and labels of every batch (``scores_from_logits``);
    ``evaluated``: the multi-label columns the metrics average over (default all)."""

    def __init__(self, task: str, evaluated: Sequence[int] | None = None) -> None:
        self.task, self._scores, self._labels = task, [], []
        self.evaluated = evaluated

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self._scores.append(scores_from_logits(self.task, logits).cpu())
        self._labels.append(y.cpu())

    def result(self) -> tuple[np.ndarray, np.ndarray, dict[str, float], dict[str, np.ndarray]]:
        """(scores [N, K], labels, metrics, extras = {})."""
        scores, labels = torch.cat(self._scores).numpy(), torch.cat(self._labels).numpy()
        return scores, labels, classification_metrics(self.task, labels, scores, self.evaluated), {}


class SegmentationScores:
    """Keeps, per image, the pixel counts of :func:`segmentation_counts` (memory: 3 K integers per
    image, whatever the image size), and the first ``examples`` images' masks and probabilities."""

    def __init__(self, examples: int = 0) -> None:
        self.examples, self._counts, self._kept = int(examples), [], 0
        self._truth, self._scores = [], []

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        num_classes = logits.shape[1]
        self._counts.append(segmentation_counts(logits.argmax(1), y, num_classes).cpu())
        take = min(len(y), self.examples - self._kept)
        if take > 0:
            self._truth.append(y[:take].to(torch.uint8).cpu())
            self._scores.append(torch.softmax(logits[:take].float(), dim=1).to(torch.float16).cpu())
            self._kept += take

    def result(self) -> tuple[np.ndarray, np.ndarray, dict[str, float], dict[str, np.ndarray]]:
        """(per-image Dice float32 [N, K], per-image true pixels per class int64 [N, K], metrics,
        extras: ``example_masks`` uint8 [E, H, W] and ``example_scores`` float16 [E, K, H, W] of
        the first E images)."""
        counts = torch.cat(self._counts).numpy()
        dice, _ = dice_iou(counts)
        extras = {}
        if self._truth:
            extras = {"example_masks": torch.cat(self._truth).numpy(),
                      "example_scores": torch.cat(self._scores).numpy()}
        return dice.astype(np.float32), counts[..., 2], segmentation_metrics(counts), extras


def score_collector(task: str, examples: int = 0,
                    evaluated: Sequence[int] | None = None) -> ClassificationScores | SegmentationScores:
    """What :func:`medtransfer.training.trainer.evaluate` keeps of a split for ``task``."""
    return SegmentationScores(examples) if task == "segmentation" else ClassificationScores(task, evaluated)


#: The validation metrics each epoch's history row records (``val_<name>``), per task; a metric
#: that ``select_on``, a plateau schedule or early stopping names is recorded beside them.
VALIDATION_METRICS: dict[str, tuple[str, ...]] = {"segmentation": ("dice", "iou")}
DEFAULT_VALIDATION_METRICS = ("auc", "acc")
#: The metrics an evaluation of each task reports (what ``val_<metric>`` may name in ``select_on``
#: and the monitors; the planner's torch-free copy is medtransfer.study.finetune.TASK_KIND_MONITORS).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auc", "acc", "balanced_acc"),
    "multiclass": ("auc", "acc", "balanced_acc"),
    "ordinal": ("auc", "acc", "balanced_acc", "kappa"),
    "multilabel": ("auc", "acc"),
    "segmentation": ("dice", "iou", "dice_global", "pixel_acc"),
}
