"""Training metrics against independent computations (rank formulas, hand-made cases)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtransfer.training.metrics import classification_metrics, loss_function


def mann_whitney_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """AUC as the probability that a random positive outranks a random negative (ties: 1/2)."""
    pos, neg = score[truth == 1], score[truth == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return greater / (len(pos) * len(neg))


def test_binary_auc_is_the_class_one_score():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)
    scores = np.stack([1 - p1, p1], axis=1)
    metrics = classification_metrics("binary", y, scores)
    assert metrics["auc"] == pytest.approx(mann_whitney_auc(y, p1))
    assert metrics["acc"] == pytest.approx(np.mean((p1 > 0.5) == y))


def test_multiclass_auc_is_the_mean_one_vs_rest():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    scores = rng.dirichlet(np.ones(4), 300)
    scores[np.arange(300), y] += 0.2
    scores /= scores.sum(1, keepdims=True)
    expected = np.mean([mann_whitney_auc((y == c).astype(int), scores[:, c]) for c in range(4)])
    assert classification_metrics("multiclass", y, scores)["auc"] == pytest.approx(expected)


def test_quadratic_kappa_closed_form():
    # Perfect agreement -> 1; predicting one grade off everywhere on a 3-grade scale:
    y = np.array([0, 1, 2, 0, 1, 2])
    perfect = np.eye(3)[y]
    assert classification_metrics("ordinal", y, perfect)["kappa"] == pytest.approx(1.0)
    shifted = np.eye(3)[np.clip(y + 1, 0, 2)]
    # hand computation: observed weighted disagreement 2/6*(1/4)... compare with the definition
    w = np.array([[(i - j) ** 2 for j in range(3)] for i in range(3)]) / 4
    observed = np.zeros((3, 3))
    for t, p in zip(y, shifted.argmax(1)):
        observed[t, p] += 1
    observed /= observed.sum()
    expected = np.outer(observed.sum(1), observed.sum(0))
    kappa = 1 - (w * observed).sum() / (w * expected).sum()
    assert classification_metrics("ordinal", y, shifted)["kappa"] == pytest.approx(kappa)


def test_multilabel_ignores_unknown_labels():
    y = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0], [np.nan, 1]], dtype=np.float32)
    scores = np.array([[0.9, 0.2], [0.1, 0.9], [0.8, 0.7], [0.3, 0.1], [0.5, 0.6]])
    auc0 = mann_whitney_auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.8, 0.3]))
    auc1 = mann_whitney_auc(np.array([0, 1, 0, 1]), np.array([0.2, 0.7, 0.1, 0.6]))
    assert classification_metrics("multilabel", y, scores)["auc"] == pytest.approx((auc0 + auc1) / 2)
    logits = torch.tensor(np.log(scores / (1 - scores)), dtype=torch.float32)
    loss = loss_function("multilabel", logits, torch.tensor(y))
    known = ~np.isnan(y)
    bce = -(np.where(y == 1, np.log(scores), np.log(1 - scores)))[known].mean()
    assert float(loss) == pytest.approx(bce, rel=1e-5)


def test_a_class_missing_from_the_truth_is_left_out_not_nan():
    y = np.array([0, 0, 1, 1])
    scores = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    assert classification_metrics("multiclass", y, scores)["auc"] == pytest.approx(1.0)


def hand_quadratic_kappa(truth: np.ndarray, predicted: np.ndarray, grades: int) -> float:
    """Cohen's quadratic-weighted kappa from its definition on the full grade scale 0..grades-1."""
    observed = np.zeros((grades, grades))
    for t, p in zip(truth, predicted):
        observed[t, p] += 1
    observed /= observed.sum()
    expected = np.outer(observed.sum(1), observed.sum(0))
    weights = np.subtract.outer(np.arange(grades), np.arange(grades)) ** 2 / (grades - 1) ** 2
    return 1 - (weights * observed).sum() / (weights * expected).sum()


def test_kappa_keeps_grade_distances_when_a_grade_never_occurs():
    # grade 3 of 5 is in neither truth nor predictions: 4 is still 4 steps from 0, not 3
    y = np.array([0, 0, 1, 2, 4, 4, 4, 1])
    predicted = np.array([0, 1, 1, 4, 4, 2, 4, 0])
    kappa = classification_metrics("ordinal", y, np.eye(5)[predicted])["kappa"]
    assert kappa == pytest.approx(hand_quadratic_kappa(y, predicted, 5))
    assert kappa == pytest.approx(0.7727, abs=1e-4)


def test_column_labels_give_the_same_metrics_as_flat_labels():
    """MedMNIST ships single labels as [N, 1]; comparing them with [N] predictions must not broadcast."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 50)
    scores = rng.dirichlet(np.ones(3), 50)
    assert classification_metrics("ordinal", y[:, None], scores) == classification_metrics("ordinal", y, scores)
    assert classification_metrics("ordinal", y, scores)["acc"] == pytest.approx(np.mean(scores.argmax(1) == y))
    with pytest.raises(ValueError, match="shape"):
        classification_metrics("multiclass", np.eye(3)[y], scores)
