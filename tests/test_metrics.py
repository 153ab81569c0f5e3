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
